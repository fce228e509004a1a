//! ACPI tables for both guest architectures, encoded from the platform plan.
//!
//! [`build`] lays every table out in one guest range: the RSDP first (16-byte aligned, where an x86
//! guest also scans for it), then the XSDT, the DSDT, the FADT and the tables the XSDT lists, each
//! 8-byte aligned. Each table is one function over the [`Platform`] (in the `aarch64` and `x86_64`
//! submodules). PCI host bridges add a `PNP0A08` device each to the DSDT and an entry each to the
//! MCFG (the `pci` submodule, shared), an IORT on aarch64 (`iort`), and on x86 a `PNP0C02`
//! reservation of the ECAM windows. Each vSMMUv3 adds an SMMUv3 and an RMR node to the IORT and
//! a "preserve boot configuration" `_DSM` to its bridge's `PNP0A08`. Without bridges the tables are those of a PCI-less machine
//! byte for byte (an empty MCFG included).
//!
//! Table layouts follow the ACPI 6.5 specification (§5.2), except that the aarch64 MADT GICC uses
//! its ACPI 6.3 length (80 bytes, MADT revision 5) and the GTDT its revision 2 layout: Linux takes
//! both, and the installed `iasl` (20200925) decodes them, which it does not the 6.5 forms.

mod aarch64;
mod encode;
mod iort;
mod pci;
mod x86_64;

#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod testutil;

use acpi_tables::mcfg::MCFG;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::xsdt::XSDT;
use thiserror::Error;

use crate::platform::{ArchParts, CheckedPlatform, GuestRange, PciBridge};

/// The OEM ID, OEM table ID and OEM revision every table's header carries.
pub const OEM_ID: [u8; 6] = *b"MCRVMM";
pub const OEM_TABLE_ID: [u8; 8] = *b"MICROVMM";
pub const OEM_REVISION: u32 = 1;

/// The RSDP must start on a 16-byte boundary (§5.2.5.1); every other table is 8-byte aligned.
pub const RSDP_ALIGN: u64 = 16;
pub const TABLE_ALIGN: u64 = 8;

/// One encoded table at its guest address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiTable {
    /// The table's signature ("DSDT", "APIC", "FACP", ...), or "RSDP" for the root pointer.
    pub signature: String,
    pub address: u64,
    pub bytes: Vec<u8>,
}

impl AcpiTable {
    /// The guest range the table occupies.
    pub fn range(&self) -> GuestRange {
        GuestRange::new(self.address, self.bytes.len() as u64)
    }
}

/// Every table of one guest, ready to be written to guest memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiTables {
    /// The RSDP's guest address (x86 `boot_params.acpi_rsdp_addr`, the EFI ACPI 2.0 table).
    pub rsdp: u64,
    /// The RSDP first, then the XSDT, DSDT, FADT and the tables the XSDT lists, in address order.
    pub tables: Vec<AcpiTable>,
}

impl AcpiTables {
    /// The first table with this signature.
    pub fn get(&self, signature: &str) -> Option<&AcpiTable> {
        self.tables.iter().find(|t| t.signature == signature)
    }

    /// From the RSDP to the end of the last table.
    pub fn extent(&self) -> GuestRange {
        let end = self
            .tables
            .iter()
            .map(|t| t.address.saturating_add(t.bytes.len() as u64))
            .max()
            .unwrap_or(self.rsdp);
        GuestRange::new(self.rsdp, end.saturating_sub(self.rsdp))
    }
}

#[derive(Debug, Error)]
pub enum AcpiError {
    #[error(
        "the ACPI tables need {needed:#x} bytes, the region {:#x}..{:#x} has {:#x}",
        region.base, region.base.wrapping_add(region.size), region.size
    )]
    RegionTooSmall { region: GuestRange, needed: u64 },
    #[error("the ACPI region base {0:#x} is not 16-byte aligned, as the RSDP must be")]
    MisalignedRegion(u64),
    #[error("the ACPI region {:#x}+{:#x} wraps around the address space", .0.base, .0.size)]
    RegionOverflow(GuestRange),
}

/// One encoded table before it has an address.
pub(crate) struct Encoded {
    pub signature: [u8; 4],
    pub bytes: Vec<u8>,
}

/// What one architecture contributes; the common code places it and adds the RSDP and XSDT.
struct ArchTables {
    dsdt: Encoded,
    /// The FADT, once the DSDT's address is known.
    fadt: Box<dyn FnOnce(u64) -> Encoded>,
    /// The tables the XSDT lists after the FADT.
    listed: Vec<Encoded>,
}

/// Encodes every ACPI table of `platform` and lays them out in `region`: the RSDP at
/// `region.base` (which must be 16-byte aligned), the rest after it, 8-byte aligned.
pub fn build(platform: &CheckedPlatform, region: GuestRange) -> Result<AcpiTables, AcpiError> {
    let region_end = region
        .base
        .checked_add(region.size)
        .ok_or(AcpiError::RegionOverflow(region))?;
    if !region.base.is_multiple_of(RSDP_ALIGN) {
        return Err(AcpiError::MisalignedRegion(region.base));
    }
    let arch = match platform.parts() {
        ArchParts::Aarch64(parts) => aarch64::tables(platform, parts),
        ArchParts::X86_64(parts) => x86_64::tables(platform, parts),
    };

    let mut cursor = Cursor::new(region.base);
    let rsdp_addr = cursor.place(Rsdp::len() as u64, RSDP_ALIGN)?;
    // The XSDT lists the FADT and the other tables: a header and one u64 each.
    let xsdt_len = encode::HEADER_LEN as u64 + 8 * (1 + arch.listed.len() as u64);
    let xsdt_addr = cursor.place(xsdt_len, TABLE_ALIGN)?;
    let dsdt_addr = cursor.place(arch.dsdt.bytes.len() as u64, TABLE_ALIGN)?;
    let fadt = (arch.fadt)(dsdt_addr);
    let fadt_addr = cursor.place(fadt.bytes.len() as u64, TABLE_ALIGN)?;
    let mut listed = Vec::with_capacity(arch.listed.len());
    for table in arch.listed {
        let addr = cursor.place(table.bytes.len() as u64, TABLE_ALIGN)?;
        listed.push((addr, table));
    }
    if cursor.next > region_end {
        return Err(AcpiError::RegionTooSmall {
            region,
            needed: cursor.next - region.base,
        });
    }

    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    for (addr, _) in &listed {
        xsdt.add_entry(*addr);
    }
    let xsdt = Encoded {
        signature: *b"XSDT",
        bytes: encode::aml_bytes(&xsdt),
    };
    let rsdp = Encoded {
        signature: *b"RSDP",
        bytes: encode::aml_bytes(&Rsdp::new(OEM_ID, xsdt_addr)),
    };

    let placed = [
        (rsdp_addr, rsdp),
        (xsdt_addr, xsdt),
        (dsdt_addr, arch.dsdt),
        (fadt_addr, fadt),
    ];
    let tables = placed
        .into_iter()
        .chain(listed)
        .map(|(address, table)| AcpiTable {
            signature: String::from_utf8_lossy(&table.signature).into_owned(),
            address,
            bytes: table.bytes,
        })
        .collect();
    Ok(AcpiTables {
        rsdp: rsdp_addr,
        tables,
    })
}

/// The MCFG: one ECAM allocation per host bridge (PCI Firmware Specification 3.3 §4.1.2), none
/// without PCI. Its base is bus 0's address whatever the start bus (Linux `pci_mcfg_lookup` and
/// x86 `pci_mmconfig_alloc` both read it so).
pub(crate) fn mcfg(bridges: &[PciBridge]) -> Encoded {
    let mut mcfg = MCFG::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    for b in bridges {
        mcfg.add_ecam(b.ecam_bus0(), b.segment, b.bus_start, b.bus_end);
    }
    Encoded {
        signature: *b"MCFG",
        bytes: encode::aml_bytes(&mcfg),
    }
}

/// Hands out aligned addresses one after another. It never fails for lack of room (the caller
/// compares the end with its region so the error can say how much was needed), only on overflow.
pub(crate) struct Cursor {
    pub next: u64,
}

impl Cursor {
    pub fn new(start: u64) -> Self {
        Cursor { next: start }
    }

    /// Reserves `len` bytes at the next multiple of `align` (a power of two) and returns its base.
    pub fn place(&mut self, len: u64, align: u64) -> Result<u64, AcpiError> {
        let start = self.next;
        let overflow = || AcpiError::RegionOverflow(GuestRange::new(start, len));
        let base = start.checked_next_multiple_of(align).ok_or_else(overflow)?;
        self.next = base.checked_add(len).ok_or_else(overflow)?;
        Ok(base)
    }
}
