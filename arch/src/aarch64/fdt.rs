//! The aarch64 device tree for [`FirmwareInterface::DeviceTree`] boot, following Linux
//! `Documentation/devicetree/bindings` and the arm64 booting protocol.
//!
//! [`device_tree`] checks the platform once, then calls one small function per node. Later nodes
//! (PCIe host bridges, SMMUv3s) are more such functions; they reference other nodes through the
//! fixed [`phandle`] numbers, so adding a node never renumbers another.

use thiserror::Error;
use vm_fdt::FdtWriter;

use super::image::FDT_MAX_SIZE;
use super::layout;
use crate::platform::{
    ArchTimer, FirmwareInterface, GuestArch, GuestRange, InterruptController, Platform,
    PowerControl, RegisterSpace,
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

/// The parts of the platform the device tree needs, checked once so node functions only encode.
struct Machine<'a> {
    platform: &'a Platform,
    gic: Gic,
    timer: ArchTimer,
    uart: Option<Uart>,
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
        })
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
}
