"""Writes newc ("070701") cpio archives, the format Linux unpacks as an initramfs.

Built in memory without root: device nodes and ownership are recorded, not created on disk.
"""

import gzip
import io
import os
import stat

S_IFDIR, S_IFREG, S_IFLNK, S_IFCHR = 0o040000, 0o100000, 0o120000, 0o020000


class Archive:
    def __init__(self):
        self._entries = []  # (name, mode, data, rdev_major, rdev_minor)
        self._dirs = set()

    def _parents(self, name):
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d and d not in self._dirs:
                self.dir(d)

    def dir(self, name, mode=0o755):
        name = name.strip("/")
        if name in self._dirs:
            return
        self._parents(name)
        self._dirs.add(name)
        self._entries.append((name, S_IFDIR | mode, b"", 0, 0))

    def file(self, name, data, mode=0o644):
        name = name.strip("/")
        self._parents(name)
        if isinstance(data, str):
            data = data.encode()
        self._entries.append((name, S_IFREG | mode, data, 0, 0))

    def host_file(self, name, path, mode=None):
        with open(path, "rb") as f:
            data = f.read()
        if mode is None:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        self.file(name, data, mode)

    def symlink(self, name, target):
        name = name.strip("/")
        self._parents(name)
        self._entries.append((name, S_IFLNK | 0o777, target.encode(), 0, 0))

    def chardev(self, name, major, minor, mode=0o600):
        name = name.strip("/")
        self._parents(name)
        self._entries.append((name, S_IFCHR | mode, b"", major, minor))

    def to_bytes(self, pad_to=512):
        out = io.BytesIO()
        ino = 1
        for name, mode, data, major, minor in self._entries + [("TRAILER!!!", 0, b"", 0, 0)]:
            raw_name = name.encode() + b"\0"
            fields = [
                ino, mode, 0, 0, 2 if stat.S_ISDIR(mode) else 1, 0,
                len(data), 0, 0, major, minor, len(raw_name), 0,
            ]
            header = b"070701" + b"".join(b"%08X" % f for f in fields)
            out.write(header + raw_name)
            out.write(b"\0" * (-out.tell() % 4))
            out.write(data)
            out.write(b"\0" * (-out.tell() % 4))
            ino += 1
        out.write(b"\0" * (-out.tell() % pad_to))
        return out.getvalue()

    def to_gzip(self):
        # mtime=0 keeps the output byte-identical for identical input.
        return gzip.compress(self.to_bytes(), compresslevel=6, mtime=0)


def read_newc(blob):
    """Parses an uncompressed newc archive into {name: (mode, data)}; for tests and checks."""
    entries, off = {}, 0
    while off + 110 <= len(blob):
        if blob[off:off + 6] != b"070701":
            raise ValueError(f"bad cpio magic at {off}")
        f = [int(blob[off + 6 + 8 * i: off + 14 + 8 * i], 16) for i in range(13)]
        mode, filesize, namesize = f[1], f[6], f[11]
        name_start = off + 110
        name = blob[name_start:name_start + namesize - 1].decode()
        data_start = name_start + namesize
        data_start += -data_start % 4
        data = blob[data_start:data_start + filesize]
        off = data_start + filesize
        off += -off % 4
        if name == "TRAILER!!!":
            break
        entries[name] = (mode, data)
    return entries
