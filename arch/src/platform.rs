//! The guest-visible platform: plain data computed once by the VMM's plan and read by every encoder
//! (device tree, ACPI tables, boot parameters). Encoders compute no address or ID of their own:
//! the derived ones (requester, stream and ITS device IDs, INTx lines, the bridge of a vSMMU) are
//! methods here. [`Platform::check`] is the one check of it, and encoders take its result.

use serde::Serialize;

mod check;

pub use check::{
    Aarch64Parts, AcpiPorts, ArchParts, CheckedPlatform, Gic, MmioUart, PioUart, PlatformError,
    X86Parts,
};

/// A range of guest physical addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct GuestRange {
    pub base: u64,
    pub size: u64,
}

impl GuestRange {
    pub const fn new(base: u64, size: u64) -> Self {
        GuestRange { base, size }
    }

    /// One past the last address.
    pub const fn end(&self) -> u64 {
        self.base + self.size
    }

    pub const fn contains(&self, addr: u64) -> bool {
        addr >= self.base && addr - self.base < self.size
    }

    pub const fn overlaps(&self, other: &GuestRange) -> bool {
        self.base < other.end() && other.base < self.end()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GuestArch {
    Aarch64,
    X86_64,
}

/// How an aarch64 guest is told about its hardware.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FirmwareInterface {
    /// A full device tree.
    DeviceTree,
    /// ACPI tables, reached through an EFI system table and memory map the VMM writes itself
    /// (no firmware runs); the device tree carries only /chosen.
    Acpi,
}

/// The interrupt controller the guest sees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum InterruptController {
    /// Arm GICv3, created through KVM, with an ITS for MSIs.
    GicV3 {
        distributor: GuestRange,
        /// One redistributor region covering all vCPUs (`redistributor_stride` each).
        redistributors: GuestRange,
        redistributor_stride: u64,
        its: GuestRange,
        /// Number of interrupt IDs (SGIs + PPIs + SPIs), a multiple of 32.
        nr_irqs: u32,
    },
    /// x86 local APICs and one I/O APIC (KVM in-kernel irqchip).
    X86Apic {
        lapic: u64,
        ioapic: u64,
        ioapic_pins: u32,
    },
}

/// An Arm architectural timer's PPIs (interrupt IDs 16..32 given as PPI numbers 0..16).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ArchTimer {
    pub secure_phys_ppi: u32,
    pub nonsecure_phys_ppi: u32,
    pub virt_ppi: u32,
    pub hyp_ppi: u32,
}

/// Where a device's registers are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "space", content = "base")]
pub enum RegisterSpace {
    Mmio(u64),
    Pio(u16),
}

/// The guest's console UART.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SerialPort {
    pub model: UartModel,
    pub registers: RegisterSpace,
    /// aarch64: the SPI number (interrupt ID - 32); x86: the I/O APIC pin (GSI).
    pub irq: u32,
    pub clock_hz: u32,
}

/// Which UART the guest finds, and with it its driver and console name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UartModel {
    /// A 16550A with byte-wide registers (`ttyS0`): x86's COM1.
    Ns16550a,
    /// An Arm PL011 described as the SBSA generic UART, 32-bit registers (`ttyAMA0`): what Arm
    /// servers have. Linux prints to it from a kernel thread, so a slow console does not hold
    /// up the boot as the 8250's legacy console does.
    Pl011,
}

/// The power and reset controls the guest finds in its firmware tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum PowerControl {
    /// Arm PSCI 1.0 through HVC, implemented by KVM.
    PsciHvc,
    /// An x86 ACPI hardware-reduced sleep control/status register pair and a reset register, all
    /// in one I/O port block the VMM emulates.
    AcpiPorts {
        sleep_control: u16,
        sleep_status: u16,
        reset: u16,
        reset_value: u8,
        /// The SLP_TYP value of the \_S5 (soft off) state.
        s5_sleep_type: u8,
    },
}

/// A PCI function the guest sees, placed by the plan through [`PciBridge::function`]. Every
/// encoder and the KVM routing code read these numbers; none computes its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PciFunction {
    /// Bus, device and function inside the bridge's segment.
    pub bus: u8,
    pub device: u8,
    pub function: u8,
    /// Requester ID: bus << 8 | device << 3 | function.
    pub rid: u16,
    /// aarch64: the ITS device ID its MSIs carry ([`PciBridge::msi_map`] of the RID). x86: the
    /// same number, which no MSI carries.
    pub msi_device_id: u32,
    /// What the user passed (host BDF or sysfs path), for messages and dumps.
    pub label: String,
    /// The passed-through device it is: its index in the VM's device list (and the host
    /// description's), by which the build finds its host handles.
    pub host_index: usize,
}

impl PciFunction {
    /// Its StreamID at the vSMMUv3 in front of its bridge.
    pub fn stream_id(&self) -> u32 {
        stream_id(u32::from(self.rid))
    }
}

/// A vSMMUv3's StreamID is the requester ID (the `iommu-map` and IORT say so, the model and the
/// host's vSID table use it).
const fn stream_id(rid: u32) -> u32 {
    rid
}

/// A legacy PCI interrupt pin, INTA..INTD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntxPin {
    A,
    B,
    C,
    D,
}

impl IntxPin {
    pub const ALL: [IntxPin; 4] = [IntxPin::A, IntxPin::B, IntxPin::C, IntxPin::D];

    /// From the Interrupt Pin register (1 = INTA .. 4 = INTD; 0 = none).
    pub fn from_register(value: u8) -> Option<Self> {
        Self::ALL.get(usize::from(value.checked_sub(1)?)).copied()
    }

    /// 0 for INTA .. 3 for INTD, as ACPI `_PRT` entries number them.
    pub const fn index(self) -> u8 {
        self as u8
    }
}

/// IDs `input_base .. input_base + count` map to `output_base ..`, one to one: an `msi-map` or
/// `iommu-map` entry, an IORT ID mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub input_base: u32,
    pub count: u32,
    pub output_base: u32,
}

/// A PCI host bridge (root complex): its own segment, ECAM window and MMIO apertures. Devices sit
/// directly on its root bus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PciBridge {
    pub segment: u16,
    pub bus_start: u8,
    pub bus_end: u8,
    /// One MiB of configuration space per bus, starting at `bus_start`.
    pub ecam: GuestRange,
    /// Non-prefetchable window below 4 GiB.
    pub mmio32: GuestRange,
    /// Prefetchable 64-bit window (GPU-sized BARs go here).
    pub mmio64: GuestRange,
    /// aarch64: the ITS device ID of the first RID in `rid_span` (the DT msi-map and IORT ID
    /// mappings say so). x86: unused (MSIs go to the local APICs).
    pub msi_base: u32,
    /// Legacy INTA..INTD of slot 0 as SPI numbers (aarch64) or I/O APIC pins (x86); other
    /// slots' lines are [`PciBridge::intx_line`].
    pub intx: [u32; 4],
    pub functions: Vec<PciFunction>,
}

impl PciBridge {
    /// The requester IDs of its buses: (first RID, count). MSI and IOMMU ID maps cover exactly
    /// these, so segments can share one ITS device-ID space (KVM's ITS has 16-bit device IDs).
    pub fn rid_span(&self) -> (u32, u32) {
        let buses = u32::from(self.bus_end.saturating_sub(self.bus_start)) + 1;
        (u32::from(self.bus_start) << 8, buses << 8)
    }

    /// The function at `bus:device.function` of this bridge, with its IDs.
    pub fn function(
        &self,
        (bus, device, function): (u8, u8, u8),
        label: String,
        host_index: usize,
    ) -> PciFunction {
        let rid = u16::from(bus) << 8 | u16::from(device) << 3 | u16::from(function);
        PciFunction {
            bus,
            device,
            function,
            rid,
            msi_device_id: self.its_device_id(u32::from(rid)),
            label,
            host_index,
        }
    }

    /// The ITS device ID of requester `rid`: `msi_base` plus its offset in the RID span.
    fn its_device_id(&self, rid: u32) -> u32 {
        self.msi_base
            .wrapping_add(rid.wrapping_sub(self.rid_span().0))
    }

    /// RID -> ITS device ID over the RID span (the `msi-map`; the IORT's route to the ITS).
    pub fn msi_map(&self) -> IdRange {
        let (rid_base, count) = self.rid_span();
        IdRange {
            input_base: rid_base,
            count,
            output_base: self.its_device_id(rid_base),
        }
    }

    /// RID -> StreamID at the bridge's vSMMUv3 (the `iommu-map`; the IORT root complex's).
    pub fn iommu_map(&self) -> IdRange {
        let (rid_base, count) = self.rid_span();
        IdRange {
            input_base: rid_base,
            count,
            output_base: stream_id(rid_base),
        }
    }

    /// StreamID -> ITS device ID at the bridge's vSMMUv3: its functions' MSIs carry the same
    /// device IDs as without it, so MSI routing does not depend on the IOMMU.
    pub fn smmu_msi_map(&self) -> IdRange {
        IdRange {
            input_base: self.iommu_map().output_base,
            ..self.msi_map()
        }
    }

    /// The line slot `device` raises on `pin`: the PCI-to-PCI bridge swizzle (PCI Express Base
    /// spec §2.2.8.1), pin `p` of slot `d` takes `intx[(d + p) % 4]`.
    pub fn intx_line(&self, device: u8, pin: IntxPin) -> u32 {
        self.intx[(usize::from(device) + usize::from(pin.index())) % 4]
    }

    /// The ECAM bytes its buses use.
    pub fn ecam_bytes(&self) -> u64 {
        let buses = u64::from(self.bus_end.saturating_sub(self.bus_start)) + 1;
        buses << ECAM_BUS_SHIFT
    }

    /// Where bus 0's configuration space would be (the MCFG base): bus `n` is at `+ (n << 20)`.
    /// The check keeps it from wrapping.
    pub fn ecam_bus0(&self) -> u64 {
        self.ecam
            .base
            .wrapping_sub(u64::from(self.bus_start) << ECAM_BUS_SHIFT)
    }

    /// The ECAM address of a function's configuration space.
    pub fn config_address(&self, bus: u8, device: u8, function: u8) -> u64 {
        self.ecam.base
            + ((u64::from(bus - self.bus_start) << ECAM_BUS_SHIFT)
                | (u64::from(device) << 15)
                | (u64::from(function) << 12))
    }
}

/// One MiB of ECAM per bus.
const ECAM_BUS_SHIFT: u32 = 20;

/// What a virtual SMMUv3 advertises: decided once per host SMMU from the host's IDR fields (only
/// those the iommufd uAPI lets a VMM use) masked to what the model implements, then frozen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SmmuFeatures {
    /// IDR0.ST_LEVEL: a 2-level stream table is offered (linear always is).
    pub two_level_stream_table: bool,
    /// IDR1.SIDSIZE: StreamID bits.
    pub sid_bits: u8,
    /// IDR1.SSIDSIZE: SubstreamID bits (0: no PASIDs).
    pub ssid_bits: u8,
    /// IDR5.OAS as bits (32, 36, 40, 42, 44, 48, 52).
    pub oas_bits: u8,
    /// IDR5.GRAN4K / GRAN16K / GRAN64K.
    pub granule_4k: bool,
    pub granule_16k: bool,
    pub granule_64k: bool,
    /// IDR3.RIL: range invalidation.
    pub range_invalidation: bool,
    /// IDR0.ASID16.
    pub asid16: bool,
    /// IDR0.CD2L: 2-level context-descriptor tables. (IDR0.TTF is always AArch64 only.)
    pub two_level_cd_table: bool,
    /// IDR0.STALL_MODEL as the host has it (0 both, 1 no stall, 2 forced stall).
    pub stall_model: u8,
    /// The kernel's ERRATA_REPEAT_TLBI_CFGI flag, mirrored to the guest.
    pub repeat_tlbi_cfgi: bool,
}

/// How a vSMMU's translations reach the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SmmuMode {
    /// Guest stage 1 nested over a host stage 2 in hardware (an iommufd vIOMMU). Shadowing the
    /// guest's tables, for host SMMUs that cannot nest, comes later.
    Nested,
}

/// A virtual SMMUv3 in front of one PCI host bridge, nested in hardware over one host SMMU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VirtualSmmu {
    /// Its index among the guest's vSMMUs (IORT node order, DT phandle `fdt::phandle::smmu`).
    pub index: u16,
    /// The segment of the bridge it translates ([`Platform::bridge_for`]); StreamIDs are
    /// [`PciFunction::stream_id`].
    pub segment: u16,
    /// Register pages 0 and 1 (128 KiB).
    pub registers: GuestRange,
    /// SPIs of its wired interrupts.
    pub event_irq: u32,
    pub gerror_irq: u32,
    pub sync_irq: u32,
    /// The host SMMU instance it nests over (`smmu3.0x...`).
    pub host_smmu: String,
    pub mode: SmmuMode,
    pub features: SmmuFeatures,
    /// The host kernel's MSI window, identity-mapped by the guest through an IORT RMR node.
    pub msi_window: GuestRange,
}

/// The whole guest-visible machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Platform {
    pub arch: GuestArch,
    pub firmware: FirmwareInterface,
    /// Number of vCPUs; vCPU `i` has MPIDR affinity / APIC ID `i`.
    pub vcpus: u32,
    /// Guest RAM, ascending and disjoint.
    pub memory: Vec<GuestRange>,
    pub interrupt_controller: InterruptController,
    /// aarch64 only.
    pub timer: Option<ArchTimer>,
    pub serial: Option<SerialPort>,
    pub power: PowerControl,
    /// PCI host bridges, in segment order; empty when the guest has no PCI devices.
    pub pci_bridges: Vec<PciBridge>,
    /// Virtual SMMUv3s, one per host SMMU, each in front of its own bridge; empty without
    /// `--iommu=nested-smmuv3`.
    pub smmus: Vec<VirtualSmmu>,
    /// The kernel command line as the guest receives it.
    pub cmdline: String,
    /// Where the initramfs was loaded, if any.
    pub initrd: Option<GuestRange>,
}

impl Platform {
    /// The guest RAM end (one past the last byte of the highest region).
    pub fn memory_end(&self) -> u64 {
        self.memory.iter().map(GuestRange::end).max().unwrap_or(0)
    }

    pub fn memory_size(&self) -> u64 {
        self.memory.iter().map(|r| r.size).sum()
    }

    /// The vSMMUv3 in front of `bridge`, if any.
    pub fn smmu_for(&self, bridge: &PciBridge) -> Option<&VirtualSmmu> {
        self.smmus.iter().find(|s| translates(s, bridge))
    }

    /// The bridge vSMMUv3 `smmu` translates (the check makes sure there is one).
    pub fn bridge_for(&self, smmu: &VirtualSmmu) -> Option<&PciBridge> {
        self.pci_bridges.iter().find(|b| translates(smmu, b))
    }
}

/// A vSMMUv3 names the bridge it sits in front of by its segment.
fn translates(smmu: &VirtualSmmu, bridge: &PciBridge) -> bool {
    smmu.segment == bridge.segment
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let r = GuestRange::new(0x1000, 0x1000);
        assert_eq!(r.end(), 0x2000);
        assert!(r.contains(0x1fff) && !r.contains(0x2000) && !r.contains(0xfff));
        assert!(r.overlaps(&GuestRange::new(0x1fff, 1)));
        assert!(!r.overlaps(&GuestRange::new(0x2000, 0x1000)));
        assert!(!r.overlaps(&GuestRange::new(0, 0x1000)));
    }

    #[test]
    fn derived_identities_by_hand() {
        // Buses 0x10..=0x1f, ITS device IDs from 0x2_0000.
        let mut bridge = crate::acpi::testutil::aarch64_pci_bridges(2).remove(1);
        bridge.msi_base = 0x2_0000;
        let f = bridge.function((0x11, 3, 2), "f".into(), 0);
        assert_eq!(
            (f.rid, f.msi_device_id, f.stream_id()),
            (0x111a, 0x2_011a, 0x111a)
        );
        let ids = |r: IdRange| (r.input_base, r.count, r.output_base);
        assert_eq!(ids(bridge.msi_map()), (0x1000, 0x1000, 0x2_0000));
        assert_eq!(ids(bridge.iommu_map()), (0x1000, 0x1000, 0x1000));
        assert_eq!(ids(bridge.smmu_msi_map()), (0x1000, 0x1000, 0x2_0000));
        assert_eq!(
            (bridge.ecam_bytes(), bridge.ecam.base - bridge.ecam_bus0()),
            (16 << 20, 16 << 20)
        );

        // Slot 1 INTA lands on the bridge's INTB line; slot 3 INTD on INTC; slot 6 INTC on INTA.
        bridge.intx = [40, 41, 42, 43];
        let pin = |register| IntxPin::from_register(register).unwrap();
        assert_eq!(bridge.intx_line(0, pin(1)), 40);
        assert_eq!(bridge.intx_line(1, pin(1)), 41);
        assert_eq!(bridge.intx_line(3, pin(4)), 42);
        assert_eq!(bridge.intx_line(6, pin(3)), 40);
        assert_eq!(IntxPin::from_register(0), None);
        assert_eq!(IntxPin::from_register(5), None);
    }
}
