//! The one check of a [`Platform`]: every rule the device tree, the ACPI tables and the EFI handoff
//! rely on, enforced once when the plan is made. Encoders take the [`CheckedPlatform`] it returns
//! and only encode; they read the hardware the check typed for them from [`ArchParts`].

use std::ops::Deref;

use serde::Serialize;
use thiserror::Error;

use super::{
    ArchTimer, FirmwareInterface, GuestArch, GuestRange, InterruptController, PciBridge, Platform,
    PowerControl, RegisterSpace, UartModel,
};
use crate::aarch64::layout as arm;
use crate::x86_64::layout as x86;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PlatformError {
    #[error("a {arch:?} guest cannot boot through {firmware:?}")]
    Firmware {
        arch: GuestArch,
        firmware: FirmwareInterface,
    },
    #[error("a {arch:?} guest cannot use a {what} interrupt controller")]
    InterruptController { arch: GuestArch, what: &'static str },
    #[error("a {arch:?} guest cannot use power control {power:?}")]
    PowerControl {
        arch: GuestArch,
        power: PowerControl,
    },
    #[error("a {arch:?} guest cannot have a {model:?} serial port")]
    SerialModel { arch: GuestArch, model: UartModel },
    #[error("a {arch:?} guest cannot reach its serial port through {registers:?}")]
    SerialRegisters {
        arch: GuestArch,
        registers: RegisterSpace,
    },
    #[error("the aarch64 platform has no architectural timer")]
    MissingTimer,
    #[error("the platform has no vCPUs")]
    NoVcpus,
    #[error("{vcpus} vCPUs are more than the {max} a {arch:?} guest can have")]
    TooManyVcpus {
        arch: GuestArch,
        vcpus: u32,
        max: u32,
    },
    #[error("the platform has no memory")]
    NoMemory,
    #[error("guest RAM region {:#x}+{:#x} wraps around the address space", .0.base, .0.size)]
    RamWraps(GuestRange),
    #[error(
        "guest RAM regions {:#x}+{:#x} and {:#x}+{:#x} overlap",
        .0.base, .0.size, .1.base, .1.size
    )]
    OverlappingRam(GuestRange, GuestRange),
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
    #[error("{what} {irq} is out of range (0..{limit})")]
    InterruptOutOfRange {
        what: &'static str,
        irq: u32,
        limit: u32,
    },
    #[error("{what} at {address:#x} does not fit the ACPI tables' 32-bit fields")]
    AddressAbove4G { what: &'static str, address: u64 },
    #[error("{what} size {size:#x} does not fit the ACPI tables' 32-bit field")]
    SizeTooLarge { what: &'static str, size: u64 },
    #[error("initrd {:#x}+{:#x} wraps around the address space", .0.base, .0.size)]
    InitrdWraps(GuestRange),
    #[error("PCI segment {0:#x} is above 0xff, the highest the DSDT's PCxx names can hold")]
    PciSegmentTooHigh(u16),
    #[error("PCI segment {0} is described twice")]
    PciDuplicateSegment(u16),
    #[error("PCI segment {segment}: bus range {start:#x}..={end:#x} is empty")]
    PciBusRange { segment: u16, start: u8, end: u8 },
    #[error("PCI segment {segment}: ECAM window of {size:#x} bytes cannot hold {needed:#x}")]
    PciEcamTooSmall {
        segment: u16,
        size: u64,
        needed: u64,
    },
    #[error(
        "PCI segment {segment}: ECAM at {base:#x} for start bus {start_bus:#x} puts bus 0 below address 0"
    )]
    PciEcamBase {
        segment: u16,
        base: u64,
        start_bus: u8,
    },
    #[error("PCI segment {segment}: ECAM at {base:#x} is above 4 GiB, where x86 Linux ignores it")]
    PciEcamAbove4G { segment: u16, base: u64 },
    #[error("PCI segment {segment}: {what} window {base:#x}+{size:#x} is empty or out of range")]
    PciWindow {
        segment: u16,
        what: &'static str,
        base: u64,
        size: u64,
    },
    #[error("PCI segment {segment}: INTx line {line} is out of range (0..{limit})")]
    PciIntxOutOfRange { segment: u16, line: u32, limit: u32 },
    #[error(
        "PCI segment {segment}: INTx on I/O APIC pin {pin}, an ISA IRQ the MADT describes as edge/high"
    )]
    PciIntxIsaPin { segment: u16, pin: u32 },
    #[error(
        "PCI segment {segment}: {label} at {bus:02x}:{device:02x}.{function} is not a function of the bridge's buses, or not the only one there"
    )]
    PciFunctionAddress {
        segment: u16,
        label: String,
        bus: u8,
        device: u8,
        function: u8,
    },
    #[error("PCI segment {segment}: {label}'s requester or ITS device ID is not its address's")]
    PciFunctionIds { segment: u16, label: String },
    #[error("a {arch:?} guest cannot have vSMMUv3s")]
    SmmuArch { arch: GuestArch },
    #[error("vSMMUv3 {index} is number {position} of the list; indices go 0, 1, 2.. in order")]
    SmmuIndex { position: usize, index: u16 },
    #[error("vSMMUv3 {index}: PCI segment {segment} has no host bridge")]
    SmmuNoBridge { index: u16, segment: u16 },
    #[error("vSMMUv3s {first} and {second} both translate PCI segment {segment}")]
    SmmuSharedBridge {
        first: u16,
        second: u16,
        segment: u16,
    },
    #[error(
        "vSMMUv3 {index}: register window {base:#x}+{size:#x} is not {:#x} bytes at a 64 KiB boundary",
        arm::SMMU_REGISTERS_SIZE
    )]
    SmmuRegisters { index: u16, base: u64, size: u64 },
    #[error("vSMMUv3 {index}: register window {base:#x}+{size:#x} overlaps {other}")]
    SmmuOverlap {
        index: u16,
        base: u64,
        size: u64,
        other: String,
    },
    #[error("vSMMUv3 {index}: SPI {spi} is out of range (0..{limit})")]
    SmmuSpiOutOfRange { index: u16, spi: u32, limit: u32 },
    #[error("vSMMUv3 {index}: SPI {spi} is also {other}")]
    SmmuSpiInUse { index: u16, spi: u32, other: String },
    #[error("vSMMUv3 {index}: MSI window {base:#x}+{size:#x} is empty or not 64 KiB-aligned")]
    SmmuMsiWindow { index: u16, base: u64, size: u64 },
}

/// A platform [`Platform::check`] accepted; nothing else makes one. It reads (and serializes) as
/// the platform, plus the typed [`ArchParts`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedPlatform {
    platform: Platform,
    parts: ArchParts,
}

impl Deref for CheckedPlatform {
    type Target = Platform;

    fn deref(&self) -> &Platform {
        &self.platform
    }
}

impl Serialize for CheckedPlatform {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.platform.serialize(serializer)
    }
}

impl CheckedPlatform {
    /// The architecture's hardware as the check found it.
    pub fn parts(&self) -> &ArchParts {
        &self.parts
    }
}

/// The hardware of a checked platform, typed per architecture so that encoders do not match on
/// the platform's enums again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchParts {
    Aarch64(Aarch64Parts),
    X86_64(X86Parts),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Aarch64Parts {
    pub gic: Gic,
    pub timer: ArchTimer,
    pub uart: Option<MmioUart>,
}

/// The GICv3 and its ITS ([`InterruptController::GicV3`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gic {
    pub distributor: GuestRange,
    /// At most 4 GiB (the MADT's GICR length is 32-bit).
    pub redistributors: GuestRange,
    pub redistributor_stride: u64,
    pub its: GuestRange,
    pub nr_irqs: u32,
}

/// The memory-mapped UART of an aarch64 guest, below 4 GiB (the SPCR's and `_CRS`'s fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioUart {
    pub model: UartModel,
    pub base: u32,
    pub spi: u32,
    pub clock_hz: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct X86Parts {
    /// The vCPU count, each vCPU's APIC ID fitting the MADT's byte.
    pub vcpus: u8,
    pub lapic: u32,
    pub ioapic: u32,
    pub ioapic_pins: u32,
    pub power: AcpiPorts,
    pub uart: Option<PioUart>,
}

/// [`PowerControl::AcpiPorts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcpiPorts {
    pub sleep_control: u16,
    pub sleep_status: u16,
    pub reset: u16,
    pub reset_value: u8,
    pub s5_sleep_type: u8,
}

/// The port-I/O 16550 of an x86 guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PioUart {
    pub port: u16,
    pub gsi: u32,
    pub clock_hz: u32,
}

/// SMMUv3 register pages and RMR ranges are 64 KiB-aligned (Linux warns about RMRs that are not).
const SMMU_ALIGN: u64 = 0x1_0000;
/// Device names are `PCxx`, `xx` the segment in hex.
const MAX_NAMED_SEGMENT: u16 = 0xff;
/// A PCI bus has 32 devices of 8 functions.
const PCI_DEVICES: u8 = 32;
const PCI_FUNCTIONS: u8 = 8;

impl Platform {
    /// Checks every rule the encoders rely on, once; the error names the first part that breaks
    /// one.
    pub fn check(self) -> Result<CheckedPlatform, PlatformError> {
        if self.vcpus == 0 {
            return Err(PlatformError::NoVcpus);
        }
        check_memory(&self.memory)?;
        if let Some(initrd) = self.initrd
            && initrd.base.checked_add(initrd.size).is_none()
        {
            return Err(PlatformError::InitrdWraps(initrd));
        }
        let parts = match self.arch {
            GuestArch::Aarch64 => ArchParts::Aarch64(self.check_aarch64()?),
            GuestArch::X86_64 => ArchParts::X86_64(self.check_x86_64()?),
        };
        Ok(CheckedPlatform {
            platform: self,
            parts,
        })
    }

    fn check_aarch64(&self) -> Result<Aarch64Parts, PlatformError> {
        let arch = GuestArch::Aarch64;
        if self.power != PowerControl::PsciHvc {
            return Err(PlatformError::PowerControl {
                arch,
                power: self.power,
            });
        }
        let InterruptController::GicV3 {
            distributor,
            redistributors,
            redistributor_stride,
            its,
            nr_irqs,
        } = self.interrupt_controller
        else {
            return Err(PlatformError::InterruptController {
                arch,
                what: "x86 APIC",
            });
        };
        if redistributor_stride == 0 || !redistributor_stride.is_multiple_of(0x1_0000) {
            return Err(PlatformError::BadRedistributorStride(redistributor_stride));
        }
        let needed = u128::from(self.vcpus) * u128::from(redistributor_stride);
        if needed > u128::from(redistributors.size) {
            return Err(PlatformError::RedistributorsTooSmall {
                vcpus: self.vcpus,
                stride: redistributor_stride,
                needed,
                size: redistributors.size,
            });
        }
        if u32::try_from(redistributors.size).is_err() {
            return Err(PlatformError::SizeTooLarge {
                what: "the GIC redistributor region",
                size: redistributors.size,
            });
        }
        let timer = self.timer.ok_or(PlatformError::MissingTimer)?;
        for ppi in [
            timer.secure_phys_ppi,
            timer.nonsecure_phys_ppi,
            timer.virt_ppi,
            timer.hyp_ppi,
        ] {
            in_range("timer PPI", ppi, arm::GIC_NR_PPIS)?;
        }
        // SPI numbers the GIC has.
        let spis = nr_irqs.saturating_sub(arm::GIC_SPI_BASE);
        let uart = match self.serial {
            None => None,
            Some(serial) => {
                let RegisterSpace::Mmio(base) = serial.registers else {
                    return Err(PlatformError::SerialRegisters {
                        arch,
                        registers: serial.registers,
                    });
                };
                let fits = base
                    .checked_add(arm::UART.size)
                    .is_some_and(|end| end <= 1 << 32);
                let base = u32::try_from(base).ok().filter(|_| fits).ok_or(
                    PlatformError::AddressAbove4G {
                        what: "the serial port",
                        address: base,
                    },
                )?;
                in_range("serial SPI", serial.irq, spis)?;
                Some(MmioUart {
                    model: serial.model,
                    base,
                    spi: serial.irq,
                    clock_hz: serial.clock_hz,
                })
            }
        };
        self.check_pci_bridges(|segment, spi| {
            if spi >= spis {
                return Err(PlatformError::PciIntxOutOfRange {
                    segment,
                    line: spi,
                    limit: spis,
                });
            }
            Ok(())
        })?;
        self.check_smmus(spis)?;
        Ok(Aarch64Parts {
            gic: Gic {
                distributor,
                redistributors,
                redistributor_stride,
                its,
                nr_irqs,
            },
            timer,
            uart,
        })
    }

    fn check_x86_64(&self) -> Result<X86Parts, PlatformError> {
        let arch = GuestArch::X86_64;
        if self.firmware != FirmwareInterface::Acpi {
            return Err(PlatformError::Firmware {
                arch,
                firmware: self.firmware,
            });
        }
        let PowerControl::AcpiPorts {
            sleep_control,
            sleep_status,
            reset,
            reset_value,
            s5_sleep_type,
        } = self.power
        else {
            return Err(PlatformError::PowerControl {
                arch,
                power: self.power,
            });
        };
        let InterruptController::X86Apic {
            lapic,
            ioapic,
            ioapic_pins,
        } = self.interrupt_controller
        else {
            return Err(PlatformError::InterruptController {
                arch,
                what: "Arm GICv3",
            });
        };
        let vcpus = u8::try_from(self.vcpus)
            .ok()
            .filter(|&n| u32::from(n) <= x86::MAX_VCPUS)
            .ok_or(PlatformError::TooManyVcpus {
                arch,
                vcpus: self.vcpus,
                max: x86::MAX_VCPUS,
            })?;
        let below_4g = |what, address: u64| {
            u32::try_from(address).map_err(|_| PlatformError::AddressAbove4G { what, address })
        };
        let lapic = below_4g("the local APIC", lapic)?;
        let ioapic = below_4g("the I/O APIC", ioapic)?;
        let sci_gsi = u32::from(x86::ISA_SCI_IRQ);
        in_range("ISA override", sci_gsi.max(x86::ISA_TIMER_GSI), ioapic_pins)?;
        let uart = match self.serial {
            None => None,
            Some(serial) => {
                if serial.model != UartModel::Ns16550a {
                    return Err(PlatformError::SerialModel {
                        arch,
                        model: serial.model,
                    });
                }
                let RegisterSpace::Pio(port) = serial.registers else {
                    return Err(PlatformError::SerialRegisters {
                        arch,
                        registers: serial.registers,
                    });
                };
                in_range("serial GSI", serial.irq, ioapic_pins)?;
                Some(PioUart {
                    port,
                    gsi: serial.irq,
                    clock_hz: serial.clock_hz,
                })
            }
        };
        if !self.smmus.is_empty() {
            return Err(PlatformError::SmmuArch { arch });
        }
        self.check_pci_bridges(|segment, pin| {
            if pin >= ioapic_pins {
                return Err(PlatformError::PciIntxOutOfRange {
                    segment,
                    line: pin,
                    limit: ioapic_pins,
                });
            }
            if pin < x86::ISA_IRQS {
                return Err(PlatformError::PciIntxIsaPin { segment, pin });
            }
            Ok(())
        })?;
        // x86 Linux ignores MCFG entries above 4 GiB unless DMI gives a BIOS year from 2010 on
        // (arch/x86/pci/mmconfig-shared.c, `acpi_mcfg_valid_entry`); a guest has no DMI.
        if let Some(bridge) = self.pci_bridges.iter().find(|b| b.ecam.end() > 1 << 32) {
            return Err(PlatformError::PciEcamAbove4G {
                segment: bridge.segment,
                base: bridge.ecam.base,
            });
        }
        Ok(X86Parts {
            vcpus,
            lapic,
            ioapic,
            ioapic_pins,
            power: AcpiPorts {
                sleep_control,
                sleep_status,
                reset,
                reset_value,
                s5_sleep_type,
            },
            uart,
        })
    }

    /// Every bridge: a segment of its own that the DSDT can name, a bus range its ECAM window
    /// holds, windows inside their address spaces, functions at their own addresses with the IDs
    /// those give, and INTx lines `intx` accepts.
    fn check_pci_bridges(
        &self,
        intx: impl Fn(u16, u32) -> Result<(), PlatformError>,
    ) -> Result<(), PlatformError> {
        for (i, bridge) in self.pci_bridges.iter().enumerate() {
            let segment = bridge.segment;
            if segment > MAX_NAMED_SEGMENT {
                return Err(PlatformError::PciSegmentTooHigh(segment));
            }
            if self.pci_bridges[..i].iter().any(|b| b.segment == segment) {
                return Err(PlatformError::PciDuplicateSegment(segment));
            }
            if bridge.bus_start > bridge.bus_end {
                return Err(PlatformError::PciBusRange {
                    segment,
                    start: bridge.bus_start,
                    end: bridge.bus_end,
                });
            }
            let needed = bridge.ecam_bytes();
            if bridge.ecam.size < needed || bridge.ecam.base.checked_add(needed).is_none() {
                return Err(PlatformError::PciEcamTooSmall {
                    segment,
                    size: bridge.ecam.size,
                    needed,
                });
            }
            if bridge.ecam_bus0() > bridge.ecam.base {
                return Err(PlatformError::PciEcamBase {
                    segment,
                    base: bridge.ecam.base,
                    start_bus: bridge.bus_start,
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
                    return Err(PlatformError::PciWindow {
                        segment,
                        what,
                        base: window.base,
                        size: window.size,
                    });
                }
            }
            for &line in &bridge.intx {
                intx(segment, line)?;
            }
            check_functions(bridge)?;
        }
        Ok(())
    }

    /// The vSMMUv3s against each other and the rest of the platform: each translates an existing
    /// bridge of its own, its 128 KiB of registers are aligned and overlap nothing else the guest
    /// sees, its three SPIs exist and are nobody else's, and its MSI window can be an RMR.
    fn check_smmus(&self, spi_limit: u32) -> Result<(), PlatformError> {
        let mut windows: Vec<(String, GuestRange)> = Vec::new();
        if let InterruptController::GicV3 {
            distributor,
            redistributors,
            its,
            ..
        } = self.interrupt_controller
        {
            windows.push(("the GIC distributor".into(), distributor));
            windows.push(("the GIC redistributors".into(), redistributors));
            windows.push(("the GIC ITS".into(), its));
        }
        let mut spis: Vec<(String, u32)> = Vec::new();
        if let Some(serial) = self.serial {
            if let RegisterSpace::Mmio(base) = serial.registers {
                windows.push(("the UART".into(), GuestRange::new(base, arm::UART.size)));
            }
            spis.push(("the UART's".into(), serial.irq));
        }
        for range in &self.memory {
            windows.push(("guest RAM".into(), *range));
        }
        for bridge in &self.pci_bridges {
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

        for (position, smmu) in self.smmus.iter().enumerate() {
            let index = smmu.index;
            if usize::from(index) != position {
                return Err(PlatformError::SmmuIndex { position, index });
            }
            if self.bridge_for(smmu).is_none() {
                return Err(PlatformError::SmmuNoBridge {
                    index,
                    segment: smmu.segment,
                });
            }
            let earlier = &self.smmus[..position];
            if let Some(first) = earlier.iter().find(|s| s.segment == smmu.segment) {
                return Err(PlatformError::SmmuSharedBridge {
                    first: first.index,
                    second: index,
                    segment: smmu.segment,
                });
            }
            let regs = smmu.registers;
            if regs.size != arm::SMMU_REGISTERS_SIZE
                || !regs.base.is_multiple_of(SMMU_ALIGN)
                || regs.base.checked_add(regs.size).is_none()
            {
                return Err(PlatformError::SmmuRegisters {
                    index,
                    base: regs.base,
                    size: regs.size,
                });
            }
            if let Some((other, _)) = windows.iter().find(|(_, w)| w.overlaps(&regs)) {
                return Err(PlatformError::SmmuOverlap {
                    index,
                    base: regs.base,
                    size: regs.size,
                    other: other.clone(),
                });
            }
            windows.push((format!("vSMMUv3 {index}'s registers"), regs));

            let own = [smmu.event_irq, smmu.gerror_irq, smmu.sync_irq];
            for (k, &spi) in own.iter().enumerate() {
                if spi >= spi_limit {
                    return Err(PlatformError::SmmuSpiOutOfRange {
                        index,
                        spi,
                        limit: spi_limit,
                    });
                }
                let other = spis
                    .iter()
                    .find(|(_, s)| *s == spi)
                    .map(|(other, _)| other.clone())
                    .or_else(|| own[..k].contains(&spi).then(|| "its own".to_owned()));
                if let Some(other) = other {
                    return Err(PlatformError::SmmuSpiInUse { index, spi, other });
                }
            }
            spis.extend(own.map(|spi| (format!("vSMMUv3 {index}'s"), spi)));

            let msi = smmu.msi_window;
            if msi.size == 0
                || !msi.base.is_multiple_of(SMMU_ALIGN)
                || !msi.size.is_multiple_of(SMMU_ALIGN)
                || msi.base.checked_add(msi.size).is_none()
            {
                return Err(PlatformError::SmmuMsiWindow {
                    index,
                    base: msi.base,
                    size: msi.size,
                });
            }
        }
        Ok(())
    }
}

/// RAM is there, and its regions neither wrap nor overlap.
fn check_memory(memory: &[GuestRange]) -> Result<(), PlatformError> {
    if memory.is_empty() {
        return Err(PlatformError::NoMemory);
    }
    for (i, a) in memory.iter().enumerate() {
        if a.base.checked_add(a.size).is_none() {
            return Err(PlatformError::RamWraps(*a));
        }
        if let Some(b) = memory[..i].iter().find(|b| b.overlaps(a)) {
            return Err(PlatformError::OverlappingRam(*b, *a));
        }
    }
    Ok(())
}

/// Each function is a function of the bridge's buses, alone at its address, with the IDs
/// [`PciBridge::function`] gives that address.
fn check_functions(bridge: &PciBridge) -> Result<(), PlatformError> {
    let at = |g: &super::PciFunction| (g.bus, g.device, g.function);
    for (i, f) in bridge.functions.iter().enumerate() {
        let outside = !(bridge.bus_start..=bridge.bus_end).contains(&f.bus)
            || f.device >= PCI_DEVICES
            || f.function >= PCI_FUNCTIONS;
        if outside || bridge.functions[..i].iter().any(|g| at(g) == at(f)) {
            return Err(PlatformError::PciFunctionAddress {
                segment: bridge.segment,
                label: f.label.clone(),
                bus: f.bus,
                device: f.device,
                function: f.function,
            });
        }
        if *f != bridge.function((f.bus, f.device, f.function), f.label.clone(), f.host_index) {
            return Err(PlatformError::PciFunctionIds {
                segment: bridge.segment,
                label: f.label.clone(),
            });
        }
    }
    Ok(())
}

fn in_range(what: &'static str, irq: u32, limit: u32) -> Result<(), PlatformError> {
    if irq >= limit {
        return Err(PlatformError::InterruptOutOfRange { what, irq, limit });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acpi::testutil::{
        AARCH64_RAM, MIB, aarch64_pci_bridges, aarch64_platform, aarch64_smmu_platform,
        aarch64_smmus, x86_pci_bridges, x86_platform,
    };
    use crate::platform::SerialPort;

    /// `p` edited by `edit` is refused with an error whose Debug form contains `want`; its
    /// message.
    fn refused(mut p: Platform, edit: impl FnOnce(&mut Platform), want: &str) -> String {
        edit(&mut p);
        let err = p.check().expect_err(want);
        assert!(format!("{err:?}").contains(want), "{err:?} is not {want}");
        err.to_string()
    }

    fn arm() -> Platform {
        aarch64_platform(1)
    }

    fn x86() -> Platform {
        x86_platform(1)
    }

    #[test]
    fn fixtures_pass_and_serialize_as_the_platform() {
        for p in [arm(), x86(), aarch64_smmu_platform(2, 3, &[2, 0])] {
            let json = serde_json::to_string(&p).unwrap();
            let checked = p.clone().check().unwrap();
            assert_eq!(*checked, p);
            assert_eq!(serde_json::to_string(&checked).unwrap(), json);
        }
        let ArchParts::Aarch64(parts) = *arm().check().unwrap().parts() else {
            panic!("aarch64 parts");
        };
        assert_eq!(parts.uart.map(|u| (u.base, u.spi)), Some((0x0900_0000, 1)));
        let ArchParts::X86_64(parts) = *x86_platform(3).check().unwrap().parts() else {
            panic!("x86 parts");
        };
        assert_eq!((parts.vcpus, parts.uart.map(|u| u.port)), (3, Some(0x3f8)));
    }

    #[test]
    fn rejects_the_other_archs_hardware() {
        let gic = arm().interrupt_controller;
        let apic = x86().interrupt_controller;
        let text = refused(
            arm(),
            |p| p.interrupt_controller = apic,
            "what: \"x86 APIC\"",
        );
        assert_eq!(
            text,
            "a Aarch64 guest cannot use a x86 APIC interrupt controller"
        );
        refused(
            arm(),
            |p| p.power = x86().power,
            "PowerControl { arch: Aarch64",
        );
        let text = refused(arm(), |p| p.serial = x86().serial, "SerialRegisters");
        assert!(text.contains("Pio"), "{text}");
        refused(
            x86(),
            |p| p.interrupt_controller = gic,
            "what: \"Arm GICv3\"",
        );
        refused(
            x86(),
            |p| p.power = PowerControl::PsciHvc,
            "PowerControl { arch: X86_64",
        );
        let text = refused(x86(), |p| p.serial = arm().serial, "SerialRegisters");
        assert!(text.contains("Mmio"), "{text}");
        refused(
            x86(),
            |p| p.smmus = aarch64_smmus(&[0]),
            "SmmuArch { arch: X86_64 }",
        );
        // An x86 guest has no device tree.
        let dt = "Firmware { arch: X86_64, firmware: DeviceTree }";
        refused(x86(), |p| p.firmware = FirmwareInterface::DeviceTree, dt);
        let edit = |p: &mut Platform| {
            (p.arch, p.firmware) = (GuestArch::X86_64, FirmwareInterface::DeviceTree);
        };
        refused(arm(), edit, dt);
    }

    #[test]
    fn rejects_inconsistent_platforms() {
        refused(arm(), |p| p.timer = None, "MissingTimer");
        refused(arm(), |p| p.vcpus = 0, "NoVcpus");
        refused(x86(), |p| p.vcpus = 0, "NoVcpus");
        // One more vCPU than the redistributor region holds.
        refused(arm(), |p| p.vcpus = 2, "RedistributorsTooSmall { vcpus: 2,");
        let stride = |p: &mut Platform| {
            if let InterruptController::GicV3 {
                redistributor_stride,
                ..
            } = &mut p.interrupt_controller
            {
                *redistributor_stride = 0x1000;
            }
        };
        refused(arm(), stride, "BadRedistributorStride(4096)");
        let ppi = "InterruptOutOfRange { what: \"timer PPI\", irq: 16, limit: 16 }";
        refused(
            arm(),
            |p| p.timer.iter_mut().for_each(|t| t.virt_ppi = 16),
            ppi,
        );
        refused(
            arm(),
            |p| p.timer.iter_mut().for_each(|t| t.hyp_ppi = 16),
            ppi,
        );
        let spi = "InterruptOutOfRange { what: \"serial SPI\", irq: 224, limit: 224 }";
        refused(
            arm(),
            |p| p.serial.iter_mut().for_each(|s| s.irq = 224),
            spi,
        );
        let high = |p: &mut Platform| {
            p.serial = Some(SerialPort {
                model: UartModel::Pl011,
                registers: RegisterSpace::Mmio(0x1_0000_0000),
                irq: 1,
                clock_hz: 1,
            });
        };
        refused(arm(), high, "AddressAbove4G { what: \"the serial port\"");

        let too_many = "TooManyVcpus { arch: X86_64, vcpus: 255, max: 254 }";
        refused(x86(), |p| p.vcpus = x86::MAX_VCPUS + 1, too_many);
        let apic = |p: &mut Platform| {
            if let InterruptController::X86Apic { lapic, .. } = &mut p.interrupt_controller {
                *lapic = 0x1_fee0_0000;
            }
        };
        refused(x86(), apic, "AddressAbove4G { what: \"the local APIC\"");
        let gsi = "InterruptOutOfRange { what: \"serial GSI\", irq: 24, limit: 24 }";
        refused(x86(), |p| p.serial.iter_mut().for_each(|s| s.irq = 24), gsi);
        let pl011 = "SerialModel { arch: X86_64, model: Pl011 }";
        refused(
            x86(),
            |p| p.serial.iter_mut().for_each(|s| s.model = UartModel::Pl011),
            pl011,
        );
        let pins = |p: &mut Platform| {
            if let InterruptController::X86Apic { ioapic_pins, .. } = &mut p.interrupt_controller {
                *ioapic_pins = 9;
            }
        };
        refused(
            x86(),
            pins,
            "InterruptOutOfRange { what: \"ISA override\", irq: 9, limit: 9 }",
        );
    }

    #[test]
    fn rejects_bad_ram_and_initrds() {
        refused(arm(), |p| p.memory.clear(), "NoMemory");
        let overlapping = GuestRange::new(AARCH64_RAM.end() - MIB, 4 * MIB);
        let want = format!("OverlappingRam({AARCH64_RAM:?}, {overlapping:?})");
        refused(arm(), |p| p.memory.push(overlapping), &want);
        let wraps = GuestRange::new(u64::MAX - 0xfff, 0x2000);
        refused(arm(), |p| p.memory.push(wraps), "RamWraps");
        // Unsorted but disjoint is fine.
        let mut unsorted = arm();
        unsorted
            .memory
            .insert(0, GuestRange::new(0x80_0000_0000, 1 << 30));
        unsorted.check().unwrap();

        let wraps = GuestRange::new(u64::MAX - 0xfff, 0x1000);
        refused(arm(), |p| p.initrd = Some(wraps), "InitrdWraps");
        let fine = GuestRange::new(AARCH64_RAM.base, MIB);
        let mut with_initrd = arm();
        with_initrd.initrd = Some(fine);
        assert_eq!(with_initrd.check().unwrap().initrd, Some(fine));
    }

    #[test]
    fn rejects_bridges_it_cannot_describe() {
        // Bridge 1 of two is edited; the error names a segment.
        let (mut a, mut x) = (arm(), x86());
        (a.pci_bridges, x.pci_bridges) = (aarch64_pci_bridges(2), x86_pci_bridges(2));
        let check = |p: &Platform, edit: fn(&mut PciBridge), want: &str| {
            let text = refused(p.clone(), |p| edit(&mut p.pci_bridges[1]), want);
            assert!(text.starts_with("PCI segment "), "{text}");
        };
        check(&a, |b| b.segment = 0x100, "PciSegmentTooHigh(256)");
        check(&a, |b| b.segment = 0, "PciDuplicateSegment(0)");
        check(&x, |b| b.segment = 0, "PciDuplicateSegment(0)");
        check(
            &a,
            |b| b.bus_end = 0x0f,
            "PciBusRange { segment: 1, start: 16, end: 15 }",
        );
        let empty = "PciBusRange { segment: 1, start: 32, end: 31 }";
        check(&a, |b| (b.bus_start, b.bus_end) = (0x20, 0x1f), empty);
        let small = "PciEcamTooSmall { segment: 1, size: 15728640, needed: 16777216 }";
        check(&a, |b| b.ecam.size = 15 << 20, small);
        let one_short = "PciEcamTooSmall { segment: 1, size: 16777215, needed: 16777216 }";
        check(&a, |b| b.ecam.size -= 1, one_short);
        // Start bus 0x10 with ECAM below 16 MiB: bus 0 would be below address 0.
        let below_0 = "PciEcamBase { segment: 1, base: 8388608, start_bus: 16 }";
        check(&a, |b| b.ecam.base = 0x80_0000, below_0);
        check(&a, |b| b.mmio32.base = 0xffff_0000, "what: \"32-bit\"");
        check(
            &x,
            |b| b.mmio32 = GuestRange::new(0xffff_0000, 0x2_0000),
            "what: \"32-bit\"",
        );
        check(&a, |b| b.mmio64.size = 0, "what: \"64-bit\"");
        let spi = "PciIntxOutOfRange { segment: 1, line: 224, limit: 224 }";
        check(&a, |b| b.intx[3] = arm::GIC_NR_IRQS - 32, spi);
        let pin = "PciIntxOutOfRange { segment: 1, line: 24, limit: 24 }";
        check(&x, |b| b.intx[0] = x86::IOAPIC_PINS, pin);
        check(
            &x,
            |b| b.intx[3] = 9,
            "PciIntxIsaPin { segment: 1, pin: 9 }",
        );
        let high = "PciEcamAbove4G { segment: 1, base: 68719476736 }";
        check(&x, |b| b.ecam.base = 0x10_0000_0000, high);
        // The last SPI the GIC has is fine.
        let mut p = aarch64_platform(1);
        p.pci_bridges = aarch64_pci_bridges(1);
        p.pci_bridges[0].intx[0] = arm::GIC_NR_IRQS - 33;
        p.check().unwrap();
    }

    #[test]
    fn rejects_functions_that_are_not_where_their_ids_say() {
        // Bridge 1 has buses 0x10..=0x1f and functions at device 0 and 5 of bus 0x10.
        let mut p = arm();
        p.pci_bridges = aarch64_pci_bridges(2);
        let check = |edit: fn(&mut PciBridge), want: &str| {
            let text = refused(p.clone(), |p| edit(&mut p.pci_bridges[1]), want);
            assert!(text.starts_with("PCI segment 1: 0000:11:"), "{text}");
        };
        check(|b| b.functions[0].bus = 0x20, "PciFunctionAddress");
        check(|b| b.functions[0].device = 32, "PciFunctionAddress");
        check(|b| b.functions[0].function = 8, "PciFunctionAddress");
        check(|b| b.functions[1].device = 0, "PciFunctionAddress");
        check(|b| b.functions[1].rid += 1, "PciFunctionIds");
        check(|b| b.functions[1].msi_device_id += 1, "PciFunctionIds");
        // Moving a function with its IDs is fine.
        let b = &mut p.pci_bridges[1];
        b.functions[1] = b.function((0x1f, 31, 7), "moved".into(), 0);
        p.check().unwrap();
    }

    #[test]
    fn rejects_vsmmus_it_cannot_describe() {
        let check = |edit: fn(&mut Platform), want: &str| {
            let text = refused(aarch64_smmu_platform(2, 3, &[0, 1]), edit, want);
            assert!(text.starts_with("vSMMUv3"), "{text}");
        };
        check(
            |p| p.smmus[1].segment = 7,
            "SmmuNoBridge { index: 1, segment: 7 }",
        );
        check(
            |p| drop(p.pci_bridges.remove(1)),
            "SmmuNoBridge { index: 1, segment: 1 }",
        );
        let shared = "SmmuSharedBridge { first: 0, second: 1, segment: 0 }";
        check(|p| p.smmus[1].segment = 0, shared);
        // A duplicate index, and indices out of IORT node order.
        check(
            |p| p.smmus[1].index = 0,
            "SmmuIndex { position: 1, index: 0 }",
        );
        check(
            |p| p.smmus.swap(0, 1),
            "SmmuIndex { position: 0, index: 1 }",
        );
        check(
            |p| p.smmus[1].registers = p.smmus[0].registers,
            "SmmuOverlap { index: 1,",
        );
        let half =
            |p: &mut Platform| p.smmus[1].registers.base = p.smmus[0].registers.base + 0x1_0000;
        check(half, "SmmuOverlap { index: 1,");
        check(
            |p| p.smmus[0].registers.base = arm::GIC_ITS.base,
            "other: \"the GIC ITS\"",
        );
        check(
            |p| p.smmus[0].registers.base = arm::UART.base,
            "other: \"the UART\"",
        );
        let window =
            "index: 1, base: 268435456, size: 131072, other: \"PCI segment 0's 32-bit window\"";
        check(
            |p| p.smmus[1].registers.base = p.pci_bridges[0].mmio32.base,
            window,
        );
        let size = "SmmuRegisters { index: 0, base: 167772160, size: 65536 }";
        check(|p| p.smmus[0].registers.size = 0x1_0000, size);
        check(
            |p| p.smmus[0].registers.base += 0x1000,
            "SmmuRegisters { index: 0,",
        );
        let spi = "SmmuSpiOutOfRange { index: 1, spi: 224, limit: 224 }";
        check(|p| p.smmus[1].sync_irq = arm::GIC_NR_IRQS - 32, spi);
        check(
            |p| p.smmus[0].event_irq = 256,
            "SmmuSpiOutOfRange { index: 0, spi: 256,",
        );
        let other = "SmmuSpiInUse { index: 1, spi: 128, other: \"vSMMUv3 0's\" }";
        check(|p| p.smmus[1].gerror_irq = p.smmus[0].event_irq, other);
        let own = "SmmuSpiInUse { index: 0, spi: 128, other: \"its own\" }";
        check(|p| p.smmus[0].gerror_irq = p.smmus[0].event_irq, own);
        let intx = "SmmuSpiInUse { index: 0, spi: 43, other: \"PCI segment 2's INTx\" }";
        check(|p| p.smmus[0].event_irq = p.pci_bridges[2].intx[3], intx);
        let intx = "SmmuSpiInUse { index: 1, spi: 32, other: \"PCI segment 0's INTx\" }";
        check(|p| p.smmus[1].gerror_irq = p.pci_bridges[0].intx[0], intx);
        let uart = "SmmuSpiInUse { index: 0, spi: 1, other: \"the UART's\" }";
        check(|p| p.smmus[0].event_irq = arm::UART_SPI, uart);
        check(
            |p| p.smmus[0].msi_window.size = 0,
            "SmmuMsiWindow { index: 0,",
        );
        check(
            |p| p.smmus[0].msi_window.base += 0x1000,
            "SmmuMsiWindow { index: 0,",
        );
        // The last SPI the GIC has is fine, and so is a vSMMU on any segment with a bridge.
        let mut p = aarch64_smmu_platform(2, 3, &[2, 0]);
        p.smmus[0].sync_irq = arm::GIC_NR_IRQS - 33;
        p.check().unwrap();
    }
}
