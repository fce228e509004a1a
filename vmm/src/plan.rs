//! The platform plan: everything the guest will see, computed once from the validated
//! configuration. Every encoder (device tree, ACPI, boot parameters) and the VM build read it.

use arch::platform::{
    ArchTimer, FirmwareInterface, GuestArch, InterruptController, Platform, PowerControl,
    RegisterSpace, SerialPort,
};

use crate::config::{BootMode, HostArch, SerialConfig, VmConfig};

/// The guest platform for a configuration already validated for `arch`.
pub fn platform(config: &VmConfig, arch: HostArch) -> Platform {
    match arch {
        HostArch::Aarch64 => aarch64(config),
        HostArch::X86_64 => x86_64(config),
    }
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
            registers: RegisterSpace::Mmio(l::UART.base),
            irq: l::UART_SPI,
            clock_hz: l::UART_CLOCK_HZ,
        }),
        power: PowerControl::PsciHvc,
        cmdline: config.payload.cmdline.clone(),
        pci_bridges: Vec::new(),
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
        cmdline: config.payload.cmdline.clone(),
        pci_bridges: Vec::new(),
        initrd: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ByteSize, CpusConfig, MemoryConfig};

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
        let p = platform(&c, HostArch::Aarch64);
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
        let p = platform(&c, HostArch::X86_64);
        assert_eq!(p.memory.len(), 2);
        assert_eq!(p.memory_size(), 4 << 30);
        assert!(p.serial.is_none());
        assert_eq!(p.firmware, FirmwareInterface::Acpi);
    }
}
