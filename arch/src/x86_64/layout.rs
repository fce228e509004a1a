//! The x86_64 guest physical address map.
//!
//! ```text
//! 0x0000_0500  GDT, then IDT
//! 0x0000_7000  zero page (struct boot_params)
//! 0x0000_9000  boot page tables (PML4, PDPT, PD: identity map of the first 1 GiB)
//! 0x0002_0000  kernel command line
//! 0x0009_FC00  EBDA (reserved) up to 0xA_0000
//! 0x000E_0000  ACPI tables (RSDP first, where Linux also scans for it)
//! 0x0010_0000  kernel (bzImage protected-mode part), then RAM
//! 0xC000_0000  32-bit MMIO hole up to 4 GiB: PCI windows, I/O APIC, local APIC
//! 0x1_0000_0000 RAM above the hole
//! ```

use crate::platform::GuestRange;

pub const GDT_ADDR: u64 = 0x500;
pub const IDT_ADDR: u64 = 0x520;
pub const ZERO_PAGE: u64 = 0x7000;
pub const PML4: u64 = 0x9000;
pub const PDPT: u64 = 0xa000;
pub const PD: u64 = 0xb000;
pub const CMDLINE: u64 = 0x2_0000;
pub const CMDLINE_MAX: u64 = 0x1_0000;
pub const EBDA: u64 = 0x9_fc00;
pub const LOW_RAM_END: u64 = 0xa_0000;
pub const ACPI_TABLES: GuestRange = GuestRange::new(0xe_0000, 0x2_0000);
pub const HIMEM_START: u64 = 0x10_0000;
pub const MMIO_HOLE: GuestRange = GuestRange::new(0xc000_0000, 0x4000_0000);
/// PCI 32-bit windows of all host bridges, then their ECAM windows (16 MiB each: 16 buses).
pub const PCI_MMIO32: GuestRange = GuestRange::new(0xc000_0000, 0x2000_0000);
pub const PCI_ECAM_REGION: GuestRange = GuestRange::new(0xe000_0000, 0x1000_0000);
/// 64-bit windows of all PCI host bridges, above guest RAM (which must end below it).
pub const PCI_MMIO64_REGION: GuestRange = GuestRange::new(0x80_0000_0000, 0x80_0000_0000);
/// I/O APIC pins for PCI INTx: 16..24, shared by the bridges four at a time.
pub const PCI_INTX_PIN_BASE: u32 = 16;
/// Most PCI host bridges (segments) a guest gets.
pub const MAX_PCI_BRIDGES: u32 = 16;
pub const IOAPIC: u64 = 0xfec0_0000;
pub const LAPIC: u64 = 0xfee0_0000;
pub const HIGH_RAM_START: u64 = 0x1_0000_0000;

/// vCPUs get APIC IDs 0..n; 255 is the xAPIC broadcast ID.
pub const MAX_VCPUS: u32 = 254;

/// COM1: I/O port 0x3f8, I/O APIC pin 4.
pub const COM1_PORT: u16 = 0x3f8;
pub const COM1_GSI: u32 = 4;
pub const IOAPIC_PINS: u32 = 24;
/// The ISA IRQs whose routing differs from identity: the PIT's IRQ 0 is I/O APIC pin 2, and IRQ 9
/// (the SCI line of full-hardware ACPI) is level-triggered, active high.
pub const ISA_TIMER_IRQ: u8 = 0;
pub const ISA_TIMER_GSI: u32 = 2;
pub const ISA_SCI_IRQ: u8 = 9;
/// I/O APIC pins 0..16 carry the ISA IRQs (edge, active high unless the MADT overrides them).
pub const ISA_IRQS: u32 = 16;
pub const UART_CLOCK_HZ: u32 = 1_843_200;

/// The I/O ports of the ACPI power block the VMM emulates (hardware-reduced ACPI): sleep control,
/// sleep status and reset registers.
pub const ACPI_SLEEP_CONTROL: u16 = 0x600;
pub const ACPI_SLEEP_STATUS: u16 = 0x601;
pub const ACPI_RESET: u16 = 0x602;
pub const ACPI_RESET_VALUE: u8 = 0x1;
pub const ACPI_S5_SLEEP_TYPE: u8 = 5;

/// Guest RAM for `size` bytes: below the MMIO hole first, the rest above 4 GiB.
pub fn ram_regions(size: u64) -> Vec<GuestRange> {
    let low = size.min(MMIO_HOLE.base);
    let mut regions = vec![GuestRange::new(0, low)];
    if size > low {
        regions.push(GuestRange::new(HIGH_RAM_START, size - low));
    }
    regions
}

/// The boot vCPU's initial stack pointer: the top of the free page between the zero page and the
/// page tables. The kernel sets up its own stack before using much of it.
pub const BOOT_STACK: u64 = 0x8ff0;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_splits_around_the_hole() {
        assert_eq!(ram_regions(256 << 20), vec![GuestRange::new(0, 256 << 20)]);
        assert_eq!(
            ram_regions(4 << 30),
            vec![
                GuestRange::new(0, 0xc000_0000),
                GuestRange::new(0x1_0000_0000, 0x4000_0000)
            ]
        );
    }
}
