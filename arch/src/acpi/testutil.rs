//! Fixtures and decoders shared by the ACPI and EFI tests: platforms like the plan makes them, and
//! the installed `iasl` and `dtc` as independent decoders.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use super::AcpiTable;
use crate::aarch64::layout as arm;
use crate::platform::{
    ArchTimer, FirmwareInterface, GuestArch, GuestRange, InterruptController, PciBridge, Platform,
    PowerControl, RegisterSpace, SerialPort, SmmuFeatures, UartModel, VirtualSmmu,
};
use crate::x86_64::layout as x86;

pub const MIB: u64 = 1 << 20;

/// 1 GiB of RAM at the aarch64 RAM base.
pub const AARCH64_RAM: GuestRange = GuestRange::new(arm::RAM_BASE, 1 << 30);

/// Where the boot layout puts the firmware region: the 2 MiB below the top 2 MiB (the FDT).
pub fn aarch64_firmware_region() -> GuestRange {
    GuestRange::new(AARCH64_RAM.end() - 4 * MIB, 2 * MIB)
}

pub fn aarch64_platform(vcpus: u32) -> Platform {
    Platform {
        arch: GuestArch::Aarch64,
        firmware: FirmwareInterface::Acpi,
        vcpus,
        memory: vec![AARCH64_RAM],
        interrupt_controller: InterruptController::GicV3 {
            distributor: arm::GIC_DIST,
            redistributors: arm::gic_redistributors(vcpus),
            redistributor_stride: arm::GIC_REDIST_STRIDE,
            its: arm::GIC_ITS,
            nr_irqs: arm::GIC_NR_IRQS,
        },
        timer: Some(ArchTimer {
            secure_phys_ppi: arm::TIMER_SECURE_PHYS_PPI,
            nonsecure_phys_ppi: arm::TIMER_NONSECURE_PHYS_PPI,
            virt_ppi: arm::TIMER_VIRT_PPI,
            hyp_ppi: arm::TIMER_HYP_PPI,
        }),
        // The 16550 keeps the golden digests of the encoders' earlier output meaningful; tests
        // of the PL011 set it themselves.
        serial: Some(SerialPort {
            model: UartModel::Ns16550a,
            registers: RegisterSpace::Mmio(arm::UART.base),
            irq: arm::UART_SPI,
            clock_hz: arm::UART_CLOCK_HZ,
        }),
        power: PowerControl::PsciHvc,
        cmdline: "console=ttyS0 earlycon panic=-1".into(),
        pci_bridges: Vec::new(),
        smmus: Vec::new(),
        initrd: Some(GuestRange::new(AARCH64_RAM.base + 64 * MIB, 0x12_3456)),
    }
}

pub fn x86_platform(vcpus: u32) -> Platform {
    Platform {
        arch: GuestArch::X86_64,
        firmware: FirmwareInterface::Acpi,
        vcpus,
        memory: x86::ram_regions(512 * MIB),
        interrupt_controller: InterruptController::X86Apic {
            lapic: x86::LAPIC,
            ioapic: x86::IOAPIC,
            ioapic_pins: x86::IOAPIC_PINS,
        },
        timer: None,
        serial: Some(SerialPort {
            model: UartModel::Ns16550a,
            registers: RegisterSpace::Pio(x86::COM1_PORT),
            irq: x86::COM1_GSI,
            clock_hz: x86::UART_CLOCK_HZ,
        }),
        power: PowerControl::AcpiPorts {
            sleep_control: x86::ACPI_SLEEP_CONTROL,
            sleep_status: x86::ACPI_SLEEP_STATUS,
            reset: x86::ACPI_RESET,
            reset_value: x86::ACPI_RESET_VALUE,
            s5_sleep_type: x86::ACPI_S5_SLEEP_TYPE,
        },
        cmdline: "console=ttyS0".into(),
        pci_bridges: Vec::new(),
        smmus: Vec::new(),
        initrd: None,
    }
}

/// Bus ranges the bridge fixtures cycle through: a whole segment, a narrow one not starting at
/// bus 0, and one in the upper half (so ECAM offsets, _BBN and bus-range are all exercised).
const BUS_RANGES: [(u8, u8); 3] = [(0x00, 0xff), (0x10, 0x1f), (0x80, 0xbf)];

/// `n` host bridges the way the plan lays them out in the aarch64 address map: segment `i`, its
/// ECAM in the i-th 256 MiB slot, 64 MiB of 32-bit and 64 GiB of 64-bit window each, ITS device
/// IDs from `i << 16`, four SPIs each.
pub fn aarch64_pci_bridges(n: u16) -> Vec<PciBridge> {
    (0..n)
        .map(|i| {
            let k = u64::from(i);
            let intx_base = arm::PCI_INTX_SPI_BASE + 4 * u32::from(i);
            pci_bridge(
                i,
                arm::PCI_ECAM_REGION.base + k * 256 * MIB,
                GuestRange::new(arm::PCI_MMIO32.base + k * 64 * MIB, 64 * MIB),
                GuestRange::new(arm::PCI_MMIO64_REGION.base + k * (64 << 30), 64 << 30),
                u32::from(i) << 16,
                std::array::from_fn(|pin| intx_base + pin as u32),
            )
        })
        .collect()
}

/// vSMMUv3 `i` in front of PCI segment `segments[i]`, laid out as the plan does it: registers at
/// the start of the i-th 1 MiB slot, SPIs `SMMU_SPI_BASE + 3i` (event), +1 (gerror), +2
/// (CMD_SYNC), the host MSI window.
pub fn aarch64_smmus(segments: &[u16]) -> Vec<VirtualSmmu> {
    segments
        .iter()
        .enumerate()
        .map(|(i, &segment)| {
            let index = i as u16;
            let spi = arm::SMMU_SPI_BASE + 3 * i as u32;
            VirtualSmmu {
                index,
                segment,
                registers: GuestRange::new(
                    arm::SMMU_SLOT_BASE + i as u64 * arm::SMMU_SLOT_SIZE,
                    arm::SMMU_REGISTERS_SIZE,
                ),
                event_irq: spi,
                gerror_irq: spi + 1,
                sync_irq: spi + 2,
                host_smmu: format!("smmu3.0x{:x}", 0x1_0000_0000u64 + (i as u64) * 0x100_0000),
                mode: crate::platform::SmmuMode::Nested,
                features: SmmuFeatures {
                    two_level_stream_table: true,
                    sid_bits: 16,
                    ssid_bits: 0,
                    oas_bits: 44,
                    granule_4k: true,
                    granule_16k: false,
                    granule_64k: true,
                    range_invalidation: true,
                    asid16: true,
                    two_level_cd_table: true,
                    stall_model: 1,
                    repeat_tlbi_cfgi: false,
                },
                msi_window: arm::HOST_MSI_WINDOW,
            }
        })
        .collect()
}

/// An ACPI aarch64 platform with `bridges` host bridges and a vSMMUv3 in front of each of
/// `smmu_segments` (vSMMUv3 `i` on `smmu_segments[i]`).
pub fn aarch64_smmu_platform(vcpus: u32, bridges: u16, smmu_segments: &[u16]) -> Platform {
    let mut p = aarch64_platform(vcpus);
    p.pci_bridges = aarch64_pci_bridges(bridges);
    p.smmus = aarch64_smmus(smmu_segments);
    p
}

/// `n` host bridges in the x86 address map: 16 MiB ECAM slots, 64 MiB 32-bit windows in the
/// hole, I/O APIC pins 16..24 shared four at a time (bridge 2 reuses bridge 0's pins).
pub fn x86_pci_bridges(n: u16) -> Vec<PciBridge> {
    (0..n)
        .map(|i| {
            let k = u64::from(i);
            let intx_base = x86::PCI_INTX_PIN_BASE + 4 * (u32::from(i) % 2);
            let mut bridge = pci_bridge(
                i,
                x86::PCI_ECAM_REGION.base + k * 16 * MIB,
                GuestRange::new(x86::PCI_MMIO32.base + k * 64 * MIB, 64 * MIB),
                GuestRange::new(x86::PCI_MMIO64_REGION.base + k * (64 << 30), 64 << 30),
                0,
                std::array::from_fn(|pin| intx_base + pin as u32),
            );
            // 16 MiB of ECAM: at most 16 buses.
            bridge.bus_end = bridge.bus_start + (bridge.bus_end - bridge.bus_start).min(0xf);
            bridge.ecam.size = (u64::from(bridge.bus_end - bridge.bus_start) + 1) * MIB;
            bridge
        })
        .collect()
}

fn pci_bridge(
    segment: u16,
    ecam_slot: u64,
    mmio32: GuestRange,
    mmio64: GuestRange,
    msi_base: u32,
    intx: [u32; 4],
) -> PciBridge {
    let (bus_start, bus_end) = BUS_RANGES[usize::from(segment) % BUS_RANGES.len()];
    let buses = u64::from(bus_end - bus_start) + 1;
    let mut bridge = PciBridge {
        segment,
        bus_start,
        bus_end,
        ecam: GuestRange::new(ecam_slot, buses * MIB),
        mmio32,
        mmio64,
        msi_base,
        intx,
        functions: Vec::new(),
    };
    for device in [0, 5] {
        let label = format!("0000:{:02x}:{device:02x}.0", 0x10 + segment);
        bridge
            .functions
            .push(bridge.function((bus_start, device, 0), label, 0));
    }
    bridge
}

/// FNV-1a, to pin the exact bytes of an encoding in a test without storing them.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

pub fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b))
}

pub fn u16_at(bytes: &[u8], offset: usize) -> u16 {
    u16::from_le_bytes(bytes[offset..offset + 2].try_into().unwrap())
}

pub fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap())
}

pub fn u64_at(bytes: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(bytes[offset..offset + 8].try_into().unwrap())
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(label: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "microvmm-{label}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `program args` in `dir` and returns its stdout and stderr; fails the test if the tool is
/// missing or reports failure.
fn run(dir: &Path, program: &str, args: &[&str]) -> (String, String) {
    let output = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (the tests need it installed): {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "{program} {args:?} failed:\n{stdout}{stderr}"
    );
    (stdout, stderr)
}

/// `iasl -d` of `table`: its log and the .dsl text.
fn iasl(table: &AcpiTable) -> (String, String) {
    let scratch = Scratch::new("iasl");
    let name = format!("{}.dat", table.signature);
    std::fs::write(scratch.path().join(&name), &table.bytes).unwrap();
    let (stdout, stderr) = run(scratch.path(), "iasl", &["-d", &name]);
    let log = stdout + &stderr;
    let dsl_path = scratch.path().join(format!("{}.dsl", table.signature));
    let dsl = std::fs::read_to_string(&dsl_path)
        .unwrap_or_else(|e| panic!("iasl wrote no {}: {e}\n{log}", dsl_path.display()));
    (log, dsl)
}

/// Fails on any error or warning iasl reports in its log or in the text it decoded.
fn assert_iasl_clean(signature: &str, log: &str, decoded: &str) {
    for text in [log, decoded] {
        for bad in ["Error", "error", "Warning", "Invalid", "**** "] {
            assert!(
                !text.contains(bad),
                "iasl reports {bad:?} for {signature}:\n{log}\n{decoded}"
            );
        }
    }
}

/// Disassembles `table` with `iasl -d` and returns the .dsl text, failing on any error or warning
/// the disassembler reports.
pub fn iasl_decode(table: &AcpiTable) -> String {
    let (log, dsl) = iasl(table);
    assert_iasl_clean(&table.signature, &log, &dsl);
    dsl
}

/// The line iasl 20200925 prints for an IORT node type newer than it knows (RMR, type 6, IORT
/// E.c on): it decodes the node header, skips the body and goes on with the next node.
pub const IASL_UNKNOWN_RMR: &str = "**** Unknown IORT node type 0x6";

/// Like [`iasl_decode`] for an IORT with `rmrs` RMR nodes, which the installed iasl cannot
/// decode: the text up to the raw dump, without the `rmrs` unknown-node lines, which must be
/// the only complaints. The caller checks the RMR nodes' bodies in the bytes.
pub fn iasl_decode_iort_skipping_rmr(table: &AcpiTable, rmrs: usize) -> String {
    assert_eq!(table.signature, "IORT");
    let (log, dsl) = iasl(table);
    assert_eq!(dsl.matches(IASL_UNKNOWN_RMR).count(), rmrs, "{dsl}");
    let decoded = dsl.split("Raw Table Data").next().unwrap_or_default();
    let decoded = decoded.replace(IASL_UNKNOWN_RMR, "");
    assert_iasl_clean("IORT", &log, &decoded);
    decoded
}

/// The value iasl prints for a data-table field, e.g. `field(dsl, "Revision")` for a line
/// `[008h 0008   1]                    Revision : 02`. Every occurrence, in order.
pub fn fields(dsl: &str, name: &str) -> Vec<String> {
    dsl.lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(" : ")?;
            let key = key.rsplit(']').next()?.trim();
            (key == name).then(|| value.trim().to_owned())
        })
        .collect()
}

/// The only value of a data-table field.
pub fn field(dsl: &str, name: &str) -> String {
    let all = fields(dsl, name);
    assert_eq!(
        all.len(),
        1,
        "field {name:?} occurs {} times:\n{dsl}",
        all.len()
    );
    all.into_iter().next().unwrap()
}

/// Every value of a data-table field, as hex.
pub fn hex_fields(dsl: &str, name: &str) -> Vec<u64> {
    fields(dsl, name).iter().map(|v| hex(v)).collect()
}

/// Each `(name, value)`: the field occurs once and reads as hex `value`.
pub fn assert_hex_fields(dsl: &str, expected: &[(&str, u64)]) {
    for &(name, value) in expected {
        assert_eq!(hex(&field(dsl, name)), value, "{name} in\n{dsl}");
    }
}

/// Each `(name, text)`: the field occurs once and reads `text`.
pub fn assert_text_fields(dsl: &str, expected: &[(&str, &str)]) {
    for &(name, text) in expected {
        assert_eq!(field(dsl, name), text, "{name} in\n{dsl}");
    }
}

/// A hex field value as iasl prints it (`0000000009000000`, `02`).
pub fn hex(value: &str) -> u64 {
    let digits = value.split_whitespace().next().unwrap_or(value);
    u64::from_str_radix(digits, 16).unwrap_or_else(|e| panic!("{value:?} is not hex: {e}"))
}

/// Decodes a device tree blob with `dtc -I dtb -O dts`.
pub fn dtc_decode(dtb: &[u8]) -> String {
    let scratch = Scratch::new("dtc");
    std::fs::write(scratch.path().join("stub.dtb"), dtb).unwrap();
    let (dts, stderr) = run(
        scratch.path(),
        "dtc",
        &["-I", "dtb", "-O", "dts", "stub.dtb"],
    );
    assert!(stderr.is_empty(), "dtc complains:\n{stderr}");
    dts
}
