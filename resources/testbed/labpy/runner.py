"""Runs scenarios: builds what the lab needs, boots L0 -> L1 (-> L2), watches the consoles."""

import dataclasses
import hashlib
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

from . import cpio, firmware, scenario

TESTBED = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(os.path.dirname(TESTBED))
LAB_DIR = os.environ.get("MICROVMM_LAB_DIR") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "microvmm-lab")
CHROOT_LAB_DIR = "/labcache"  # where LAB_DIR appears inside the chroot L0 runs in
RUST_TARGETS = {"aarch64": "aarch64-unknown-linux-gnu", "x86_64": "x86_64-unknown-linux-gnu"}
BUSYBOX_ARCH = {"aarch64": "arm64", "x86_64": "amd64"}
DEFAULT_FAIL = [scenario.Expect(r"Kernel panic - not syncing", None),
                scenario.Expect(r"^@@LAB FAIL", None)]
DONE = re.compile(r"^@@LAB DONE rc=(\d+)")
L2_PREFIX = "L2| "
# After L1 reported its result, how long L0 may take to power off.
POWEROFF_GRACE = 30


# A kernel log record's timestamp, `[    1.234567] `.
PRINTK_RECORD = re.compile(r"\[\s*\d+\.\d{6}\] ")


def split_console_line(line):
    """One console line as the lines that were written: a guest kernel printing its log from a
    thread (an nbcon console: Linux's PL011) can put a whole record between a program's text and
    the newline ending it, so a record starting mid-line begins a line of its own."""
    prefix = L2_PREFIX if line.startswith(L2_PREFIX) else ""
    text = line[len(prefix):]
    parts, start = [], 0
    for m in PRINTK_RECORD.finditer(text):
        if m.start() > start:
            parts.append(text[start:m.start()])
            start = m.start()
    parts.append(text[start:])
    return [prefix + p for p in parts]


class LabError(RuntimeError):
    pass


def log(msg):
    print(f"[lab {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _run(cmd, what, env=None, cwd=None):
    proc = subprocess.run(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-25:])
        raise LabError(f"{what} failed (exit {proc.returncode}):\n{tail}")
    return proc.stdout


def _in_lab(path):
    """The path of a file under LAB_DIR as L0 (inside the chroot) sees it."""
    real = os.path.realpath(path)
    root = os.path.realpath(LAB_DIR)
    if not real.startswith(root + os.sep):
        raise LabError(f"{path} is not inside the lab directory {LAB_DIR}")
    return CHROOT_LAB_DIR + real[len(root):]


class Lab:
    """What the scenarios of one runner invocation share; each part is built once, on demand."""

    def __init__(self):
        self._kernels = {}
        self._binaries = {}
        self._base = {}
        self._disks = {}
        self._peer = None

    def kernel(self, arch):
        if arch not in self._kernels:
            _run([os.path.join(TESTBED, "build-lab"), "kernel", arch], f"building the {arch} lab")
            self._kernels[arch] = os.path.realpath(
                os.path.join(LAB_DIR, "kernels", arch, "current", "kernel"))
        return self._kernels[arch]

    def binaries(self, arch):
        """Static release builds of the workspace binaries L1 runs: {name: path}."""
        if arch not in self._binaries:
            target = RUST_TARGETS[arch]
            packages = ["labcheck"] + (["vmm"] if os.path.exists(os.path.join(REPO, "vmm")) else [])
            env = dict(os.environ)
            env[f"CARGO_TARGET_{target.upper().replace('-', '_')}_RUSTFLAGS"] = \
                "-C target-feature=+crt-static"
            cmd = ["cargo", "build", "--release", "--locked", "--target", target,
                   "--target-dir", os.path.join(REPO, "target", "lab")]
            for p in packages:
                cmd += ["-p", p]
            log(f"building {', '.join(packages)} for {arch} (static)")
            _run(cmd, f"cargo build for {arch}", env=env, cwd=REPO)
            out = os.path.join(REPO, "target", "lab", target, "release")
            self._binaries[arch] = {
                name: os.path.join(out, name) for name in ("labcheck", "microvmm")
                if os.path.exists(os.path.join(out, name))
            }
        return self._binaries[arch]

    def base_initramfs(self, arch):
        """busybox + /init, gzip-compressed: the first part of every L1 and L2 initramfs."""
        if arch not in self._base:
            busybox = os.path.join(LAB_DIR, "chroot", "opt", "busybox", BUSYBOX_ARCH[arch],
                                   "usr", "bin", "busybox")
            if not os.path.exists(busybox):
                raise LabError(f"no busybox for {arch} at {busybox}: run resources/testbed/build-lab")
            a = cpio.Archive()
            for d in ("dev", "proc", "sys", "tmp", "root", "etc", "usr/bin", "sbin"):
                a.dir(d)
            a.chardev("dev/console", 5, 1)
            a.chardev("dev/null", 1, 3, 0o666)
            a.host_file("bin/busybox", busybox, 0o755)
            a.symlink("bin/sh", "busybox")
            a.host_file("init", os.path.join(TESTBED, "initramfs", "init"), 0o755)
            self._base[arch] = a.to_gzip()
        return self._base[arch]

    def peer(self):
        """The arm64 QEMU bundle (an uncompressed cpio) benchmark scenarios add to L1."""
        if self._peer is None:
            _run([os.path.join(TESTBED, "build-lab"), "peer"], "bundling the peer QEMU")
            self._peer = os.path.realpath(os.path.join(LAB_DIR, "peer", "current", "qemu-l1.cpio"))
        return self._peer

    def disk(self, name, mib=scenario.DEFAULT_DISK_SIZE >> 20):
        """(path, sha256) of a lab disk with deterministic content, created on first use."""
        if (name, mib) not in self._disks:
            size_tag = "" if mib << 20 == scenario.DEFAULT_DISK_SIZE else f"-{mib}m"
            path = os.path.join(LAB_DIR, "disks", f"{name}{size_tag}.img")
            sum_path = path + ".sha256"
            if not (os.path.exists(path) and os.path.exists(sum_path)):
                os.makedirs(os.path.dirname(path), exist_ok=True)
                data = firmware.disk_pattern(name, mib << 20)
                with open(path + ".tmp", "wb") as f:
                    f.write(data)
                with open(sum_path, "w") as f:
                    f.write(hashlib.sha256(data).hexdigest() + "\n")
                os.replace(path + ".tmp", path)
            with open(sum_path) as f:
                self._disks[(name, mib)] = (path, f.read().strip())
        return self._disks[(name, mib)]


@dataclasses.dataclass
class Outcome:
    passed: bool
    reason: str = ""
    # Seconds from each `run_l2` start to L2's "@@LAB L2 up" line (host wall clock).
    l2_up: list = dataclasses.field(default_factory=list)
    # Keep logging the consoles a little after deciding (a failure's oops and backtrace).
    linger: bool = False


# How long the consoles keep being logged after a fail pattern matched.
LINGER = 8


class Run:
    """One scenario: prepare its L1 initramfs, boot L0, judge the consoles."""

    def __init__(self, lab, s, log_root, env=None):
        self.lab, self.s = lab, s
        self.extra_env = env or {}
        self.logs = os.path.join(log_root, s.name)
        # Per runner process, so two runs of one scenario (two checkouts) never share files.
        self.work = os.path.join(LAB_DIR, "runs", str(os.getpid()), s.name)

    def disk_sha(self, name):
        return self.lab.disk(name, self.s.disks().get(name, scenario.DEFAULT_DISK_SIZE >> 20))[1]

    def env_file(self):
        lines = [f"export DISK_{name}_SHA256={self.disk_sha(name)}" for name in self.s.disks()]
        lines += [f"export {k}={v}" for k, v in sorted(self.extra_env.items())]
        return "".join(line + "\n" for line in lines)

    def l2_initramfs(self):
        a = cpio.Archive()
        a.host_file("lab/run", os.path.join(TESTBED, "initramfs", "l2-harness"), 0o755)
        a.file("lab/l2.sh", self.s.l2_script)
        a.file("lab/env", self.env_file())
        for path in self.s.l2_files:
            a.host_file(f"lab/files/{os.path.basename(path)}", path)
        if self.s.l2_labcheck:
            a.host_file("lab/bin/labcheck", self.lab.binaries(self.s.arch)["labcheck"], 0o755)
        return self.lab.base_initramfs(self.s.arch) + a.to_gzip()

    def l1_payload(self):
        s = self.s
        a = cpio.Archive()
        a.host_file("lab/run", os.path.join(TESTBED, "initramfs", "l1-harness"), 0o755)
        a.file("lab/l1.sh", s.l1_script)
        a.file("lab/devices", scenario.l1_device_table(s))
        a.file("lab/env", self.env_file())
        for name, path in self.lab.binaries(s.arch).items():
            a.host_file(f"lab/bin/{name}", path, 0o755)
        for path in s.l1_files:
            a.host_file(f"lab/files/{os.path.basename(path)}", path)
        if s.l2_script:
            a.host_file("lab/l2/kernel", self.lab.kernel(s.arch))
            a.file("lab/l2/initramfs", self.l2_initramfs())
        return a.to_gzip()

    def qemu_args(self, initrd, append):
        s = self.s
        args = scenario.machine_args(s)
        args += scenario.topology_args(s, lambda name, mib: _in_lab(self.lab.disk(name, mib)[0]))
        args += ["-kernel", _in_lab(self.lab.kernel(s.arch)), "-initrd", _in_lab(initrd),
                 "-append", append]
        # A monitor the runner asks for L1's vCPU state when a boot times out.
        args += ["-monitor", f"unix:{_in_lab(self.monitor_path())},server=on,wait=off"]
        return args

    def monitor_path(self):
        return os.path.join(self.work, "monitor.sock")

    def dump_vcpus(self, l0_log):
        """On a timeout: where L1's vCPUs are (QEMU's `info registers -a`), into l0.log."""
        import socket

        out = b""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(5)
                sock.connect(self.monitor_path())
                sock.sendall(b"info registers -a\n")
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline:
                    try:
                        chunk = sock.recv(65536)
                    except socket.timeout:
                        break
                    if not chunk:
                        break
                    out += chunk
        except OSError as e:
            out += f"(monitor unavailable: {e})".encode()
        l0_log.write("--- L1 vCPU state at the timeout (info registers -a) ---\n")
        l0_log.write(out.decode("utf-8", "replace").replace("\r", "") + "\n")
        l0_log.flush()

    def boot(self, initrd, append, judge, timeout, console_log):
        """Boots L0 and feeds every console line to judge(line) until it returns an Outcome."""
        args = self.qemu_args(initrd, append)
        with open(os.path.join(self.logs, "l0.log"), "a") as l0:
            l0.write("$ " + " ".join(args) + "\n")
        env = dict(os.environ, LAB_BINDS=f"{LAB_DIR}:{CHROOT_LAB_DIR}")
        cmd = ["bash", "-c", '. "$0"; in_chroot "$@"', os.path.join(TESTBED, "lab.sh")] + args
        l0 = open(os.path.join(self.logs, "l0.log"), "a")
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=l0, start_new_session=True)
        lines = queue.Queue()

        def reader():
            for raw in proc.stdout:
                text = raw.decode("utf-8", "replace").rstrip("\r\n").replace("\r", "")
                for line in split_console_line(text):
                    lines.put(line)
            lines.put(None)

        threading.Thread(target=reader, daemon=True).start()
        deadline = time.monotonic() + timeout
        outcome = None
        try:
            with open(console_log, "a") as console:
                while outcome is None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        outcome = judge(None, timed_out=True)
                        self.dump_vcpus(l0)
                        break
                    try:
                        line = lines.get(timeout=left)
                    except queue.Empty:
                        continue
                    if line is None:
                        outcome = judge(None, exit_status=proc.wait())
                        break
                    console.write(line + "\n")
                    console.flush()
                    outcome = judge(line)
                if outcome.linger:
                    until = time.monotonic() + LINGER
                    while (left := until - time.monotonic()) > 0:
                        try:
                            line = lines.get(timeout=left)
                        except queue.Empty:
                            break
                        if line is None:
                            break
                        console.write(line + "\n")
                        console.flush()
            if outcome.passed:
                try:
                    proc.wait(POWEROFF_GRACE)
                except subprocess.TimeoutExpired:
                    outcome = Outcome(False, f"L0 did not exit within {POWEROFF_GRACE}s "
                                             "after L1 powered off")
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            l0.close()
        return outcome

    def iort_upgrade(self):
        """The CANWBS-patched IORT for this topology as an ACPI-upgrade cpio, cached by topology."""
        s = self.s
        key_args = scenario.machine_args(s) + scenario.topology_args(s, lambda n, m: "disk")
        key = hashlib.sha256("\0".join(key_args).encode()).hexdigest()[:16]
        cached = os.path.join(LAB_DIR, "iort", f"{key}.cpio")
        if os.path.exists(cached):
            return cached
        log(f"{s.name}: reading QEMU's IORT for this topology (cached afterwards as {key})")
        a = cpio.Archive()
        a.file("lab/run", "#!/bin/sh\necho @@IORT-BEGIN\n"
                          "od -An -v -tx1 /sys/firmware/acpi/tables/IORT\necho @@IORT-END\n", 0o755)
        initrd = os.path.join(self.work, "iort-dump.initrd")
        with open(initrd, "wb") as f:
            f.write(self.lab.base_initramfs(s.arch) + a.to_gzip())
        hex_lines, state = [], {"in": False, "done": False}

        def judge(line, timed_out=False, exit_status=None):
            if line is None:
                return Outcome(False, "L1 ended before printing its IORT" if not timed_out
                               else "timeout reading L1's IORT")
            if line.startswith("@@IORT-BEGIN"):
                state["in"] = True
            elif line.startswith("@@IORT-END"):
                return Outcome(True)
            elif state["in"]:
                hex_lines.append(line)
            return None

        outcome = self.boot(initrd, scenario.l1_cmdline(s), judge, self.s.timeout,
                            os.path.join(self.logs, "iort-dump.log"))
        if not outcome.passed:
            raise LabError(f"could not read the IORT: {outcome.reason}")
        raw = bytes(int(x, 16) for x in " ".join(hex_lines).split())
        patched, changed = firmware.iort_set_canwbs(raw)
        if changed == 0:
            raise LabError("QEMU's IORT has no root-complex node to mark CANWBS")
        os.makedirs(os.path.dirname(cached), exist_ok=True)
        with open(cached + ".tmp", "wb") as f:
            f.write(firmware.acpi_upgrade_cpio({"IORT": patched}))
        os.replace(cached + ".tmp", cached)
        log(f"{s.name}: IORT patched ({changed} root complexes marked CANWBS)")
        return cached

    def execute(self):
        s = self.s
        shutil.rmtree(self.logs, ignore_errors=True)
        os.makedirs(self.logs)
        os.makedirs(self.work, exist_ok=True)
        self.lab.kernel(s.arch)
        parts = []
        if s.needs_iort_fix:
            with open(self.iort_upgrade(), "rb") as f:
                parts.append(f.read())
        parts.append(self.lab.base_initramfs(s.arch))
        parts.append(self.l1_payload())
        if s.l1_peer:
            # Uncompressed: L1 unpacks it at memory speed instead of inflating ~40 MiB under TCG.
            # The kernel finds an uncompressed archive only at a 4-byte aligned offset and skips
            # zero padding between archives.
            parts.append(b"\0" * (-sum(len(p) for p in parts) % 512))
            with open(self.lab.peer(), "rb") as f:
                parts.append(f.read())
        initrd = os.path.join(self.work, "l1.initrd")
        with open(initrd, "wb") as f:
            f.write(b"".join(parts))

        fail = [(e, e.compile(self.disk_sha)) for e in DEFAULT_FAIL + s.fail]
        expect = [(e, e.compile(self.disk_sha)) for e in s.expect]
        state = {"next": 0, "l2_start": None, "l2_up": []}
        l2_log = open(os.path.join(self.logs, "l2.log"), "w")

        def judge(line, timed_out=False, exit_status=None):
            if line is None:
                waiting = (f"waiting for {expect[state['next']][0].describe()}"
                           if state["next"] < len(expect) else "waiting for L1 to finish")
                if timed_out:
                    return Outcome(False, f"timeout after {s.timeout}s {waiting}")
                return Outcome(False, f"L0 exited (status {exit_status}) {waiting}")
            level, text = "l1", line
            if line.startswith(L2_PREFIX):
                level, text = "l2", line[len(L2_PREFIX):]
                l2_log.write(text + "\n")
                l2_log.flush()
            for e, rx in fail:
                if (e.level in (None, level)) and rx.search(text):
                    return Outcome(False, f"{level} printed '{text.strip()}' "
                                          f"(matches fail pattern {e.describe()})", linger=True)
            if state["next"] < len(expect):
                e, rx = expect[state["next"]]
                if e.level in (None, level) and rx.search(text):
                    state["next"] += 1
            if line.startswith("@@LAB L2 start"):
                state["l2_start"] = time.monotonic()
            elif text.startswith("@@LAB L2 up") and state["l2_start"] is not None:
                state["l2_up"].append(time.monotonic() - state["l2_start"])
            m = DONE.match(line)
            if m:
                rc = int(m.group(1))
                if rc != 0:
                    return Outcome(False, f"the L1 script failed (status {rc})")
                if state["next"] < len(expect):
                    return Outcome(False, "L1 finished without printing "
                                          f"{expect[state['next']][0].describe()}")
                return Outcome(True)
            return None

        try:
            outcome = self.boot(initrd, scenario.l1_cmdline(s), judge, s.timeout,
                                os.path.join(self.logs, "l1.log"))
        finally:
            l2_log.close()
        outcome.l2_up = state["l2_up"]
        return outcome


def main(argv):
    import argparse

    parser = argparse.ArgumentParser(prog="scenario", description="Run lab scenarios.")
    parser.add_argument("files", nargs="+", metavar="FILE", help="scenario files (.toml)")
    parser.add_argument("--logs", default=os.environ.get("MICROVMM_LAB_LOGS")
                        or os.path.join(REPO, "target", "lab-logs"),
                        help="directory for per-scenario console logs (default: %(default)s)")
    opts = parser.parse_args(argv)
    lab = Lab()
    passed = failed = 0
    for path in opts.files:
        name = os.path.splitext(os.path.basename(path))[0]
        t0 = time.monotonic()
        try:
            s = scenario.load(path)
            name = s.name
            log(f"{name}: starting ({s.arch}, {len(s.devices)} device(s))")
            outcome = Run(lab, s, opts.logs).execute()
        except (scenario.ScenarioError, LabError) as e:
            outcome = Outcome(False, str(e))
        took = time.monotonic() - t0
        timing = "".join(f"; L2 up {t:.1f}s after microvmm start" for t in outcome.l2_up)
        if outcome.passed:
            passed += 1
            print(f"PASS {name} ({took:.0f}s{timing})", flush=True)
        else:
            failed += 1
            print(f"FAIL {name}: {outcome.reason} ({took:.0f}s; logs in "
                  f"{os.path.join(opts.logs, name)})", flush=True)
    shutil.rmtree(os.path.join(LAB_DIR, "runs", str(os.getpid())), ignore_errors=True)
    print(f"{passed} passed, {failed} failed", flush=True)
    return 0 if failed == 0 else 1
