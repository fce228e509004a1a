//! The aarch64 device tree for [`FirmwareInterface::DeviceTree`] boot, following Linux
//! `Documentation/devicetree/bindings` and the arm64 booting protocol.
//!
//! [`device_tree`] encodes a [`CheckedPlatform`], one small function per node. Nodes reference
//! each other through the fixed [`phandle`] numbers, so adding a node never renumbers another.

use thiserror::Error;
use vm_fdt::FdtWriter;

use super::image::FDT_MAX_SIZE;
use super::layout;
use crate::platform::{
    Aarch64Parts, ArchParts, ArchTimer, CheckedPlatform, FirmwareInterface, Gic, GuestArch,
    GuestRange, IdRange, IntxPin, MmioUart, PciBridge, PciFunction, UartModel, VirtualSmmu,
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
/// Every `reg` outside `/cpus` is `<u64 address, u64 size>`.
const ADDRESS_CELLS: u32 = 2;
const SIZE_CELLS: u32 = 2;
/// `/cpus` uses two address cells so that `reg` can hold any MPIDR affinity, Aff3 included.
const CPU_ADDRESS_CELLS: u32 = 2;

/// The 16550's register window as the address map reserves it.
const UART_REG_SIZE: u64 = layout::UART.size;
/// The SBSA UART's fixed rate, as its binding requires it stated.
const SBSA_UART_BAUD: u32 = 115_200;

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
const PCI_SWIZZLE_SLOTS: u8 = 4;
const PCI_INTERRUPT_MAP_MASK: [u32; 4] = [
    (PCI_SWIZZLE_SLOTS as u32 - 1) << PCI_DEVICE_SHIFT,
    0,
    0,
    0x7,
];

#[derive(Debug, Error)]
pub enum FdtError {
    #[error("a {arch:?} platform booting through {firmware:?} has no full device tree")]
    NotDeviceTree {
        arch: GuestArch,
        firmware: FirmwareInterface,
    },
    #[error("the device tree is {0} bytes, above the boot protocol's {FDT_MAX_SIZE} bytes")]
    TooLarge(usize),
    #[error("cannot encode the device tree")]
    Writer(#[from] vm_fdt::Error),
}

/// The 16550's node name, which `/aliases` and `/chosen` repeat.
fn uart_node_name(uart: &MmioUart) -> String {
    format!("serial@{:x}", uart.base)
}

/// The device tree blob for a [`FirmwareInterface::DeviceTree`] aarch64 platform.
pub fn device_tree(platform: &CheckedPlatform) -> Result<Vec<u8>, FdtError> {
    let (ArchParts::Aarch64(arm), FirmwareInterface::DeviceTree) =
        (platform.parts(), platform.firmware)
    else {
        return Err(FdtError::NotDeviceTree {
            arch: platform.arch,
            firmware: platform.firmware,
        });
    };
    let mut fdt = FdtWriter::new()?;

    let root = fdt.begin_node("")?;
    root_properties(&mut fdt)?;
    memory_nodes(&mut fdt, &platform.memory)?;
    cpu_nodes(&mut fdt, platform.vcpus)?;
    psci_node(&mut fdt)?;
    gic_node(&mut fdt, &arm.gic)?;
    timer_node(&mut fdt, &arm.timer)?;
    if let Some(uart) = &arm.uart {
        serial_node(&mut fdt, uart)?;
    }
    for smmu in &platform.smmus {
        smmu_node(&mut fdt, smmu)?;
    }
    for bridge in &platform.pci_bridges {
        pcie_node(&mut fdt, bridge, platform.smmu_for(bridge))?;
    }
    if let Some(window) = platform.smmus.first().map(|s| s.msi_window) {
        msi_window_node(&mut fdt, platform, window)?;
    }
    aliases_node(&mut fdt, arm)?;
    chosen_node(&mut fdt, platform, arm)?;
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

/// bindings/serial/8250.yaml, or bindings/serial/arm_sbsa_uart.txt for the PL011 (the SBSA form
/// needs no clocks: its rate is fixed). Edge-triggered either way: the VMM pulses an irqfd.
fn serial_node(fdt: &mut FdtWriter, uart: &MmioUart) -> Result<(), FdtError> {
    let node = fdt.begin_node(&uart_node_name(uart))?;
    let compatible = match uart.model {
        UartModel::Ns16550a => "ns16550a",
        UartModel::Pl011 => "arm,sbsa-uart",
    };
    fdt.property_string("compatible", compatible)?;
    reg_property(fdt, &[GuestRange::new(uart.base.into(), UART_REG_SIZE)])?;
    fdt.property_array_u32("interrupts", &[GIC_SPI, uart.spi, IRQ_TYPE_EDGE_RISING])?;
    match uart.model {
        UartModel::Ns16550a => {
            fdt.property_u32("clock-frequency", uart.clock_hz)?;
            fdt.property_u32("reg-shift", 0)?;
            fdt.property_u32("reg-io-width", 1)?;
        }
        UartModel::Pl011 => fdt.property_u32("current-speed", SBSA_UART_BAUD)?,
    }
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
/// resampling irqfd until the guest's EOI. `smmu`, the bridge's vSMMUv3, adds its `iommu-map`.
fn pcie_node(
    fdt: &mut FdtWriter,
    bridge: &PciBridge,
    smmu: Option<&VirtualSmmu>,
) -> Result<(), FdtError> {
    let node = fdt.begin_node(&format!("pcie@{:x}", bridge.ecam.base))?;
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
    // bindings/pci/pci-msi.txt and pci-iommu.txt: <rid-base target output-base length>.
    let map = |ids: IdRange, target| [ids.input_base, target, ids.output_base, ids.count];
    fdt.property_array_u32("msi-map", &map(bridge.msi_map(), phandle::ITS))?;
    if let Some(smmu) = smmu {
        let target = phandle::smmu(smmu.index);
        fdt.property_array_u32("iommu-map", &map(bridge.iommu_map(), target))?;
    }
    fdt.property_null("dma-coherent")?;
    fdt.property_u32("#interrupt-cells", PCI_INTERRUPT_CELLS)?;
    fdt.property_array_u32("interrupt-map-mask", &PCI_INTERRUPT_MAP_MASK)?;
    fdt.property_array_u32("interrupt-map", &interrupt_map(bridge))?;
    if smmu.is_some() {
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
    function: &PciFunction,
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
    platform: &CheckedPlatform,
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
    for smmu in &platform.smmus {
        let Some(bridge) = platform.bridge_for(smmu) else {
            continue;
        };
        for function in &bridge.functions {
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
/// `#address-cells`) and a three-cell SPI specifier, the bridge's swizzled line.
fn interrupt_map(bridge: &PciBridge) -> Vec<u32> {
    let mut cells = Vec::new();
    for device in 0..PCI_SWIZZLE_SLOTS {
        for pin in IntxPin::ALL {
            let spi = bridge.intx_line(device, pin);
            let unit = u32::from(device) << PCI_DEVICE_SHIFT;
            cells.extend_from_slice(&[unit, 0, 0, u32::from(pin.index()) + 1]);
            cells.push(phandle::GIC);
            cells.extend(std::iter::repeat_n(0, ADDRESS_CELLS as usize));
            cells.extend_from_slice(&[GIC_SPI, spi, IRQ_TYPE_LEVEL_HIGH]);
        }
    }
    cells
}

/// `serial0` pins the UART to ttyS0 whatever order drivers probe in.
fn aliases_node(fdt: &mut FdtWriter, arm: &Aarch64Parts) -> Result<(), FdtError> {
    let Some(uart) = &arm.uart else {
        return Ok(());
    };
    let node = fdt.begin_node("aliases")?;
    fdt.property_string("serial0", &format!("/{}", uart_node_name(uart)))?;
    fdt.end_node(node)?;
    Ok(())
}

/// bindings/chosen.yaml.
fn chosen_node(
    fdt: &mut FdtWriter,
    platform: &CheckedPlatform,
    arm: &Aarch64Parts,
) -> Result<(), FdtError> {
    let node = fdt.begin_node("chosen")?;
    fdt.property_string("bootargs", &platform.cmdline)?;
    if let Some(initrd) = platform.initrd {
        fdt.property_u64("linux,initrd-start", initrd.base)?;
        fdt.property_u64("linux,initrd-end", initrd.end())?;
    }
    if let Some(uart) = &arm.uart {
        fdt.property_string("stdout-path", &format!("/{}", uart_node_name(uart)))?;
    }
    fdt.end_node(node)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::acpi::testutil::{
        aarch64_pci_bridges, aarch64_platform, aarch64_smmus, dtc_decode, fnv1a, x86_platform,
    };
    use crate::platform::{Platform, RegisterSpace, SerialPort};

    /// The device tree of `platform`, which must pass the check.
    fn encode(platform: &Platform) -> Result<Vec<u8>, FdtError> {
        device_tree(&platform.clone().check().expect("a valid platform"))
    }

    /// A device tree decoded by dtc: node path -> properties in order, each as dtc prints its
    /// value (`<0x00 0x01>`, `"text"`, or empty for a boolean property).
    struct Dts {
        nodes: BTreeMap<String, Vec<(String, String)>>,
        text: String,
    }

    impl Dts {
        fn decode(blob: &[u8]) -> Dts {
            // dtc runs its binding checks on dtb input too; the tree must pass them cleanly.
            let text = dtc_decode(blob);
            let mut nodes = BTreeMap::new();
            let mut stack: Vec<String> = Vec::new();
            for line in text.lines().map(str::trim) {
                if line.is_empty() || line.starts_with("/dts-v1/") {
                    continue;
                }
                if let Some(name) = line.strip_suffix(" {") {
                    let path = match stack.last() {
                        None => "/".to_owned(),
                        Some(parent) => format!("{}/{name}", parent.trim_end_matches('/')),
                    };
                    let fresh = nodes.insert(path.clone(), Vec::new()).is_none();
                    assert!(fresh, "{path} twice");
                    stack.push(path);
                } else if line == "};" {
                    stack.pop().expect("unbalanced dts");
                } else {
                    let statement = line.strip_suffix(';').expect("statement ends with ;");
                    let (name, value) = statement.split_once(" = ").unwrap_or((statement, ""));
                    let node = stack.last().expect("property outside a node");
                    let props: &mut Vec<_> = nodes.get_mut(node).unwrap();
                    props.push((name.to_owned(), value.to_owned()));
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
            let props = self.props(path);
            props
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }

        /// The property's value, which must exist.
        fn get(&self, path: &str, name: &str) -> &str {
            self.prop(path, name)
                .unwrap_or_else(|| panic!("no {path}:{name} in\n{}", self.text))
        }

        /// `path` has exactly these properties, in this order.
        fn assert_node(&self, path: &str, expected: &[(&str, String)]) {
            let props: Vec<(&str, &str)> =
                self.props(path).iter().map(|(n, v)| (&**n, &**v)).collect();
            let expected: Vec<(&str, &str)> = expected.iter().map(|(n, v)| (*n, &**v)).collect();
            assert_eq!(props, expected, "{path}");
        }

        /// The names of `path`'s direct children that start with `prefix`.
        fn children(&self, path: &str, prefix: &str) -> Vec<&str> {
            let parent = format!("{}/", path.trim_end_matches('/'));
            self.nodes
                .keys()
                .filter_map(|p| p.strip_prefix(&parent))
                .filter(|rest| rest.starts_with(prefix) && !rest.is_empty() && !rest.contains('/'))
                .collect()
        }

        /// Each phandle's node; every phandle must be unique.
        fn phandles(&self) -> BTreeMap<&str, &str> {
            let mut owners = BTreeMap::new();
            for (path, props) in &self.nodes {
                for (_, value) in props.iter().filter(|(n, _)| n == "phandle") {
                    let first = owners.insert(value.as_str(), path.as_str()).is_none();
                    assert!(first, "phandle {value} twice");
                }
            }
            owners
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

    /// The shared aarch64 fixture booting from a device tree, with 256 MiB of RAM and no initrd.
    fn platform(vcpus: u32) -> Platform {
        Platform {
            firmware: FirmwareInterface::DeviceTree,
            memory: vec![GuestRange::new(layout::RAM_BASE, 0x1000_0000)],
            cmdline: "console=ttyS0 earlycon root=/dev/vda rw".to_owned(),
            initrd: None,
            ..aarch64_platform(vcpus)
        }
    }

    /// The platform with `bridges` PCIe host bridges and vSMMUv3 `i` in front of `smmus[i]`.
    fn pci_platform(vcpus: u32, bridges: u16, smmus: &[u16]) -> Platform {
        let mut p = platform(vcpus);
        p.pci_bridges = aarch64_pci_bridges(bridges);
        p.smmus = aarch64_smmus(smmus);
        p
    }

    fn decode(platform: &Platform) -> Dts {
        let blob = encode(platform).expect("device tree");
        // The header magic and size say it is a whole FDT.
        assert_eq!(blob[0..4], 0xd00d_feedu32.to_be_bytes());
        assert_eq!(blob[4..8], (blob.len() as u32).to_be_bytes());
        Dts::decode(&blob)
    }

    /// Every node and property of the one-vCPU tree, in order, as dtc prints it.
    const ONE_VCPU_DTS: &str = r#"
    /dts-v1/;

    / {
        compatible = "linux,dummy-virt";
        model = "microvmm";
        #address-cells = <0x02>;
        #size-cells = <0x02>;
        interrupt-parent = <0x01>;

        memory@40000000 {
            device_type = "memory";
            reg = <0x00 0x40000000 0x00 0x10000000>;
        };

        cpus {
            #address-cells = <0x02>;
            #size-cells = <0x00>;

            cpu@0 {
                device_type = "cpu";
                compatible = "arm,arm-v8";
                enable-method = "psci";
                reg = <0x00 0x00>;
            };
        };

        psci {
            compatible = "arm,psci-1.0\0arm,psci-0.2";
            method = "hvc";
        };

        intc@8000000 {
            compatible = "arm,gic-v3";
            interrupt-controller;
            #interrupt-cells = <0x03>;
            reg = <0x00 0x8000000 0x00 0x10000 0x00 0x80a0000 0x00 0x20000>;
            #redistributor-regions = <0x01>;
            redistributor-stride = <0x00 0x20000>;
            interrupts = <0x01 0x09 0x04>;
            #address-cells = <0x02>;
            #size-cells = <0x02>;
            ranges;
            phandle = <0x01>;

            its@8080000 {
                compatible = "arm,gic-v3-its";
                msi-controller;
                #msi-cells = <0x01>;
                reg = <0x00 0x8080000 0x00 0x20000>;
                phandle = <0x02>;
            };
        };

        timer {
            compatible = "arm,armv8-timer";
            interrupts = <0x01 0x0d 0x04 0x01 0x0e 0x04 0x01 0x0b 0x04 0x01 0x0a 0x04>;
            always-on;
        };

        serial@9000000 {
            compatible = "ns16550a";
            reg = <0x00 0x9000000 0x00 0x1000>;
            interrupts = <0x00 0x01 0x01>;
            clock-frequency = <0x1c2000>;
            reg-shift = <0x00>;
            reg-io-width = <0x01>;
        };

        aliases {
            serial0 = "/serial@9000000";
        };

        chosen {
            bootargs = "console=ttyS0 earlycon root=/dev/vda rw";
            stdout-path = "/serial@9000000";
        };
    };
    "#;

    #[test]
    fn one_vcpu_tree_node_by_node() {
        let dts = decode(&platform(1));
        let lines = |text: &str| -> Vec<String> {
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(lines(&dts.text), lines(ONE_VCPU_DTS));
    }

    #[test]
    fn several_vcpus_reg_is_mpidr() {
        let vcpus = 20;
        let dts = decode(&platform(vcpus));
        let mut expected: Vec<String> = (0..vcpus)
            .map(|i| format!("cpu@{:x}", layout::mpidr(i)))
            .collect();
        expected.sort();
        assert_eq!(dts.children("/cpus", ""), expected);
        for i in 0..vcpus {
            let mpidr = layout::mpidr(i);
            let path = format!("/cpus/cpu@{mpidr:x}");
            assert_eq!(dts.get(&path, "reg"), cells64(&[mpidr]), "vCPU {i}");
            assert_eq!(dts.get(&path, "enable-method"), quoted("psci"));
        }
        // vCPU 16 is Aff1 = 1.
        assert_eq!(dts.get("/cpus/cpu@100", "reg"), cells(&[0, 0x100]));
        // The redistributor region covers every vCPU.
        let gic = [0x0800_0000, 0x1_0000, 0x080a_0000, 20 * 0x2_0000];
        assert_eq!(dts.get("/intc@8000000", "reg"), cells64(&gic));
    }

    #[test]
    fn every_memory_region_gets_a_node() {
        let mut p = platform(2);
        let ram = [(0x4000_0000, 0x8000_0000), (0x1_0000_0000, 0x2_0000_0000)];
        p.memory = ram
            .iter()
            .map(|&(base, size)| GuestRange::new(base, size))
            .collect();
        let dts = decode(&p);
        assert_eq!(
            dts.children("/", "memory@"),
            ["memory@100000000", "memory@40000000"]
        );
        for (base, size) in ram {
            let path = format!("/memory@{base:x}");
            dts.assert_node(
                &path,
                &[
                    ("device_type", quoted("memory")),
                    ("reg", cells64(&[base, size])),
                ],
            );
        }
    }

    #[test]
    fn initrd_serial_and_stdout_path_follow_the_platform() {
        let mut p = platform(1);
        let dts = decode(&p);
        assert_eq!(dts.prop("/chosen", "linux,initrd-start"), None);
        assert_eq!(dts.prop("/chosen", "linux,initrd-end"), None);
        p.initrd = Some(GuestRange::new(0x4f00_0000, 0x12_3456));
        let dts = decode(&p);
        let initrd = |at| cells64(&[at]);
        assert_eq!(
            dts.get("/chosen", "linux,initrd-start"),
            initrd(0x4f00_0000)
        );
        assert_eq!(dts.get("/chosen", "linux,initrd-end"), initrd(0x4f12_3456));
        p.initrd = None;

        p.serial = Some(SerialPort {
            model: UartModel::Ns16550a,
            registers: RegisterSpace::Mmio(0x0900_1000),
            irq: 7,
            clock_hz: 24_000_000,
        });
        let dts = decode(&p);
        assert_eq!(dts.get("/chosen", "stdout-path"), quoted("/serial@9001000"));
        assert_eq!(dts.get("/aliases", "serial0"), quoted("/serial@9001000"));
        assert_eq!(dts.get("/serial@9001000", "compatible"), quoted("ns16550a"));
        assert_eq!(dts.get("/serial@9001000", "interrupts"), cells(&[0, 7, 1]));
        assert_eq!(
            dts.get("/serial@9001000", "clock-frequency"),
            cells(&[24_000_000])
        );
        p.serial.iter_mut().for_each(|s| s.model = UartModel::Pl011);
        let dts = decode(&p);
        assert_eq!(
            dts.get("/serial@9001000", "compatible"),
            quoted("arm,sbsa-uart")
        );
        assert_eq!(
            dts.get("/serial@9001000", "current-speed"),
            cells(&[115_200])
        );
        assert_eq!(dts.prop("/serial@9001000", "clock-frequency"), None);
        assert_eq!(dts.get("/serial@9001000", "interrupts"), cells(&[0, 7, 1]));

        p.serial = None;
        let dts = decode(&p);
        assert!(dts.children("/", "serial").is_empty());
        assert!(dts.children("/", "aliases").is_empty());
        assert_eq!(dts.prop("/chosen", "stdout-path"), None);
        assert!(dts.prop("/chosen", "bootargs").is_some());
    }

    #[test]
    fn phandle_references_resolve() {
        let dts = decode(&platform(4));
        // Every phandle is unique, and the root's interrupt-parent is the GIC's.
        let owners = dts.phandles();
        assert_eq!(owners.len(), 2);
        let target = owners[dts.get("/", "interrupt-parent")];
        assert_eq!(target, "/intc@8000000");
        assert_eq!(dts.get(target, "compatible"), quoted("arm,gic-v3"));
        assert_eq!(
            owners[&*cells(&[phandle::ITS])],
            "/intc@8000000/its@8080000"
        );
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

    #[test]
    fn trees_are_byte_identical_to_before() {
        // Digests of the trees this encoder produced before PCI support (no bridges) and before
        // vSMMU support (bridges). Update only for an intended change to those trees.
        let shared = |bridges| Platform {
            firmware: FirmwareInterface::DeviceTree,
            pci_bridges: aarch64_pci_bridges(bridges),
            ..aarch64_platform(2)
        };
        for (platform, len, digest) in [
            (platform(1), 1538, 0xc3ff_0245_0799_30c8u64),
            (platform(4), 1826, 0x0e87_a43f_3f6b_9c4f),
            (shared(1), 2759, 0xbf97_d32d_2f54_ad4a),
            (shared(3), 4711, 0xb174_2893_cd08_4365),
        ] {
            let blob = encode(&platform).unwrap();
            let what = (platform.vcpus, platform.pci_bridges.len());
            assert_eq!((blob.len(), fnv1a(&blob)), (len, digest), "{what:?}");
        }
    }

    #[test]
    fn bridges_change_nothing_outside_their_own_nodes() {
        let plain = decode(&platform(2));
        let with_pci = decode(&pci_platform(2, 3, &[]));
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

    /// Every property of one host bridge node, computed here from the bridge independently of
    /// the encoder; `iommu` is the phandle its `iommu-map` must name, if it has one.
    fn check_pcie_node(dts: &Dts, bridge: &PciBridge, iommu: Option<u32>) {
        let buses = u64::from(bridge.bus_end) - u64::from(bridge.bus_start) + 1;
        // <phys.hi phys.mid phys.lo  cpu.hi cpu.lo  size.hi size.lo> per window, no I/O.
        let window = |space, w: GuestRange| {
            let (hi, lo) = ((w.base >> 32) as u32, w.base as u32);
            [space, hi, lo, hi, lo, (w.size >> 32) as u32, w.size as u32]
        };
        let ranges = [
            window(0x0200_0000, bridge.mmio32),
            window(0x4300_0000, bridge.mmio64),
        ];
        let (rid_base, rid_count) = bridge.rid_span();
        // 3 address + 1 pin cells, GIC phandle, 2 GIC address cells, 3 specifier cells: every
        // slot mod 4 and pin INTA..INTD once, bus and function masked off, the swizzled SPI
        // level high.
        let map: Vec<u32> = (0..4)
            .flat_map(|device| (1..=4).map(move |pin| (device, pin)))
            .flat_map(|(device, pin)| {
                let swizzled = bridge.intx[((device + pin - 1) % 4) as usize];
                [device << 11, 0, 0, pin, phandle::GIC, 0, 0, 0, swizzled, 4]
            })
            .collect();
        let mut expected = vec![
            ("compatible", quoted("pci-host-ecam-generic")),
            ("device_type", quoted("pci")),
            ("reg", cells64(&[bridge.ecam.base, buses << 20])),
            (
                "bus-range",
                cells(&[bridge.bus_start.into(), bridge.bus_end.into()]),
            ),
            ("linux,pci-domain", cells(&[bridge.segment.into()])),
            ("#address-cells", cells(&[3])),
            ("#size-cells", cells(&[2])),
            ("ranges", cells(&ranges.concat())),
            (
                "msi-map",
                cells(&[rid_base, phandle::ITS, bridge.msi_base, rid_count]),
            ),
            ("dma-coherent", String::new()),
            ("#interrupt-cells", cells(&[1])),
            ("interrupt-map-mask", cells(&[0x1800, 0, 0, 7])),
            ("interrupt-map", cells(&map)),
        ];
        // StreamID = RID over the whole RID span, right after the msi-map.
        if let Some(phandle) = iommu {
            expected.insert(
                9,
                (
                    "iommu-map",
                    cells(&[rid_base, phandle, rid_base, rid_count]),
                ),
            );
        }
        dts.assert_node(&format!("/pcie@{:x}", bridge.ecam.base), &expected);
    }

    #[test]
    fn msi_map_targets_the_its_of_each_bridge() {
        let p = pci_platform(1, 3, &[]);
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
        let mut bridge = aarch64_pci_bridges(1).remove(0);
        bridge.intx = [40, 41, 42, 43];
        let map = interrupt_map(&bridge);
        let spi = |device: u32, pin: u32| {
            let entry = map.chunks(10).find(|e| e[0] == device << 11 && e[3] == pin);
            entry.map(|e| e[8]).unwrap()
        };
        assert_eq!(
            [spi(0, 1), spi(1, 1), spi(3, 4), spi(2, 3)],
            [40, 41, 42, 40]
        );
    }

    #[test]
    fn iommu_map_hook() {
        // A bridge behind a vSMMUv3 gets an iommu-map to its node: StreamID = RID over the
        // bridge's RID span (bus 0x10..=0x1f here), unlike the msi-map's device IDs.
        let p = pci_platform(1, 2, &[]).check().unwrap();
        let ArchParts::Aarch64(arm) = *p.parts() else {
            panic!("aarch64 parts");
        };
        let smmu = &aarch64_smmus(&[1])[0];
        let mut fdt = FdtWriter::new().unwrap();
        let root = fdt.begin_node("").unwrap();
        root_properties(&mut fdt).unwrap();
        gic_node(&mut fdt, &arm.gic).unwrap();
        smmu_node(&mut fdt, smmu).unwrap();
        pcie_node(&mut fdt, &p.pci_bridges[1], Some(smmu)).unwrap();
        fdt.end_node(root).unwrap();
        let dts = Dts::decode(&fdt.finish().unwrap());
        let path = "/pcie@4010000000";
        let iommu_map = cells(&[0x1000, phandle::smmu(0), 0x1000, 0x1000]);
        assert_eq!(dts.get(path, "iommu-map"), iommu_map);
        let msi_map = cells(&[0x1000, phandle::ITS, 0x1_0000, 0x1000]);
        assert_eq!(dts.get(path, "msi-map"), msi_map);
        // Right after msi-map, everything else unchanged.
        let names: Vec<&str> = dts.props(path).iter().map(|(n, _)| n.as_str()).collect();
        let at = names.iter().position(|n| *n == "iommu-map").unwrap();
        assert_eq!([names[at - 1], names[at + 1]], ["msi-map", "dma-coherent"]);
    }

    #[test]
    fn blob_fits_the_boot_protocol_even_at_max_vcpus() {
        let blob = encode(&platform(layout::MAX_VCPUS)).unwrap();
        assert!(blob.len() as u64 <= FDT_MAX_SIZE);
        let cpus = Dts::decode(&blob).children("/cpus", "").len();
        assert_eq!(cpus, layout::MAX_VCPUS as usize);
    }

    #[test]
    fn encodes_only_device_tree_platforms() {
        // The check refuses the rest (platform::check's tests); this is the encoder's own.
        let mut p = platform(1);
        p.firmware = FirmwareInterface::Acpi;
        let err = encode(&p).expect_err("must fail");
        assert!(
            matches!(
                err,
                FdtError::NotDeviceTree {
                    arch: GuestArch::Aarch64,
                    firmware: FirmwareInterface::Acpi
                }
            ),
            "{err}"
        );
        assert!(matches!(
            encode(&x86_platform(1)),
            Err(FdtError::NotDeviceTree {
                arch: GuestArch::X86_64,
                ..
            })
        ));

        let mut p = platform(1);
        p.cmdline = "console=ttyS0\0root=/dev/vda".to_owned();
        assert!(matches!(
            encode(&p),
            Err(FdtError::Writer(vm_fdt::Error::InvalidString))
        ));
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

    /// The PCI configurations: (bridges, segments with a vSMMUv3); vSMMUs from the third on.
    const PCI_CASES: [(u16, &[u16]); 6] = [
        (1, &[]),
        (3, &[]),
        (1, &[0]),
        (3, &[0, 1, 2]),
        (2, &[0]),
        (2, &[1]),
    ];

    #[test]
    fn pcie_and_vsmmu_nodes_node_by_node() {
        for (bridges, segments) in PCI_CASES {
            let p = pci_platform(2, bridges, segments);
            let what = format!("{bridges} bridges, vSMMUs on {segments:?}");
            let dts = decode(&p);
            let expected: Vec<String> = (0..segments.len())
                .map(|i| format!("iommu@{:x}", 0x0a00_0000 + i * 0x10_0000))
                .collect();
            assert_eq!(dts.children("/", "iommu@"), expected, "{what}");
            assert_eq!(dts.children("/", "pcie@").len(), usize::from(bridges));

            // No msi-parent, wired interrupts only: event, gerror, CMD_SYNC SPIs, edge rising.
            for smmu in &p.smmus {
                let index = u32::from(smmu.index);
                let spi = 128 + 3 * index;
                let base = 0x0a00_0000 + u64::from(index) * 0x10_0000;
                let path = format!("/iommu@{base:x}");
                dts.assert_node(
                    &path,
                    &[
                        ("compatible", quoted("arm,smmu-v3")),
                        ("reg", cells64(&[base, 0x2_0000])),
                        (
                            "interrupts",
                            cells(&[0, spi, 1, 0, spi + 1, 1, 0, spi + 2, 1]),
                        ),
                        ("interrupt-names", "\"eventq\\0gerror\\0cmdq-sync\"".into()),
                        ("#iommu-cells", cells(&[1])),
                        ("dma-coherent", String::new()),
                        ("phandle", cells(&[0x100 + index])),
                    ],
                );
            }

            for bridge in &p.pci_bridges {
                let smmu = p.smmus.iter().find(|s| s.segment == bridge.segment);
                check_pcie_node(&dts, bridge, smmu.map(|s| 0x100 + u32::from(s.index)));
                // The phandle names the vSMMU node of this segment.
                if let Some(smmu) = smmu {
                    let path = format!("/pcie@{:x}", bridge.ecam.base);
                    let map = parse_cells(dts.get(&path, "iommu-map"));
                    let target = format!("/iommu@{:x}", smmu.registers.base);
                    assert_eq!(dts.get(&target, "phandle"), cells(&[map[1]]), "{what}");
                }
            }
        }
    }

    #[test]
    fn vsmmus_add_only_their_nodes_and_iommu_maps() {
        for (bridges, segments) in &PCI_CASES[2..] {
            let (bridges, segments) = (*bridges, *segments);
            let plain = decode(&pci_platform(2, bridges, &[]));
            let with = decode(&pci_platform(2, bridges, segments));
            let without_iommu_map = |props: &[(String, String)]| -> Vec<(String, String)> {
                props
                    .iter()
                    .filter(|(n, _)| n != "iommu-map")
                    .cloned()
                    .collect()
            };
            for (path, props) in &plain.nodes {
                let theirs = without_iommu_map(with.props(path));
                assert_eq!(theirs, without_iommu_map(props), "{path}");
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
                let known = path.starts_with("/reserved-memory") || path.contains("/dev@");
                assert!(known, "{path}");
            }
            let window = "/reserved-memory/msi-window@8000000";
            let entries = parse_cells(with.get(window, "iommu-addresses"));
            assert_eq!(entries.len() % 6, 0);
            let owners = with.phandles();
            for entry in entries.chunks(6) {
                let iova = [0, 0, 0x800_0000, 0, 0x10_0000];
                assert_eq!(&entry[1..], iova, "IOVA = address");
                let owner = owners[&*cells(&[entry[0]])];
                assert!(owner.contains("/dev@"), "{owner}");
                let region = cells(&[phandle::MSI_WINDOW]);
                assert_eq!(with.get(owner, "memory-region"), region);
            }
            assert_eq!(with.get(window, "no-map"), "");

            // GIC, ITS, each vSMMU, the MSI window and each function behind a vSMMU have a
            // phandle; iommu-maps name vSMMU nodes only.
            let functions = entries.len() / 6;
            assert_eq!(owners.len(), 2 + segments.len() + 1 + functions);
            for (path, props) in &with.nodes {
                for (_, value) in props.iter().filter(|(n, _)| n == "iommu-map") {
                    let target = owners[&*cells(&[parse_cells(value)[1]])];
                    let compatible = with.get(target, "compatible");
                    assert_eq!(compatible, quoted("arm,smmu-v3"), "{path}");
                }
            }
        }
    }
}
