"""Scenario files: parsing, validation and the L0 QEMU command line they imply.

The format is documented in resources/testbed/README.md; every problem is reported with the
scenario file and the field it is in.
"""

import dataclasses
import os
import re
import tomllib

ARCHES = ("aarch64", "x86_64")
DEVICE_MODELS = ("virtio-blk", "nvme", "e1000e", "edu")
DISK_MODELS = ("virtio-blk", "nvme")
SMMU_STAGES = ("none", "1", "2", "nested")
ROOT_PORT_FIRST_SLOT = 0x10
DEFAULT_DISK_SIZE = 8 << 20
# Root ports start at slot 0x10, clear of the slots QEMU fills itself (q35: 00.0, 1f.x)
MAIN_BUS = "pcie.0"


class ScenarioError(ValueError):
    pass


@dataclasses.dataclass
class Bridge:
    id: str
    bus: int  # 0 for pcie.0, else the pxb-pcie bus_nr
    smmu: str  # one of SMMU_STAGES


@dataclasses.dataclass
class Device:
    id: str
    model: str
    bridge: str
    disk: str | None
    vfio: bool
    disk_mib: int = DEFAULT_DISK_SIZE >> 20
    slot: int = 0  # root-port slot on its bridge
    chassis: int = 0


PLACEHOLDER = re.compile(r"\{disk:([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclasses.dataclass
class Expect:
    text: str  # a regex; {disk:NAME} stands for that lab disk's SHA-256
    level: str | None  # None: any console; "l1" / "l2"

    def compile(self, disk_sha256):
        return re.compile(PLACEHOLDER.sub(lambda m: disk_sha256(m.group(1)), self.text))

    def describe(self):
        where = f"{self.level} " if self.level else ""
        return f"{where}'{self.text}'"


@dataclasses.dataclass
class Scenario:
    path: str
    name: str
    arch: str
    timeout: int
    cpus: int
    memory: str
    firmware: str  # "uefi" | "direct"
    x86_iommu: str  # "intel" | "amd" | "none"
    l1_cmdline: str
    bridges: list
    devices: list
    l1_script: str
    l1_files: list
    l2_script: str | None
    l2_files: list
    expect: list
    fail: list
    # The benchmark's extras: Debian's arm64 QEMU in L1 (the peer), labcheck in L2.
    l1_peer: bool = False
    l2_labcheck: bool = False
    # L0's TCG: "multi" (one host thread per vCPU) or "single" (all vCPUs on one thread).
    tcg_threads: str = "multi"

    @property
    def needs_iort_fix(self):
        return self.arch == "aarch64" and self.firmware == "uefi" and any(
            b.smmu != "none" for b in self.bridges
        )

    def disks(self):
        """{name: size in MiB} of the lab disks the devices use."""
        return dict(sorted((d.disk, d.disk_mib) for d in self.devices if d.disk))


def _get(table, key, kind, where, default=dataclasses.MISSING):
    if key not in table:
        if default is dataclasses.MISSING:
            raise ScenarioError(f"{where}: missing field '{key}'")
        return default
    value = table[key]
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise ScenarioError(f"{where}: field '{key}' must be {names}, got {value!r}")
    return value


def _check_keys(table, allowed, where):
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise ScenarioError(f"{where}: unknown field(s) {', '.join(unknown)}")


def _ident(value, where):
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        raise ScenarioError(f"{where}: '{value}' must be a shell-safe identifier")
    return value


def _script(table, where, base_dir):
    script = _get(table, "script", str, where, None)
    script_file = _get(table, "script_file", str, where, None)
    if script and script_file:
        raise ScenarioError(f"{where}: give 'script' or 'script_file', not both")
    if script_file:
        path = os.path.join(base_dir, script_file)
        try:
            with open(path) as f:
                return f.read()
        except OSError as e:
            raise ScenarioError(f"{where}.script_file: {e}") from None
    return script


def _files(table, where, base_dir):
    files = _get(table, "files", list, where, [])
    out = []
    for i, name in enumerate(files):
        if not isinstance(name, str):
            raise ScenarioError(f"{where}.files[{i}]: must be a path string")
        path = os.path.join(base_dir, name)
        if not os.path.isfile(path):
            raise ScenarioError(f"{where}.files[{i}]: no such file {path}")
        out.append(path)
    return out


def _expect_list(table, key, path):
    out = []
    for i, item in enumerate(_get(table, key, list, path, [])):
        where = f"{path}: expect.{key}[{i}]"
        if isinstance(item, str):
            level, pattern = None, item
        elif isinstance(item, dict) and len(item) == 1 and next(iter(item)) in ("l1", "l2"):
            level, pattern = next(iter(item.items()))
        else:
            raise ScenarioError(f"{where}: must be a regex string or {{ l1 = ... }} / {{ l2 = ... }}")
        try:
            expect = Expect(pattern, level)
            expect.compile(lambda _name: "0" * 64)
            out.append(expect)
        except re.error as e:
            raise ScenarioError(f"{where}: bad regex: {e}") from None
    return out


def load(path):
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as e:
        raise ScenarioError(f"{path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{path}: not valid TOML: {e}") from None
    return parse(doc, path)


def parse(doc, path):
    base_dir = os.path.dirname(os.path.abspath(path))
    _check_keys(doc, ("name", "arch", "timeout", "l0", "l1", "l2", "expect"), path)
    name = _get(doc, "name", str, path, os.path.splitext(os.path.basename(path))[0])
    arch = _get(doc, "arch", str, path)
    if arch not in ARCHES:
        raise ScenarioError(f"{path}: arch '{arch}' is not one of {', '.join(ARCHES)}")
    timeout = _get(doc, "timeout", int, path, 300)

    l0 = _get(doc, "l0", dict, path, {})
    w = f"{path}: [l0]"
    _check_keys(l0, ("cpus", "memory", "firmware", "iommu", "cmdline", "bridge", "device",
                     "tcg_threads"), w)
    tcg_threads = _get(l0, "tcg_threads", str, w, "multi")
    if tcg_threads not in ("multi", "single"):
        raise ScenarioError(f"{w}: tcg_threads must be 'multi' or 'single'")
    firmware = _get(l0, "firmware", str, w, "direct")
    if firmware not in ("uefi", "direct"):
        raise ScenarioError(f"{w}: firmware must be 'uefi' or 'direct'")
    x86_iommu = _get(l0, "iommu", str, w, "intel" if arch == "x86_64" else "none")
    if arch == "x86_64" and x86_iommu not in ("intel", "amd", "none"):
        raise ScenarioError(f"{w}: iommu must be intel, amd or none")
    if arch == "aarch64" and x86_iommu != "none":
        raise ScenarioError(f"{w}: iommu is for x86_64; on aarch64 declare SMMUs per bridge")

    bridges = {MAIN_BUS: Bridge(MAIN_BUS, 0, "none")}
    for i, b in enumerate(_get(l0, "bridge", list, w, [])):
        bw = f"{path}: l0.bridge[{i}]"
        _check_keys(b, ("id", "bus", "smmu"), bw)
        bid = _get(b, "id", str, bw)
        smmu = str(_get(b, "smmu", (str, int), bw, "none"))
        if smmu not in SMMU_STAGES:
            raise ScenarioError(f"{bw}: smmu '{smmu}' is not one of {', '.join(SMMU_STAGES)}")
        if smmu != "none" and arch != "aarch64":
            raise ScenarioError(f"{bw}: SMMUs exist only on aarch64")
        if bid == MAIN_BUS:
            _check_keys(b, ("id", "smmu"), bw + " (pcie.0 has no bus number)")
            bridges[MAIN_BUS].smmu = smmu
            continue
        if bid in bridges:
            raise ScenarioError(f"{bw}: bridge id '{bid}' used twice")
        bus = _get(b, "bus", int, bw)
        if not 1 <= bus <= 254:
            raise ScenarioError(f"{bw}: bus {bus} out of range 1..254")
        if any(o.bus == bus for o in bridges.values()):
            raise ScenarioError(f"{bw}: bus {bus} already used by another bridge")
        if firmware != "uefi" and arch == "aarch64":
            raise ScenarioError(f"{bw}: pxb-pcie bridges need firmware = \"uefi\" on aarch64 "
                                "(QEMU enumerates them only through ACPI)")
        bridges[bid] = Bridge(bid, bus, smmu)

    devices, seen = [], set()
    slots = {bid: ROOT_PORT_FIRST_SLOT for bid in bridges}
    for i, d in enumerate(_get(l0, "device", list, w, [])):
        dw = f"{path}: l0.device[{i}]"
        _check_keys(d, ("id", "model", "bridge", "disk", "disk_mib", "vfio"), dw)
        did = _ident(_get(d, "id", str, dw), f"{dw}.id")
        if did in seen:
            raise ScenarioError(f"{dw}: device id '{did}' used twice")
        seen.add(did)
        model = _get(d, "model", str, dw)
        if model not in DEVICE_MODELS:
            raise ScenarioError(f"{dw}: model '{model}' is not one of {', '.join(DEVICE_MODELS)}")
        bridge = _get(d, "bridge", str, dw, MAIN_BUS)
        if bridge not in bridges:
            raise ScenarioError(f"{dw}: bridge '{bridge}' is not declared in [[l0.bridge]]")
        disk = _get(d, "disk", str, dw, None)
        if model in DISK_MODELS and not disk:
            raise ScenarioError(f"{dw}: a {model} needs 'disk' (the name of a lab disk)")
        if disk and model not in DISK_MODELS:
            raise ScenarioError(f"{dw}: a {model} takes no disk")
        disk_mib = _get(d, "disk_mib", int, dw, DEFAULT_DISK_SIZE >> 20)
        if disk:
            _ident(disk, f"{dw}.disk")
            if not 1 <= disk_mib <= 1024:
                raise ScenarioError(f"{dw}: disk_mib {disk_mib} out of range 1..1024")
            if any(o.disk == disk and o.disk_mib != disk_mib for o in devices):
                raise ScenarioError(f"{dw}: disk '{disk}' is given two sizes")
        elif "disk_mib" in d:
            raise ScenarioError(f"{dw}: disk_mib without a disk")
        slot = slots[bridge]
        if slot > 0x1e:
            raise ScenarioError(f"{dw}: bridge '{bridge}' has no free root-port slot")
        slots[bridge] += 1
        devices.append(Device(did, model, bridge, disk, _get(d, "vfio", bool, dw, False),
                              disk_mib=disk_mib, slot=slot, chassis=len(devices) + 1))

    l1 = _get(doc, "l1", dict, path, {})
    _check_keys(l1, ("script", "script_file", "files", "peer"), f"{path}: [l1]")
    if _get(l1, "peer", bool, f"{path}: [l1]", False) and arch != "aarch64":
        raise ScenarioError(f"{path}: [l1] peer: the peer QEMU bundle exists for aarch64 only")
    l1_script = _script(l1, f"{path}: [l1]", base_dir)
    if not l1_script:
        raise ScenarioError(f"{path}: [l1] needs a script (or script_file)")
    l2 = _get(doc, "l2", dict, path, {})
    _check_keys(l2, ("script", "script_file", "files", "labcheck"), f"{path}: [l2]")

    checks = _get(doc, "expect", dict, path, {})
    _check_keys(checks, ("lines", "never"), f"{path}: [expect]")
    expect = _expect_list(checks, "lines", path)
    if not expect:
        raise ScenarioError(f"{path}: [expect] lines is empty; a scenario must assert something")
    fail = _expect_list(checks, "never", path)
    return Scenario(
        path=path, name=name, arch=arch, timeout=timeout,
        cpus=_get(l0, "cpus", int, w, 2), memory=_get(l0, "memory", str, w, "4G"),
        firmware=firmware, x86_iommu=x86_iommu if arch == "x86_64" else "none",
        l1_cmdline=_get(l0, "cmdline", str, w, ""),
        bridges=list(bridges.values()), devices=devices,
        l1_script=l1_script, l1_files=_files(l1, f"{path}: [l1]", base_dir),
        l2_script=_script(l2, f"{path}: [l2]", base_dir), l2_files=_files(l2, f"{path}: [l2]", base_dir),
        expect=expect, fail=fail,
        tcg_threads=tcg_threads,
        l1_peer=_get(l1, "peer", bool, f"{path}: [l1]", False),
        l2_labcheck=_get(l2, "labcheck", bool, f"{path}: [l2]", False),
    )


def topology_args(s, disk_path):
    """QEMU arguments for bridges, SMMUs and devices (everything the firmware tables describe)."""
    args = []
    if s.x86_iommu == "intel":
        args += ["-device", "intel-iommu,caching-mode=on"]
    elif s.x86_iommu == "amd":
        args += ["-device", "amd-iommu,dma-remap=on"]
    for b in s.bridges:
        if b.id != MAIN_BUS:
            args += ["-device", f"pxb-pcie,id={b.id},bus_nr={b.bus},bus={MAIN_BUS}"]
        if b.smmu != "none":
            args += ["-device", f"arm-smmuv3,primary-bus={b.id},id=smmu-{b.id},stage={b.smmu}"]
    for d in s.devices:
        port = f"rp-{d.id}"
        disk = d.disk and disk_path(d.disk, d.disk_mib)
        args += ["-device", f"pcie-root-port,id={port},bus={d.bridge},chassis={d.chassis},"
                            f"addr={d.slot:#x}"]
        drive = f"drive-{d.id}"
        if d.model == "virtio-blk":
            args += ["-drive", f"file={disk},if=none,id={drive},format=raw,readonly=on",
                     "-device", f"virtio-blk-pci,drive={drive},disable-legacy=on,"
                                f"iommu_platform=on,bus={port},addr=0"]
        elif d.model == "nvme":
            args += ["-drive", f"file={disk},if=none,id={drive},format=raw,snapshot=on",
                     "-device", f"nvme,drive={drive},serial=lab-{d.id},bus={port},addr=0"]
        elif d.model == "e1000e":
            args += ["-device", f"e1000e,romfile=,bus={port},addr=0"]
        elif d.model == "edu":
            args += ["-device", f"edu,bus={port},addr=0"]
    return args


def machine_args(s, firmware_dir="/usr/share"):
    """QEMU arguments for the machine itself."""
    if s.arch == "aarch64":
        args = ["qemu-system-aarch64", "-M", "virt,virtualization=on,gic-version=3",
                "-cpu", "max"]
        if s.firmware == "uefi":
            args += ["-bios", f"{firmware_dir}/qemu-efi-aarch64/QEMU_EFI.fd"]
    else:
        args = ["qemu-system-x86_64", "-M", "q35", "-cpu", "max", "-vga", "none"]
        if s.firmware == "uefi":
            args += ["-bios", f"{firmware_dir}/ovmf/OVMF.fd"]
    accel = "tcg" if s.tcg_threads == "multi" else "tcg,thread=single"
    return args + ["-accel", accel, "-smp", str(s.cpus), "-m", s.memory, "-nic", "none",
                   "-display", "none", "-serial", "stdio", "-no-reboot"]


def l1_cmdline(s):
    if s.arch == "aarch64":
        base = "console=ttyAMA0 earlycon"
    else:
        # L1's TSC is calibrated against TCG's timers: the refined value can differ from the
        # early one by ~0.2%, and KVM, seeing L2's default rate "below hardware speed" without
        # TSC scaling, then leaves L2's timers stalled. A 1% tolerance keeps L2 on L1's TSC.
        base = "console=ttyS0 kvm.tsc_tolerance_ppm=10000"
        if s.x86_iommu == "intel":
            base += " intel_iommu=on"
        elif s.x86_iommu == "amd":
            base += " amd_iommu=on"
    return f"{base} panic=-1 rdinit=/init {s.l1_cmdline}".strip()


def l1_device_table(s):
    """Lines 'ID BRIDGE_BUS SLOT VFIO' the L1 harness resolves to BDFs at run time."""
    bus = {b.id: b.bus for b in s.bridges}
    return "".join(f"{d.id} {bus[d.bridge]:02x} {d.slot:02x} {int(d.vfio)}\n" for d in s.devices)
