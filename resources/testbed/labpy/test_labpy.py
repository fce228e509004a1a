"""Unit tests for the lab's Python parts: python3 -m unittest discover -s resources/testbed"""

import gzip
import os
import struct
import tempfile
import textwrap
import unittest

from labpy import bench, cpio, firmware, runner, scenario


def fake_iort(nodes):
    """An IORT with the given (type, length) nodes, zero-filled bodies, valid checksum."""
    body = b"".join(struct.pack("<BHB", t, n, 0) + bytes(n - 4) for t, n in nodes)
    header_len = 48
    t = bytearray(b"IORT" + struct.pack("<I", header_len + len(body)) + bytes(40))
    struct.pack_into("<I", t, 24, 7)  # OEM revision
    struct.pack_into("<II", t, 36, len(nodes), header_len)
    t += body
    firmware.set_checksum(t)
    return bytes(t)


class CpioTest(unittest.TestCase):
    def test_round_trip(self):
        a = cpio.Archive()
        a.file("lab/run", "#!/bin/sh\n", 0o755)
        a.symlink("bin/sh", "busybox")
        a.chardev("dev/console", 5, 1)
        blob = a.to_bytes()
        self.assertEqual(len(blob) % 512, 0)
        entries = cpio.read_newc(blob)
        self.assertEqual(entries["lab/run"], (0o100755, b"#!/bin/sh\n"))
        self.assertEqual(entries["bin/sh"][1], b"busybox")
        self.assertIn("lab", entries)  # parents are created
        self.assertEqual(entries["dev/console"][0] & 0o170000, 0o020000)

    def test_gzip_is_reproducible(self):
        def build():
            a = cpio.Archive()
            a.file("x", "y")
            return a.to_gzip()
        self.assertEqual(build(), build())
        self.assertIn(b"070701", gzip.decompress(build()))


class IortTest(unittest.TestCase):
    def test_marks_every_root_complex(self):
        raw = fake_iort([(0, 40), (4, 68), (2, 56), (2, 56)])  # ITS group, SMMUv3, 2 RCs
        patched, changed = firmware.iort_set_canwbs(raw)
        self.assertEqual(changed, 2)
        self.assertTrue(firmware.checksum_ok(patched))
        self.assertEqual(struct.unpack_from("<I", patched, 24)[0], 8)
        rc1 = 48 + 40 + 68
        for rc in (rc1, rc1 + 56):
            self.assertEqual(patched[rc + firmware.RC_MEMORY_FLAGS_OFFSET], firmware.MAF_CANWBS)
        self.assertEqual(patched[48 + 40 + firmware.RC_MEMORY_FLAGS_OFFSET], 0)  # SMMU untouched

    def test_rejects_corrupt_tables(self):
        raw = bytearray(fake_iort([(2, 56)]))
        with self.assertRaisesRegex(firmware.TableError, "not an IORT"):
            firmware.iort_set_canwbs(b"DSDT" + raw[4:])
        with self.assertRaisesRegex(firmware.TableError, "length field"):
            firmware.iort_set_canwbs(raw[:-1])
        bad = bytearray(raw)
        bad[50] ^= 1
        with self.assertRaisesRegex(firmware.TableError, "checksum"):
            firmware.iort_set_canwbs(bytes(bad))
        struct.pack_into("<H", raw, 48 + 1, 400)  # node longer than the table
        firmware.set_checksum(raw)
        with self.assertRaisesRegex(firmware.TableError, "bad length"):
            firmware.iort_set_canwbs(bytes(raw))

    def test_upgrade_cpio_layout(self):
        entries = cpio.read_newc(firmware.acpi_upgrade_cpio({"IORT": b"IORTxyz"}))
        self.assertEqual(entries["kernel/firmware/acpi/IORT.aml"][1], b"IORTxyz")

    def test_disk_pattern_is_deterministic_and_distinct(self):
        a = firmware.disk_pattern("a", 4096)
        self.assertEqual(a, firmware.disk_pattern("a", 4096))
        self.assertNotEqual(a, firmware.disk_pattern("b", 4096))
        self.assertEqual(len(firmware.disk_pattern("a", 100)), 100)


GOOD = """
arch = "aarch64"
[l0]
firmware = "uefi"
[[l0.bridge]]
id = "pxb1"
bus = 1
smmu = "nested"
[[l0.device]]
id = "disk0"
model = "virtio-blk"
bridge = "pxb1"
disk = "a"
vfio = true
[[l0.device]]
id = "nic0"
model = "e1000e"
[l1]
script = "labcheck iommus"
[expect]
lines = ["x", { l2 = "sum {disk:a}" }]
"""


class ScenarioTest(unittest.TestCase):
    def parse(self, text):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "s.toml")
            with open(path, "w") as f:
                f.write(textwrap.dedent(text))
            return scenario.load(path)

    def test_good_scenario(self):
        s = self.parse(GOOD)
        self.assertEqual(s.name, "s")
        self.assertTrue(s.needs_iort_fix)
        self.assertEqual([d.slot for d in s.devices], [0x10, 0x10])
        self.assertEqual(scenario.l1_device_table(s), "disk0 01 10 1\nnic0 00 10 0\n")
        args = " ".join(scenario.topology_args(s, lambda n, m: f"/d/{n}.img"))
        self.assertIn("pxb-pcie,id=pxb1,bus_nr=1,bus=pcie.0", args)
        self.assertIn("arm-smmuv3,primary-bus=pxb1,id=smmu-pxb1,stage=nested", args)
        self.assertIn("file=/d/a.img", args)
        self.assertIn("iommu_platform=on,bus=rp-disk0", args)
        rx = s.expect[1].compile(lambda name: "ab" * 32 if name == "a" else "")
        self.assertTrue(rx.search("sum " + "ab" * 32))
        self.assertEqual(s.expect[1].level, "l2")

    def test_bad_scenarios_name_the_field(self):
        cases = {
            GOOD.replace('arch = "aarch64"', 'arch = "riscv"'): "arch 'riscv'",
            GOOD.replace('model = "e1000e"', 'model = "rtl8139"'): r"l0.device\[1\]: model",
            GOOD.replace('bridge = "pxb1"\ndisk', 'bridge = "pxb9"\ndisk'): "bridge 'pxb9'",
            GOOD.replace('disk = "a"\n', ""): r"l0.device\[0\]: a virtio-blk needs 'disk'",
            GOOD.replace('smmu = "nested"', 'smmu = "3"'): "smmu '3'",
            GOOD.replace('firmware = "uefi"', 'firmware = "direct"'): "need firmware",
            GOOD.replace('id = "nic0"', 'id = "disk0"'): "used twice",
            GOOD.replace('id = "nic0"', 'id = "nic-0"'): "shell-safe",
            GOOD.replace('lines = ["x", { l2 = "sum {disk:a}" }]', "lines = []"): "lines is empty",
            GOOD.replace('"x",', '"(",'): "bad regex",
            GOOD.replace("bus = 1", "bus = 300"): "out of range",
            GOOD.replace("[l1]", "[l1]\nbogus = 1"): "unknown field",
            GOOD.replace("vfio = true", 'vfio = "yes"'): "must be bool",
            GOOD + "[l3]\n": "unknown field",
            "arch = [": "not valid TOML",
            GOOD.replace('disk = "a"\n', 'disk = "a"\ndisk_mib = 0\n'): "disk_mib 0 out of range",
            GOOD.replace('model = "e1000e"', 'model = "e1000e"\ndisk_mib = 4'): "disk_mib without",
            GOOD.replace("[l1]", "[l1]\npeer = 1"): "peer' must be bool",
            GOOD.replace('arch = "aarch64"', 'arch = "x86_64"').replace("[l1]", "[l1]\npeer = true")
            .replace('smmu = "nested"', 'smmu = "none"')
            .replace('firmware = "uefi"', 'firmware = "direct"'): "aarch64 only",
        }
        for text, message in cases.items():
            with self.subTest(message=message):
                with self.assertRaisesRegex(scenario.ScenarioError, message):
                    self.parse(text)

    def test_disk_sizes_and_bench_extras(self):
        s = self.parse(GOOD.replace('disk = "a"\n', 'disk = "a"\ndisk_mib = 32\n')
                       .replace("[l1]", "[l1]\npeer = true") + "[l2]\nlabcheck = true\n")
        self.assertEqual(s.disks(), {"a": 32})
        self.assertTrue(s.l1_peer and s.l2_labcheck)
        args = " ".join(scenario.topology_args(s, lambda n, m: f"/d/{n}-{m}.img"))
        self.assertIn("file=/d/a-32.img", args)
        self.assertEqual(self.parse(GOOD).disks(), {"a": 8})

    def test_x86_defaults(self):
        s = self.parse('arch = "x86_64"\n[l1]\nscript = "true"\n[expect]\nlines = ["y"]\n')
        self.assertEqual(s.x86_iommu, "intel")
        self.assertFalse(s.needs_iort_fix)
        self.assertIn("intel_iommu=on", scenario.l1_cmdline(s))
        self.assertIn("kvm.tsc_tolerance_ppm=10000", scenario.l1_cmdline(s))
        self.assertIn("intel-iommu,caching-mode=on", scenario.topology_args(s, lambda n, m: n))


class ConsoleTest(unittest.TestCase):
    def test_kernel_records_written_mid_line_start_their_own_line(self):
        split = runner.split_console_line
        self.assertEqual(split("L2| lab-l2: iommus 2[    0.917693] pci 0000:00:00.0: x"),
                         ["L2| lab-l2: iommus 2", "L2| [    0.917693] pci 0000:00:00.0: x"])
        self.assertEqual(split("[    1.000000] a[    2.000000] b"),
                         ["[    1.000000] a", "[    2.000000] b"])
        self.assertEqual(split("plain [1.0] text"), ["plain [1.0] text"])
        self.assertEqual(split(""), [""])


class BenchTest(unittest.TestCase):
    LOG = [
        '@@BENCH repeat 1 of 2\n',
        'L2| @@BENCH read {"dev":"/dev/vda","block":4096,"bytes":8388608,"ms":800.0,"mib_s":10.0}\n',
        '@@BENCH run {"vmm":"microvmm","case":"acpi-2smmu","launch_to_init_ms":900,'
        '"invalidate_ioctls":50,"guest_cmdq_batches":50,"guest_commands":100,"exit_status":0}\n',
        '@@BENCH run {"vmm":"qemu","case":"acpi-2smmu","launch_to_init_ms":2000,'
        '"invalidate_ioctls":100,"guest_cmdq_batches":50,"guest_commands":100,"exit_status":0}\n',
        '@@BENCH run {"vmm":"microvmm","case":"acpi-2smmu","launch_to_init_ms":1100,'
        '"exit_status":0}\n',
    ]

    def test_runs_carry_their_reads_and_derived_ratios(self):
        runs = bench.parse_log(self.LOG)
        self.assertEqual(len(runs), 3)
        self.assertEqual(runs[0]["read:/dev/vda:4096"], 10.0)
        self.assertNotIn("read:/dev/vda:4096", runs[1])
        self.assertEqual(runs[0]["ioctls_per_sync"], 1.0)
        self.assertEqual(runs[1]["ioctls_per_command"], 1.0)

    def test_summary_medians_spreads_and_ratio(self):
        summary = bench.summarize(bench.parse_log(self.LOG))
        boot = summary[("acpi-2smmu", "launch_to_init_ms")]
        self.assertEqual(boot["microvmm"], {"median": 1000, "min": 900, "max": 1100, "n": 2})
        self.assertEqual(boot["qemu"]["n"], 1)
        text = bench.table(summary)
        row = next(line for line in text.splitlines() if line.startswith("2. launch"))
        self.assertIn("0.50", row)
        self.assertIn("1000 [900-1100]", row)
        self.assertEqual(summary[("dt-nodev", "launch_to_init_ms")], {})


if __name__ == "__main__":
    unittest.main()
