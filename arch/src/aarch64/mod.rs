//! aarch64 guests: address map, device tree, kernel Image loading, the EFI handoff for ACPI boot.

pub mod efi;
pub mod fdt;
pub mod image;
pub mod layout;
