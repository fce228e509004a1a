//! The x86_64 tables: a hardware-reduced FADT with sleep and reset registers, the DSDT (`\_S5`,
//! COM1, PCI host bridges and their ECAM reservation), the MADT (local APICs, the I/O APIC, ISA
//! overrides) and the MCFG.
//!
//! PCI INTx: each bridge's four lines are I/O APIC pins (GSIs), given directly in a link-less
//! `_PRT`, for which Linux programs the pin level-triggered, active low (the PCI convention).
//! No MADT override names them (overrides are for ISA IRQs, and the check refuses ISA pins for
//! INTx), so nothing contradicts that. KVM's in-kernel I/O APIC ignores the polarity bit:
//! the VMM raises INTx as a logical level, asserted until the guest's EOI (a resampling irqfd).

use acpi_tables::AmlSink;
use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags};

use super::encode::{self, RawAml};
use super::{ArchTables, Encoded, OEM_ID, OEM_REVISION, OEM_TABLE_ID, pci};
use crate::platform::{AcpiPorts, CheckedPlatform, PioUart, X86Parts};
use crate::x86_64::layout::{ISA_SCI_IRQ, ISA_TIMER_GSI, ISA_TIMER_IRQ};

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

/// A 16550 decodes eight byte-wide I/O ports.
const UART_PORTS: u8 = 8;

pub(super) fn tables(platform: &CheckedPlatform, x86: &X86Parts) -> ArchTables {
    let power = x86.power;
    ArchTables {
        dsdt: dsdt(platform, x86),
        fadt: Box::new(move |dsdt| fadt(&power, dsdt)),
        listed: vec![madt(x86), super::mcfg(&platform.pci_bridges)],
    }
}

/// Hardware-reduced ACPI: soft-off through the sleep control register (SLP_TYP from `\_S5`,
/// SLP_EN), reset through the reset register.
fn fadt(input: &AcpiPorts, dsdt: u64) -> Encoded {
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

fn dsdt(platform: &CheckedPlatform, x86: &X86Parts) -> Encoded {
    // SLP_TYPa, SLP_TYPb: hardware-reduced ACPI writes only SLP_TYPa.
    let s5 = aml::Package::new(vec![&x86.power.s5_sleep_type, &0u8]);
    let mut aml = encode::aml_bytes(&aml::Name::new("\\_S5_".into(), &s5));

    let mut devices = Vec::new();
    if let Some(uart) = &x86.uart {
        devices.push(uart_device(uart));
    }
    // INTx lines are I/O APIC pins, which are GSIs.
    for bridge in &platform.pci_bridges {
        devices.push(pci::root_bridge_device(bridge, |pin| pin, false, false));
    }
    devices.extend(pci::ecam_reservation(&platform.pci_bridges));
    aml.extend_from_slice(&encode::system_bus(&devices).0);
    encode::table(*b"DSDT", DSDT_REVISION, &aml)
}

/// COM1 as `PNP0501`: eight I/O ports and its ISA IRQ, edge-triggered, active high (the ISA
/// default, which the MADT does not override for it).
fn uart_device(uart: &PioUart) -> RawAml {
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
fn madt(x86: &X86Parts) -> Encoded {
    let mut body = Vec::new();
    body.dword(x86.lapic);
    body.dword(MADT_PCAT_COMPAT);
    for id in 0..x86.vcpus {
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
    body.dword(x86.ioapic);
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
