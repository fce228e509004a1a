//! The x86_64 tables: a hardware-reduced FADT with sleep and reset registers, the DSDT (`\_S5`,
//! COM1, PCI host bridges and their ECAM reservation), the MADT (local APICs, the I/O APIC, ISA
//! overrides) and the MCFG.
//!
//! PCI INTx: each bridge's four lines are I/O APIC pins (GSIs), given directly in a link-less
//! `_PRT`, for which Linux programs the pin level-triggered, active low (the PCI convention).
//! No MADT override names them (overrides are for ISA IRQs, and [`ISA_IRQS`] pins are refused
//! for INTx), so nothing contradicts that. KVM's in-kernel I/O APIC ignores the polarity bit:
//! the VMM raises INTx as a logical level, asserted until the guest's EOI (a resampling irqfd).

use acpi_tables::AmlSink;
use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags};

use super::encode::{self, RawAml};
use super::pci::{self, PciHost};
use super::{AcpiError, ArchTables, Encoded, OEM_ID, OEM_REVISION, OEM_TABLE_ID};
use crate::platform::{GuestArch, InterruptController, Platform, PowerControl, RegisterSpace};
use crate::x86_64::layout;

/// DSDT revision 2: AML integers are 64-bit.
const DSDT_REVISION: u8 = 2;

/// FADT `IAPC_BOOT_ARCH` bit 2 (§5.2.9.3): there is no VGA. Bit 1 (an 8042) stays clear, so Linux
/// does not probe for a PS/2 controller; "MSI not supported" stays clear for the PCI to come.
pub const IAPC_BOOT_ARCH_NO_VGA: u16 = 1 << 2;

/// The MADT revision of ACPI 6.3.
const MADT_REVISION: u8 = 5;
/// MADT header flag: the platform also has dual 8259 PICs (KVM's in-kernel irqchip does).
pub const MADT_PCAT_COMPAT: u32 = 1 << 0;
/// MADT structure types and lengths (§5.2.12.2-5).
pub const MADT_LOCAL_APIC: u8 = 0;
pub const MADT_IO_APIC: u8 = 1;
pub const MADT_INTERRUPT_OVERRIDE: u8 = 2;
const LOCAL_APIC_LEN: u8 = 8;
const IO_APIC_LEN: u8 = 12;
const INTERRUPT_OVERRIDE_LEN: u8 = 10;
const LOCAL_APIC_ENABLED: u32 = 1 << 0;
/// KVM's in-kernel I/O APIC resets with ID 0; the MADT must repeat it.
pub const IO_APIC_ID: u8 = 0;
/// MPS INTI flags (§5.2.12.5): polarity bits 1:0, trigger mode bits 3:2; 0 = bus default.
const MPS_INTI_CONFORMING: u16 = 0;
pub const MPS_INTI_ACTIVE_HIGH_LEVEL: u16 = 0b01 | (0b11 << 2);
/// The ISA IRQs whose routing differs from identity: the PIT's IRQ 0 is I/O APIC pin 2, and IRQ 9
/// (the SCI line of full-hardware ACPI) is level-triggered, active high.
pub const ISA_TIMER_IRQ: u8 = 0;
pub const ISA_TIMER_GSI: u32 = 2;
pub const ISA_SCI_IRQ: u8 = 9;
/// I/O APIC pins 0..16 carry the ISA IRQs (edge, active high unless the MADT overrides them).
pub const ISA_IRQS: u32 = 16;

/// A 16550 decodes eight byte-wide I/O ports.
const UART_PORTS: u8 = 8;

/// The parts of the platform the tables need, checked once.
struct Machine<'a> {
    vcpus: u8,
    lapic: u32,
    ioapic: u32,
    sleep_control: u16,
    sleep_status: u16,
    reset: u16,
    reset_value: u8,
    s5_sleep_type: u8,
    uart: Option<Uart>,
    pci: Vec<PciHost<'a>>,
}

/// The port-I/O 16550.
struct Uart {
    port: u16,
    gsi: u32,
    clock_hz: u32,
}

impl<'a> Machine<'a> {
    fn new(platform: &'a Platform) -> Result<Self, AcpiError> {
        let arch = GuestArch::X86_64;
        let PowerControl::AcpiPorts {
            sleep_control,
            sleep_status,
            reset,
            reset_value,
            s5_sleep_type,
        } = platform.power
        else {
            return Err(AcpiError::PowerControl {
                arch,
                power: platform.power,
            });
        };
        let InterruptController::X86Apic {
            lapic,
            ioapic,
            ioapic_pins,
        } = platform.interrupt_controller
        else {
            return Err(AcpiError::InterruptController {
                arch,
                what: "Arm GICv3",
            });
        };
        if platform.vcpus == 0 {
            return Err(AcpiError::NoVcpus);
        }
        let vcpus = u8::try_from(platform.vcpus)
            .ok()
            .filter(|&n| u32::from(n) <= layout::MAX_VCPUS)
            .ok_or(AcpiError::TooManyVcpus {
                arch,
                vcpus: platform.vcpus,
                max: layout::MAX_VCPUS,
            })?;
        let below_4g = |what, address: u64| {
            u32::try_from(address).map_err(|_| AcpiError::AddressAbove4G { what, address })
        };
        let lapic = below_4g("the local APIC", lapic)?;
        let ioapic = below_4g("the I/O APIC", ioapic)?;
        let sci_gsi = u32::from(ISA_SCI_IRQ);
        if sci_gsi >= ioapic_pins || ISA_TIMER_GSI >= ioapic_pins {
            return Err(AcpiError::InterruptOutOfRange {
                what: "ISA override",
                irq: sci_gsi.max(ISA_TIMER_GSI),
                limit: ioapic_pins,
            });
        }
        let uart = match platform.serial {
            None => None,
            Some(serial) => {
                let RegisterSpace::Pio(port) = serial.registers else {
                    return Err(AcpiError::SerialRegisters {
                        arch,
                        registers: serial.registers,
                    });
                };
                if serial.irq >= ioapic_pins {
                    return Err(AcpiError::InterruptOutOfRange {
                        what: "serial GSI",
                        irq: serial.irq,
                        limit: ioapic_pins,
                    });
                }
                Some(Uart {
                    port,
                    gsi: serial.irq,
                    clock_hz: serial.clock_hz,
                })
            }
        };
        if !platform.smmus.is_empty() {
            return Err(AcpiError::SmmuArch {
                arch: GuestArch::X86_64,
            });
        }
        let pci = pci::check_bridges(&platform.pci_bridges, |segment, pin| {
            if pin >= ioapic_pins {
                return Err(AcpiError::InterruptOutOfRange {
                    what: "PCI INTx pin",
                    irq: pin,
                    limit: ioapic_pins,
                });
            }
            if pin < ISA_IRQS {
                return Err(AcpiError::PciIntxIsaPin { segment, pin });
            }
            Ok(pin)
        })?;
        // x86 Linux ignores MCFG entries above 4 GiB unless DMI gives a BIOS year from 2010 on
        // (arch/x86/pci/mmconfig-shared.c, `acpi_mcfg_valid_entry`); a guest has no DMI.
        if let Some(host) = pci.iter().find(|h| h.bridge.ecam.end() > 1 << 32) {
            return Err(AcpiError::AddressAbove4G {
                what: "a PCI ECAM window",
                address: host.bridge.ecam.base,
            });
        }
        Ok(Machine {
            vcpus,
            lapic,
            ioapic,
            sleep_control,
            sleep_status,
            reset,
            reset_value,
            s5_sleep_type,
            uart,
            pci,
        })
    }
}

pub(super) fn tables(platform: &Platform) -> Result<ArchTables, AcpiError> {
    let machine = Machine::new(platform)?;
    let listed = vec![
        madt(&machine),
        super::mcfg(&super::ecam_windows(&machine.pci)),
    ];
    let dsdt = dsdt(&machine);
    let fadt_input = FadtInput {
        sleep_control: machine.sleep_control,
        sleep_status: machine.sleep_status,
        reset: machine.reset,
        reset_value: machine.reset_value,
    };
    Ok(ArchTables {
        dsdt,
        fadt: Box::new(move |dsdt| fadt(&fadt_input, dsdt)),
        listed,
    })
}

/// The FADT's registers, copied out of the machine so the FADT can be built once the DSDT is
/// placed.
struct FadtInput {
    sleep_control: u16,
    sleep_status: u16,
    reset: u16,
    reset_value: u8,
}

/// Hardware-reduced ACPI: soft-off through the sleep control register (SLP_TYP from `\_S5`,
/// SLP_EN), reset through the reset register.
fn fadt(input: &FadtInput, dsdt: u64) -> Encoded {
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .dsdt_64(dsdt);
    fadt.iapc_boot_arch = IAPC_BOOT_ARCH_NO_VGA.into();
    fadt.sleep_control_reg = encode::gas_pio8(input.sleep_control);
    fadt.sleep_status_reg = encode::gas_pio8(input.sleep_status);
    fadt.reset_reg = encode::gas_pio8(input.reset);
    fadt.reset_value = input.reset_value;
    Encoded {
        signature: *b"FACP",
        bytes: encode::aml_bytes(&fadt.finalize()),
    }
}

fn dsdt(machine: &Machine) -> Encoded {
    // SLP_TYPa, SLP_TYPb: hardware-reduced ACPI writes only SLP_TYPa.
    let s5 = aml::Package::new(vec![&machine.s5_sleep_type, &0u8]);
    let mut aml = encode::aml_bytes(&aml::Name::new("\\_S5_".into(), &s5));

    let mut devices = Vec::new();
    if let Some(uart) = &machine.uart {
        devices.push(uart_device(uart));
    }
    for host in &machine.pci {
        devices.push(pci::root_bridge_device(host, false, false));
    }
    devices.extend(pci::ecam_reservation(&machine.pci));
    aml.extend_from_slice(&encode::system_bus(&devices).0);
    encode::table(*b"DSDT", DSDT_REVISION, &aml)
}

/// COM1 as `PNP0501`: eight I/O ports and its ISA IRQ, edge-triggered, active high (the ISA
/// default, which the MADT does not override for it).
fn uart_device(uart: &Uart) -> RawAml {
    let ports = aml::IO::new(uart.port, uart.port, 0, UART_PORTS);
    let interrupt = aml::Interrupt::new(true, true, false, false, uart.gsi);
    encode::pnp0501_device(
        "COM1",
        vec![&ports, &interrupt],
        &[("clock-frequency", uart.clock_hz)],
    )
}

/// One local APIC per vCPU (APIC ID = processor UID = index), the I/O APIC with GSI base 0, and
/// the ISA overrides.
fn madt(machine: &Machine) -> Encoded {
    let mut body = Vec::new();
    body.dword(machine.lapic);
    body.dword(MADT_PCAT_COMPAT);
    for id in 0..machine.vcpus {
        body.byte(MADT_LOCAL_APIC);
        body.byte(LOCAL_APIC_LEN);
        body.byte(id); // ACPI processor UID
        body.byte(id); // APIC ID
        body.dword(LOCAL_APIC_ENABLED);
    }

    body.byte(MADT_IO_APIC);
    body.byte(IO_APIC_LEN);
    body.byte(IO_APIC_ID);
    body.byte(0);
    body.dword(machine.ioapic);
    body.dword(0); // GSI base

    for (irq, gsi, flags) in [
        (ISA_TIMER_IRQ, ISA_TIMER_GSI, MPS_INTI_CONFORMING),
        (
            ISA_SCI_IRQ,
            u32::from(ISA_SCI_IRQ),
            MPS_INTI_ACTIVE_HIGH_LEVEL,
        ),
    ] {
        body.byte(MADT_INTERRUPT_OVERRIDE);
        body.byte(INTERRUPT_OVERRIDE_LEN);
        body.byte(0); // Bus: ISA
        body.byte(irq);
        body.dword(gsi);
        body.word(flags);
    }

    encode::table(*b"APIC", MADT_REVISION, &body)
}
