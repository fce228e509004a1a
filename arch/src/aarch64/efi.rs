//! The EFI handoff that lets an arm64 Linux boot with ACPI although no firmware runs.
//!
//! Linux arm64 uses ACPI only with an EFI memory map (`acpi_os_ioremap()` in
//! `arch/arm64/kernel/acpi.c` refuses to map anything without `EFI_MEMMAP`), and finds the RSDP
//! through the EFI configuration tables. So microvmm does what the kernel's EFI stub would have
//! done after `ExitBootServices()`: it writes an EFI system table and memory map into guest RAM and
//! passes their addresses in the `/chosen` node of a stub device tree (Linux
//! `drivers/firmware/efi/fdtparams.c`). As that device tree has no node but `/chosen`,
//! `dt_is_stub()` holds and the kernel picks ACPI. Xen boots its arm64 dom0 the same way.
//!
//! What the kernel checks, and the choices made here:
//! - `efi_get_fdt_params()` needs all six `/chosen` properties, `linux,uefi-secure-boot`
//!   included; a missing one is "Can't find property" and no EFI at all.
//! - `efi_systab_check_header()` checks only the signature; the revision, header size and CRC32
//!   are filled in as the UEFI specification says anyway. `efi_config_parse_tables()` reads
//!   `nr_tables` 24-byte entries (GUID, u64 address).
//! - A null `RuntimeServices` does not stop arm64 from setting `EFI_RUNTIME_SERVICES`
//!   (`arm_enable_runtime_services()` only needs virtual mappings for `EFI_MEMORY_RUNTIME` ranges,
//!   and there are none), after which reboot and power-off would call `efi.reset_system()`
//!   through the null table. An `EFI_RT_PROPERTIES_TABLE` saying no runtime service is supported
//!   masks them all (`efi.runtime_supported_mask = 0`), so no `efi=noruntime`/`noefi` is needed
//!   and reset and power-off go to PSCI.
//! - The GICv3 ITS driver records its LPI tables with `efi_mem_reserve_persistent()` whenever
//!   EFI configuration tables exist, and warns without a `LINUX_EFI_MEMRESERVE_TABLE`; an empty
//!   one (the EFI stub installs the same) lets the kernel chain its entries from it.
//! - `reserve_regions()` drops the memory the device tree described and adds every descriptor
//!   with a cacheable attribute. Guest RAM is `EfiConventionalMemory`, write-back. The firmware
//!   region (ACPI tables and every structure here) is `EfiACPIReclaimMemory`, write-back: Linux
//!   adds it to the linear map and `memblock_reserve()`s it ("keep ACPI reclaim memory intact"),
//!   so nothing allocates over it, `acpi_os_ioremap()` returns its linear-map address, and the
//!   memreserve root is writable through `memremap(MEMREMAP_WB)`.
//! - The descriptor version must be 1 (`efi_init()` warns otherwise); descriptors are the
//!   40-byte `efi_memory_desc_t`, and the map need not be sorted, though it is.
//!
//! [`handoff`] takes the whole firmware region: the ACPI tables go in its front part and the EFI
//! structures in its last [`EFI_AREA_SIZE`] bytes (see [`split_firmware_region`]); the whole region
//! is the reclaim range. [`acpi_boot`] does all of it for the VMM.

use acpi_tables::AmlSink;
use thiserror::Error;
use vm_fdt::FdtWriter;

use crate::acpi::{self, AcpiError, AcpiTables, Cursor};
use crate::platform::{CheckedPlatform, FirmwareInterface, GuestArch, GuestRange};

/// UEFI's page size: descriptors count 4 KiB pages, whatever granule the kernel uses.
pub const EFI_PAGE_SIZE: u64 = 0x1000;
/// The last part of the firmware region, which holds the EFI structures; the ACPI tables get the
/// rest. 64 KiB leaves room for more than a thousand memory descriptors.
pub const EFI_AREA_SIZE: u64 = 0x1_0000;

/// `EFI_SYSTEM_TABLE_SIGNATURE`, "IBI SYST".
pub const EFI_SYSTEM_TABLE_SIGNATURE: u64 = 0x5453_5953_2049_4249;
/// UEFI 2.70.
pub const EFI_SYSTEM_TABLE_REVISION: u32 = (2 << 16) | 70;
/// The 64-bit `EFI_SYSTEM_TABLE`, header included (UEFI 2.10 §4.3).
pub const EFI_SYSTEM_TABLE_SIZE: usize = 120;
/// Offset of the CRC32 in `EFI_TABLE_HEADER`.
const CRC32_OFFSET: usize = 16;
/// What Linux prints as "EFI v2.7 by microvmm".
pub const FIRMWARE_VENDOR: &str = "microvmm";
const FIRMWARE_REVISION: u32 = 0x0001_0000;

/// `EFI_MEMORY_DESCRIPTOR`: version 1, 40 bytes (type, pad, physical, virtual, pages, attribute).
pub const EFI_MEMORY_DESCRIPTOR_VERSION: u32 = 1;
pub const EFI_MEMORY_DESCRIPTOR_SIZE: u32 = 40;
/// `EFI_MEMORY_WB`: the range supports write-back caching.
pub const EFI_MEMORY_WB: u64 = 1 << 3;

/// A configuration table entry: GUID and a 64-bit address.
const CONFIG_TABLE_ENTRY_SIZE: u64 = 24;
/// `EFI_RT_PROPERTIES_TABLE` (UEFI 2.10 §4.6.2): version 1, length 8, no service supported.
const RT_PROPERTIES_VERSION: u16 = 1;
const RT_PROPERTIES_SIZE: u16 = 8;
const RT_SUPPORTED_NONE: u32 = 0;
/// Linux `struct linux_efi_memreserve` with no entries: size, count, next.
const MEMRESERVE_ROOT_SIZE: u64 = 16;

/// Linux `enum efi_secureboot_mode`: `efi_secureboot_mode_disabled`.
pub const SECURE_BOOT_DISABLED: u32 = 2;

/// Root `#address-cells`/`#size-cells`, as the EFI stub writes them.
const STUB_ADDRESS_CELLS: u32 = 2;
const STUB_SIZE_CELLS: u32 = 2;

/// An EFI GUID in its in-memory layout: the first three fields little-endian, the rest as bytes.
const fn guid(a: u32, b: u16, c: u16, d: [u8; 8]) -> [u8; 16] {
    let a = a.to_le_bytes();
    let b = b.to_le_bytes();
    let c = c.to_le_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6],
        d[7],
    ]
}

/// `ACPI_20_TABLE_GUID`: the table is the RSDP (revision 2).
pub const ACPI_20_TABLE_GUID: [u8; 16] = guid(
    0x8868_e871,
    0xe4f1,
    0x11d3,
    [0xbc, 0x22, 0x00, 0x80, 0xc7, 0x3c, 0x88, 0x81],
);
/// `EFI_RT_PROPERTIES_TABLE_GUID`.
pub const EFI_RT_PROPERTIES_TABLE_GUID: [u8; 16] = guid(
    0xeb66_918a,
    0x7eef,
    0x402a,
    [0x84, 0x2e, 0x93, 0x1d, 0x21, 0xc3, 0x8a, 0xe9],
);
/// `LINUX_EFI_MEMRESERVE_TABLE_GUID`.
pub const LINUX_EFI_MEMRESERVE_TABLE_GUID: [u8; 16] = guid(
    0x888e_b0c6,
    0x8ede,
    0x4ff5,
    [0xa8, 0xf0, 0x9a, 0xee, 0x5c, 0xb9, 0x77, 0xc2],
);

/// The memory types this map uses (UEFI 2.10 §7.2, `EFI_MEMORY_TYPE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum EfiMemoryType {
    ConventionalMemory = 7,
    AcpiReclaimMemory = 9,
}

/// One `EFI_MEMORY_DESCRIPTOR`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryDescriptor {
    pub memory_type: EfiMemoryType,
    pub physical_start: u64,
    pub number_of_pages: u64,
    pub attribute: u64,
}

impl MemoryDescriptor {
    fn new(memory_type: EfiMemoryType, range: GuestRange) -> Self {
        MemoryDescriptor {
            memory_type,
            physical_start: range.base,
            number_of_pages: range.size / EFI_PAGE_SIZE,
            attribute: EFI_MEMORY_WB,
        }
    }

    pub fn range(&self) -> GuestRange {
        GuestRange::new(self.physical_start, self.number_of_pages * EFI_PAGE_SIZE)
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.dword(self.memory_type as u32);
        out.dword(0);
        out.qword(self.physical_start);
        out.qword(0); // VirtualStart: nothing is mapped for runtime services
        out.qword(self.number_of_pages);
        out.qword(self.attribute);
    }
}

/// One structure to write into guest memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EfiBlob {
    pub name: &'static str,
    pub address: u64,
    pub bytes: Vec<u8>,
}

/// The EFI structures and the values of the `/chosen` properties that point at them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EfiHandoff {
    /// System table, configuration table, RT properties table, memreserve root, vendor string,
    /// memory map: each to be written at its address.
    pub blobs: Vec<EfiBlob>,
    /// `linux,uefi-system-table`.
    pub system_table: u64,
    /// `linux,uefi-mmap-start` and `linux,uefi-mmap-size`.
    pub memory_map: GuestRange,
    /// `linux,uefi-mmap-desc-size`.
    pub descriptor_size: u32,
    /// `linux,uefi-mmap-desc-ver`.
    pub descriptor_version: u32,
    /// The memory map, decoded.
    pub descriptors: Vec<MemoryDescriptor>,
    /// The firmware region, `EfiACPIReclaimMemory` in the map.
    pub reserved: GuestRange,
}

/// Everything an ACPI boot needs written, for the VMM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiBoot {
    /// The stub device tree to pass in x0.
    pub stub_dtb: Vec<u8>,
    /// The ACPI tables by name, for `--dump-platform`.
    pub tables: AcpiTables,
    /// The EFI structures and `/chosen` values.
    pub efi: EfiHandoff,
}

#[derive(Debug, Error)]
pub enum EfiError {
    #[error("the EFI handoff is for aarch64 guests, not {0:?}")]
    WrongArch(GuestArch),
    #[error("the platform boots through {0:?}, not ACPI")]
    WrongFirmware(FirmwareInterface),
    #[error(
        "the firmware region {:#x}+{:#x} is too small: {needed:#x} bytes needed",
        region.base, region.size
    )]
    RegionTooSmall { region: GuestRange, needed: u64 },
    #[error("{what} {:#x}+{:#x} is not 4 KiB-aligned", range.base, range.size)]
    Misaligned {
        what: &'static str,
        range: GuestRange,
    },
    #[error("{what} {:#x}+{:#x} wraps around the address space", range.base, range.size)]
    Overflow {
        what: &'static str,
        range: GuestRange,
    },
    #[error("the firmware region {:#x}+{:#x} is not inside one guest RAM region", .0.base, .0.size)]
    FirmwareRegionOutsideRam(GuestRange),
    #[error(
        "the RSDP at {rsdp:#x} is outside the ACPI part {:#x}+{:#x} of the firmware region",
        area.base, area.size
    )]
    RsdpOutsideAcpiArea { rsdp: u64, area: GuestRange },
    #[error("cannot build the ACPI tables")]
    Acpi(#[source] AcpiError),
    #[error("cannot encode the stub device tree")]
    Fdt(#[from] vm_fdt::Error),
}

fn check_platform(platform: &CheckedPlatform) -> Result<(), EfiError> {
    if platform.arch != GuestArch::Aarch64 {
        return Err(EfiError::WrongArch(platform.arch));
    }
    if platform.firmware != FirmwareInterface::Acpi {
        return Err(EfiError::WrongFirmware(platform.firmware));
    }
    Ok(())
}

fn end_of(what: &'static str, range: GuestRange) -> Result<u64, EfiError> {
    range
        .base
        .checked_add(range.size)
        .ok_or(EfiError::Overflow { what, range })
}

fn check_page_aligned(what: &'static str, range: GuestRange) -> Result<(), EfiError> {
    if !range.base.is_multiple_of(EFI_PAGE_SIZE) || !range.size.is_multiple_of(EFI_PAGE_SIZE) {
        return Err(EfiError::Misaligned { what, range });
    }
    end_of(what, range).map(|_| ())
}

/// Splits the firmware region into the ACPI tables' part (the front, so the RSDP is at the
/// region's base) and the EFI structures' part (the last [`EFI_AREA_SIZE`] bytes).
pub fn split_firmware_region(region: GuestRange) -> Result<(GuestRange, GuestRange), EfiError> {
    check_page_aligned("the firmware region", region)?;
    // At least one page of ACPI tables below the EFI area.
    let needed = EFI_AREA_SIZE + EFI_PAGE_SIZE;
    if region.size < needed {
        return Err(EfiError::RegionTooSmall { region, needed });
    }
    let acpi_size = region.size - EFI_AREA_SIZE;
    Ok((
        GuestRange::new(region.base, acpi_size),
        GuestRange::new(region.base + acpi_size, EFI_AREA_SIZE),
    ))
}

/// The memory map: every RAM range conventional memory, except `reserved`, which must lie in one
/// of them and becomes ACPI reclaim memory. All write-back, ascending.
pub fn memory_map(
    platform: &CheckedPlatform,
    reserved: GuestRange,
) -> Result<Vec<MemoryDescriptor>, EfiError> {
    check_page_aligned("the firmware region", reserved)?;
    let reserved_end = end_of("the firmware region", reserved)?;
    let mut ram = platform.memory.clone();
    ram.sort_by_key(|r| r.base);
    for r in &ram {
        check_page_aligned("guest RAM region", *r)?;
    }

    let mut descriptors = Vec::with_capacity(ram.len() + 2);
    let mut push = |memory_type, base: u64, end: u64| {
        if end > base {
            descriptors.push(MemoryDescriptor::new(
                memory_type,
                GuestRange::new(base, end - base),
            ));
        }
    };
    let mut carved = false;
    for r in ram {
        let end = r.end();
        if r.base <= reserved.base && reserved_end <= end {
            push(EfiMemoryType::ConventionalMemory, r.base, reserved.base);
            push(
                EfiMemoryType::AcpiReclaimMemory,
                reserved.base,
                reserved_end,
            );
            push(EfiMemoryType::ConventionalMemory, reserved_end, end);
            carved = true;
        } else {
            push(EfiMemoryType::ConventionalMemory, r.base, end);
        }
    }
    if !carved {
        return Err(EfiError::FirmwareRegionOutsideRam(reserved));
    }
    Ok(descriptors)
}

/// Lays out the EFI structures in the last [`EFI_AREA_SIZE`] bytes of the firmware `region`, whose
/// front holds the ACPI tables with the RSDP at `rsdp`; the memory map covers all guest RAM with
/// the whole `region` carved out as ACPI reclaim memory.
pub fn handoff(
    platform: &CheckedPlatform,
    region: GuestRange,
    rsdp: u64,
) -> Result<EfiHandoff, EfiError> {
    check_platform(platform)?;
    let (acpi_area, efi_area) = split_firmware_region(region)?;
    if !acpi_area.contains(rsdp) {
        return Err(EfiError::RsdpOutsideAcpiArea {
            rsdp,
            area: acpi_area,
        });
    }
    let descriptors = memory_map(platform, region)?;

    let vendor: Vec<u8> = FIRMWARE_VENDOR
        .encode_utf16()
        .chain([0])
        .flat_map(u16::to_le_bytes)
        .collect();
    let config_tables = [
        ACPI_20_TABLE_GUID,
        EFI_RT_PROPERTIES_TABLE_GUID,
        LINUX_EFI_MEMRESERVE_TABLE_GUID,
    ];
    let map_size = descriptors.len() as u64 * u64::from(EFI_MEMORY_DESCRIPTOR_SIZE);

    let mut cursor = Cursor::new(efi_area.base);
    let overflow = |_| EfiError::Overflow {
        what: "the EFI area",
        range: efi_area,
    };
    let system_table_addr = cursor
        .place(EFI_SYSTEM_TABLE_SIZE as u64, 8)
        .map_err(overflow)?;
    let config_addr = cursor
        .place(config_tables.len() as u64 * CONFIG_TABLE_ENTRY_SIZE, 8)
        .map_err(overflow)?;
    let rt_properties_addr = cursor
        .place(u64::from(RT_PROPERTIES_SIZE), 8)
        .map_err(overflow)?;
    // 16-byte aligned near the page-aligned area's start, so it never straddles a page, as
    // Linux's early mapping of it assumes.
    let memreserve_addr = cursor.place(MEMRESERVE_ROOT_SIZE, 16).map_err(overflow)?;
    let vendor_addr = cursor.place(vendor.len() as u64, 8).map_err(overflow)?;
    let map_addr = cursor.place(map_size, 8).map_err(overflow)?;
    if cursor.next > efi_area.end() {
        return Err(EfiError::RegionTooSmall {
            region: efi_area,
            needed: cursor.next - efi_area.base,
        });
    }

    let mut system_table = Vec::with_capacity(EFI_SYSTEM_TABLE_SIZE);
    system_table.qword(EFI_SYSTEM_TABLE_SIGNATURE);
    system_table.dword(EFI_SYSTEM_TABLE_REVISION);
    system_table.dword(EFI_SYSTEM_TABLE_SIZE as u32);
    system_table.dword(0); // CRC32, below
    system_table.dword(0);
    system_table.qword(vendor_addr);
    system_table.dword(FIRMWARE_REVISION);
    system_table.dword(0);
    for _console in 0..6 {
        // ConsoleInHandle, ConIn, ConsoleOutHandle, ConOut, StandardErrorHandle, StdErr: none.
        system_table.qword(0);
    }
    system_table.qword(0); // RuntimeServices: none (see the RT properties table)
    system_table.qword(0); // BootServices: exited
    system_table.qword(config_tables.len() as u64);
    system_table.qword(config_addr);
    let crc = crc32(&system_table).to_le_bytes();
    if let Some(field) = system_table.get_mut(CRC32_OFFSET..CRC32_OFFSET + crc.len()) {
        field.copy_from_slice(&crc);
    }

    let mut config = Vec::new();
    for (guid, address) in config_tables
        .iter()
        .zip([rsdp, rt_properties_addr, memreserve_addr])
    {
        config.vec(guid);
        config.qword(address);
    }

    let mut rt_properties = Vec::new();
    rt_properties.word(RT_PROPERTIES_VERSION);
    rt_properties.word(RT_PROPERTIES_SIZE);
    rt_properties.dword(RT_SUPPORTED_NONE);

    let mut map = Vec::new();
    for d in &descriptors {
        d.encode(&mut map);
    }

    let blob = |name, address, bytes| EfiBlob {
        name,
        address,
        bytes,
    };
    Ok(EfiHandoff {
        blobs: vec![
            blob("EFI system table", system_table_addr, system_table),
            blob("EFI configuration table", config_addr, config),
            blob("EFI RT properties table", rt_properties_addr, rt_properties),
            blob(
                "Linux EFI memreserve root",
                memreserve_addr,
                vec![0; MEMRESERVE_ROOT_SIZE as usize],
            ),
            blob("EFI firmware vendor", vendor_addr, vendor),
            blob("EFI memory map", map_addr, map),
        ],
        system_table: system_table_addr,
        memory_map: GuestRange::new(map_addr, map_size),
        descriptor_size: EFI_MEMORY_DESCRIPTOR_SIZE,
        descriptor_version: EFI_MEMORY_DESCRIPTOR_VERSION,
        descriptors,
        reserved: region,
    })
}

/// A device tree with nothing but `/chosen`: the command line, the initrd and the EFI handoff.
pub fn stub_device_tree(
    platform: &CheckedPlatform,
    handoff: &EfiHandoff,
) -> Result<Vec<u8>, EfiError> {
    check_platform(platform)?;
    let mut fdt = FdtWriter::new()?;
    let root = fdt.begin_node("")?;
    fdt.property_u32("#address-cells", STUB_ADDRESS_CELLS)?;
    fdt.property_u32("#size-cells", STUB_SIZE_CELLS)?;

    let chosen = fdt.begin_node("chosen")?;
    fdt.property_string("bootargs", &platform.cmdline)?;
    if let Some(initrd) = platform.initrd {
        fdt.property_u64("linux,initrd-start", initrd.base)?;
        fdt.property_u64("linux,initrd-end", initrd.end())?;
    }
    let map_size = u32::try_from(handoff.memory_map.size).map_err(|_| EfiError::Overflow {
        what: "the EFI memory map",
        range: handoff.memory_map,
    })?;
    fdt.property_u64("linux,uefi-system-table", handoff.system_table)?;
    fdt.property_u64("linux,uefi-mmap-start", handoff.memory_map.base)?;
    fdt.property_u32("linux,uefi-mmap-size", map_size)?;
    fdt.property_u32("linux,uefi-mmap-desc-size", handoff.descriptor_size)?;
    fdt.property_u32("linux,uefi-mmap-desc-ver", handoff.descriptor_version)?;
    fdt.property_u32("linux,uefi-secure-boot", SECURE_BOOT_DISABLED)?;
    fdt.end_node(chosen)?;

    fdt.end_node(root)?;
    Ok(fdt.finish()?)
}

/// Builds the ACPI tables in the front of `firmware_region`, the EFI handoff in its end, and the
/// stub device tree: everything an ACPI boot writes.
pub fn acpi_boot(
    platform: &CheckedPlatform,
    firmware_region: GuestRange,
) -> Result<AcpiBoot, EfiError> {
    check_platform(platform)?;
    let (acpi_area, _) = split_firmware_region(firmware_region)?;
    let tables = acpi::build(platform, acpi_area).map_err(EfiError::Acpi)?;
    let efi = handoff(platform, firmware_region, tables.rsdp)?;
    let stub_dtb = stub_device_tree(platform, &efi)?;
    Ok(AcpiBoot {
        stub_dtb,
        tables,
        efi,
    })
}

/// CRC-32 as UEFI's `CalculateCrc32` computes it (IEEE 802.3, reflected, polynomial 0x04C11DB7).
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xedb8_8320 & mask);
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aarch64::layout;
    use crate::acpi::testutil::*;
    use crate::platform::Platform;

    /// `platform`, which must pass the check.
    fn checked(platform: &Platform) -> CheckedPlatform {
        platform.clone().check().expect("a valid platform")
    }

    fn boot() -> AcpiBoot {
        acpi_boot(&checked(&aarch64_platform(4)), aarch64_firmware_region()).unwrap()
    }

    fn blob<'a>(handoff: &'a EfiHandoff, name: &str) -> &'a EfiBlob {
        handoff
            .blobs
            .iter()
            .find(|b| b.name == name)
            .unwrap_or_else(|| panic!("no {name} blob"))
    }

    /// What an ACPI boot writes besides the stub device tree: the tables, then the EFI structures.
    fn written(boot: &AcpiBoot) -> Vec<(u64, &[u8])> {
        let tables = boot.tables.tables.iter().map(|t| (t.address, &t.bytes[..]));
        let efi = boot.efi.blobs.iter().map(|b| (b.address, &b.bytes[..]));
        tables.chain(efi).collect()
    }

    /// The bytes the guest sees at `address`, from whichever blob holds them.
    fn guest_bytes(boot: &AcpiBoot, address: u64, len: usize) -> &[u8] {
        written(boot)
            .into_iter()
            .find_map(|(base, bytes)| {
                let offset = usize::try_from(address.checked_sub(base)?).ok()?;
                bytes.get(offset..offset + len)
            })
            .unwrap_or_else(|| panic!("nothing written at {address:#x}+{len:#x}"))
    }

    /// Decodes the memory map the way Linux's `for_each_efi_memory_desc` walks it.
    fn decode_map(bytes: &[u8], desc_size: usize) -> Vec<(u32, u64, u64, u64, u64)> {
        assert_eq!(bytes.len() % desc_size, 0);
        bytes
            .chunks(desc_size)
            .map(|d| {
                (
                    u32_at(d, 0),
                    u64_at(d, 8),
                    u64_at(d, 16),
                    u64_at(d, 24),
                    u64_at(d, 32),
                )
            })
            .collect()
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn guids_have_the_uefi_byte_layout() {
        // 8868e871-e4f1-11d3-bc22-0080c73c8881 as it sits in memory.
        assert_eq!(
            ACPI_20_TABLE_GUID,
            [
                0x71, 0xe8, 0x68, 0x88, 0xf1, 0xe4, 0xd3, 0x11, 0xbc, 0x22, 0x00, 0x80, 0xc7, 0x3c,
                0x88, 0x81
            ]
        );
    }

    #[test]
    fn system_table_header_and_fields() {
        let boot = boot();
        let efi = &boot.efi;
        let st = blob(efi, "EFI system table");
        assert_eq!(st.address, efi.system_table);
        assert_eq!(st.address % 8, 0);
        let b = &st.bytes;
        assert_eq!(b.len(), EFI_SYSTEM_TABLE_SIZE);
        assert_eq!(&b[0..8], b"IBI SYST");
        assert_eq!(u64_at(b, 0), EFI_SYSTEM_TABLE_SIGNATURE);
        assert_eq!(u32_at(b, 8), (2 << 16) | 70);
        assert_eq!(u32_at(b, 12), 120, "header size is the whole table");
        let mut zeroed = b.clone();
        zeroed[16..20].fill(0);
        assert_eq!(u32_at(b, 16), crc32(&zeroed));
        assert_eq!(u32_at(b, 20), 0);

        let vendor = guest_bytes(&boot, u64_at(b, 24), 18);
        let chars: Vec<u16> = vendor
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        assert_eq!(String::from_utf16(&chars[..8]).unwrap(), "microvmm");
        assert_eq!(chars[8], 0, "NUL-terminated");

        for offset in (40..96).step_by(8) {
            assert_eq!(u64_at(b, offset), 0, "console field at {offset}");
        }
        assert_eq!(u64_at(b, 88), 0, "no runtime services");
        assert_eq!(u64_at(b, 96), 0, "no boot services");
        assert_eq!(u64_at(b, 104), 3, "three configuration tables");
        assert_eq!(u64_at(b, 112), blob(efi, "EFI configuration table").address);
    }

    #[test]
    fn configuration_tables_point_at_the_rsdp_and_linux_tables() {
        let boot = boot();
        let st = blob(&boot.efi, "EFI system table");
        let config = guest_bytes(&boot, u64_at(&st.bytes, 112), 3 * 24);
        let entries: Vec<([u8; 16], u64)> = config
            .chunks(24)
            .map(|e| (e[..16].try_into().unwrap(), u64_at(e, 16)))
            .collect();

        assert_eq!(entries[0].0, ACPI_20_TABLE_GUID);
        assert_eq!(entries[0].1, boot.tables.rsdp);
        assert_eq!(guest_bytes(&boot, entries[0].1, 8), b"RSD PTR ");

        assert_eq!(entries[1].0, EFI_RT_PROPERTIES_TABLE_GUID);
        let rt = guest_bytes(&boot, entries[1].1, 8);
        assert_eq!(u16_at(rt, 0), 1, "version");
        assert_eq!(u16_at(rt, 2), 8, "length");
        assert_eq!(u32_at(rt, 4), 0, "no runtime service supported");

        assert_eq!(entries[2].0, LINUX_EFI_MEMRESERVE_TABLE_GUID);
        let root = entries[2].1;
        assert_eq!(guest_bytes(&boot, root, 16), [0; 16], "size, count, next");
        assert_eq!(root % 16, 0);
        assert_eq!(
            root / EFI_PAGE_SIZE,
            (root + 15) / EFI_PAGE_SIZE,
            "within one page"
        );
    }

    #[test]
    fn memory_map_covers_ram_with_the_firmware_region_carved_out() {
        let boot = boot();
        let efi = &boot.efi;
        let fw = aarch64_firmware_region();
        assert_eq!(efi.descriptor_size, 40);
        assert_eq!(efi.descriptor_version, 1);
        let map = blob(efi, "EFI memory map");
        assert_eq!(map.address, efi.memory_map.base);
        assert_eq!(map.bytes.len() as u64, efi.memory_map.size);
        assert_eq!(map.address % 8, 0);

        let ram = AARCH64_RAM;
        let descriptors = decode_map(&map.bytes, 40);
        assert_eq!(
            descriptors,
            [
                (7, ram.base, 0, (fw.base - ram.base) / 4096, EFI_MEMORY_WB),
                (9, fw.base, 0, fw.size / 4096, EFI_MEMORY_WB),
                (7, fw.end(), 0, (ram.end() - fw.end()) / 4096, EFI_MEMORY_WB),
            ]
        );
        assert_eq!(efi.descriptors.len(), 3);
        assert_eq!(efi.reserved, fw);
        // The ACPI tables and every EFI structure sit in the carved-out range.
        for (address, bytes) in written(&boot) {
            assert!(fw.contains(address) && address + bytes.len() as u64 <= fw.end());
        }
    }

    #[test]
    fn memory_map_over_several_ram_regions() {
        let mut platform = aarch64_platform(1);
        let high = GuestRange::new(0x80_0000_0000, 0x4000_0000);
        // Unsorted on purpose, with the firmware region at the very top of the second.
        platform.memory = vec![high, AARCH64_RAM];
        let fw = GuestRange::new(high.end() - 2 * MIB, 2 * MIB);
        let efi = handoff(&checked(&platform), fw, fw.base).unwrap();
        let kinds: Vec<(EfiMemoryType, GuestRange)> = efi
            .descriptors
            .iter()
            .map(|d| (d.memory_type, d.range()))
            .collect();
        assert_eq!(
            kinds,
            [
                (EfiMemoryType::ConventionalMemory, AARCH64_RAM),
                (
                    EfiMemoryType::ConventionalMemory,
                    GuestRange::new(high.base, high.size - 2 * MIB)
                ),
                (EfiMemoryType::AcpiReclaimMemory, fw),
            ]
        );
        let total: u64 = efi.descriptors.iter().map(|d| d.range().size).sum();
        assert_eq!(total, platform.memory_size());
        let decoded = decode_map(&blob(&efi, "EFI memory map").bytes, 40);
        assert_eq!(decoded.len(), 3);
        assert!(decoded.iter().all(|d| d.4 == EFI_MEMORY_WB && d.2 == 0));
    }

    #[test]
    fn efi_structures_stay_clear_of_the_acpi_tables() {
        let boot = boot();
        let fw = aarch64_firmware_region();
        let (acpi_area, efi_area) = split_firmware_region(fw).unwrap();
        assert_eq!(acpi_area.base, fw.base);
        assert_eq!(efi_area.end(), fw.end());
        assert_eq!(boot.tables.rsdp, fw.base);
        for t in &boot.tables.tables {
            assert!(t.range().end() <= acpi_area.end(), "{}", t.signature);
        }
        for b in &boot.efi.blobs {
            let range = GuestRange::new(b.address, b.bytes.len() as u64);
            assert!(efi_area.contains(b.address) && range.end() <= efi_area.end());
        }
        let ranges: Vec<GuestRange> = written(&boot)
            .into_iter()
            .map(|(a, bytes)| GuestRange::new(a, bytes.len() as u64))
            .collect();
        assert_eq!(
            ranges.len(),
            boot.tables.tables.len() + boot.efi.blobs.len()
        );
        for (i, a) in ranges.iter().enumerate() {
            for b in &ranges[i + 1..] {
                assert!(!a.overlaps(b), "{a:?} overlaps {b:?}");
            }
        }
    }

    /// `name = <cells>;` from dtc's output, as one number.
    fn dts_number(dts: &str, name: &str) -> u64 {
        let line = dts
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with(&format!("{name} = <")))
            .unwrap_or_else(|| panic!("no {name} in\n{dts}"));
        let cells = line
            .trim_start_matches(&format!("{name} = <"))
            .trim_end_matches(">;");
        cells.split_whitespace().fold(0u64, |acc, c| {
            (acc << 32) | u64::from_str_radix(c.trim_start_matches("0x"), 16).unwrap()
        })
    }

    fn dts_cell_count(dts: &str, name: &str) -> usize {
        let line = dts
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with(&format!("{name} = <")))
            .unwrap_or_else(|| panic!("no {name} in\n{dts}"));
        line.split_whitespace().count() - 2
    }

    #[test]
    fn stub_device_tree_has_only_chosen() {
        let boot = boot();
        let platform = aarch64_platform(4);
        let dts = dtc_decode(&boot.stub_dtb);
        let nodes: Vec<&str> = dts
            .lines()
            .map(str::trim)
            .filter(|l| l.ends_with('{'))
            .collect();
        assert_eq!(nodes, ["/ {", "chosen {"], "{dts}");
        assert_eq!(dts_number(&dts, "#address-cells"), 2);
        assert_eq!(dts_number(&dts, "#size-cells"), 2);
        assert!(
            dts.contains(&format!("bootargs = \"{}\";", platform.cmdline)),
            "{dts}"
        );
        let initrd = platform.initrd.unwrap();
        assert_eq!(dts_number(&dts, "linux,initrd-start"), initrd.base);
        assert_eq!(dts_number(&dts, "linux,initrd-end"), initrd.end());

        let efi = &boot.efi;
        for (name, value, cells) in [
            ("linux,uefi-system-table", efi.system_table, 2),
            ("linux,uefi-mmap-start", efi.memory_map.base, 2),
            ("linux,uefi-mmap-size", efi.memory_map.size, 1),
            ("linux,uefi-mmap-desc-size", 40, 1),
            ("linux,uefi-mmap-desc-ver", 1, 1),
            ("linux,uefi-secure-boot", 2, 1),
        ] {
            assert_eq!(dts_number(&dts, name), value, "{name}");
            assert_eq!(dts_cell_count(&dts, name), cells, "{name}");
        }
        // The system table the device tree names is the one written.
        assert_eq!(
            guest_bytes(&boot, dts_number(&dts, "linux,uefi-system-table"), 8),
            b"IBI SYST"
        );
    }

    #[test]
    fn stub_device_tree_without_initrd() {
        let mut platform = aarch64_platform(1);
        platform.initrd = None;
        let boot = acpi_boot(&checked(&platform), aarch64_firmware_region()).unwrap();
        let dts = dtc_decode(&boot.stub_dtb);
        assert!(!dts.contains("linux,initrd"), "{dts}");
        assert!(dts.contains("linux,uefi-system-table"));
    }

    #[test]
    fn rejects_the_wrong_arch_and_firmware() {
        let fw = aarch64_firmware_region();
        let x86 = x86_platform(1);
        assert!(matches!(
            acpi_boot(&checked(&x86), fw),
            Err(EfiError::WrongArch(GuestArch::X86_64))
        ));
        assert!(matches!(
            handoff(&checked(&x86), fw, fw.base),
            Err(EfiError::WrongArch(_))
        ));
        let good = boot();
        assert!(matches!(
            stub_device_tree(&checked(&x86), &good.efi),
            Err(EfiError::WrongArch(_))
        ));

        let mut dt = aarch64_platform(1);
        dt.firmware = FirmwareInterface::DeviceTree;
        let err = acpi_boot(&checked(&dt), fw).unwrap_err();
        assert!(matches!(err, EfiError::WrongFirmware(_)));
        assert!(err.to_string().contains("DeviceTree"), "{err}");
    }

    #[test]
    fn rejects_bad_firmware_regions() {
        let platform = aarch64_platform(4);
        let fw = aarch64_firmware_region();

        let tiny = GuestRange::new(fw.base, EFI_AREA_SIZE);
        assert!(matches!(
            acpi_boot(&checked(&platform), tiny),
            Err(EfiError::RegionTooSmall { .. })
        ));
        // Room for the EFI area, one page for the ACPI tables: too little for 123 vCPUs' MADT.
        let mut big = aarch64_platform(layout::MAX_VCPUS);
        big.initrd = None;
        let one_page = GuestRange::new(fw.base, EFI_AREA_SIZE + EFI_PAGE_SIZE);
        let err = acpi_boot(&checked(&big), one_page).unwrap_err();
        assert!(
            matches!(err, EfiError::Acpi(AcpiError::RegionTooSmall { .. })),
            "{err:?}"
        );

        assert!(matches!(
            acpi_boot(&checked(&platform), GuestRange::new(fw.base + 8, fw.size)),
            Err(EfiError::Misaligned { .. })
        ));
        // Outside RAM, or straddling its end.
        let outside = GuestRange::new(AARCH64_RAM.end(), fw.size);
        assert!(matches!(
            acpi_boot(&checked(&platform), outside),
            Err(EfiError::FirmwareRegionOutsideRam(_))
        ));
        let straddling = GuestRange::new(AARCH64_RAM.end() - MIB, fw.size);
        assert!(matches!(
            acpi_boot(&checked(&platform), straddling),
            Err(EfiError::FirmwareRegionOutsideRam(_))
        ));
        assert!(matches!(
            handoff(&checked(&platform), fw, fw.end() - 0x100),
            Err(EfiError::RsdpOutsideAcpiArea { .. })
        ));
        assert!(matches!(
            acpi_boot(
                &checked(&platform),
                GuestRange::new(u64::MAX - 0xfff, 0x20_0000)
            ),
            Err(EfiError::Misaligned { .. } | EfiError::Overflow { .. })
        ));
    }

    #[test]
    fn rejects_ram_it_cannot_describe() {
        // The check refuses overlapping RAM and none at all; EFI descriptors count pages.
        let fw = aarch64_firmware_region();
        let mut p = aarch64_platform(1);
        p.memory = vec![GuestRange::new(AARCH64_RAM.base, AARCH64_RAM.size + 0x10)];
        assert!(matches!(
            acpi_boot(&checked(&p), fw),
            Err(EfiError::Misaligned {
                what: "guest RAM region",
                ..
            })
        ));
    }

    #[test]
    fn stub_device_tree_rejects_a_nul_in_the_command_line() {
        let mut p = aarch64_platform(1);
        p.cmdline = "console=ttyS0\0evil".into();
        assert!(matches!(
            acpi_boot(&checked(&p), aarch64_firmware_region()),
            Err(EfiError::Fdt(_))
        ));
    }
}
