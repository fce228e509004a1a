//! The aarch64 tables: a hardware-reduced FADT with PSCI through HVC, the DSDT, a GICv3 MADT,
//! the GTDT, the SPCR, the MCFG and, with PCI, the IORT (with an SMMUv3 and an RMR node per
//! vSMMUv3).

use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::{Aml, AmlSink};

use super::encode::{self, RawAml};
use super::iort::{self, IdMapping, Iort, Node, NodeRef};
use super::{ArchTables, Encoded, OEM_ID, OEM_REVISION, OEM_TABLE_ID, pci};
use crate::aarch64::layout;
use crate::platform::{
    Aarch64Parts, ArchTimer, CheckedPlatform, Gic, IdRange, MmioUart, PciBridge, UartModel,
    VirtualSmmu,
};

/// FADT `ARM_BOOT_ARCH` flags (§5.2.9.4).
pub const ARM_BOOT_PSCI_COMPLIANT: u16 = 1 << 0;
pub const ARM_BOOT_PSCI_USE_HVC: u16 = 1 << 1;

/// DSDT revision 2: AML integers are 64-bit.
const DSDT_REVISION: u8 = 2;

/// The MADT revision of ACPI 6.3, whose GICC structure is 80 bytes long.
pub const MADT_REVISION: u8 = 5;
/// MADT interrupt controller structure types and lengths (§5.2.12.14-18).
pub const MADT_GICC: u8 = 0x0b;
pub const MADT_GICD: u8 = 0x0c;
pub const MADT_GICR: u8 = 0x0e;
pub const MADT_GIC_ITS: u8 = 0x0f;
pub const GICC_LEN: u8 = 80;
const GICD_LEN: u8 = 24;
const GICR_LEN: u8 = 16;
const GIC_ITS_LEN: u8 = 20;
/// GICC flags: the CPU is enabled; the maintenance interrupt is level-triggered (bit 2 clear).
const GICC_ENABLED: u32 = 1 << 0;
const GIC_VERSION_3: u8 = 3;
/// The MADT's GIC ITS ID of the one ITS, which the IORT's ITS group names.
pub const GIC_ITS_ID: u32 = 0;

/// GTDT revision 2 (ACPI 6.0-6.2 layout, 96 bytes, no platform timers).
pub const GTDT_REVISION: u8 = 2;
/// CntControlBase and CntReadBase when there is no memory-mapped counter block.
const GTDT_NO_COUNTER_BLOCK: u64 = u64::MAX;
/// GTDT timer flags: bit 0 clear = level-triggered, bit 1 clear = active high, bit 2 = always-on
/// (the device tree's `always-on`: KVM's timers keep counting while a vCPU is in WFI).
pub const GTDT_TIMER_ALWAYS_ON: u32 = 1 << 2;

/// The UART's register window as the address map reserves it (the device tree's too).
const UART_SIZE: u32 = layout::UART.size as u32;

/// SPCR revision 2, as Microsoft's SPCR specification defines it for 16550-compatible UARTs.
pub const SPCR_REVISION: u8 = 2;
/// Interface type: "full 16550 compatible" (DBG2 serial port subtype 0x0000).
pub const SPCR_INTERFACE_16550: u8 = 0;
/// Interface type 3: Arm PL011 (with 32-bit register access in the address structure).
pub const SPCR_INTERFACE_PL011: u8 = 3;
/// Interrupt type bit 3: Arm GIC interrupt (GSIV).
pub const SPCR_INTERRUPT_GIC: u8 = 1 << 3;
/// Configured baud rate code 7: 115200.
pub const SPCR_BAUD_115200: u8 = 7;
const SPCR_STOP_BITS_1: u8 = 1;
/// Terminal type 3: ANSI.
const SPCR_TERMINAL_ANSI: u8 = 3;
/// PCI device and vendor ID of a UART that is not a PCI device.
const SPCR_NOT_PCI: u16 = 0xffff;

pub(super) fn tables(platform: &CheckedPlatform, arm: &Aarch64Parts) -> ArchTables {
    let mut listed = vec![madt(platform.vcpus, &arm.gic), gtdt(&arm.timer)];
    if let Some(uart) = &arm.uart {
        listed.push(spcr(uart));
    }
    listed.push(super::mcfg(&platform.pci_bridges));
    if !platform.pci_bridges.is_empty() {
        listed.push(iort(platform));
    }
    ArchTables {
        dsdt: dsdt(platform, arm),
        fadt: Box::new(fadt),
        listed,
    }
}

/// The GSIV of an SPI: its interrupt ID (§5.2.12.14).
fn gsiv(spi: u32) -> u32 {
    spi + layout::GIC_SPI_BASE
}

/// Hardware-reduced (no fixed ACPI hardware on Arm), PSCI through HVC for CPU on/off and reset.
fn fadt(dsdt: u64) -> Encoded {
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .flag(Flags::HwReducedAcpi)
        .dsdt_64(dsdt);
    fadt.arm_boot_arch = (ARM_BOOT_PSCI_COMPLIANT | ARM_BOOT_PSCI_USE_HVC).into();
    Encoded {
        signature: *b"FACP",
        bytes: encode::aml_bytes(&fadt.finalize()),
    }
}

fn dsdt(platform: &CheckedPlatform, arm: &Aarch64Parts) -> Encoded {
    let mut devices = Vec::new();
    if let Some(uart) = &arm.uart {
        devices.push(uart_device(uart));
    }
    for bridge in &platform.pci_bridges {
        let preserve_config = platform.smmu_for(bridge).is_some();
        devices.push(pci::root_bridge_device(bridge, gsiv, true, preserve_config));
    }
    let aml = encode::system_bus(&devices);
    encode::table(*b"DSDT", DSDT_REVISION, &aml.0)
}

/// The UART as `PNP0501` (16550, with the same register layout the device tree gives it:
/// byte-wide registers, no shift) or `ARMH0011` (the SBSA generic UART), the interrupt
/// edge-triggered, active high, as in the device tree: microvmm raises it through a KVM irqfd,
/// which pulses the line.
fn uart_device(uart: &MmioUart) -> RawAml {
    let registers = aml::Memory32Fixed::new(true, uart.base, UART_SIZE);
    let interrupt = aml::Interrupt::new(true, true, false, false, gsiv(uart.spi));
    match uart.model {
        UartModel::Ns16550a => encode::pnp0501_device(
            "COM0",
            vec![&registers, &interrupt],
            &[
                ("clock-frequency", uart.clock_hz),
                ("reg-shift", 0),
                ("reg-io-width", 1),
            ],
        ),
        UartModel::Pl011 => encode::sbsa_uart_device("COM0", vec![&registers, &interrupt]),
    }
}

/// GICv3: one GICC per vCPU (MPIDR as KVM assigns it), the GICD, one GICR discovery range
/// covering every redistributor, and the ITS.
fn madt(vcpus: u32, gic: &Gic) -> Encoded {
    let mut body = Vec::new();
    body.dword(0); // Local interrupt controller address: none on Arm.
    body.dword(0); // Flags: no PC-AT 8259s.
    for index in 0..vcpus {
        gicc(&mut body, index);
    }

    body.byte(MADT_GICD);
    body.byte(GICD_LEN);
    body.word(0);
    body.dword(0); // GIC ID
    body.qword(gic.distributor.base);
    body.dword(0); // System vector base: reserved
    body.byte(GIC_VERSION_3);
    body.vec(&[0; 3]);

    body.byte(MADT_GICR);
    body.byte(GICR_LEN);
    body.word(0);
    body.qword(gic.redistributors.base);
    // The check keeps the region below 4 GiB.
    body.dword(gic.redistributors.size as u32);

    body.byte(MADT_GIC_ITS);
    body.byte(GIC_ITS_LEN);
    body.word(0);
    body.dword(GIC_ITS_ID);
    body.qword(gic.its.base);
    body.dword(0);

    encode::table(*b"APIC", MADT_REVISION, &body)
}

/// The ITS group (the MADT's one ITS), an SMMUv3 node per vSMMUv3, a root complex per host
/// bridge and an RMR node per vSMMUv3, in that order; SMMUv3 nodes in index order, so vSMMUv3
/// `i` is node identifier `1 + i`. Every ID mapping is one the plan's bridge gives: a bridge
/// without a vSMMUv3 maps its RIDs straight to ITS device IDs, a bridge with one maps them to
/// StreamIDs at the SMMU, which maps those on to the same device IDs.
fn iort(platform: &CheckedPlatform) -> Encoded {
    let mut table = Iort::new();
    let its = table.add(Node::ItsGroup {
        its_ids: vec![GIC_ITS_ID],
    });
    let mapping = |ids: IdRange, output| IdMapping {
        input_base: ids.input_base,
        count: ids.count,
        output_base: ids.output_base,
        output,
    };
    let mut smmu_nodes: Vec<(&VirtualSmmu, &PciBridge, NodeRef)> = Vec::new();
    for smmu in &platform.smmus {
        let Some(bridge) = platform.bridge_for(smmu) else {
            continue;
        };
        let node = table.add(smmu_v3_node(smmu, mapping(bridge.smmu_msi_map(), its)));
        smmu_nodes.push((smmu, bridge, node));
    }
    for bridge in &platform.pci_bridges {
        let smmu = platform.smmu_for(bridge);
        let node = smmu.and_then(|s| smmu_nodes.iter().find(|(n, _, _)| n.index == s.index));
        let to = match node {
            Some(&(_, _, smmu)) => mapping(bridge.iommu_map(), smmu),
            None => mapping(bridge.msi_map(), its),
        };
        table.add(Node::RootComplex {
            segment: bridge.segment,
            ats: 0,
            mappings: vec![to],
        });
    }
    for &(smmu, bridge, node) in &smmu_nodes {
        if let Some(rmr) = rmr_node(smmu, bridge, node) {
            table.add(rmr);
        }
    }
    table.encode()
}

/// A vSMMUv3 as an IORT SMMUv3 node: its registers, coherent table walks, and its wired
/// interrupts as GSIVs. It has no PRI queue, but E.d's revision 4 node can only say "no MSIs of
/// its own, mapping 0 is for the streams" by giving all four GSIVs, so the PRI GSIV repeats the
/// event queue's: Linux registers it as "priq" but requests it only for an SMMU with PRI.
fn smmu_v3_node(smmu: &VirtualSmmu, to_its: IdMapping) -> Node {
    Node::Smmuv3 {
        base: smmu.registers.base,
        flags: iort::SMMU_V3_COHACC_OVERRIDE,
        event_gsiv: gsiv(smmu.event_irq),
        pri_gsiv: gsiv(smmu.event_irq),
        gerror_gsiv: gsiv(smmu.gerror_irq),
        sync_gsiv: gsiv(smmu.sync_irq),
        mappings: vec![to_its],
    }
}

/// The host MSI window as an RMR for the streams of `bridge`'s functions at vSMMUv3 `node`, so
/// the guest identity-maps it in stage 1 (stage 2 maps it to the host's doorbell) and installs
/// bypass STEs for those streams until it attaches domains. Remapping not permitted (the
/// device's MSIs always go there: Linux makes it IOMMU_RESV_DIRECT, which also keeps the
/// functions out of the guest's own VFIO), unprivileged, Device-nGnRE (a doorbell). Only the
/// functions' StreamIDs, consecutive ones as one mapping, not the whole RID span: Linux builds
/// a bypass STE for every StreamID an RMR names. `None` for a bridge without functions (Linux
/// rejects an RMR without mappings).
fn rmr_node(smmu: &VirtualSmmu, bridge: &PciBridge, node: NodeRef) -> Option<Node> {
    let mut streams: Vec<u32> = bridge.functions.iter().map(|f| f.stream_id()).collect();
    streams.sort_unstable();
    streams.dedup();
    let mut mappings: Vec<IdMapping> = Vec::new();
    for sid in streams {
        match mappings.last_mut() {
            Some(m) if m.input_base + m.count == sid => m.count += 1,
            _ => mappings.push(IdMapping {
                input_base: sid,
                count: 1,
                output_base: sid,
                output: node,
            }),
        }
    }
    if mappings.is_empty() {
        return None;
    }
    Some(Node::Rmr {
        flags: iort::RMR_ATTR_DEVICE_NGNRE << iort::RMR_ATTR_SHIFT,
        ranges: vec![(smmu.msi_window.base, smmu.msi_window.size)],
        mappings,
    })
}

/// One GICC structure (ACPI 6.3 layout). With GICv3 the CPU interface is system registers, so
/// the physical, virtual and hypervisor interface addresses are 0, and the redistributor comes
/// from the GICR structure instead of the per-CPU field.
fn gicc(body: &mut Vec<u8>, index: u32) {
    body.byte(MADT_GICC);
    body.byte(GICC_LEN);
    body.word(0);
    body.dword(0); // CPU interface number: unused with GICv3
    body.dword(index); // ACPI processor UID
    body.dword(GICC_ENABLED);
    body.dword(0); // Parking protocol version: PSCI is used instead
    body.dword(0); // Performance monitoring interrupt: no PMU
    body.qword(0); // Parked address
    body.qword(0); // Physical base address
    body.qword(0); // GICV
    body.qword(0); // GICH
    body.dword(layout::GIC_MAINTENANCE_PPI + layout::GIC_PPI_BASE);
    body.qword(0); // GICR base address: see the GICR structure
    body.qword(layout::mpidr(index));
    body.byte(0); // Processor power efficiency class
    body.byte(0);
    body.word(0); // SPE overflow interrupt: none
}

/// The architectural timers' GSIVs, level-triggered, active high, always-on (as in the device
/// tree), and no memory-mapped counter or platform timers.
fn gtdt(timer: &ArchTimer) -> Encoded {
    let mut body = Vec::new();
    body.qword(GTDT_NO_COUNTER_BLOCK); // CntControlBase
    body.dword(0);
    for ppi in [
        timer.secure_phys_ppi,
        timer.nonsecure_phys_ppi,
        timer.virt_ppi,
        timer.hyp_ppi,
    ] {
        body.dword(ppi + layout::GIC_PPI_BASE);
        body.dword(GTDT_TIMER_ALWAYS_ON);
    }
    body.qword(GTDT_NO_COUNTER_BLOCK); // CntReadBase
    body.dword(0); // Platform timer count
    body.dword(0); // Platform timer offset: there are none
    encode::table(*b"GTDT", GTDT_REVISION, &body)
}

/// The console: the 16550 at its MMIO base, byte-wide registers, its SPI as a GIC GSIV, 115200
/// 8N1. Linux turns this into `console=uart,mmio,<base>,115200` (and `earlycon` with no argument).
fn spcr(uart: &MmioUart) -> Encoded {
    let mut body = Vec::new();
    let (interface, registers) = match uart.model {
        UartModel::Ns16550a => (
            SPCR_INTERFACE_16550,
            encode::gas_mmio8(u64::from(uart.base)),
        ),
        UartModel::Pl011 => (
            SPCR_INTERFACE_PL011,
            encode::gas_mmio32(u64::from(uart.base)),
        ),
    };
    body.byte(interface);
    body.vec(&[0; 3]);
    registers.to_aml_bytes(&mut body);
    body.byte(SPCR_INTERRUPT_GIC);
    body.byte(0); // PC-AT IRQ: none
    body.dword(gsiv(uart.spi));
    body.byte(SPCR_BAUD_115200);
    body.byte(0); // No parity
    body.byte(SPCR_STOP_BITS_1);
    body.byte(0); // No flow control
    body.byte(SPCR_TERMINAL_ANSI);
    body.byte(0); // Language: reserved
    body.word(SPCR_NOT_PCI); // PCI device ID
    body.word(SPCR_NOT_PCI); // PCI vendor ID
    body.byte(0); // PCI bus
    body.byte(0); // PCI device
    body.byte(0); // PCI function
    body.dword(0); // PCI flags
    body.byte(0); // PCI segment
    body.dword(0); // Reserved (UART clock frequency from revision 3)
    encode::table(*b"SPCR", SPCR_REVISION, &body)
}
