//! The aarch64 tables: a hardware-reduced FADT with PSCI through HVC, the DSDT, a GICv3 MADT,
//! the GTDT, the SPCR, the MCFG and, with PCI, the IORT (with an SMMUv3 and an RMR node per
//! vSMMUv3).

use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::{Aml, AmlSink};

use super::encode::{self, RawAml};
use super::iort::{self, IdMapping, Iort, Node, NodeRef};
use super::pci::{self, PciHost};
use super::{AcpiError, ArchTables, Encoded, OEM_ID, OEM_REVISION, OEM_TABLE_ID};
use crate::aarch64::{fdt, layout};
use crate::platform::{
    ArchTimer, GuestArch, GuestRange, InterruptController, PciBridge, Platform, PowerControl,
    RegisterSpace, VirtualSmmu,
};

/// PPIs are interrupt IDs 16..32, SPIs start at 32: a GSIV is the interrupt ID (§5.2.12.14).
pub const PPI_BASE: u32 = 16;
pub const NR_PPIS: u32 = 16;
pub const SPI_BASE: u32 = 32;

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

/// SPCR revision 2, as Microsoft's SPCR specification defines it for 16550-compatible UARTs.
pub const SPCR_REVISION: u8 = 2;
/// Interface type: "full 16550 compatible" (DBG2 serial port subtype 0x0000).
pub const SPCR_INTERFACE_16550: u8 = 0;
/// Interrupt type bit 3: Arm GIC interrupt (GSIV).
pub const SPCR_INTERRUPT_GIC: u8 = 1 << 3;
/// Configured baud rate code 7: 115200.
pub const SPCR_BAUD_115200: u8 = 7;
const SPCR_STOP_BITS_1: u8 = 1;
/// Terminal type 3: ANSI.
const SPCR_TERMINAL_ANSI: u8 = 3;
/// PCI device and vendor ID of a UART that is not a PCI device.
const SPCR_NOT_PCI: u16 = 0xffff;

/// The GICv3 as the tables describe it.
struct Gic {
    distributor: GuestRange,
    redistributors: GuestRange,
    redistributors_len: u32,
    its: GuestRange,
}

/// The memory-mapped 16550.
struct Uart {
    base: u32,
    size: u32,
    gsiv: u32,
    clock_hz: u32,
}

/// The parts of the platform the tables need, checked once so that table functions only encode.
struct Machine<'a> {
    vcpus: u32,
    gic: Gic,
    timer: ArchTimer,
    uart: Option<Uart>,
    pci: Vec<PciHost<'a>>,
    /// Checked by [`fdt::check_smmus`], in index order (IORT node order).
    smmus: Vec<&'a VirtualSmmu>,
}

impl<'a> Machine<'a> {
    fn new(platform: &'a Platform) -> Result<Self, AcpiError> {
        let arch = GuestArch::Aarch64;
        if platform.power != PowerControl::PsciHvc {
            return Err(AcpiError::PowerControl {
                arch,
                power: platform.power,
            });
        }
        if platform.vcpus == 0 {
            return Err(AcpiError::NoVcpus);
        }
        let InterruptController::GicV3 {
            distributor,
            redistributors,
            redistributor_stride,
            its,
            nr_irqs,
        } = platform.interrupt_controller
        else {
            return Err(AcpiError::InterruptController {
                arch,
                what: "x86 APIC",
            });
        };
        if redistributor_stride == 0 || !redistributor_stride.is_multiple_of(0x1_0000) {
            return Err(AcpiError::BadRedistributorStride(redistributor_stride));
        }
        let needed = u128::from(platform.vcpus) * u128::from(redistributor_stride);
        if needed > u128::from(redistributors.size) {
            return Err(AcpiError::RedistributorsTooSmall {
                vcpus: platform.vcpus,
                stride: redistributor_stride,
                needed,
                size: redistributors.size,
            });
        }
        let redistributors_len =
            u32::try_from(redistributors.size).map_err(|_| AcpiError::SizeTooLarge {
                what: "the GIC redistributor region",
                size: redistributors.size,
            })?;

        let timer = platform.timer.ok_or(AcpiError::MissingTimer)?;
        for ppi in [
            timer.secure_phys_ppi,
            timer.nonsecure_phys_ppi,
            timer.virt_ppi,
            timer.hyp_ppi,
        ] {
            if ppi >= NR_PPIS {
                return Err(AcpiError::InterruptOutOfRange {
                    what: "timer PPI",
                    irq: ppi,
                    limit: NR_PPIS,
                });
            }
        }

        let uart = match platform.serial {
            None => None,
            Some(serial) => {
                let RegisterSpace::Mmio(base) = serial.registers else {
                    return Err(AcpiError::SerialRegisters {
                        arch,
                        registers: serial.registers,
                    });
                };
                // The address map reserves the UART's window; the device tree uses the same.
                let size = layout::UART.size;
                let fits = base.checked_add(size).is_some_and(|end| end <= 1 << 32);
                let (Ok(base), Ok(size), true) = (u32::try_from(base), u32::try_from(size), fits)
                else {
                    return Err(AcpiError::AddressAbove4G {
                        what: "the serial port",
                        address: base,
                    });
                };
                let gsiv = serial
                    .irq
                    .checked_add(SPI_BASE)
                    .filter(|&id| id < nr_irqs)
                    .ok_or(AcpiError::InterruptOutOfRange {
                        what: "serial SPI",
                        irq: serial.irq,
                        limit: nr_irqs.saturating_sub(SPI_BASE),
                    })?;
                Some(Uart {
                    base,
                    size,
                    gsiv,
                    clock_hz: serial.clock_hz,
                })
            }
        };

        // INTx lines are SPIs; a GSIV is the interrupt ID.
        let pci = pci::check_bridges(&platform.pci_bridges, |_, spi| {
            spi.checked_add(SPI_BASE).filter(|&id| id < nr_irqs).ok_or(
                AcpiError::InterruptOutOfRange {
                    what: "PCI INTx SPI",
                    irq: spi,
                    limit: nr_irqs.saturating_sub(SPI_BASE),
                },
            )
        })?;
        fdt::check_smmus(platform, nr_irqs)?;
        let mut smmus: Vec<&VirtualSmmu> = platform.smmus.iter().collect();
        smmus.sort_by_key(|s| s.index);

        Ok(Machine {
            vcpus: platform.vcpus,
            gic: Gic {
                distributor,
                redistributors,
                redistributors_len,
                its,
            },
            timer,
            uart,
            pci,
            smmus,
        })
    }

    /// The vSMMUv3 in front of `bridge`, if any.
    fn smmu_of(&self, bridge: &PciBridge) -> Option<&'a VirtualSmmu> {
        self.smmus
            .iter()
            .copied()
            .find(|s| s.segment == bridge.segment)
    }
}

pub(super) fn tables(platform: &Platform) -> Result<ArchTables, AcpiError> {
    let machine = Machine::new(platform)?;
    let mut listed = vec![madt(&machine), gtdt(&machine.timer)];
    if let Some(uart) = &machine.uart {
        listed.push(spcr(uart));
    }
    listed.push(super::mcfg(&super::ecam_windows(&machine.pci)));
    if !machine.pci.is_empty() {
        listed.push(iort(&machine));
    }
    Ok(ArchTables {
        dsdt: dsdt(&machine),
        fadt: Box::new(fadt),
        listed,
    })
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

fn dsdt(machine: &Machine) -> Encoded {
    let mut devices = Vec::new();
    if let Some(uart) = &machine.uart {
        devices.push(uart_device(uart));
    }
    for host in &machine.pci {
        let preserve_config = machine.smmu_of(host.bridge).is_some();
        devices.push(pci::root_bridge_device(host, true, preserve_config));
    }
    let aml = encode::system_bus(&devices);
    encode::table(*b"DSDT", DSDT_REVISION, &aml.0)
}

/// The UART as `PNP0501`, with the same register layout the device tree gives it (byte-wide
/// registers, no shift) and the interrupt edge-triggered, active high, as there: microvmm raises
/// it through a KVM irqfd, which pulses the line.
fn uart_device(uart: &Uart) -> RawAml {
    let registers = aml::Memory32Fixed::new(true, uart.base, uart.size);
    let interrupt = aml::Interrupt::new(true, true, false, false, uart.gsiv);
    encode::pnp0501_device(
        "COM0",
        vec![&registers, &interrupt],
        &[
            ("clock-frequency", uart.clock_hz),
            ("reg-shift", 0),
            ("reg-io-width", 1),
        ],
    )
}

/// GICv3: one GICC per vCPU (MPIDR as KVM assigns it), the GICD, one GICR discovery range
/// covering every redistributor, and the ITS.
fn madt(machine: &Machine) -> Encoded {
    let gic = &machine.gic;
    let mut body = Vec::new();
    body.dword(0); // Local interrupt controller address: none on Arm.
    body.dword(0); // Flags: no PC-AT 8259s.
    for index in 0..machine.vcpus {
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
    body.dword(gic.redistributors_len);

    body.byte(MADT_GIC_ITS);
    body.byte(GIC_ITS_LEN);
    body.word(0);
    body.dword(GIC_ITS_ID);
    body.qword(gic.its.base);
    body.dword(0);

    encode::table(*b"APIC", MADT_REVISION, &body)
}

/// The ITS group (the MADT's one ITS), an SMMUv3 node per vSMMUv3, a root complex per host
/// bridge and an RMR node per vSMMUv3, in that order; SMMUv3 nodes in index order, so with the
/// plan's indices 0..n vSMMUv3 `i` is node identifier `1 + i`.
///
/// A bridge without a vSMMUv3 maps its RIDs straight to ITS device IDs `msi_base + RID -
/// rid_base`, as the device tree's `msi-map` does. A bridge with one maps its RIDs to the same
/// StreamIDs at the SMMU, and the SMMU maps those to the same device IDs as without it, so MSI
/// routing (KVM's, the plan's `msi_device_id`) does not depend on the IOMMU.
fn iort(machine: &Machine) -> Encoded {
    let mut table = Iort::new();
    let its = table.add(Node::ItsGroup {
        its_ids: vec![GIC_ITS_ID],
    });
    // check_smmus gave every vSMMUv3 a bridge of its own; in vSMMUv3 index order.
    let mut behind: Vec<(&VirtualSmmu, &PciBridge)> = machine
        .pci
        .iter()
        .filter_map(|h| Some((machine.smmu_of(h.bridge)?, h.bridge)))
        .collect();
    behind.sort_by_key(|(smmu, _)| smmu.index);
    let mut smmu_nodes: Vec<(&VirtualSmmu, &PciBridge, NodeRef)> = Vec::new();
    for (smmu, bridge) in behind {
        let (rid_base, rid_count) = bridge.rid_span();
        let node = table.add(smmu_v3_node(
            smmu,
            IdMapping {
                input_base: rid_base,
                count: rid_count,
                output_base: bridge.msi_base,
                output: its,
            },
        ));
        smmu_nodes.push((smmu, bridge, node));
    }
    for host in &machine.pci {
        let bridge = host.bridge;
        let (rid_base, rid_count) = bridge.rid_span();
        let behind = smmu_nodes
            .iter()
            .find(|(smmu, _, _)| smmu.segment == bridge.segment);
        let (output_base, output) = match behind {
            // StreamID = RID.
            Some(&(_, _, smmu)) => (rid_base, smmu),
            None => (bridge.msi_base, its),
        };
        table.add(Node::RootComplex {
            segment: bridge.segment,
            ats: 0,
            mappings: vec![IdMapping {
                input_base: rid_base,
                count: rid_count,
                output_base,
                output,
            }],
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
    let gsiv = |spi: u32| spi + SPI_BASE;
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
    let mut rids: Vec<u32> = bridge.functions.iter().map(|f| u32::from(f.rid)).collect();
    rids.sort_unstable();
    rids.dedup();
    let mut mappings: Vec<IdMapping> = Vec::new();
    for rid in rids {
        match mappings.last_mut() {
            Some(m) if m.input_base + m.count == rid => m.count += 1,
            _ => mappings.push(IdMapping {
                input_base: rid,
                count: 1,
                output_base: rid,
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
    body.dword(layout::GIC_MAINTENANCE_PPI + PPI_BASE);
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
        body.dword(ppi + PPI_BASE);
        body.dword(GTDT_TIMER_ALWAYS_ON);
    }
    body.qword(GTDT_NO_COUNTER_BLOCK); // CntReadBase
    body.dword(0); // Platform timer count
    body.dword(0); // Platform timer offset: there are none
    encode::table(*b"GTDT", GTDT_REVISION, &body)
}

/// The console: the 16550 at its MMIO base, byte-wide registers, its SPI as a GIC GSIV, 115200
/// 8N1. Linux turns this into `console=uart,mmio,<base>,115200` (and `earlycon` with no argument).
fn spcr(uart: &Uart) -> Encoded {
    let mut body = Vec::new();
    body.byte(SPCR_INTERFACE_16550);
    body.vec(&[0; 3]);
    encode::gas_mmio8(u64::from(uart.base)).to_aml_bytes(&mut body);
    body.byte(SPCR_INTERRUPT_GIC);
    body.byte(0); // PC-AT IRQ: none
    body.dword(uart.gsiv);
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
