//! The platform plan: everything the guest will see, computed once from the validated
//! configuration and the inspected payload. Every encoder (device tree, ACPI, boot parameters) and
//! the VM build read it.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Deref;

use arch::boot::{BootLayout, LayoutError, PayloadFootprint};
use arch::platform::{
    ArchTimer, CheckedPlatform, FirmwareInterface, GuestArch, GuestRange, InterruptController,
    PciBridge, Platform, PlatformError, PowerControl, RegisterSpace, SerialPort, SmmuFeatures,
    SmmuMode, UartModel, VirtualSmmu,
};
use devices::smmuv3::{FeatureRegisters, HostSmmuUnfit};

use crate::config::{BootMode, HostArch, IommuMode, SerialConfig, VmConfig};
use crate::host::{HostDescription, HostDevice, HostSmmu};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("host SMMU {smmu} (behind {device}) cannot back a nested vSMMUv3")]
    Incompatible {
        smmu: String,
        device: String,
        #[source]
        reason: HostSmmuUnfit,
    },
    #[error("{count} host SMMUs (and devices behind none) need more PCI host bridges than {max}")]
    TooManyBridges { count: usize, max: u32 },
    #[error(
        "{device} is behind host IOMMU {iommu}, which is no SMMUv3 the host description lists, so nested-smmuv3 cannot give it a vSMMU"
    )]
    UnlistedIommu { device: String, iommu: String },
    #[error(
        "PCI bridge {segment} already holds {MAX_DEVICES_PER_BRIDGE} devices, all it can: {device} does not fit"
    )]
    BridgeFull { segment: u16, device: String },
    #[error("the planned platform is inconsistent")]
    Platform(#[from] PlatformError),
    #[error("placing the kernel and initramfs in guest RAM")]
    Boot(#[from] LayoutError),
}

/// The checked guest platform and where its payload and firmware blobs go. It reads as the
/// platform.
#[derive(Debug, Clone)]
pub struct Plan {
    pub platform: CheckedPlatform,
    pub boot: BootLayout,
}

impl Deref for Plan {
    type Target = CheckedPlatform;

    fn deref(&self) -> &CheckedPlatform {
        &self.platform
    }
}

/// The guest platform for a configuration already validated for `arch`, on the host described
/// (its `devices` in configuration order), booting `payload`: checked once for every encoder,
/// with the boot layout (and so the initrd the guest is told about) final.
pub fn platform(
    config: &VmConfig,
    arch: HostArch,
    host: &HostDescription,
    payload: &PayloadFootprint,
) -> Result<Plan, PlanError> {
    let mut platform = match arch {
        HostArch::Aarch64 => aarch64(config),
        HostArch::X86_64 => x86_64(config),
    };
    let (bridge_of, smmus) = match config.iommu {
        IommuMode::Off => (
            config.devices.iter().map(|d| d.bridge).collect(),
            Vec::new(),
        ),
        IommuMode::NestedSmmuv3 => nested_assignment(config, host, platform.memory_end())?,
    };
    platform.pci_bridges = pci_topology(config, arch, &host.devices, &bridge_of)?;
    platform.smmus = smmus;
    let boot = arch::boot::layout(&platform, payload)?;
    platform.initrd = boot.initrd;
    Ok(Plan {
        platform: platform.check()?,
        boot,
    })
}

/// With nested vSMMUs, devices are grouped by the host SMMU they sit behind: group `i` (in host
/// SMMU name order) gets bridge `i` and vSMMU `i`; devices behind no IOMMU share one more bridge
/// without a vSMMU. A device behind an IOMMU the description does not list as an SMMUv3 is
/// refused: it would silently lose the translation asked for.
fn nested_assignment(
    config: &VmConfig,
    host: &HostDescription,
    ram_end: u64,
) -> Result<(Vec<u16>, Vec<VirtualSmmu>), PlanError> {
    use arch::aarch64::layout as l;
    let smmu_of = |i: usize| -> Option<&HostSmmu> {
        let name = host.devices.get(i)?.iommu.as_ref()?;
        host.smmus.iter().find(|s| &s.name == name)
    };
    let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    let mut plain = Vec::new();
    for i in 0..config.devices.len() {
        match (smmu_of(i), host.devices.get(i)) {
            (Some(smmu), _) => groups.entry(smmu.name.as_str()).or_default().push(i),
            (
                None,
                Some(HostDevice {
                    bdf,
                    iommu: Some(iommu),
                    ..
                }),
            ) => {
                return Err(PlanError::UnlistedIommu {
                    device: bdf.to_string(),
                    iommu: iommu.clone(),
                });
            }
            (None, _) => plain.push(i),
        }
    }
    let count = groups.len() + usize::from(!plain.is_empty());
    if count > l::MAX_PCI_BRIDGES as usize {
        return Err(PlanError::TooManyBridges {
            count,
            max: l::MAX_PCI_BRIDGES,
        });
    }
    let mut bridge_of = vec![0u16; config.devices.len()];
    let mut smmus = Vec::new();
    for (index, (name, members)) in groups.into_iter().enumerate() {
        let index = index as u16;
        let first = &host.devices[members[0]];
        let smmu = smmu_of(members[0]).expect("grouped by it");
        let features =
            SmmuFeatures::from_host(smmu.idr, smmu.flags, ram_end).map_err(|reason| {
                PlanError::Incompatible {
                    smmu: name.to_string(),
                    device: first.bdf.to_string(),
                    reason,
                }
            })?;
        for &m in &members {
            bridge_of[m] = index;
        }
        let spi = l::SMMU_SPI_BASE + 3 * u32::from(index);
        smmus.push(VirtualSmmu {
            index,
            segment: index,
            registers: GuestRange::new(
                l::SMMU_SLOT_BASE + u64::from(index) * l::SMMU_SLOT_SIZE,
                l::SMMU_REGISTERS_SIZE,
            ),
            event_irq: spi,
            gerror_irq: spi + 1,
            sync_irq: spi + 2,
            host_smmu: name.to_string(),
            mode: SmmuMode::Nested,
            features,
            msi_window: l::HOST_MSI_WINDOW,
        });
    }
    let plain_bridge = smmus.len() as u16;
    for &m in &plain {
        bridge_of[m] = plain_bridge;
    }
    Ok((bridge_of, smmus))
}

/// Where a bridge's windows go and how its interrupts are numbered, per architecture.
struct PciLayout {
    ecam_region: GuestRange,
    ecam_stride: u64,
    mmio32: GuestRange,
    mmio64_region: GuestRange,
    max_bridges: u32,
    /// ITS device IDs per segment (aarch64); x86 MSIs carry no device ID.
    msi_segment_shift: Option<u32>,
    intx: fn(u16) -> [u32; 4],
}

fn pci_layout(arch: HostArch) -> PciLayout {
    match arch {
        HostArch::Aarch64 => {
            use arch::aarch64::layout as l;
            PciLayout {
                ecam_region: l::PCI_ECAM_REGION,
                ecam_stride: 256 << 20,
                mmio32: l::PCI_MMIO32,
                mmio64_region: l::PCI_MMIO64_REGION,
                max_bridges: l::MAX_PCI_BRIDGES,
                // KVM's ITS takes 16-bit device IDs: 4096 per segment (16 buses' worth).
                msi_segment_shift: Some(12),
                intx: |id| {
                    std::array::from_fn(|pin| l::PCI_INTX_SPI_BASE + 4 * u32::from(id) + pin as u32)
                },
            }
        }
        HostArch::X86_64 => {
            use arch::x86_64::layout as l;
            PciLayout {
                ecam_region: l::PCI_ECAM_REGION,
                ecam_stride: 16 << 20,
                mmio32: l::PCI_MMIO32,
                mmio64_region: l::PCI_MMIO64_REGION,
                max_bridges: l::MAX_PCI_BRIDGES,
                msi_segment_shift: None,
                // Eight pins shared by all bridges, four per bridge parity.
                intx: |id| {
                    std::array::from_fn(|pin| {
                        l::PCI_INTX_PIN_BASE + 4 * u32::from(id % 2) + pin as u32
                    })
                },
            }
        }
    }
}

/// Every bridge has one bus, its root bus, numbered 0 in its segment.
pub const ROOT_BUS: u8 = 0;

/// Devices sit directly on their bridge's root bus, in configuration order, from slot 1 (slot 0
/// is the emulated host bridge) to slot 31.
pub const FIRST_DEVICE_SLOT: u8 = 1;
pub const MAX_DEVICES_PER_BRIDGE: usize = 32 - FIRST_DEVICE_SLOT as usize;

/// The PCI host bridges: every declared bridge and every bridge a device names, each its own
/// segment numbered by its id, with fixed windows per id so adding a bridge moves no other.
fn pci_topology(
    config: &VmConfig,
    arch: HostArch,
    devices: &[HostDevice],
    bridge_of: &[u16],
) -> Result<Vec<PciBridge>, PlanError> {
    let layout = pci_layout(arch);
    let ids: BTreeSet<u16> = config
        .pci_bridges
        .iter()
        .map(|b| b.id)
        .chain(bridge_of.iter().copied())
        .collect();
    let slot32 = layout.mmio32.size / u64::from(layout.max_bridges);
    let slot64 = layout.mmio64_region.size / u64::from(layout.max_bridges);
    ids.into_iter()
        .map(|id| {
            let index = u64::from(id);
            let mmio64_size = config
                .pci_bridges
                .iter()
                .find(|b| b.id == id)
                .and_then(|b| b.mmio64_size)
                .map_or(slot64, |s| s.0);
            let mut bridge = PciBridge {
                segment: id,
                bus_start: ROOT_BUS,
                bus_end: ROOT_BUS,
                ecam: GuestRange::new(
                    layout.ecam_region.base + index * layout.ecam_stride,
                    1 << 20,
                ),
                mmio32: GuestRange::new(layout.mmio32.base + index * slot32, slot32),
                mmio64: GuestRange::new(layout.mmio64_region.base + index * slot64, mmio64_size),
                msi_base: layout
                    .msi_segment_shift
                    .map_or(0, |shift| u32::from(id) << shift),
                intx: (layout.intx)(id),
                functions: Vec::new(),
            };
            let members = (0..config.devices.len()).filter(|&i| bridge_of[i] == id);
            for (n, i) in members.enumerate() {
                let label = devices
                    .get(i)
                    .map_or_else(|| config.devices[i].vfio.to_string(), |h| h.bdf.to_string());
                if n >= MAX_DEVICES_PER_BRIDGE {
                    return Err(PlanError::BridgeFull {
                        segment: id,
                        device: label,
                    });
                }
                let device = FIRST_DEVICE_SLOT + n as u8;
                let function = bridge.function((ROOT_BUS, device, 0), label, i);
                bridge.functions.push(function);
            }
            Ok(bridge)
        })
        .collect()
}

fn serial_enabled(config: &VmConfig) -> bool {
    !matches!(config.serial, SerialConfig::None)
}

fn aarch64(config: &VmConfig) -> Platform {
    use arch::aarch64::layout as l;
    let vcpus = config.cpus.boot;
    Platform {
        arch: GuestArch::Aarch64,
        firmware: match config.boot_mode(HostArch::Aarch64) {
            BootMode::Dt => FirmwareInterface::DeviceTree,
            BootMode::Acpi => FirmwareInterface::Acpi,
        },
        vcpus,
        memory: vec![arch::platform::GuestRange::new(
            l::RAM_BASE,
            config.memory.size.0,
        )],
        interrupt_controller: InterruptController::GicV3 {
            distributor: l::GIC_DIST,
            redistributors: l::gic_redistributors(vcpus),
            redistributor_stride: l::GIC_REDIST_STRIDE,
            its: l::GIC_ITS,
            nr_irqs: l::GIC_NR_IRQS,
        },
        timer: Some(ArchTimer {
            secure_phys_ppi: l::TIMER_SECURE_PHYS_PPI,
            nonsecure_phys_ppi: l::TIMER_NONSECURE_PHYS_PPI,
            virt_ppi: l::TIMER_VIRT_PPI,
            hyp_ppi: l::TIMER_HYP_PPI,
        }),
        serial: serial_enabled(config).then_some(SerialPort {
            model: UartModel::Pl011,
            registers: RegisterSpace::Mmio(l::UART.base),
            irq: l::UART_SPI,
            clock_hz: l::UART_CLOCK_HZ,
        }),
        power: PowerControl::PsciHvc,
        pci_bridges: Vec::new(),
        smmus: Vec::new(),
        cmdline: config.payload.cmdline.clone(),
        initrd: None,
    }
}

fn x86_64(config: &VmConfig) -> Platform {
    use arch::x86_64::layout as l;
    Platform {
        arch: GuestArch::X86_64,
        firmware: FirmwareInterface::Acpi,
        vcpus: config.cpus.boot,
        memory: l::ram_regions(config.memory.size.0),
        interrupt_controller: InterruptController::X86Apic {
            lapic: l::LAPIC,
            ioapic: l::IOAPIC,
            ioapic_pins: l::IOAPIC_PINS,
        },
        timer: None,
        serial: serial_enabled(config).then_some(SerialPort {
            model: UartModel::Ns16550a,
            registers: RegisterSpace::Pio(l::COM1_PORT),
            irq: l::COM1_GSI,
            clock_hz: l::UART_CLOCK_HZ,
        }),
        power: PowerControl::AcpiPorts {
            sleep_control: l::ACPI_SLEEP_CONTROL,
            sleep_status: l::ACPI_SLEEP_STATUS,
            reset: l::ACPI_RESET,
            reset_value: l::ACPI_RESET_VALUE,
            s5_sleep_type: l::ACPI_S5_SLEEP_TYPE,
        },
        pci_bridges: Vec::new(),
        smmus: Vec::new(),
        cmdline: config.payload.cmdline.clone(),
        initrd: None,
    }
}

#[cfg(test)]
mod tests {
    use arch::aarch64::image::ImageFootprint;
    use arch::boot::KernelFootprint;
    use arch::x86_64::boot::BzImageFootprint;

    use super::*;
    use crate::config::{ByteSize, CpusConfig, MemoryConfig};

    const MIB: u64 = 1 << 20;

    /// A kernel of `arch` and a 1 MiB initramfs, which fit every test's RAM.
    fn payload(arch: HostArch) -> PayloadFootprint {
        let kernel = match arch {
            HostArch::Aarch64 => KernelFootprint::Arm64Image(ImageFootprint {
                text_offset: 0,
                image_size: 32 * MIB,
            }),
            HostArch::X86_64 => KernelFootprint::BzImage(BzImageFootprint {
                range: GuestRange::new(MIB, 24 * MIB),
                entry: MIB + 0x200,
                initrd_addr_max: 0x7fff_ffff,
                cmdline_size: 2047,
            }),
        };
        PayloadFootprint {
            kernel,
            initrd_size: Some(MIB),
        }
    }

    /// The plan with [`payload`].
    fn platform(c: &VmConfig, arch: HostArch, host: &HostDescription) -> Result<Plan, PlanError> {
        super::platform(c, arch, host, &payload(arch))
    }

    #[test]
    fn the_plan_places_the_payload_and_tells_the_guest_where_the_initrd_is() {
        let c = config(1, 256);
        for arch in [HostArch::Aarch64, HostArch::X86_64] {
            let p = platform(&c, arch, &HostDescription::default()).unwrap();
            let initrd = p.boot.initrd.expect("an initramfs was given");
            assert_eq!(p.initrd, Some(initrd));
            assert_eq!(initrd.size, MIB);
            assert!(!initrd.overlaps(&p.boot.kernel));
            assert!(p.memory.iter().any(|r| r.contains(initrd.base)));
        }
        // An initramfs larger than the RAM left is refused by the plan, naming it.
        let mut big = payload(HostArch::Aarch64);
        big.initrd_size = Some(250 * MIB);
        let err =
            super::platform(&c, HostArch::Aarch64, &HostDescription::default(), &big).unwrap_err();
        assert!(
            matches!(
                err,
                PlanError::Boot(LayoutError::OverlapsKernel { what: "initrd", .. })
            ),
            "{err}"
        );
        // A kernel of the other architecture is refused too.
        let err = super::platform(
            &c,
            HostArch::X86_64,
            &HostDescription::default(),
            &payload(HostArch::Aarch64),
        )
        .unwrap_err();
        assert!(
            matches!(err, PlanError::Boot(LayoutError::WrongKernel(_))),
            "{err}"
        );
    }

    fn config(cpus: u32, mib: u64) -> VmConfig {
        VmConfig {
            cpus: CpusConfig { boot: cpus },
            memory: MemoryConfig {
                size: ByteSize(mib << 20),
            },
            ..Default::default()
        }
    }

    #[test]
    fn aarch64_plan_follows_the_config() {
        let mut c = config(4, 256);
        c.boot = Some(BootMode::Acpi);
        let p = platform(&c, HostArch::Aarch64, &HostDescription::default()).unwrap();
        assert_eq!(p.firmware, FirmwareInterface::Acpi);
        assert_eq!(p.memory_size(), 256 << 20);
        assert_eq!(p.memory[0].base, arch::aarch64::layout::RAM_BASE);
        let InterruptController::GicV3 { redistributors, .. } = p.interrupt_controller else {
            panic!("not a GICv3");
        };
        assert_eq!(
            redistributors.size,
            4 * arch::aarch64::layout::GIC_REDIST_STRIDE
        );
        assert!(p.serial.is_some());
    }

    #[test]
    fn x86_plan_splits_memory_and_has_no_serial_when_disabled() {
        let mut c = config(2, 4096);
        c.serial = SerialConfig::None;
        let p = platform(&c, HostArch::X86_64, &HostDescription::default()).unwrap();
        assert_eq!(p.memory.len(), 2);
        assert_eq!(p.memory_size(), 4 << 30);
        assert!(p.serial.is_none());
        assert_eq!(p.firmware, FirmwareInterface::Acpi);
        assert!(p.pci_bridges.is_empty(), "no devices, no PCI");
    }

    #[test]
    fn topology_places_devices_per_bridge_with_ids_from_one_place() {
        let mut c = config(1, 256);
        c.devices = ["vfio=02:00.0", "vfio=03:00.0,bridge=2", "vfio=04:00.0"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        c.pci_bridges = vec!["id=5,mmio64=8G".parse().unwrap()];
        let p = platform(&c, HostArch::Aarch64, &HostDescription::default()).unwrap();
        let segments: Vec<u16> = p.pci_bridges.iter().map(|b| b.segment).collect();
        assert_eq!(segments, [0, 2, 5]);
        let b0 = &p.pci_bridges[0];
        let slots: Vec<(u8, u16, u32)> = b0
            .functions
            .iter()
            .map(|f| (f.device, f.rid, f.msi_device_id))
            .collect();
        assert_eq!(slots, [(1, 0x08, 0x08), (2, 0x10, 0x10)]);
        let b2 = &p.pci_bridges[1];
        assert_eq!(b2.functions[0].msi_device_id, (2 << 12) | 0x08);
        assert_eq!(b2.functions[0].label, "0000:03:00.0");
        assert_eq!(p.pci_bridges[2].mmio64.size, 8 << 30);
        assert!(p.pci_bridges[2].functions.is_empty());
        // Windows never overlap each other, RAM or the fixed devices.
        let mut ranges: Vec<GuestRange> = p.memory.clone();
        for b in &p.pci_bridges {
            ranges.extend([b.ecam, b.mmio32, b.mmio64]);
        }
        for (i, a) in ranges.iter().enumerate() {
            for b in &ranges[i + 1..] {
                assert!(!a.overlaps(b), "{a:?} overlaps {b:?}");
            }
        }
        assert_eq!(p.pci_bridges[1].intx, [40, 41, 42, 43]);
        assert_eq!(b0.config_address(0, 2, 0), b0.ecam.base + (2 << 15));
    }

    #[test]
    fn x86_topology_shares_intx_pins_and_has_no_msi_ids() {
        let mut c = config(1, 256);
        c.devices = vec!["vfio=02:00.0,bridge=1".parse().unwrap()];
        let p = platform(&c, HostArch::X86_64, &HostDescription::default()).unwrap();
        let b = &p.pci_bridges[0];
        assert_eq!(b.msi_base, 0);
        assert_eq!(b.intx, [20, 21, 22, 23]);
        assert!(b.ecam.base >= arch::x86_64::layout::PCI_ECAM_REGION.base);
        assert!(b.mmio32.end() <= arch::x86_64::layout::PCI_ECAM_REGION.base);
    }

    /// A host with `n` devices, device `i` behind `iommus[i % iommus.len()]`, and the SMMUv3s
    /// `smmus` (with the IDRs of a host that can back a vSMMU).
    fn nested_host(n: usize, iommus: &[&str], smmus: &[&str]) -> (VmConfig, HostDescription) {
        let mut c = config(1, 256);
        c.iommu = IommuMode::NestedSmmuv3;
        let bdf = |i: usize| format!("0000:{:02x}:{:02x}.0", 0x10 + i / 32, i % 32);
        c.devices = (0..n)
            .map(|i| format!("vfio={}", bdf(i)).parse().unwrap())
            .collect();
        let host = HostDescription {
            devices: (0..n)
                .map(|i| HostDevice {
                    index: i,
                    bdf: bdf(i).parse().unwrap(),
                    sysfs: Default::default(),
                    cdev: Default::default(),
                    iommu: Some(iommus[i % iommus.len()].to_string()),
                })
                .collect(),
            smmus: smmus
                .iter()
                .map(|name| HostSmmu {
                    name: name.to_string(),
                    idr: [222564379, 41091088, 0, 5140, 0, 116],
                    iidr: 0,
                    aidr: 1,
                    flags: 0,
                })
                .collect(),
        };
        (c, host)
    }

    #[test]
    fn forty_devices_behind_two_host_smmus_get_a_bridge_each() {
        let smmus = ["smmu3.0xc000000", "smmu3.0xc020000"];
        let (c, host) = nested_host(40, &smmus, &smmus);
        let p = platform(&c, HostArch::Aarch64, &host).unwrap();
        let counts: Vec<usize> = p.pci_bridges.iter().map(|b| b.functions.len()).collect();
        assert_eq!(counts, [20, 20]);
        for bridge in &p.pci_bridges {
            let smmu = p.smmu_for(bridge).expect("every bridge has its vSMMU");
            assert_eq!(p.bridge_for(smmu), Some(bridge));
        }
    }

    #[test]
    fn a_bridge_holds_31_devices_and_the_plan_names_the_32nd() {
        // Behind one host SMMU, all on its bridge.
        let smmu = ["smmu3.0xc000000"];
        let (c, host) = nested_host(31, &smmu, &smmu);
        platform(&c, HostArch::Aarch64, &host).unwrap();
        let (c, host) = nested_host(32, &smmu, &smmu);
        let err = platform(&c, HostArch::Aarch64, &host).unwrap_err();
        assert_eq!(
            err,
            PlanError::BridgeFull {
                segment: 0,
                device: "0000:10:1f.0".into()
            }
        );
        assert!(
            err.to_string()
                .contains("PCI bridge 0 already holds 31 devices, all it can: 0000:10:1f.0"),
            "{err}"
        );
        // Without an IOMMU the configuration places them.
        let mut c = config(1, 256);
        c.devices = (0..32)
            .map(|i| format!("vfio=0000:10:{i:02x}.0,bridge=5").parse().unwrap())
            .collect();
        let err = platform(&c, HostArch::X86_64, &HostDescription::default()).unwrap_err();
        assert_eq!(
            err,
            PlanError::BridgeFull {
                segment: 5,
                device: "0000:10:1f.0".into()
            }
        );
    }

    #[test]
    fn a_device_behind_an_unlisted_iommu_is_refused_by_name() {
        let listed = ["smmu3.0xc000000"];
        let (c, host) = nested_host(2, &["smmu3.0xc000000", "smmu.0xd000000"], &listed);
        let err = platform(&c, HostArch::Aarch64, &host).unwrap_err();
        assert_eq!(
            err,
            PlanError::UnlistedIommu {
                device: "0000:10:01.0".into(),
                iommu: "smmu.0xd000000".into()
            }
        );
        // A device behind no IOMMU still gets the bridge without a vSMMU.
        let (c, mut host) = nested_host(2, &listed, &listed);
        host.devices[1].iommu = None;
        let p = platform(&c, HostArch::Aarch64, &host).unwrap();
        assert_eq!(p.pci_bridges.len(), 2);
        assert!(p.smmu_for(&p.pci_bridges[1]).is_none());
    }
}
