//! The aarch64 device tree for [`FirmwareInterface::DeviceTree`] boot, following Linux
//! `Documentation/devicetree/bindings` and the arm64 booting protocol.
//!
//! [`device_tree`] checks the platform once, then calls one small function per node. Nodes
//! reference each other through the fixed [`phandle`] numbers, so adding a node never renumbers
//! another. [`check_smmus`] is the vSMMUv3 check the IORT encoder shares.

use thiserror::Error;
use vm_fdt::FdtWriter;

use super::image::FDT_MAX_SIZE;
use super::layout;
use crate::platform::{
    ArchTimer, FirmwareInterface, GuestArch, GuestRange, InterruptController, PciBridge, Platform,
    PowerControl, RegisterSpace, VirtualSmmu,
};

/// Phandles, fixed per node so that nodes added later never renumber earlier ones.
pub mod phandle {
    /// The GICv3 (the root's `interrupt-parent`).
    pub const GIC: u32 = 1;
    /// The GICv3 ITS (PCI host bridges' `msi-map` target).
    pub const ITS: u32 = 2;
    /// The first of the vSMMUv3 block; see [`smmu`].
    pub const SMMU_BASE: u32 = 0x100;

    /// The phandle of vSMMUv3 number `index` (the `iommu-map` target of its PCI host bridge).
    pub const fn smmu(index: u16) -> u32 {
        SMMU_BASE + index as u32
    }

    /// The reserved-memory node over the host MSI window (vSMMUs' guests identity-map it).
    pub const MSI_WINDOW: u32 = 3;

    /// A PCI function's child node under its host bridge (only functions behind a vSMMU get
    /// one): segment and RID make it unique.
    pub const fn pci_function(segment: u16, rid: u16) -> u32 {
        0x0100_0000 | (segment as u32) << 16 | rid as u32
    }
}

/// First cell of a GIC interrupt specifier (bindings/interrupt-controller/arm,gic-v3.yaml).
const GIC_SPI: u32 = 0;
const GIC_PPI: u32 = 1;
/// Third cell: `IRQ_TYPE_LEVEL_HIGH` (include/dt-bindings/interrupt-controller/irq.h). GICv3
/// specifiers carry no CPU mask, unlike GICv2 PPIs.
const IRQ_TYPE_LEVEL_HIGH: u32 = 4;
/// `IRQ_TYPE_EDGE_RISING`: device interrupts microvmm raises through KVM irqfds, which pulse the
/// line; described as level, a pulse the guest has not yet taken would be forgotten.
const IRQ_TYPE_EDGE_RISING: u32 = 1;
/// PPIs are numbered 0..16 (interrupt IDs 16..32).
const NR_PPIS: u32 = 16;
/// SPIs start at interrupt ID 32.
const SPI_BASE: u32 = 32;

/// Every `reg` outside `/cpus` is `<u64 address, u64 size>`.
const ADDRESS_CELLS: u32 = 2;
const SIZE_CELLS: u32 = 2;
/// `/cpus` uses two address cells so that `reg` can hold any MPIDR affinity, Aff3 included.
const CPU_ADDRESS_CELLS: u32 = 2;

/// The 16550's register window as the address map reserves it.
const UART_REG_SIZE: u64 = layout::UART.size;

/// PCI bus binding (bindings/pci/pci-bus-common.yaml): three address cells (phys.hi, mid, lo),
/// two size cells, one interrupt cell (the pin, 1 = INTA).
const PCI_ADDRESS_CELLS: u32 = 3;
const PCI_SIZE_CELLS: u32 = 2;
const PCI_INTERRUPT_CELLS: u32 = 1;
/// phys.hi space codes: 32-bit memory, and prefetchable 64-bit memory.
const PCI_SPACE_MEM32: u32 = 0x0200_0000;
const PCI_SPACE_MEM64_PREFETCH: u32 = 0x4300_0000;
/// phys.hi device-number field (bits 15:11).
const PCI_DEVICE_SHIFT: u32 = 11;
/// The INTx swizzle repeats every four devices, so `interrupt-map` needs four slots and the mask
/// keeps the low two device-number bits and the pin.
const PCI_SWIZZLE_SLOTS: u32 = 4;
const PCI_INTERRUPT_MAP_MASK: [u32; 4] = [(PCI_SWIZZLE_SLOTS - 1) << PCI_DEVICE_SHIFT, 0, 0, 0x7];
/// One MiB of ECAM per bus.
const ECAM_BUS_SHIFT: u32 = 20;

#[derive(Debug, Error)]
pub enum FdtError {
    #[error("the aarch64 device tree cannot describe a {0:?} guest")]
    WrongArch(GuestArch),
    #[error("the platform boots through {0:?}, not a full device tree")]
    WrongFirmware(FirmwareInterface),
    #[error("the interrupt controller is not a GICv3")]
    NotGicV3,
    #[error("the platform has no architectural timer")]
    MissingTimer,
    #[error("timer PPI {0} is out of range (PPIs are 0..16)")]
    TimerPpiOutOfRange(u32),
    #[error("power control {0:?} is not PSCI through HVC")]
    NotPsci(PowerControl),
    #[error("the platform has no vCPUs")]
    NoVcpus,
    #[error("the platform has no memory")]
    NoMemory,
    #[error(
        "{vcpus} vCPUs need {needed:#x} bytes of GIC redistributors at stride {stride:#x}, the region has {size:#x}"
    )]
    RedistributorsTooSmall {
        vcpus: u32,
        stride: u64,
        needed: u128,
        size: u64,
    },
    #[error("GIC redistributor stride {0:#x} is not a non-zero multiple of 64 KiB")]
    BadRedistributorStride(u64),
    #[error("the serial port is at I/O port {0:#x}, but aarch64 has no port I/O")]
    SerialNotMmio(u16),
    #[error("serial SPI {spi} is beyond the GIC's {nr_irqs} interrupt IDs")]
    SerialIrqOutOfRange { spi: u32, nr_irqs: u32 },
    #[error("PCI segment {segment}: bus range {start:#x}..={end:#x} is empty")]
    PciBusRange { segment: u16, start: u8, end: u8 },
    #[error("PCI segment {segment}: ECAM window of {size:#x} bytes cannot hold {needed:#x}")]
    PciEcamTooSmall {
        segment: u16,
        size: u64,
        needed: u64,
    },
    #[error("PCI segment {segment}: {what} window {base:#x}+{size:#x} is empty or out of range")]
    PciWindow {
        segment: u16,
        what: &'static str,
        base: u64,
        size: u64,
    },
    #[error("PCI segment {segment}: INTx SPI {spi} is beyond the GIC's {nr_irqs} interrupt IDs")]
    PciIntxOutOfRange {
        segment: u16,
        spi: u32,
        nr_irqs: u32,
    },
    #[error("PCI segment {0} is described twice")]
    PciDuplicateSegment(u16),
    #[error(transparent)]
    Smmu(#[from] SmmuError),
    #[error("initrd {base:#x}+{size:#x} wraps around the address space")]
    InitrdWraps { base: u64, size: u64 },
    #[error("the device tree is {0} bytes, above the boot protocol's {FDT_MAX_SIZE} bytes")]
    TooLarge(usize),
    #[error("cannot encode the device tree")]
    Writer(#[from] vm_fdt::Error),
}

/// The GICv3 as the device tree describes it.
struct Gic {
    distributor: GuestRange,
    redistributors: GuestRange,
    redistributor_stride: u64,
    its: GuestRange,
}

/// The memory-mapped 16550.
struct Uart {
    base: u64,
    spi: u32,
    clock_hz: u32,
}

impl Uart {
    fn node_name(&self) -> String {
        format!("serial@{:x}", self.base)
    }
}

/// A PCIe host bridge (one segment) as its node describes it, checked.
struct PcieHost<'a> {
    bridge: &'a PciBridge,
}

impl PcieHost<'_> {
    fn node_name(&self) -> String {
        format!("pcie@{:x}", self.bridge.ecam.base)
    }
}

/// Where a PCIe host bridge's requester IDs go for DMA translation: `iommu-map = <rid_base
/// &iommu stream_id_base rid_count>` over the bridge's RID span. Filled from the plan's vSMMU of
/// the bridge's segment (at [`phandle::smmu`]); bridges without one get `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PcieIommu {
    /// The IOMMU node's phandle.
    pub phandle: u32,
    /// The StreamID of the bridge's first RID; RID `rid_base + r` has StreamID
    /// `stream_id_base + r`. A vSMMUv3's StreamID is the RID, so this is `rid_base`.
    pub stream_id_base: u32,
}

impl PcieIommu {
    /// The `iommu-map` target of `bridge` behind vSMMUv3 `smmu`: StreamID = RID.
    fn for_smmu(smmu: &VirtualSmmu, bridge: &PciBridge) -> Self {
        PcieIommu {
            phandle: phandle::smmu(smmu.index),
            stream_id_base: bridge.rid_span().0,
        }
    }
}

/// A vSMMUv3 the device tree or the IORT cannot describe.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SmmuError {
    #[error("vSMMUv3 {index}: PCI segment {segment} has no host bridge")]
    NoBridge { index: u16, segment: u16 },
    #[error("vSMMUv3 index {0} is used twice")]
    DuplicateIndex(u16),
    #[error("vSMMUv3s {first} and {second} both translate PCI segment {segment}")]
    SharedBridge {
        first: u16,
        second: u16,
        segment: u16,
    },
    #[error(
        "vSMMUv3 {index}: register window {base:#x}+{size:#x} is not {:#x} bytes at a 64 KiB boundary",
        layout::SMMU_REGISTERS_SIZE
    )]
    Registers { index: u16, base: u64, size: u64 },
    #[error("vSMMUv3 {index}: register window {base:#x}+{size:#x} overlaps {other}")]
    Overlap {
        index: u16,
        base: u64,
        size: u64,
        other: String,
    },
    #[error("vSMMUv3 {index}: SPI {spi} is beyond the GIC's {nr_irqs} interrupt IDs")]
    SpiOutOfRange { index: u16, spi: u32, nr_irqs: u32 },
    #[error("vSMMUv3 {index}: SPI {spi} is also {other}")]
    SpiInUse { index: u16, spi: u32, other: String },
    #[error("vSMMUv3 {index}: MSI window {base:#x}+{size:#x} is empty or not 64 KiB-aligned")]
    MsiWindow { index: u16, base: u64, size: u64 },
}

/// SMMUv3 register pages and RMR ranges are 64 KiB-aligned (Linux warns about RMRs that are not).
const SMMU_ALIGN: u64 = 0x1_0000;

/// Checks the plan's vSMMUv3s against each other and the rest of `platform`: each translates an
/// existing bridge of its own, its 128 KiB of registers are aligned and overlap nothing else
/// the guest sees, its three SPIs exist and are nobody else's, and its MSI window can be an RMR.
/// The device tree and the IORT both call it, so the two never describe different SMMUs.
pub(crate) fn check_smmus(platform: &Platform, nr_irqs: u32) -> Result<(), SmmuError> {
    let mut windows: Vec<(String, GuestRange)> = Vec::new();
    if let InterruptController::GicV3 {
        distributor,
        redistributors,
        its,
        ..
    } = platform.interrupt_controller
    {
        windows.push(("the GIC distributor".into(), distributor));
        windows.push(("the GIC redistributors".into(), redistributors));
        windows.push(("the GIC ITS".into(), its));
    }
    let mut spis: Vec<(String, u32)> = Vec::new();
    if let Some(serial) = platform.serial {
        if let RegisterSpace::Mmio(base) = serial.registers {
            windows.push(("the UART".into(), GuestRange::new(base, UART_REG_SIZE)));
        }
        spis.push(("the UART's".into(), serial.irq));
    }
    for range in &platform.memory {
        windows.push(("guest RAM".into(), *range));
    }
    for bridge in &platform.pci_bridges {
        let segment = bridge.segment;
        windows.push((format!("PCI segment {segment}'s ECAM"), bridge.ecam));
        windows.push((
            format!("PCI segment {segment}'s 32-bit window"),
            bridge.mmio32,
        ));
        windows.push((
            format!("PCI segment {segment}'s 64-bit window"),
            bridge.mmio64,
        ));
        for &spi in &bridge.intx {
            spis.push((format!("PCI segment {segment}'s INTx"), spi));
        }
    }

    for (i, smmu) in platform.smmus.iter().enumerate() {
        let index = smmu.index;
        let earlier = &platform.smmus[..i];
        if earlier.iter().any(|s| s.index == index) {
            return Err(SmmuError::DuplicateIndex(index));
        }
        if !platform
            .pci_bridges
            .iter()
            .any(|b| b.segment == smmu.segment)
        {
            return Err(SmmuError::NoBridge {
                index,
                segment: smmu.segment,
            });
        }
        if let Some(first) = earlier.iter().find(|s| s.segment == smmu.segment) {
            return Err(SmmuError::SharedBridge {
                first: first.index,
                second: index,
                segment: smmu.segment,
            });
        }
        let regs = smmu.registers;
        if regs.size != layout::SMMU_REGISTERS_SIZE
            || !regs.base.is_multiple_of(SMMU_ALIGN)
            || regs.base.checked_add(regs.size).is_none()
        {
            return Err(SmmuError::Registers {
                index,
                base: regs.base,
                size: regs.size,
            });
        }
        if let Some((other, _)) = windows.iter().find(|(_, w)| w.overlaps(&regs)) {
            return Err(SmmuError::Overlap {
                index,
                base: regs.base,
                size: regs.size,
                other: other.clone(),
            });
        }
        windows.push((format!("vSMMUv3 {index}'s registers"), regs));

        let own = [smmu.event_irq, smmu.gerror_irq, smmu.sync_irq];
        for (k, &spi) in own.iter().enumerate() {
            if u64::from(spi) + u64::from(SPI_BASE) >= u64::from(nr_irqs) {
                return Err(SmmuError::SpiOutOfRange {
                    index,
                    spi,
                    nr_irqs,
                });
            }
            let other = spis
                .iter()
                .find(|(_, s)| *s == spi)
                .map(|(other, _)| other.clone())
                .or_else(|| own[..k].contains(&spi).then(|| "its own".to_owned()));
            if let Some(other) = other {
                return Err(SmmuError::SpiInUse { index, spi, other });
            }
        }
        spis.extend(own.map(|spi| (format!("vSMMUv3 {index}'s"), spi)));

        let msi = smmu.msi_window;
        if msi.size == 0
            || !msi.base.is_multiple_of(SMMU_ALIGN)
            || !msi.size.is_multiple_of(SMMU_ALIGN)
            || msi.base.checked_add(msi.size).is_none()
        {
            return Err(SmmuError::MsiWindow {
                index,
                base: msi.base,
                size: msi.size,
            });
        }
    }
    Ok(())
}

/// The parts of the platform the device tree needs, checked once so node functions only encode.
struct Machine<'a> {
    platform: &'a Platform,
    gic: Gic,
    timer: ArchTimer,
    uart: Option<Uart>,
    pcie: Vec<PcieHost<'a>>,
    /// In index order (phandle order).
    smmus: Vec<&'a VirtualSmmu>,
}

impl<'a> Machine<'a> {
    fn new(platform: &'a Platform) -> Result<Self, FdtError> {
        if platform.arch != GuestArch::Aarch64 {
            return Err(FdtError::WrongArch(platform.arch));
        }
        if platform.firmware != FirmwareInterface::DeviceTree {
            return Err(FdtError::WrongFirmware(platform.firmware));
        }
        if platform.power != PowerControl::PsciHvc {
            return Err(FdtError::NotPsci(platform.power));
        }
        if platform.vcpus == 0 {
            return Err(FdtError::NoVcpus);
        }
        if platform.memory.is_empty() {
            return Err(FdtError::NoMemory);
        }
        let InterruptController::GicV3 {
            distributor,
            redistributors,
            redistributor_stride,
            its,
            nr_irqs,
        } = platform.interrupt_controller
        else {
            return Err(FdtError::NotGicV3);
        };
        if redistributor_stride == 0 || !redistributor_stride.is_multiple_of(0x1_0000) {
            return Err(FdtError::BadRedistributorStride(redistributor_stride));
        }
        let needed = u128::from(platform.vcpus) * u128::from(redistributor_stride);
        if needed > u128::from(redistributors.size) {
            return Err(FdtError::RedistributorsTooSmall {
                vcpus: platform.vcpus,
                stride: redistributor_stride,
                needed,
                size: redistributors.size,
            });
        }
        if let Some(initrd) = platform.initrd
            && initrd.base.checked_add(initrd.size).is_none()
        {
            return Err(FdtError::InitrdWraps {
                base: initrd.base,
                size: initrd.size,
            });
        }
        let timer = platform.timer.ok_or(FdtError::MissingTimer)?;
        for ppi in [
            timer.secure_phys_ppi,
            timer.nonsecure_phys_ppi,
            timer.virt_ppi,
            timer.hyp_ppi,
        ] {
            if ppi >= NR_PPIS {
                return Err(FdtError::TimerPpiOutOfRange(ppi));
            }
        }
        let uart = match platform.serial {
            None => None,
            Some(serial) => {
                let base = match serial.registers {
                    RegisterSpace::Mmio(base) => base,
                    RegisterSpace::Pio(port) => return Err(FdtError::SerialNotMmio(port)),
                };
                if u64::from(serial.irq) + u64::from(SPI_BASE) >= u64::from(nr_irqs) {
                    return Err(FdtError::SerialIrqOutOfRange {
                        spi: serial.irq,
                        nr_irqs,
                    });
                }
                Some(Uart {
                    base,
                    spi: serial.irq,
                    clock_hz: serial.clock_hz,
                })
            }
        };
        let pcie = platform
            .pci_bridges
            .iter()
            .map(|bridge| PcieHost::new(bridge, nr_irqs))
            .collect::<Result<Vec<_>, _>>()?;
        for (i, host) in pcie.iter().enumerate() {
            let segment = host.bridge.segment;
            if pcie[..i].iter().any(|h| h.bridge.segment == segment) {
                return Err(FdtError::PciDuplicateSegment(segment));
            }
        }
        check_smmus(platform, nr_irqs)?;
        let mut smmus: Vec<&VirtualSmmu> = platform.smmus.iter().collect();
        smmus.sort_by_key(|s| s.index);
        Ok(Machine {
            platform,
            gic: Gic {
                distributor,
                redistributors,
                redistributor_stride,
                its,
            },
            timer,
            uart,
            pcie,
            smmus,
        })
    }

    /// The `iommu-map` of a bridge: its segment's vSMMUv3, if it has one.
    fn pcie_iommu(&self, bridge: &PciBridge) -> Option<PcieIommu> {
        self.smmus
            .iter()
            .find(|s| s.segment == bridge.segment)
            .map(|smmu| PcieIommu::for_smmu(smmu, bridge))
    }
}

impl<'a> PcieHost<'a> {
    fn new(bridge: &'a PciBridge, nr_irqs: u32) -> Result<Self, FdtError> {
        let segment = bridge.segment;
        if bridge.bus_start > bridge.bus_end {
            return Err(FdtError::PciBusRange {
                segment,
                start: bridge.bus_start,
                end: bridge.bus_end,
            });
        }
        let buses = u64::from(bridge.bus_end - bridge.bus_start) + 1;
        let needed = buses << ECAM_BUS_SHIFT;
        if bridge.ecam.size < needed {
            return Err(FdtError::PciEcamTooSmall {
                segment,
                size: bridge.ecam.size,
                needed,
            });
        }
        // The 32-bit window's PCI addresses (identity-mapped) must fit phys.mid/lo's low word.
        for (what, window, limit) in [
            ("32-bit", bridge.mmio32, 1 << 32),
            ("64-bit", bridge.mmio64, u64::MAX),
        ] {
            let fits = window
                .base
                .checked_add(window.size)
                .is_some_and(|end| end <= limit);
            if window.size == 0 || !fits {
                return Err(FdtError::PciWindow {
                    segment,
                    what,
                    base: window.base,
                    size: window.size,
                });
            }
        }
        for &spi in &bridge.intx {
            if u64::from(spi) + u64::from(SPI_BASE) >= u64::from(nr_irqs) {
                return Err(FdtError::PciIntxOutOfRange {
                    segment,
                    spi,
                    nr_irqs,
                });
            }
        }
        Ok(PcieHost { bridge })
    }
}

/// The device tree blob for a [`FirmwareInterface::DeviceTree`] aarch64 platform.
pub fn device_tree(platform: &Platform) -> Result<Vec<u8>, FdtError> {
    let machine = Machine::new(platform)?;
    let mut fdt = FdtWriter::new()?;

    let root = fdt.begin_node("")?;
    root_properties(&mut fdt)?;
    memory_nodes(&mut fdt, &platform.memory)?;
    cpu_nodes(&mut fdt, platform.vcpus)?;
    psci_node(&mut fdt)?;
    gic_node(&mut fdt, &machine.gic)?;
    timer_node(&mut fdt, &machine.timer)?;
    if let Some(uart) = &machine.uart {
        serial_node(&mut fdt, uart)?;
    }
    for smmu in &machine.smmus {
        smmu_node(&mut fdt, smmu)?;
    }
    for host in &machine.pcie {
        pcie_node(&mut fdt, host, machine.pcie_iommu(host.bridge).as_ref())?;
    }
    if let Some(window) = machine.smmus.first().map(|s| s.msi_window) {
        msi_window_node(&mut fdt, &machine, window)?;
    }
    aliases_node(&mut fdt, &machine)?;
    chosen_node(&mut fdt, &machine)?;
    fdt.end_node(root)?;

    let blob = fdt.finish()?;
    if blob.len() as u64 > FDT_MAX_SIZE {
        return Err(FdtError::TooLarge(blob.len()));
    }
    Ok(blob)
}

/// `<base size>` pairs in the root's two-plus-two cells.
fn reg_property(fdt: &mut FdtWriter, ranges: &[GuestRange]) -> Result<(), FdtError> {
    let cells: Vec<u64> = ranges.iter().flat_map(|r| [r.base, r.size]).collect();
    fdt.property_array_u64("reg", &cells)?;
    Ok(())
}

fn root_properties(fdt: &mut FdtWriter) -> Result<(), FdtError> {
    fdt.property_string("compatible", "linux,dummy-virt")?;
    fdt.property_string("model", "microvmm")?;
    fdt.property_u32("#address-cells", ADDRESS_CELLS)?;
    fdt.property_u32("#size-cells", SIZE_CELLS)?;
    fdt.property_u32("interrupt-parent", phandle::GIC)?;
    Ok(())
}

fn memory_nodes(fdt: &mut FdtWriter, memory: &[GuestRange]) -> Result<(), FdtError> {
    for range in memory {
        let node = fdt.begin_node(&format!("memory@{:x}", range.base))?;
        fdt.property_string("device_type", "memory")?;
        reg_property(fdt, &[*range])?;
        fdt.end_node(node)?;
    }
    Ok(())
}

/// bindings/arm/cpus.yaml: `reg` is the vCPU's MPIDR_EL1 affinity.
fn cpu_nodes(fdt: &mut FdtWriter, vcpus: u32) -> Result<(), FdtError> {
    let cpus = fdt.begin_node("cpus")?;
    fdt.property_u32("#address-cells", CPU_ADDRESS_CELLS)?;
    fdt.property_u32("#size-cells", 0)?;
    for index in 0..vcpus {
        let mpidr = layout::mpidr(index);
        let cpu = fdt.begin_node(&format!("cpu@{mpidr:x}"))?;
        fdt.property_string("device_type", "cpu")?;
        fdt.property_string("compatible", "arm,arm-v8")?;
        fdt.property_string("enable-method", "psci")?;
        fdt.property_u64("reg", mpidr)?;
        fdt.end_node(cpu)?;
    }
    fdt.end_node(cpus)?;
    Ok(())
}

/// bindings/arm/psci.yaml; KVM implements PSCI 1.0 behind HVC.
fn psci_node(fdt: &mut FdtWriter) -> Result<(), FdtError> {
    let node = fdt.begin_node("psci")?;
    fdt.property_string_list(
        "compatible",
        vec!["arm,psci-1.0".to_owned(), "arm,psci-0.2".to_owned()],
    )?;
    fdt.property_string("method", "hvc")?;
    fdt.end_node(node)?;
    Ok(())
}

/// bindings/interrupt-controller/arm,gic-v3.yaml, with the ITS as a child
/// (arm,gic-v3-its.yaml).
fn gic_node(fdt: &mut FdtWriter, gic: &Gic) -> Result<(), FdtError> {
    let node = fdt.begin_node(&format!("intc@{:x}", gic.distributor.base))?;
    fdt.property_string("compatible", "arm,gic-v3")?;
    fdt.property_null("interrupt-controller")?;
    fdt.property_u32("#interrupt-cells", 3)?;
    reg_property(fdt, &[gic.distributor, gic.redistributors])?;
    fdt.property_u32("#redistributor-regions", 1)?;
    // Linux reads this as a u64.
    fdt.property_u64("redistributor-stride", gic.redistributor_stride)?;
    fdt.property_array_u32(
        "interrupts",
        &[GIC_PPI, layout::GIC_MAINTENANCE_PPI, IRQ_TYPE_LEVEL_HIGH],
    )?;
    fdt.property_u32("#address-cells", ADDRESS_CELLS)?;
    fdt.property_u32("#size-cells", SIZE_CELLS)?;
    fdt.property_null("ranges")?;
    fdt.property_phandle(phandle::GIC)?;

    let its = fdt.begin_node(&format!("its@{:x}", gic.its.base))?;
    fdt.property_string("compatible", "arm,gic-v3-its")?;
    fdt.property_null("msi-controller")?;
    fdt.property_u32("#msi-cells", 1)?;
    reg_property(fdt, &[gic.its])?;
    fdt.property_phandle(phandle::ITS)?;
    fdt.end_node(its)?;

    fdt.end_node(node)?;
    Ok(())
}

/// bindings/timer/arm,arch_timer.yaml: secure, non-secure, virtual, hypervisor physical timers.
fn timer_node(fdt: &mut FdtWriter, timer: &ArchTimer) -> Result<(), FdtError> {
    let node = fdt.begin_node("timer")?;
    fdt.property_string("compatible", "arm,armv8-timer")?;
    let cells: Vec<u32> = [
        timer.secure_phys_ppi,
        timer.nonsecure_phys_ppi,
        timer.virt_ppi,
        timer.hyp_ppi,
    ]
    .into_iter()
    .flat_map(|ppi| [GIC_PPI, ppi, IRQ_TYPE_LEVEL_HIGH])
    .collect();
    fdt.property_array_u32("interrupts", &cells)?;
    fdt.property_null("always-on")?;
    fdt.end_node(node)?;
    Ok(())
}

/// bindings/serial/8250.yaml.
fn serial_node(fdt: &mut FdtWriter, uart: &Uart) -> Result<(), FdtError> {
    let node = fdt.begin_node(&uart.node_name())?;
    fdt.property_string("compatible", "ns16550a")?;
    reg_property(fdt, &[GuestRange::new(uart.base, UART_REG_SIZE)])?;
    fdt.property_array_u32("interrupts", &[GIC_SPI, uart.spi, IRQ_TYPE_EDGE_RISING])?;
    fdt.property_u32("clock-frequency", uart.clock_hz)?;
    fdt.property_u32("reg-shift", 0)?;
    fdt.property_u32("reg-io-width", 1)?;
    fdt.end_node(node)?;
    Ok(())
}

/// bindings/iommu/arm,smmu-v3.yaml: a vSMMUv3 with its three wired interrupts, edge-triggered
/// (microvmm raises them through irqfds, as the binding's own example has them), no `priq` (no
/// PRI) and no `msi-parent` (the model does not offer MSIs, IDR0.MSI = 0); one `#iommu-cells`,
/// the StreamID, which is the RID. Coherent: the model walks guest RAM through the host's caches.
/// DT guests lack the IORT RMR (no upstream DT binding ties an identity map to a PCI function's
/// StreamID without a node per function): nothing tells them to identity-map the host MSI window
/// in stage 1, so a function's MSIs fault once its guest domain translates (identity works).
fn smmu_node(fdt: &mut FdtWriter, smmu: &VirtualSmmu) -> Result<(), FdtError> {
    let node = fdt.begin_node(&format!("iommu@{:x}", smmu.registers.base))?;
    fdt.property_string("compatible", "arm,smmu-v3")?;
    reg_property(fdt, &[smmu.registers])?;
    let cells: Vec<u32> = [smmu.event_irq, smmu.gerror_irq, smmu.sync_irq]
        .into_iter()
        .flat_map(|spi| [GIC_SPI, spi, IRQ_TYPE_EDGE_RISING])
        .collect();
    fdt.property_array_u32("interrupts", &cells)?;
    fdt.property_string_list(
        "interrupt-names",
        vec!["eventq".into(), "gerror".into(), "cmdq-sync".into()],
    )?;
    fdt.property_u32("#iommu-cells", 1)?;
    fdt.property_null("dma-coherent")?;
    fdt.property_phandle(phandle::smmu(smmu.index))?;
    fdt.end_node(node)?;
    Ok(())
}

/// bindings/pci/host-generic-pci.yaml: one ECAM host bridge per segment, devices on its root bus.
/// Memory windows are identity-mapped (PCI address = CPU address) and there is no I/O window.
/// INTx is level-triggered, active high, as a GIC SPI must be: the VMM asserts the line through a
/// resampling irqfd until the guest's EOI. `iommu` adds the bridge's `iommu-map`.
fn pcie_node(
    fdt: &mut FdtWriter,
    host: &PcieHost,
    iommu: Option<&PcieIommu>,
) -> Result<(), FdtError> {
    let bridge = host.bridge;
    let node = fdt.begin_node(&host.node_name())?;
    fdt.property_string("compatible", "pci-host-ecam-generic")?;
    fdt.property_string("device_type", "pci")?;
    reg_property(fdt, &[bridge.ecam])?;
    fdt.property_array_u32(
        "bus-range",
        &[u32::from(bridge.bus_start), u32::from(bridge.bus_end)],
    )?;
    fdt.property_u32("linux,pci-domain", u32::from(bridge.segment))?;
    fdt.property_u32("#address-cells", PCI_ADDRESS_CELLS)?;
    fdt.property_u32("#size-cells", PCI_SIZE_CELLS)?;
    let ranges: Vec<u32> = [
        (PCI_SPACE_MEM32, bridge.mmio32),
        (PCI_SPACE_MEM64_PREFETCH, bridge.mmio64),
    ]
    .into_iter()
    .flat_map(|(space, w)| {
        let (hi, lo) = ((w.base >> 32) as u32, w.base as u32);
        let (size_hi, size_lo) = ((w.size >> 32) as u32, w.size as u32);
        [space, hi, lo, hi, lo, size_hi, size_lo]
    })
    .collect();
    fdt.property_array_u32("ranges", &ranges)?;
    // bindings/pci/pci-msi.txt: RID rid_base + r -> ITS device ID msi_base + r.
    let (rid_base, rid_count) = bridge.rid_span();
    fdt.property_array_u32(
        "msi-map",
        &[rid_base, phandle::ITS, bridge.msi_base, rid_count],
    )?;
    if let Some(iommu) = iommu {
        // bindings/pci/pci-iommu.txt: RID rid_base + r -> StreamID stream_id_base + r.
        fdt.property_array_u32(
            "iommu-map",
            &[rid_base, iommu.phandle, iommu.stream_id_base, rid_count],
        )?;
    }
    fdt.property_null("dma-coherent")?;
    fdt.property_u32("#interrupt-cells", PCI_INTERRUPT_CELLS)?;
    fdt.property_array_u32("interrupt-map-mask", &PCI_INTERRUPT_MAP_MASK)?;
    fdt.property_array_u32("interrupt-map", &interrupt_map(&bridge.intx))?;
    if iommu.is_some() {
        for function in &bridge.functions {
            pci_function_node(fdt, bridge.segment, function)?;
        }
    }
    fdt.end_node(node)?;
    Ok(())
}

/// A function behind a vSMMU, so that Linux gives its `struct device` an OF node whose
/// `memory-region` names the MSI window (bindings/pci/pci.txt unit address: device,function;
/// `reg` in the bus's 3+2 cells with bus/device/function in the first).
fn pci_function_node(
    fdt: &mut FdtWriter,
    segment: u16,
    function: &crate::platform::PciFunction,
) -> Result<(), FdtError> {
    let node = fdt.begin_node(&format!(
        "dev@{:x},{:x}",
        function.device, function.function
    ))?;
    let hi = u32::from(function.bus) << 16
        | u32::from(function.device) << 11
        | u32::from(function.function) << 8;
    fdt.property_array_u32("reg", &[hi, 0, 0, 0, 0])?;
    fdt.property_u32("memory-region", phandle::MSI_WINDOW)?;
    fdt.property_phandle(phandle::pci_function(segment, function.rid))?;
    fdt.end_node(node)?;
    Ok(())
}

/// The host kernel's MSI window, which a nested vSMMU's guest must identity-map in stage 1 (the
/// device tree's RMR): a `no-map` reserved-memory region whose `iommu-addresses` name every
/// function behind a vSMMU at IOVA = its address (bindings/reserved-memory/reserved-memory.yaml;
/// Linux turns it into an IOMMU_RESV_DIRECT region, drivers/iommu/of_iommu.c). Each entry is in
/// the function's bus cells: a 3-cell PCI address (flags 0) and a 2-cell size.
fn msi_window_node(
    fdt: &mut FdtWriter,
    machine: &Machine,
    window: GuestRange,
) -> Result<(), FdtError> {
    let parent = fdt.begin_node("reserved-memory")?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_null("ranges")?;
    let node = fdt.begin_node(&format!("msi-window@{:x}", window.base))?;
    reg_property(fdt, &[window])?;
    fdt.property_null("no-map")?;
    let mut cells = Vec::new();
    for smmu in &machine.smmus {
        let Some(host) = machine
            .pcie
            .iter()
            .find(|h| h.bridge.segment == smmu.segment)
        else {
            continue;
        };
        for function in &host.bridge.functions {
            cells.extend([
                phandle::pci_function(smmu.segment, function.rid),
                0,
                (window.base >> 32) as u32,
                window.base as u32,
                (window.size >> 32) as u32,
                window.size as u32,
            ]);
        }
    }
    fdt.property_array_u32("iommu-addresses", &cells)?;
    fdt.property_phandle(phandle::MSI_WINDOW)?;
    fdt.end_node(node)?;
    fdt.end_node(parent)?;
    Ok(())
}

/// `interrupt-map` entries for slots 0..4 and pins INTA..INTD (1..=4): child unit address (3
/// cells) and pin, then the GIC's phandle, its unit address (zero in each of its
/// `#address-cells`) and a three-cell SPI specifier. Slot `d` pin `p` (0-based) takes
/// `intx[(d + p) % 4]`, the PCI-to-PCI bridge swizzle (PCI Express Base spec §2.2.8.1).
fn interrupt_map(intx: &[u32; 4]) -> Vec<u32> {
    let mut cells = Vec::new();
    for device in 0..PCI_SWIZZLE_SLOTS {
        for pin in 0..4 {
            let spi = intx[((device + pin) % 4) as usize];
            cells.extend_from_slice(&[device << PCI_DEVICE_SHIFT, 0, 0, pin + 1]);
            cells.push(phandle::GIC);
            cells.extend(std::iter::repeat_n(0, ADDRESS_CELLS as usize));
            cells.extend_from_slice(&[GIC_SPI, spi, IRQ_TYPE_LEVEL_HIGH]);
        }
    }
    cells
}

/// `serial0` pins the UART to ttyS0 whatever order drivers probe in.
fn aliases_node(fdt: &mut FdtWriter, machine: &Machine) -> Result<(), FdtError> {
    let Some(uart) = &machine.uart else {
        return Ok(());
    };
    let node = fdt.begin_node("aliases")?;
    fdt.property_string("serial0", &format!("/{}", uart.node_name()))?;
    fdt.end_node(node)?;
    Ok(())
}

/// bindings/chosen.yaml.
fn chosen_node(fdt: &mut FdtWriter, machine: &Machine) -> Result<(), FdtError> {
    let node = fdt.begin_node("chosen")?;
    fdt.property_string("bootargs", &machine.platform.cmdline)?;
    if let Some(initrd) = machine.platform.initrd {
        fdt.property_u64("linux,initrd-start", initrd.base)?;
        fdt.property_u64("linux,initrd-end", initrd.end())?;
    }
    if let Some(uart) = &machine.uart {
        fdt.property_string("stdout-path", &format!("/{}", uart.node_name()))?;
    }
    fdt.end_node(node)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::io::Write;
    use std::process::{Command, Stdio};

    use super::*;
    use crate::acpi::testutil::{aarch64_pci_bridges, aarch64_smmus, fnv1a};
    use crate::platform::SerialPort;

    /// A device tree decoded by dtc: node path -> properties in order, each as dtc prints its
    /// value (`<0x00 0x01>`, `"text"`, or empty for a boolean property).
    struct Dts {
        nodes: BTreeMap<String, Vec<(String, String)>>,
        text: String,
    }

    impl Dts {
        fn decode(blob: &[u8]) -> Dts {
            let mut child = Command::new("dtc")
                .args(["-I", "dtb", "-O", "dts", "-o", "-", "-"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("run dtc (/usr/bin/dtc)");
            child.stdin.take().unwrap().write_all(blob).unwrap();
            let out = child.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "dtc failed: {stderr}");
            // dtc runs its binding checks on dtb input too; the tree must pass them cleanly.
            assert!(stderr.trim().is_empty(), "dtc warnings:\n{stderr}");
            let text = String::from_utf8(out.stdout).unwrap();
            Dts::parse(text)
        }

        fn parse(text: String) -> Dts {
            let mut nodes = BTreeMap::new();
            let mut stack: Vec<String> = Vec::new();
            for line in text.lines().map(str::trim) {
                if line.is_empty() || line.starts_with("/dts-v1/") {
                    continue;
                }
                if let Some(name) = line.strip_suffix(" {") {
                    let path = match stack.last() {
                        None => "/".to_owned(),
                        Some(parent) if parent == "/" => format!("/{name}"),
                        Some(parent) => format!("{parent}/{name}"),
                    };
                    assert!(
                        nodes.insert(path.clone(), Vec::new()).is_none(),
                        "{path} twice"
                    );
                    stack.push(path);
                } else if line == "};" {
                    stack.pop().expect("unbalanced dts");
                } else {
                    let statement = line.strip_suffix(';').expect("statement ends with ;");
                    let (name, value) = statement.split_once(" = ").unwrap_or((statement, ""));
                    let node = stack.last().expect("property outside a node");
                    nodes
                        .get_mut(node)
                        .unwrap()
                        .push((name.to_owned(), value.to_owned()));
                }
            }
            assert!(stack.is_empty(), "unbalanced dts");
            Dts { nodes, text }
        }

        fn props(&self, path: &str) -> &[(String, String)] {
            self.nodes
                .get(path)
                .unwrap_or_else(|| panic!("no node {path} in\n{}", self.text))
        }

        fn prop(&self, path: &str, name: &str) -> Option<&str> {
            self.props(path)
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }

        /// The property's value, which must exist.
        fn get(&self, path: &str, name: &str) -> &str {
            self.prop(path, name)
                .unwrap_or_else(|| panic!("no {path}:{name} in\n{}", self.text))
        }

        fn prop_names(&self, path: &str) -> Vec<&str> {
            self.props(path).iter().map(|(n, _)| n.as_str()).collect()
        }

        /// The names of `path`'s direct children.
        fn children(&self, path: &str) -> Vec<&str> {
            let prefix = if path == "/" {
                "/".to_owned()
            } else {
                format!("{path}/")
            };
            self.nodes
                .keys()
                .filter_map(|p| p.strip_prefix(&prefix))
                .filter(|rest| !rest.is_empty() && !rest.contains('/'))
                .collect()
        }
    }

    /// dtc's rendering of 32-bit cells.
    fn cells(values: &[u32]) -> String {
        let parts: Vec<String> = values.iter().map(|v| format!("{v:#04x}")).collect();
        format!("<{}>", parts.join(" "))
    }

    /// dtc's rendering of 64-bit values, two cells each.
    fn cells64(values: &[u64]) -> String {
        let split: Vec<u32> = values
            .iter()
            .flat_map(|v| [(v >> 32) as u32, *v as u32])
            .collect();
        cells(&split)
    }

    fn quoted(s: &str) -> String {
        format!("\"{s}\"")
    }

    fn platform(vcpus: u32) -> Platform {
        Platform {
            arch: GuestArch::Aarch64,
            firmware: FirmwareInterface::DeviceTree,
            vcpus,
            memory: vec![GuestRange::new(layout::RAM_BASE, 0x1000_0000)],
            interrupt_controller: InterruptController::GicV3 {
                distributor: layout::GIC_DIST,
                redistributors: layout::gic_redistributors(vcpus),
                redistributor_stride: layout::GIC_REDIST_STRIDE,
                its: layout::GIC_ITS,
                nr_irqs: layout::GIC_NR_IRQS,
            },
            timer: Some(ArchTimer {
                secure_phys_ppi: layout::TIMER_SECURE_PHYS_PPI,
                nonsecure_phys_ppi: layout::TIMER_NONSECURE_PHYS_PPI,
                virt_ppi: layout::TIMER_VIRT_PPI,
                hyp_ppi: layout::TIMER_HYP_PPI,
            }),
            serial: Some(SerialPort {
                registers: RegisterSpace::Mmio(layout::UART.base),
                irq: layout::UART_SPI,
                clock_hz: layout::UART_CLOCK_HZ,
            }),
            power: PowerControl::PsciHvc,
            cmdline: "console=ttyS0 earlycon root=/dev/vda rw".to_owned(),
            pci_bridges: Vec::new(),
            smmus: Vec::new(),
            initrd: None,
        }
    }

    fn decode(platform: &Platform) -> Dts {
        let blob = device_tree(platform).expect("device tree");
        // The header magic and size say it is a whole FDT.
        assert_eq!(blob[0..4], 0xd00d_feedu32.to_be_bytes());
        assert_eq!(blob[4..8], (blob.len() as u32).to_be_bytes());
        Dts::decode(&blob)
    }

    #[test]
    fn one_vcpu_tree_node_by_node() {
        let dts = decode(&platform(1));

        assert_eq!(
            dts.children("/"),
            [
                "aliases",
                "chosen",
                "cpus",
                "intc@8000000",
                "memory@40000000",
                "psci",
                "serial@9000000",
                "timer"
            ]
        );

        assert_eq!(
            dts.prop_names("/"),
            [
                "compatible",
                "model",
                "#address-cells",
                "#size-cells",
                "interrupt-parent"
            ]
        );
        assert_eq!(dts.get("/", "compatible"), quoted("linux,dummy-virt"));
        assert_eq!(dts.get("/", "model"), quoted("microvmm"));
        assert_eq!(dts.get("/", "#address-cells"), cells(&[2]));
        assert_eq!(dts.get("/", "#size-cells"), cells(&[2]));

        let mem = "/memory@40000000";
        assert_eq!(dts.prop_names(mem), ["device_type", "reg"]);
        assert_eq!(dts.get(mem, "device_type"), quoted("memory"));
        assert_eq!(dts.get(mem, "reg"), cells64(&[0x4000_0000, 0x1000_0000]));

        assert_eq!(dts.get("/cpus", "#address-cells"), cells(&[2]));
        assert_eq!(dts.get("/cpus", "#size-cells"), cells(&[0]));
        assert_eq!(dts.children("/cpus"), ["cpu@0"]);
        let cpu = "/cpus/cpu@0";
        assert_eq!(
            dts.prop_names(cpu),
            ["device_type", "compatible", "enable-method", "reg"]
        );
        assert_eq!(dts.get(cpu, "device_type"), quoted("cpu"));
        assert_eq!(dts.get(cpu, "compatible"), quoted("arm,arm-v8"));
        assert_eq!(dts.get(cpu, "enable-method"), quoted("psci"));
        assert_eq!(dts.get(cpu, "reg"), cells(&[0, 0]));

        assert_eq!(
            dts.get("/psci", "compatible"),
            "\"arm,psci-1.0\\0arm,psci-0.2\""
        );
        assert_eq!(dts.get("/psci", "method"), quoted("hvc"));

        let gic = "/intc@8000000";
        assert_eq!(dts.get(gic, "compatible"), quoted("arm,gic-v3"));
        assert_eq!(dts.get(gic, "interrupt-controller"), "");
        assert_eq!(dts.get(gic, "#interrupt-cells"), cells(&[3]));
        assert_eq!(
            dts.get(gic, "reg"),
            cells64(&[0x0800_0000, 0x1_0000, 0x080a_0000, 0x2_0000])
        );
        assert_eq!(dts.get(gic, "#redistributor-regions"), cells(&[1]));
        assert_eq!(dts.get(gic, "redistributor-stride"), cells64(&[0x2_0000]));
        assert_eq!(dts.get(gic, "interrupts"), cells(&[1, 9, 4]));
        assert_eq!(dts.get(gic, "#address-cells"), cells(&[2]));
        assert_eq!(dts.get(gic, "#size-cells"), cells(&[2]));
        assert_eq!(dts.get(gic, "ranges"), "");
        assert_eq!(dts.get(gic, "phandle"), cells(&[phandle::GIC]));
        assert_eq!(dts.children(gic), ["its@8080000"]);

        let its = "/intc@8000000/its@8080000";
        assert_eq!(
            dts.prop_names(its),
            [
                "compatible",
                "msi-controller",
                "#msi-cells",
                "reg",
                "phandle"
            ]
        );
        assert_eq!(dts.get(its, "compatible"), quoted("arm,gic-v3-its"));
        assert_eq!(dts.get(its, "msi-controller"), "");
        assert_eq!(dts.get(its, "#msi-cells"), cells(&[1]));
        assert_eq!(dts.get(its, "reg"), cells64(&[0x0808_0000, 0x2_0000]));
        assert_eq!(dts.get(its, "phandle"), cells(&[phandle::ITS]));

        assert_eq!(dts.get("/timer", "compatible"), quoted("arm,armv8-timer"));
        assert_eq!(
            dts.get("/timer", "interrupts"),
            cells(&[1, 13, 4, 1, 14, 4, 1, 11, 4, 1, 10, 4])
        );
        assert_eq!(dts.get("/timer", "always-on"), "");

        let uart = "/serial@9000000";
        assert_eq!(dts.get(uart, "compatible"), quoted("ns16550a"));
        assert_eq!(dts.get(uart, "reg"), cells64(&[0x0900_0000, 0x1000]));
        assert_eq!(dts.get(uart, "interrupts"), cells(&[0, 1, 1]));
        assert_eq!(dts.get(uart, "clock-frequency"), cells(&[1_843_200]));
        assert_eq!(dts.get(uart, "reg-shift"), cells(&[0]));
        assert_eq!(dts.get(uart, "reg-io-width"), cells(&[1]));

        assert_eq!(dts.get("/aliases", "serial0"), quoted("/serial@9000000"));

        assert_eq!(dts.prop_names("/chosen"), ["bootargs", "stdout-path"]);
        assert_eq!(
            dts.get("/chosen", "bootargs"),
            quoted("console=ttyS0 earlycon root=/dev/vda rw")
        );
        assert_eq!(dts.get("/chosen", "stdout-path"), quoted("/serial@9000000"));
    }

    #[test]
    fn several_vcpus_reg_is_mpidr() {
        let vcpus = 20;
        let dts = decode(&platform(vcpus));
        let mut expected: Vec<String> = (0..vcpus)
            .map(|i| format!("cpu@{:x}", layout::mpidr(i)))
            .collect();
        expected.sort();
        assert_eq!(dts.children("/cpus"), expected);
        for i in 0..vcpus {
            let mpidr = layout::mpidr(i);
            let path = format!("/cpus/cpu@{mpidr:x}");
            assert_eq!(dts.get(&path, "reg"), cells64(&[mpidr]), "vCPU {i}");
            assert_eq!(dts.get(&path, "enable-method"), quoted("psci"));
        }
        // vCPU 16 is Aff1 = 1.
        assert_eq!(dts.get("/cpus/cpu@100", "reg"), cells(&[0, 0x100]));
        // The redistributor region covers every vCPU.
        assert_eq!(
            dts.get("/intc@8000000", "reg"),
            cells64(&[0x0800_0000, 0x1_0000, 0x080a_0000, 20 * 0x2_0000])
        );
    }

    #[test]
    fn every_memory_region_gets_a_node() {
        let mut p = platform(2);
        p.memory = vec![
            GuestRange::new(0x4000_0000, 0x8000_0000),
            GuestRange::new(0x1_0000_0000, 0x2_0000_0000),
        ];
        let dts = decode(&p);
        assert_eq!(
            dts.get("/memory@40000000", "reg"),
            cells64(&[0x4000_0000, 0x8000_0000])
        );
        assert_eq!(
            dts.get("/memory@100000000", "reg"),
            cells64(&[0x1_0000_0000, 0x2_0000_0000])
        );
        assert_eq!(
            dts.get("/memory@100000000", "device_type"),
            quoted("memory")
        );
        let memory_nodes = dts
            .children("/")
            .iter()
            .filter(|n| n.starts_with("memory@"))
            .count();
        assert_eq!(memory_nodes, 2);
    }

    #[test]
    fn initrd_present_and_absent() {
        let mut p = platform(1);
        let dts = decode(&p);
        assert_eq!(dts.prop("/chosen", "linux,initrd-start"), None);
        assert_eq!(dts.prop("/chosen", "linux,initrd-end"), None);

        p.initrd = Some(GuestRange::new(0x4f00_0000, 0x12_3456));
        let dts = decode(&p);
        assert_eq!(
            dts.get("/chosen", "linux,initrd-start"),
            cells64(&[0x4f00_0000])
        );
        assert_eq!(
            dts.get("/chosen", "linux,initrd-end"),
            cells64(&[0x4f12_3456])
        );
    }

    #[test]
    fn no_serial_no_stdout_path() {
        let mut p = platform(1);
        p.serial = None;
        let dts = decode(&p);
        assert!(!dts.children("/").iter().any(|n| n.starts_with("serial")));
        assert!(!dts.children("/").contains(&"aliases"));
        assert_eq!(dts.prop("/chosen", "stdout-path"), None);
        assert!(dts.prop("/chosen", "bootargs").is_some());
    }

    #[test]
    fn stdout_path_follows_the_uart() {
        let mut p = platform(1);
        p.serial = Some(SerialPort {
            registers: RegisterSpace::Mmio(0x0900_1000),
            irq: 7,
            clock_hz: 24_000_000,
        });
        let dts = decode(&p);
        assert_eq!(dts.get("/chosen", "stdout-path"), quoted("/serial@9001000"));
        assert_eq!(dts.get("/aliases", "serial0"), quoted("/serial@9001000"));
        assert_eq!(dts.get("/serial@9001000", "interrupts"), cells(&[0, 7, 1]));
        assert_eq!(
            dts.get("/serial@9001000", "clock-frequency"),
            cells(&[24_000_000])
        );
    }

    #[test]
    fn phandle_references_resolve() {
        let dts = decode(&platform(4));
        // Every phandle is unique, and the root's interrupt-parent is the GIC's.
        let mut owners = BTreeMap::new();
        for (path, props) in &dts.nodes {
            for (name, value) in props {
                if name == "phandle" {
                    assert!(
                        owners.insert(value.clone(), path.clone()).is_none(),
                        "{value}"
                    );
                }
            }
        }
        assert_eq!(owners.len(), 2);
        let parent = dts.get("/", "interrupt-parent");
        let target = &owners[parent];
        assert_eq!(target, "/intc@8000000");
        assert_eq!(dts.get(target, "compatible"), quoted("arm,gic-v3"));
        assert_eq!(owners[&cells(&[phandle::ITS])], "/intc@8000000/its@8080000");
        // Nothing else names its own interrupt-parent.
        let others: Vec<_> = dts
            .nodes
            .iter()
            .filter(|(path, props)| {
                path.as_str() != "/" && props.iter().any(|(n, _)| n == "interrupt-parent")
            })
            .collect();
        assert!(others.is_empty(), "{others:?}");
    }

    #[test]
    fn phandle_scheme_is_disjoint() {
        let fixed = [phandle::GIC, phandle::ITS];
        assert!(fixed.iter().all(|&p| p != 0 && p < phandle::SMMU_BASE));
        assert_eq!(phandle::smmu(0), phandle::SMMU_BASE);
        assert_eq!(phandle::smmu(u16::MAX), phandle::SMMU_BASE + 0xffff);
    }

    /// The platform with `n` PCIe host bridges from the shared fixtures.
    fn pci_platform(vcpus: u32, n: u16) -> Platform {
        let mut p = platform(vcpus);
        p.pci_bridges = aarch64_pci_bridges(n);
        p
    }

    /// dtc's cells as numbers.
    fn parse_cells(value: &str) -> Vec<u32> {
        let inner = value
            .strip_prefix('<')
            .and_then(|v| v.strip_suffix('>'))
            .unwrap_or_else(|| panic!("{value} is not one cell list"));
        inner
            .split_whitespace()
            .map(|c| u32::from_str_radix(c.trim_start_matches("0x"), 16).unwrap())
            .collect()
    }

    #[test]
    fn no_bridges_tree_is_byte_identical_to_before() {
        // Digests of the trees this encoder produced before PCI support; a PCI-less guest must
        // see exactly the same blob. Update only for an intended change to PCI-less trees.
        for (vcpus, len, digest) in [
            (1, 1538, 0xc3ff_0245_0799_30c8u64),
            (4, 1826, 0x0e87_a43f_3f6b_9c4f),
        ] {
            let blob = device_tree(&platform(vcpus)).unwrap();
            assert_eq!((blob.len(), fnv1a(&blob)), (len, digest), "{vcpus} vCPUs");
        }
        // And bridges change nothing outside their own nodes.
        let plain = decode(&platform(2));
        let with_pci = decode(&pci_platform(2, 3));
        for (path, props) in &plain.nodes {
            assert_eq!(with_pci.props(path), props.as_slice(), "{path}");
        }
        let extra: Vec<&String> = with_pci
            .nodes
            .keys()
            .filter(|p| !plain.nodes.contains_key(*p))
            .collect();
        assert_eq!(
            extra,
            ["/pcie@4000000000", "/pcie@4010000000", "/pcie@4020000000"]
        );
    }

    #[test]
    fn pcie_nodes_one_and_three_bridges() {
        for n in [1, 3] {
            let p = pci_platform(2, n);
            let dts = decode(&p);
            let pcie: Vec<&str> = dts
                .children("/")
                .into_iter()
                .filter(|c| c.starts_with("pcie@"))
                .collect();
            assert_eq!(pcie.len(), usize::from(n));
            for bridge in &p.pci_bridges {
                let path = format!("/pcie@{:x}", bridge.ecam.base);
                check_pcie_node(&dts, &path, bridge, None);
            }
        }
    }

    /// Every property of one host bridge node, computed here from the bridge independently of
    /// the encoder; `iommu` is the phandle its `iommu-map` must name, if it has one.
    fn check_pcie_node(dts: &Dts, path: &str, bridge: &PciBridge, iommu: Option<u32>) {
        let mut names = vec![
            "compatible",
            "device_type",
            "reg",
            "bus-range",
            "linux,pci-domain",
            "#address-cells",
            "#size-cells",
            "ranges",
            "msi-map",
            "dma-coherent",
            "#interrupt-cells",
            "interrupt-map-mask",
            "interrupt-map",
        ];
        if iommu.is_some() {
            names.insert(9, "iommu-map");
        }
        assert_eq!(dts.prop_names(path), names, "{path}");
        assert_eq!(dts.get(path, "compatible"), quoted("pci-host-ecam-generic"));
        assert_eq!(dts.get(path, "device_type"), quoted("pci"));
        let buses = u64::from(bridge.bus_end) - u64::from(bridge.bus_start) + 1;
        assert_eq!(
            dts.get(path, "reg"),
            cells64(&[bridge.ecam.base, buses << 20])
        );
        assert_eq!(
            dts.get(path, "bus-range"),
            cells(&[bridge.bus_start.into(), bridge.bus_end.into()])
        );
        assert_eq!(
            dts.get(path, "linux,pci-domain"),
            cells(&[bridge.segment.into()])
        );
        assert_eq!(dts.get(path, "#address-cells"), cells(&[3]));
        assert_eq!(dts.get(path, "#size-cells"), cells(&[2]));

        // <phys.hi phys.mid phys.lo  cpu.hi cpu.lo  size.hi size.lo> per window.
        let ranges = parse_cells(dts.get(path, "ranges"));
        assert_eq!(ranges.len(), 14, "{path}: two windows, no I/O");
        let window = |cells: &[u32]| {
            let pci = u64::from(cells[1]) << 32 | u64::from(cells[2]);
            let cpu = u64::from(cells[3]) << 32 | u64::from(cells[4]);
            let size = u64::from(cells[5]) << 32 | u64::from(cells[6]);
            (cells[0], pci, cpu, size)
        };
        let m32 = bridge.mmio32;
        let m64 = bridge.mmio64;
        assert_eq!(
            window(&ranges[..7]),
            (0x0200_0000, m32.base, m32.base, m32.size)
        );
        assert_eq!(
            window(&ranges[7..]),
            (0x4300_0000, m64.base, m64.base, m64.size)
        );

        assert_eq!(
            dts.get(path, "msi-map"),
            cells(&[
                bridge.rid_span().0,
                phandle::ITS,
                bridge.msi_base,
                bridge.rid_span().1
            ])
        );
        // StreamID = RID over the whole RID span.
        let (rid_base, rid_count) = bridge.rid_span();
        let iommu_map = iommu.map(|phandle| cells(&[rid_base, phandle, rid_base, rid_count]));
        assert_eq!(dts.prop(path, "iommu-map"), iommu_map.as_deref(), "{path}");
        assert_eq!(dts.get(path, "dma-coherent"), "");
        assert_eq!(dts.get(path, "#interrupt-cells"), cells(&[1]));
        assert_eq!(
            dts.get(path, "interrupt-map-mask"),
            cells(&[0x1800, 0, 0, 7])
        );

        // 3 address + 1 pin cells, GIC phandle, 2 GIC address cells, 3 specifier cells.
        let map = parse_cells(dts.get(path, "interrupt-map"));
        assert_eq!(map.len(), 16 * 10, "{path}");
        let mut seen = Vec::new();
        for entry in map.chunks(10) {
            let device = entry[0] >> 11;
            let pin = entry[3];
            assert_eq!(entry[0] & !0xf800, 0, "bus and function are masked off");
            assert_eq!(entry[1..3], [0, 0]);
            assert!((1..=4).contains(&pin), "{entry:?}");
            assert_eq!(entry[4], phandle::GIC);
            assert_eq!(entry[5..7], [0, 0], "GIC unit address");
            let swizzled = bridge.intx[((device + pin - 1) % 4) as usize];
            assert_eq!(
                entry[7..],
                [0, swizzled, 4],
                "{path}: device {device} INT{} is SPI {swizzled}, level high",
                char::from(b'A' + pin as u8 - 1)
            );
            seen.push((device, pin));
        }
        seen.sort();
        let all: Vec<(u32, u32)> = (0..4).flat_map(|d| (1..=4).map(move |p| (d, p))).collect();
        assert_eq!(seen, all, "every slot mod 4 and pin, once");
    }

    #[test]
    fn msi_map_targets_the_its_of_each_bridge() {
        let p = pci_platform(1, 3);
        let dts = decode(&p);
        let its = "/intc@8000000/its@8080000";
        for bridge in &p.pci_bridges {
            let path = format!("/pcie@{:x}", bridge.ecam.base);
            let map = parse_cells(dts.get(&path, "msi-map"));
            assert_eq!(dts.get(its, "phandle"), cells(&[map[1]]));
            assert_eq!(map[2], bridge.msi_base);
        }
        // Distinct segments, distinct device ID ranges.
        let bases: Vec<u32> = p.pci_bridges.iter().map(|b| b.msi_base).collect();
        assert_eq!(bases, [0, 0x1_0000, 0x2_0000]);
    }

    #[test]
    fn swizzle_by_hand() {
        // Slot 1 INTA lands on the bridge's INTB line; slot 3 INTD on INTC.
        let map = interrupt_map(&[40, 41, 42, 43]);
        let spi = |device: u32, pin: u32| {
            map.chunks(10)
                .find(|e| e[0] == device << 11 && e[3] == pin)
                .map(|e| e[8])
                .unwrap()
        };
        assert_eq!(spi(0, 1), 40);
        assert_eq!(spi(1, 1), 41);
        assert_eq!(spi(3, 4), 42);
        assert_eq!(spi(2, 3), 40);
    }

    #[test]
    fn iommu_map_hook() {
        // The vSMMUv3 issue passes the bridge's SMMU; the node then carries an iommu-map.
        let p = pci_platform(1, 1);
        let machine = Machine::new(&p).unwrap();
        let mut fdt = FdtWriter::new().unwrap();
        let root = fdt.begin_node("").unwrap();
        root_properties(&mut fdt).unwrap();
        gic_node(&mut fdt, &machine.gic).unwrap();
        let smmu = fdt.begin_node("iommu@a000000").unwrap();
        fdt.property_string("compatible", "arm,smmu-v3").unwrap();
        reg_property(&mut fdt, &[GuestRange::new(0x0a00_0000, 0x2_0000)]).unwrap();
        fdt.property_u32("#iommu-cells", 1).unwrap();
        fdt.property_phandle(phandle::smmu(0)).unwrap();
        fdt.end_node(smmu).unwrap();
        let iommu = PcieIommu {
            phandle: phandle::smmu(0),
            stream_id_base: 0x100,
        };
        pcie_node(&mut fdt, &machine.pcie[0], Some(&iommu)).unwrap();
        fdt.end_node(root).unwrap();
        let dts = Dts::decode(&fdt.finish().unwrap());
        let path = "/pcie@4000000000";
        assert_eq!(
            dts.get(path, "iommu-map"),
            cells(&[0, phandle::smmu(0), 0x100, 0x1_0000])
        );
        // Right after msi-map, everything else unchanged.
        let names = dts.prop_names(path);
        let at = names.iter().position(|n| *n == "iommu-map").unwrap();
        assert_eq!(names[at - 1], "msi-map");
        assert_eq!(names[at + 1], "dma-coherent");
    }

    #[test]
    fn rejects_bridges_it_cannot_describe() {
        let check = |edit: fn(&mut PciBridge), want: fn(&FdtError) -> bool| {
            let mut p = pci_platform(1, 2);
            edit(&mut p.pci_bridges[1]);
            let err = device_tree(&p).expect_err("must fail");
            assert!(want(&err), "unexpected {err:?}");
            assert!(err.to_string().starts_with("PCI segment "), "{err}");
        };
        check(
            |b| (b.bus_start, b.bus_end) = (0x20, 0x1f),
            |e| matches!(e, FdtError::PciBusRange { start: 0x20, .. }),
        );
        check(
            |b| b.ecam.size -= 1,
            |e| {
                matches!(
                    e,
                    FdtError::PciEcamTooSmall {
                        needed: 0x100_0000,
                        ..
                    }
                )
            },
        );
        check(
            |b| b.mmio32.base = 0xffff_0000,
            |e| matches!(e, FdtError::PciWindow { what: "32-bit", .. }),
        );
        check(
            |b| b.mmio64.size = 0,
            |e| matches!(e, FdtError::PciWindow { what: "64-bit", .. }),
        );
        check(
            |b| b.intx[3] = layout::GIC_NR_IRQS - 32,
            |e| matches!(e, FdtError::PciIntxOutOfRange { spi: 224, .. }),
        );
        check(
            |b| b.segment = 0,
            |e| matches!(e, FdtError::PciDuplicateSegment(0)),
        );
        // The last SPI the GIC has is fine.
        let mut p = pci_platform(1, 1);
        p.pci_bridges[0].intx[0] = layout::GIC_NR_IRQS - 33;
        device_tree(&p).unwrap();
    }

    #[test]
    fn blob_fits_the_boot_protocol_even_at_max_vcpus() {
        let blob = device_tree(&platform(layout::MAX_VCPUS)).unwrap();
        assert!(blob.len() as u64 <= FDT_MAX_SIZE);
        let dts = Dts::decode(&blob);
        assert_eq!(dts.children("/cpus").len(), layout::MAX_VCPUS as usize);
    }

    #[test]
    fn rejects_platforms_it_cannot_describe() {
        let check = |p: Platform, want: fn(&FdtError) -> bool| {
            let err = device_tree(&p).expect_err("must fail");
            assert!(want(&err), "unexpected {err:?}");
            assert!(!err.to_string().is_empty());
        };

        let mut p = platform(1);
        p.arch = GuestArch::X86_64;
        check(p, |e| matches!(e, FdtError::WrongArch(GuestArch::X86_64)));

        let mut p = platform(1);
        p.firmware = FirmwareInterface::Acpi;
        check(p, |e| {
            matches!(e, FdtError::WrongFirmware(FirmwareInterface::Acpi))
        });

        let mut p = platform(1);
        p.interrupt_controller = InterruptController::X86Apic {
            lapic: 0xfee0_0000,
            ioapic: 0xfec0_0000,
            ioapic_pins: 24,
        };
        check(p, |e| matches!(e, FdtError::NotGicV3));

        let mut p = platform(1);
        p.timer = None;
        check(p, |e| matches!(e, FdtError::MissingTimer));

        let mut p = platform(1);
        if let Some(t) = &mut p.timer {
            t.hyp_ppi = 16;
        }
        check(p, |e| matches!(e, FdtError::TimerPpiOutOfRange(16)));

        let mut p = platform(1);
        p.power = PowerControl::AcpiPorts {
            sleep_control: 0x3c0,
            sleep_status: 0x3c1,
            reset: 0x3c2,
            reset_value: 1,
            s5_sleep_type: 5,
        };
        check(p, |e| matches!(e, FdtError::NotPsci(_)));

        check(platform(0), |e| matches!(e, FdtError::NoVcpus));

        let mut p = platform(1);
        p.memory.clear();
        check(p, |e| matches!(e, FdtError::NoMemory));

        let mut p = platform(4);
        p.interrupt_controller = InterruptController::GicV3 {
            distributor: layout::GIC_DIST,
            redistributors: layout::gic_redistributors(3),
            redistributor_stride: layout::GIC_REDIST_STRIDE,
            its: layout::GIC_ITS,
            nr_irqs: layout::GIC_NR_IRQS,
        };
        check(p, |e| {
            matches!(e, FdtError::RedistributorsTooSmall { vcpus: 4, .. })
        });

        let mut p = platform(1);
        if let InterruptController::GicV3 {
            redistributor_stride,
            ..
        } = &mut p.interrupt_controller
        {
            *redistributor_stride = 0x1000;
        }
        check(p, |e| matches!(e, FdtError::BadRedistributorStride(0x1000)));

        let mut p = platform(1);
        p.serial = Some(SerialPort {
            registers: RegisterSpace::Pio(0x3f8),
            irq: 4,
            clock_hz: layout::UART_CLOCK_HZ,
        });
        check(p, |e| matches!(e, FdtError::SerialNotMmio(0x3f8)));

        let mut p = platform(1);
        if let Some(s) = &mut p.serial {
            s.irq = layout::GIC_NR_IRQS - 32;
        }
        check(p, |e| {
            matches!(
                e,
                FdtError::SerialIrqOutOfRange {
                    spi: 224,
                    nr_irqs: 256
                }
            )
        });

        let mut p = platform(1);
        p.initrd = Some(GuestRange::new(u64::MAX - 0xfff, 0x1000));
        check(p, |e| matches!(e, FdtError::InitrdWraps { .. }));

        let mut p = platform(1);
        p.cmdline = "console=ttyS0\0root=/dev/vda".to_owned();
        check(p, |e| {
            matches!(e, FdtError::Writer(vm_fdt::Error::InvalidString))
        });
    }

    #[test]
    fn dts_helper_sees_what_it_should() {
        // The helper itself must be able to fail: a missing node or a wrong value is visible.
        let dts = decode(&platform(1));
        assert!(!dts.nodes.contains_key("/cpus/cpu@1"));
        assert_ne!(dts.get("/cpus/cpu@0", "reg"), cells(&[0, 1]));
        assert_eq!(cells(&[0, 0x1c2000]), "<0x00 0x1c2000>");
        assert_eq!(cells64(&[0x1_0000_0002]), "<0x01 0x02>");
    }

    /// A DT platform with `bridges` bridges and vSMMUv3 `i` in front of `segments[i]`.
    fn smmu_platform(bridges: u16, segments: &[u16]) -> Platform {
        let mut p = pci_platform(2, bridges);
        p.smmus = aarch64_smmus(segments);
        p
    }

    const SMMU_CASES: [(u16, &[u16]); 4] = [(1, &[0]), (3, &[0, 1, 2]), (2, &[0]), (2, &[1])];

    #[test]
    fn vsmmu_nodes_and_iommu_maps_node_by_node() {
        for (bridges, segments) in SMMU_CASES {
            let p = smmu_platform(bridges, segments);
            let what = format!("{bridges} bridges, vSMMUs on {segments:?}");
            let dts = decode(&p);
            let iommus: Vec<&str> = dts
                .children("/")
                .into_iter()
                .filter(|c| c.starts_with("iommu@"))
                .collect();
            let expected: Vec<String> = (0..segments.len())
                .map(|i| format!("iommu@{:x}", 0x0a00_0000 + i * 0x10_0000))
                .collect();
            assert_eq!(iommus, expected, "{what}");

            for smmu in &p.smmus {
                let path = format!("/iommu@{:x}", smmu.registers.base);
                assert_eq!(
                    dts.prop_names(&path),
                    [
                        "compatible",
                        "reg",
                        "interrupts",
                        "interrupt-names",
                        "#iommu-cells",
                        "dma-coherent",
                        "phandle"
                    ],
                    "{path}: no msi-parent, wired interrupts only"
                );
                assert_eq!(dts.get(&path, "compatible"), quoted("arm,smmu-v3"));
                assert_eq!(
                    dts.get(&path, "reg"),
                    cells64(&[0x0a00_0000 + u64::from(smmu.index) * 0x10_0000, 0x2_0000])
                );
                let spi = 128 + 3 * u32::from(smmu.index);
                assert_eq!(
                    dts.get(&path, "interrupts"),
                    cells(&[0, spi, 1, 0, spi + 1, 1, 0, spi + 2, 1]),
                    "{path}: event, gerror, CMD_SYNC SPIs, edge rising"
                );
                assert_eq!(
                    dts.get(&path, "interrupt-names"),
                    "\"eventq\\0gerror\\0cmdq-sync\""
                );
                assert_eq!(dts.get(&path, "#iommu-cells"), cells(&[1]));
                assert_eq!(dts.get(&path, "dma-coherent"), "");
                assert_eq!(
                    dts.get(&path, "phandle"),
                    cells(&[0x100 + u32::from(smmu.index)])
                );
            }

            for bridge in &p.pci_bridges {
                let path = format!("/pcie@{:x}", bridge.ecam.base);
                let smmu = p.smmus.iter().find(|s| s.segment == bridge.segment);
                let phandle = smmu.map(|s| 0x100 + u32::from(s.index));
                check_pcie_node(&dts, &path, bridge, phandle);
                // The phandle names the vSMMU node of this segment.
                if let Some(smmu) = smmu {
                    let map = parse_cells(dts.get(&path, "iommu-map"));
                    let target = format!("/iommu@{:x}", smmu.registers.base);
                    assert_eq!(dts.get(&target, "phandle"), cells(&[map[1]]), "{what}");
                }
            }
        }
    }

    #[test]
    fn vsmmus_add_only_their_nodes_and_iommu_maps() {
        for (bridges, segments) in SMMU_CASES {
            let plain = decode(&pci_platform(2, bridges));
            let with = decode(&smmu_platform(bridges, segments));
            for (path, props) in &plain.nodes {
                let mut props = props.clone();
                let theirs: Vec<(String, String)> = with
                    .props(path)
                    .iter()
                    .filter(|(n, _)| n != "iommu-map")
                    .cloned()
                    .collect();
                props.retain(|(n, _)| n != "iommu-map");
                assert_eq!(theirs, props, "{path}");
            }
            let extra: Vec<&String> = with
                .nodes
                .keys()
                .filter(|p| !plain.nodes.contains_key(*p))
                .collect();
            let smmu_nodes = extra.iter().filter(|p| p.starts_with("/iommu@")).count();
            assert_eq!(smmu_nodes, segments.len());
            // The rest: the MSI window and one child node per function behind a vSMMU.
            for path in extra.iter().filter(|p| !p.starts_with("/iommu@")) {
                assert!(
                    path.starts_with("/reserved-memory") || path.contains("/dev@"),
                    "{path}"
                );
            }
            let window = "/reserved-memory/msi-window@8000000";
            let entries = parse_cells(with.get(window, "iommu-addresses"));
            assert_eq!(entries.len() % 6, 0);
            for entry in entries.chunks(6) {
                assert_eq!(
                    &entry[1..],
                    [0, 0, 0x800_0000, 0, 0x10_0000],
                    "IOVA = address"
                );
                let owner = with
                    .nodes
                    .iter()
                    .find(|(_, props)| props.contains(&("phandle".into(), cells(&[entry[0]]))))
                    .map(|(path, _)| path.clone())
                    .expect("iommu-addresses names a node");
                assert!(owner.contains("/dev@"), "{owner}");
                assert_eq!(
                    with.get(&owner, "memory-region"),
                    cells(&[phandle::MSI_WINDOW])
                );
            }
            assert_eq!(with.get(window, "no-map"), "");

            // Every phandle is unique; iommu-maps name vSMMU nodes only.
            let mut owners = BTreeMap::new();
            for (path, props) in &with.nodes {
                for (name, value) in props {
                    if name == "phandle" {
                        assert!(owners.insert(value.clone(), path.clone()).is_none());
                    }
                }
            }
            // GIC, ITS, each vSMMU, the MSI window and each function behind a vSMMU.
            let functions = entries.len() / 6;
            assert_eq!(owners.len(), 2 + segments.len() + 1 + functions);
            for (path, props) in &with.nodes {
                for (name, value) in props {
                    if name == "iommu-map" {
                        let target = &owners[&cells(&[parse_cells(value)[1]])];
                        assert_eq!(
                            with.get(target, "compatible"),
                            quoted("arm,smmu-v3"),
                            "{path}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn bridges_without_vsmmus_tree_is_byte_identical_to_before() {
        // Digests of these trees before vSMMU support; update only for an intended change.
        for (n, len, digest) in [
            (1u16, 2759, 0xbf97_d32d_2f54_ad4au64),
            (3, 4711, 0xb174_2893_cd08_4365),
        ] {
            let mut p = crate::acpi::testutil::aarch64_platform(2);
            p.firmware = FirmwareInterface::DeviceTree;
            p.pci_bridges = aarch64_pci_bridges(n);
            let blob = device_tree(&p).unwrap();
            assert_eq!((blob.len(), fnv1a(&blob)), (len, digest), "{n} bridges");
        }
    }

    #[test]
    fn rejects_vsmmus_it_cannot_describe() {
        let check = |edit: &dyn Fn(&mut Platform), want: &dyn Fn(&SmmuError) -> bool| {
            let mut p = smmu_platform(3, &[0, 1]);
            edit(&mut p);
            match device_tree(&p) {
                Err(FdtError::Smmu(e)) => {
                    assert!(want(&e), "unexpected {e:?}");
                    assert!(e.to_string().starts_with("vSMMUv3"), "{e}");
                }
                other => panic!("expected a vSMMU error, got {other:?}"),
            }
        };
        check(&|p| p.smmus[0].segment = 3, &|e| {
            matches!(
                e,
                SmmuError::NoBridge {
                    index: 0,
                    segment: 3
                }
            )
        });
        check(&|p| drop(p.pci_bridges.remove(1)), &|e| {
            matches!(
                e,
                SmmuError::NoBridge {
                    index: 1,
                    segment: 1
                }
            )
        });
        check(
            &|p| p.smmus[0].registers.base = p.smmus[1].registers.base,
            &|e| matches!(e, SmmuError::Overlap { index: 1, .. }),
        );
        check(
            &|p| p.smmus[1].registers.base = p.pci_bridges[0].mmio32.base,
            &|e| matches!(e, SmmuError::Overlap { index: 1, other, .. } if other == "PCI segment 0's 32-bit window"),
        );
        check(&|p| p.smmus[0].event_irq = layout::GIC_NR_IRQS, &|e| {
            matches!(e, SmmuError::SpiOutOfRange { index: 0, .. })
        });
        check(
            &|p| p.smmus[1].gerror_irq = p.pci_bridges[0].intx[0],
            &|e| matches!(e, SmmuError::SpiInUse { index: 1, .. }),
        );
        // The same platform without the edit is fine.
        device_tree(&smmu_platform(3, &[0, 1])).unwrap();
    }
}
