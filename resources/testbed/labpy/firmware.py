"""ACPI table fix-ups for L1 and the lab's known-content disks.

QEMU's emulated SMMUv3 offers neither S2FWB nor a root complex marked CANWBS, and without one of
them Linux refuses IOMMU_VIOMMU_ALLOC. The lab reads the IORT QEMU generated for a topology, marks
every root-complex node CANWBS, and hands the table back to L1 through the kernel's ACPI table
upgrade (an uncompressed cpio with kernel/firmware/acpi/IORT.aml in front of the initramfs).
"""

import hashlib
import struct

from . import cpio

IORT_NODE_ROOT_COMPLEX = 2
# Root-complex node: 16-byte node header, then Memory Access Properties (CCA u32, AH u8,
# reserved u16, Memory Access Flags u8); CANWBS is bit 2 of those flags.
RC_MEMORY_FLAGS_OFFSET = 16 + 4 + 1 + 2
MAF_CANWBS = 1 << 2


class TableError(ValueError):
    pass


def checksum_ok(table):
    return sum(table) & 0xFF == 0


def set_checksum(table):
    table[9] = 0
    table[9] = (-sum(table)) & 0xFF


def iort_set_canwbs(raw):
    """Returns (patched table, number of root-complex nodes changed)."""
    t = bytearray(raw)
    if t[:4] != b"IORT":
        raise TableError(f"not an IORT table (signature {bytes(t[:4])!r})")
    (length,) = struct.unpack_from("<I", t, 4)
    if length != len(t):
        raise TableError(f"IORT length field {length} but {len(t)} bytes read")
    if not checksum_ok(t):
        raise TableError("IORT checksum does not add up before patching")
    count, offset = struct.unpack_from("<II", t, 36)
    changed = 0
    for _ in range(count):
        if offset + 16 > length:
            raise TableError(f"IORT node at {offset:#x} runs past the table")
        node_type, node_len = struct.unpack_from("<BH", t, offset)
        if node_len < 16 or offset + node_len > length:
            raise TableError(f"IORT node at {offset:#x} has bad length {node_len}")
        if node_type == IORT_NODE_ROOT_COMPLEX:
            t[offset + RC_MEMORY_FLAGS_OFFSET] |= MAF_CANWBS
            changed += 1
        offset += node_len
    # The table upgrade only replaces a table whose OEM revision is lower than the new one's.
    (oem_revision,) = struct.unpack_from("<I", t, 24)
    struct.pack_into("<I", t, 24, oem_revision + 1)
    set_checksum(t)
    return bytes(t), changed


def acpi_upgrade_cpio(tables):
    """Uncompressed cpio for CONFIG_ACPI_TABLE_UPGRADE: {signature: table bytes}."""
    archive = cpio.Archive()
    for signature, table in sorted(tables.items()):
        archive.file(f"kernel/firmware/acpi/{signature}.aml", table)
    return archive.to_bytes()


def disk_pattern(name, size):
    """Deterministic disk content for a disk name: SHA-256 in counter mode."""
    seed = hashlib.sha256(f"microvmm-lab-disk:{name}".encode()).digest()
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(seed + counter.to_bytes(8, "little")).digest()
        counter += 1
    return bytes(out[:size])
