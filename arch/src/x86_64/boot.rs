//! x86_64 boot for the 64-bit Linux boot protocol (Documentation/arch/x86/boot.rst in the Linux
//! tree): the guest's e820 map and boot layout, and inspecting and loading a bzImage and writing
//! its zero page and command line.
//!
//! The bzImage, the zero page (`boot_params`) and the command line go through linux-loader, whose
//! bzImage loader and `bootparam` types exist only on x86 hosts: that part is gated on the host,
//! as a kernel is only ever loaded for the host's own architecture. The e820 map and the placement
//! of the initrd are part of the plan, checked on every host.

use std::io;

use thiserror::Error;
use vm_memory::GuestMemoryError;

use crate::boot::{BootLayout, LayoutError};
use crate::platform::{GuestRange, Platform};
use crate::x86_64::layout;

#[cfg(target_arch = "x86_64")]
pub use bzimage::{BzImage, inspect, write_boot_params};

/// e820 entry types (ACPI "address range types").
pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;
pub const E820_ACPI: u32 = 3;
/// Entries the zero page holds.
pub const E820_MAX_ENTRIES: usize = 128;

/// One e820 memory map entry. Plan data, so it exists on every host; linux-loader's
/// `boot_e820_entry` is its zero-page form.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    /// One of the `E820_*` types.
    pub kind: u32,
}

impl E820Entry {
    pub const fn new(range: GuestRange, kind: u32) -> Self {
        E820Entry {
            addr: range.base,
            size: range.size,
            kind,
        }
    }

    pub const fn range(&self) -> GuestRange {
        GuestRange::new(self.addr, self.size)
    }
}

#[derive(Debug, Error)]
pub enum BootError {
    #[error("kernel image changed on disk after it was checked")]
    Changed,
    #[error("cannot read the {what}")]
    Read {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("kernel image is not a bzImage: {0}")]
    NotBzImage(&'static str),
    #[error(
        "kernel boot protocol {version:#06x} has no 64-bit entry point (needs 2.12+ and \
         XLF_KERNEL_64)"
    )]
    No64BitEntry { version: u16 },
    #[error("kernel alignment {0:#x} is not a power of two")]
    KernelAlignment(u32),
    #[error("non-relocatable kernel must run at {0:#x}, below the kernel load address")]
    KernelRunsTooLow(u64),
    #[error("kernel needs guest RAM from {:#x} to {:#x}", .range.base, .range.end())]
    KernelDoesNotFit { range: GuestRange },
    #[error("cannot load the bzImage into guest memory")]
    LoadKernel(#[source] linux_loader::loader::Error),
    #[error("the kernel command line")]
    Cmdline(#[source] LayoutError),
    #[error(
        "cannot write the kernel command line to guest memory at {:#x}",
        layout::CMDLINE
    )]
    WriteCmdline(#[source] linux_loader::loader::Error),
    #[error(
        "cannot write the zero page to guest memory at {:#x}",
        layout::ZERO_PAGE
    )]
    WriteZeroPage(#[source] linux_loader::configurator::Error),
    #[error(
        "e820 ranges {:#x}..{:#x} and {:#x}..{:#x} overlap",
        .a.base, .a.end(), .b.base, .b.end()
    )]
    E820Overlap { a: GuestRange, b: GuestRange },
    #[error("e820 map needs {0} entries, the zero page holds {E820_MAX_ENTRIES}")]
    TooManyE820Entries(usize),
    #[error("cannot write the {what} to guest memory at {addr:#x}")]
    GuestWrite {
        what: &'static str,
        addr: u64,
        #[source]
        source: GuestMemoryError,
    },
    #[error("vCPU index {index} is not below the vCPU count {vcpus}")]
    VcpuIndex { index: u32, vcpus: u32 },
    #[error("{0} vCPUs cannot all have xAPIC IDs (1 to {max} supported)", max = layout::MAX_VCPUS)]
    VcpuCount(u32),
    #[error("CPUID table of {0} entries exceeds KVM's limit")]
    CpuidEntries(usize),
}

/// What placing a bzImage loaded at [`layout::HIMEM_START`] needs of its setup header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BzImageFootprint {
    /// Guest memory the kernel owns until it runs: the loaded image and the area it decompresses
    /// into (`init_size` bytes from its run address). Nothing else may be placed here.
    pub range: GuestRange,
    /// The 64-bit entry point.
    pub entry: u64,
    /// The highest address the initrd may occupy, inclusive.
    pub initrd_addr_max: u32,
    /// The longest command line the kernel takes, without the NUL.
    pub cmdline_size: u32,
}

impl BzImageFootprint {
    /// The longest command line the kernel takes, bounded by the layout's buffer.
    pub fn cmdline_max(&self) -> u64 {
        u64::from(self.cmdline_size).min(layout::CMDLINE_MAX - 1)
    }
}

const PAGE_SIZE: u64 = 0x1000;

/// The kernel at its load address, which must lie in one RAM region; the initrd page-aligned and
/// as high as possible below both the kernel's `initrd_addr_max` and the end of that region (below
/// the MMIO hole), above everything the kernel owns; the ACPI tables at their fixed place.
/// Hand-written: linux-loader has no initrd placement.
pub fn boot_layout(
    ram: &[GuestRange],
    kernel: &BzImageFootprint,
    initrd_size: Option<u64>,
) -> Result<BootLayout, LayoutError> {
    let low_ram = ram
        .iter()
        .find(|r| r.contains(kernel.range.base) && kernel.range.end() <= r.end())
        .ok_or(LayoutError::KernelDoesNotFit {
            range: kernel.range,
        })?;
    let initrd = match initrd_size {
        None => None,
        Some(0) => return Err(LayoutError::EmptyInitrd),
        Some(size) => {
            let ceiling = (u64::from(kernel.initrd_addr_max) + 1).min(low_ram.end());
            let floor = kernel.range.end().next_multiple_of(PAGE_SIZE);
            let base = ceiling
                .checked_sub(size)
                .map(|top| top & !(PAGE_SIZE - 1))
                .filter(|&base| base >= floor)
                .ok_or(LayoutError::InitrdDoesNotFit {
                    size,
                    floor,
                    ceiling,
                })?;
            Some(GuestRange::new(base, size))
        }
    };
    Ok(BootLayout {
        kernel: kernel.range,
        entry: kernel.entry,
        initrd,
        firmware_tables: layout::ACPI_TABLES,
        device_tree: None,
    })
}

/// The guest's e820 map, sorted and without overlaps:
/// - RAM below the EBDA;
/// - reserved from the EBDA to the ACPI tables (EBDA, VGA hole, option ROM space);
/// - ACPI data (type 3) over the tables area. Linux treats type 3 like reserved memory (never
///   handed to the page allocator, never reclaimed, mapped with the rest of the first MiB), but
///   lists it as "ACPI Tables" in /proc/iomem, which kexec tools forward to a kdump kernel as ACPI
///   data so it can read the tables too;
/// - reserved for any rest of the first MiB;
/// - RAM from [`layout::HIMEM_START`] to the end of every guest RAM region;
/// - reserved over each PCI host bridge's ECAM window. The DSDT's `PNP0C02` device reserves them
///   too; Linux checks that one, except before its ACPI interpreter runs on machines whose DMI
///   BIOS year is before 2016 (a guest without DMI counts) when port 0xCF8 config access works,
///   where it wants e820 (arch/x86/pci/mmconfig-shared.c, `pci_mmcfg_reserved`).
pub fn e820_map(platform: &Platform) -> Result<Vec<E820Entry>, BootError> {
    let acpi = layout::ACPI_TABLES;
    let mut entries: Vec<E820Entry> = platform
        .memory
        .iter()
        .filter_map(|r| clip(*r, 0, layout::EBDA))
        .map(|r| E820Entry::new(r, E820_RAM))
        .collect();
    let fixed = [
        (layout::EBDA, acpi.base, E820_RESERVED),
        (acpi.base, acpi.end(), E820_ACPI),
        (acpi.end(), layout::HIMEM_START, E820_RESERVED),
    ];
    entries.extend(
        fixed
            .into_iter()
            .filter(|&(start, end, _)| start < end)
            .map(|(start, end, kind)| E820Entry::new(GuestRange::new(start, end - start), kind)),
    );
    entries.extend(
        platform
            .memory
            .iter()
            .filter_map(|r| clip(*r, layout::HIMEM_START, u64::MAX))
            .map(|r| E820Entry::new(r, E820_RAM)),
    );
    entries.extend(
        platform
            .pci_bridges
            .iter()
            .map(|b| E820Entry::new(b.ecam, E820_RESERVED)),
    );

    entries.sort_by_key(|e| e.addr);
    if let Some(pair) = entries
        .windows(2)
        .find(|pair| pair[0].range().overlaps(&pair[1].range()))
    {
        return Err(BootError::E820Overlap {
            a: pair[0].range(),
            b: pair[1].range(),
        });
    }
    if entries.len() > E820_MAX_ENTRIES {
        return Err(BootError::TooManyE820Entries(entries.len()));
    }
    Ok(entries)
}

/// The part of `range` within `[start, end)`, if any.
fn clip(range: GuestRange, start: u64, end: u64) -> Option<GuestRange> {
    let base = range.base.max(start);
    let top = range.end().min(end);
    (base < top).then(|| GuestRange::new(base, top - base))
}

/// Loading the kernel and writing its boot parameters, with linux-loader's x86-only types.
#[cfg(target_arch = "x86_64")]
mod bzimage {
    use std::io::{self, Read, Seek, SeekFrom};

    use linux_loader::configurator::{BootConfigurator, BootParams, linux::LinuxBootConfigurator};
    use linux_loader::loader::bootparam::{
        CAN_USE_HEAP, E820_MAX_ENTRIES_ZEROPAGE, LOADED_HIGH, XLF_KERNEL_64, boot_e820_entry,
        boot_params, setup_header,
    };
    use linux_loader::loader::{BzImage as Loader, KernelLoader, load_cmdline};
    use vm_memory::{ByteValued, GuestAddress, GuestMemoryBackend, ReadVolatile};

    use super::{BootError, BzImageFootprint, E820_MAX_ENTRIES, e820_map};
    use crate::boot::kernel_cmdline;
    use crate::platform::{GuestRange, Platform};
    use crate::x86_64::layout;

    const _: () = assert!(E820_MAX_ENTRIES == E820_MAX_ENTRIES_ZEROPAGE);
    const _: () = assert!(layout::CMDLINE + layout::CMDLINE_MAX <= 1 << 32);

    /// Where the setup header starts in a bzImage file and in the zero page.
    const SETUP_HEADER_OFFSET: u64 = 0x1f1;
    /// One past the last byte of the setup header as of boot protocol 2.15.
    const SETUP_HEADER_END: usize = 0x1f1 + std::mem::size_of::<setup_header>();
    /// "HdrS", at offset 0x202.
    const HDRS_MAGIC: u32 = 0x5372_6448;
    const BOOT_FLAG: u16 = 0xaa55;
    /// Protocol 2.12 introduced `xloadflags`, which carries `XLF_KERNEL_64`.
    const MIN_PROTOCOL: u16 = 0x020c;
    /// The 64-bit entry point is `startup_32 + 0x200`, `startup_32` being the load address.
    const ENTRY_64_OFFSET: u64 = 0x200;
    const SECTOR: u64 = 512;
    /// `setup_sects == 0` means 4, for compatibility with ancient kernels.
    const DEFAULT_SETUP_SECTS: u8 = 4;
    /// `type_of_loader` for a boot loader without an assigned ID.
    const LOADER_TYPE_UNDEFINED: u8 = 0xff;
    /// The end of the setup heap, as an offset from the real-mode code minus 0x200. The real-mode
    /// code does not run under the 64-bit protocol; this is the conventional value for setup code at
    /// 0x1_0000 with its heap ending at the command line (0x2_0000).
    const HEAP_END_PTR: u16 = 0xfe00;

    /// A checked bzImage, not yet in guest memory.
    #[derive(Debug, Clone, Copy)]
    pub struct BzImage {
        /// The setup header read from the image, with `code32_start` set to the load address and
        /// bytes past the image's own header length cleared.
        pub setup_header: setup_header,
        footprint: BzImageFootprint,
    }

    /// Reads the bzImage in `kernel` and makes the checks linux-loader does not make (boot flag,
    /// 64-bit entry point, the footprint from its load address at [`layout::HIMEM_START`]), so a
    /// kernel that cannot boot here is refused before anything is planned.
    pub fn inspect(kernel: &mut (impl Read + Seek)) -> Result<BzImage, BootError> {
        let read_err = |source| BootError::Read {
            what: "kernel image",
            source,
        };
        let file_size = kernel.seek(SeekFrom::End(0)).map_err(read_err)?;
        let mut hdr = read_setup_header(kernel)?;

        if hdr.boot_flag != BOOT_FLAG {
            return Err(BootError::NotBzImage("no 0xaa55 boot flag at 0x1fe"));
        }
        if hdr.header != HDRS_MAGIC {
            return Err(BootError::NotBzImage("no \"HdrS\" magic at 0x202"));
        }
        if hdr.version < MIN_PROTOCOL || hdr.xloadflags & XLF_KERNEL_64 == 0 {
            return Err(BootError::No64BitEntry {
                version: hdr.version,
            });
        }
        if hdr.loadflags & LOADED_HIGH == 0 {
            return Err(BootError::NotBzImage(
                "LOADED_HIGH is clear (a zImage loads at 0x10000)",
            ));
        }

        let setup_sects = match hdr.setup_sects {
            0 => DEFAULT_SETUP_SECTS,
            n => n,
        };
        let setup_size = (u64::from(setup_sects) + 1) * SECTOR;
        let image_size = file_size
            .checked_sub(setup_size)
            .filter(|&size| size > 0)
            .ok_or(BootError::NotBzImage(
                "file ends inside its real-mode setup code",
            ))?;

        let range = kernel_footprint(&hdr, image_size)?;
        // The header is handed on to the zero page: record where the protected-mode code will be.
        hdr.code32_start = layout::HIMEM_START as u32;
        Ok(BzImage {
            setup_header: hdr,
            footprint: BzImageFootprint {
                range,
                entry: layout::HIMEM_START + ENTRY_64_OFFSET,
                initrd_addr_max: hdr.initrd_addr_max,
                cmdline_size: hdr.cmdline_size,
            },
        })
    }

    impl BzImage {
        pub fn footprint(&self) -> BzImageFootprint {
            self.footprint
        }

        /// Has linux-loader load the inspected `file` at [`layout::HIMEM_START`].
        pub fn load<M, F>(&self, mem: &M, file: &mut F) -> Result<(), BootError>
        where
            M: GuestMemoryBackend,
            F: Read + ReadVolatile + Seek,
        {
            // The plan placed what inspection saw; a file changed since then is refused.
            if inspect(file)?.footprint != self.footprint {
                return Err(BootError::Changed);
            }
            Loader::load(mem, Some(GuestAddress(layout::HIMEM_START)), file, None)
                .map_err(BootError::LoadKernel)?;
            Ok(())
        }
    }

    /// Reads the setup header, keeping only as many bytes as the image says its header has (0x202
    /// plus the jump offset at 0x201): older headers are shorter, and code follows them. The magic
    /// and version, which every header has, are always kept. linux-loader copies the whole struct.
    fn read_setup_header(kernel: &mut (impl Read + Seek)) -> Result<setup_header, BootError> {
        let mut hdr = setup_header::default();
        kernel
            .seek(SeekFrom::Start(SETUP_HEADER_OFFSET))
            .and_then(|_| kernel.read_exact(hdr.as_mut_slice()))
            .map_err(|source| match source.kind() {
                io::ErrorKind::UnexpectedEof => {
                    BootError::NotBzImage("file is shorter than a setup header")
                }
                _ => BootError::Read {
                    what: "kernel image",
                    source,
                },
            })?;
        let header_end = (0x202 + usize::from(hdr.jump >> 8)).clamp(0x208, SETUP_HEADER_END);
        hdr.as_mut_slice()[header_end - SETUP_HEADER_OFFSET as usize..].fill(0);
        Ok(hdr)
    }

    /// The memory the kernel needs from its load address at [`layout::HIMEM_START`]: the image, and
    /// the `init_size` bytes the decompressor works in. A relocatable kernel runs at its load address
    /// rounded up to `kernel_alignment`, but never below `pref_address`; any other kernel runs at
    /// `pref_address` (arch/x86/boot/compressed/head_64.S). linux-loader does not place kernels.
    fn kernel_footprint(hdr: &setup_header, image_size: u64) -> Result<GuestRange, BootError> {
        let load = layout::HIMEM_START;
        let run_base = if hdr.relocatable_kernel != 0 {
            let align = hdr.kernel_alignment;
            if !align.is_power_of_two() {
                return Err(BootError::KernelAlignment(align));
            }
            load.next_multiple_of(u64::from(align))
                .max(hdr.pref_address)
        } else if hdr.pref_address < load {
            return Err(BootError::KernelRunsTooLow(hdr.pref_address));
        } else {
            hdr.pref_address
        };
        let too_big = BootError::KernelDoesNotFit {
            range: GuestRange::new(run_base, u64::from(hdr.init_size)),
        };
        let end = run_base
            .checked_add(u64::from(hdr.init_size))
            .ok_or(too_big)?
            .max(load.saturating_add(image_size));
        Ok(GuestRange::new(load, end - load))
    }

    /// Writes the zero page at [`layout::ZERO_PAGE`] and the command line at [`layout::CMDLINE`].
    /// `rsdp` is the ACPI RSDP's address (0: the kernel scans for it).
    pub fn write_boot_params<M: GuestMemoryBackend>(
        mem: &M,
        platform: &Platform,
        kernel: &BzImage,
        rsdp: u64,
    ) -> Result<(), BootError> {
        let mut params = boot_params::default();
        let mut hdr = kernel.setup_header;
        hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
        hdr.loadflags |= CAN_USE_HEAP;
        hdr.heap_end_ptr = HEAP_END_PTR;

        let cmdline = kernel_cmdline(&platform.cmdline, kernel.footprint.cmdline_max())
            .map_err(BootError::Cmdline)?;
        load_cmdline(mem, GuestAddress(layout::CMDLINE), &cmdline)
            .map_err(BootError::WriteCmdline)?;
        hdr.cmd_line_ptr = layout::CMDLINE as u32;

        if let Some(initrd) = platform.initrd {
            // The low halves go in the header, the high halves in the ext_ fields.
            hdr.ramdisk_image = initrd.base as u32;
            hdr.ramdisk_size = initrd.size as u32;
            params.ext_ramdisk_image = (initrd.base >> 32) as u32;
            params.ext_ramdisk_size = (initrd.size >> 32) as u32;
        }
        params.hdr = hdr;
        params.acpi_rsdp_addr = rsdp;

        // e820 contents are ours (linux-loader has the entry type, not the map).
        let e820 = e820_map(platform)?;
        let mut table = [boot_e820_entry::default(); E820_MAX_ENTRIES];
        for (slot, entry) in table.iter_mut().zip(&e820) {
            *slot = boot_e820_entry {
                addr: entry.addr,
                size: entry.size,
                r#type: entry.kind,
            };
        }
        params.e820_table = table;
        // e820_map returns at most E820_MAX_ENTRIES (128) entries.
        params.e820_entries = e820.len() as u8;

        LinuxBootConfigurator::write_bootparams(
            &BootParams::new(&params, GuestAddress(layout::ZERO_PAGE)),
            mem,
        )
        .map_err(BootError::WriteZeroPage)
    }

    #[cfg(test)]
    mod tests {
        use std::io::Cursor;

        use vm_memory::Bytes;

        use super::*;
        use crate::boot::LayoutError;
        use crate::x86_64::boot::tests::{HIGH, MIB, platform};
        use crate::x86_64::boot::{BootLayout, E820_ACPI, E820_RAM, E820_RESERVED, boot_layout};

        type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

        const GIB: u64 = 1 << 30;
        const PREF_ADDRESS: u64 = 0x100_0000;
        const INIT_SIZE: u32 = 0x80_0000;

        fn guest_memory(size: u64) -> GuestMemoryMmap {
            let regions: Vec<_> = layout::ram_regions(size)
                .iter()
                .map(|r| (GuestAddress(r.base), r.size as usize))
                .collect();
            GuestMemoryMmap::from_ranges(&regions).unwrap()
        }

        /// A protocol 2.15 header for a relocatable 64-bit kernel.
        fn header() -> setup_header {
            setup_header {
                setup_sects: 2,
                boot_flag: BOOT_FLAG,
                // `jmp short` over the header to 0x26c.
                jump: 0xeb | (((SETUP_HEADER_END - 0x202) as u16) << 8),
                header: HDRS_MAGIC,
                version: 0x020f,
                loadflags: LOADED_HIGH,
                code32_start: 0x10_0000,
                initrd_addr_max: 0x7fff_ffff,
                kernel_alignment: 0x20_0000,
                relocatable_kernel: 1,
                min_alignment: 21,
                xloadflags: XLF_KERNEL_64,
                cmdline_size: 2047,
                pref_address: PREF_ADDRESS,
                init_size: INIT_SIZE,
                kernel_info_offset: 0x1234,
                ..Default::default()
            }
        }

        /// A bzImage-shaped file: boot sector and setup sectors with `hdr` at 0x1f1, then `payload`.
        fn bzimage(hdr: &setup_header, payload: &[u8]) -> Vec<u8> {
            let sects = match hdr.setup_sects {
                0 => DEFAULT_SETUP_SECTS,
                n => n,
            };
            let mut image = vec![0x90u8; (usize::from(sects) + 1) * 512];
            image[SETUP_HEADER_OFFSET as usize..SETUP_HEADER_END].copy_from_slice(hdr.as_slice());
            image.extend_from_slice(payload);
            image
        }

        fn payload() -> Vec<u8> {
            (0..5000u32).map(|i| (i % 251) as u8).collect()
        }

        /// Inspects the bzImage `file` and loads it into `mem`.
        fn load_kernel<F>(mem: &GuestMemoryMmap, file: &mut F) -> Result<BzImage, BootError>
        where
            F: Read + ReadVolatile + Seek,
        {
            let kernel = inspect(file)?;
            kernel.load(mem, file)?;
            Ok(kernel)
        }

        fn load(hdr: &setup_header) -> Result<BzImage, BootError> {
            let mem = guest_memory(256 * MIB);
            load_kernel(&mem, &mut Cursor::new(bzimage(hdr, &payload())))
        }

        /// Where the plan puts `kernel` and an initrd of `initrd_size` bytes in `memory_size` of RAM.
        fn placed(
            memory_size: u64,
            kernel: &BzImage,
            initrd_size: Option<u64>,
        ) -> Result<BootLayout, LayoutError> {
            boot_layout(
                &layout::ram_regions(memory_size),
                &kernel.footprint(),
                initrd_size,
            )
        }

        #[test]
        fn loads_a_bzimage() {
            let mem = guest_memory(256 * MIB);
            let image = bzimage(&header(), &payload());
            let kernel = load_kernel(&mem, &mut Cursor::new(image)).unwrap();

            assert_eq!(kernel.footprint().entry, 0x10_0200);
            // Relocatable, loaded at 1 MiB: decompresses at pref_address (16 MiB).
            assert_eq!(
                kernel.footprint().range,
                GuestRange::new(0x10_0000, PREF_ADDRESS + u64::from(INIT_SIZE) - 0x10_0000)
            );
            let mut loaded = vec![0u8; payload().len()];
            mem.read_slice(&mut loaded, GuestAddress(layout::HIMEM_START))
                .unwrap();
            assert_eq!(loaded, payload());
            let hdr = kernel.setup_header;
            assert_eq!({ hdr.version }, 0x020f);
            assert_eq!({ hdr.code32_start }, 0x10_0000);
            assert_eq!({ hdr.kernel_info_offset }, 0x1234);
            assert_eq!({ hdr.cmdline_size }, 2047);
        }

        /// A kernel file that changed after the plan placed it is refused at load.
        #[test]
        fn a_changed_kernel_file_is_refused_at_load() {
            let kernel = inspect(&mut Cursor::new(bzimage(&header(), &payload()))).unwrap();
            let bigger = setup_header {
                init_size: INIT_SIZE * 2,
                ..header()
            };
            let mut changed = Cursor::new(bzimage(&bigger, &payload()));
            assert!(matches!(
                kernel.load(&guest_memory(256 * MIB), &mut changed),
                Err(BootError::Changed)
            ));
        }

        #[test]
        fn setup_sects_zero_means_four() {
            let hdr = setup_header {
                setup_sects: 0,
                ..header()
            };
            let mem = guest_memory(256 * MIB);
            let kernel = load_kernel(&mem, &mut Cursor::new(bzimage(&hdr, &payload()))).unwrap();
            let mut first = [0u8; 4];
            mem.read_slice(&mut first, GuestAddress(kernel.footprint().range.base))
                .unwrap();
            assert_eq!(first, payload()[..4]);
        }

        #[test]
        fn bytes_past_a_short_header_are_not_copied() {
            // A 2.12 header ends at 0x268; what follows in the file is code, not kernel_info_offset.
            let hdr = setup_header {
                version: 0x020c,
                jump: 0xeb | (0x66 << 8),
                ..header()
            };
            let kernel = load(&hdr).unwrap();
            assert_eq!({ kernel.setup_header.kernel_info_offset }, 0);
            assert_eq!({ kernel.setup_header.init_size }, INIT_SIZE);

            // A header that claims to end right after the jump still has its magic and version read,
            // but nothing past them.
            let stub = setup_header {
                jump: 0xeb,
                ..header()
            };
            assert!(matches!(
                load(&stub),
                Err(BootError::No64BitEntry { version: 0x020f })
            ));
        }

        #[test]
        fn non_relocatable_kernel_runs_at_pref_address() {
            let hdr = setup_header {
                relocatable_kernel: 0,
                kernel_alignment: 0,
                pref_address: 0x200_0000,
                ..header()
            };
            let kernel = load(&hdr).unwrap();
            assert_eq!(
                kernel.footprint().range.end(),
                0x200_0000 + u64::from(INIT_SIZE)
            );
        }

        #[test]
        fn rejects_non_bzimages() {
            let with = |hdr: setup_header| bzimage(&hdr, &payload());
            for (file, why) in [
                (vec![0u8; 0x200], "shorter"),
                (
                    with(setup_header {
                        boot_flag: 0,
                        ..header()
                    }),
                    "0xaa55",
                ),
                (
                    with(setup_header {
                        header: 0x1234_5678,
                        ..header()
                    }),
                    "HdrS",
                ),
                (
                    with(setup_header {
                        loadflags: 0,
                        ..header()
                    }),
                    "LOADED_HIGH",
                ),
                (bzimage(&header(), &[]), "setup code"),
            ] {
                let err = load_kernel(&guest_memory(16 * MIB), &mut Cursor::new(file)).unwrap_err();
                assert!(
                    matches!(err, BootError::NotBzImage(m) if m.contains(why)),
                    "{why}: {err}"
                );
            }
        }

        #[test]
        fn rejects_kernels_without_64_bit_entry() {
            let old = setup_header {
                version: 0x020b,
                ..header()
            };
            let err = load(&old).unwrap_err();
            assert!(matches!(err, BootError::No64BitEntry { version: 0x020b }));
            assert!(err.to_string().contains("0x020b"), "{err}");

            let no_xlf = setup_header {
                xloadflags: 0,
                ..header()
            };
            assert!(matches!(
                load(&no_xlf),
                Err(BootError::No64BitEntry { version: 0x020f })
            ));
        }

        #[test]
        fn rejects_kernels_that_do_not_fit() {
            let huge = setup_header {
                init_size: 0xff00_0000,
                ..header()
            };
            let err = placed(256 * MIB, &load(&huge).unwrap(), None).unwrap_err();
            assert!(
                matches!(err, LayoutError::KernelDoesNotFit { range } if range.base == 0x10_0000),
                "{err}"
            );
            // Beyond the address space, already when inspected.
            let wraps = setup_header {
                relocatable_kernel: 0,
                pref_address: u64::MAX - 0x1000,
                ..header()
            };
            assert!(matches!(
                load(&wraps),
                Err(BootError::KernelDoesNotFit { .. })
            ));

            let low = setup_header {
                relocatable_kernel: 0,
                pref_address: 0x8_0000,
                ..header()
            };
            assert!(matches!(
                load(&low),
                Err(BootError::KernelRunsTooLow(0x8_0000))
            ));

            let bad_align = setup_header {
                kernel_alignment: 0x30_0000,
                ..header()
            };
            assert!(matches!(
                load(&bad_align),
                Err(BootError::KernelAlignment(0x30_0000))
            ));

            // The image itself larger than guest memory.
            let small = setup_header {
                pref_address: 0x10_0000,
                init_size: 0x1000,
                ..header()
            };
            let image = bzimage(&small, &vec![1u8; 2 * MIB as usize]);
            let kernel = inspect(&mut Cursor::new(image)).unwrap();
            let err = placed(2 * MIB, &kernel, None).unwrap_err();
            assert!(
                matches!(err, LayoutError::KernelDoesNotFit { range } if range.size == 2 * MIB)
            );
        }

        fn loaded_kernel(mem: &GuestMemoryMmap, hdr: &setup_header) -> BzImage {
            load_kernel(mem, &mut Cursor::new(bzimage(hdr, &payload()))).unwrap()
        }

        #[test]
        fn initrd_goes_high_and_page_aligned() {
            let kernel = load(&header()).unwrap();
            let layout = placed(256 * MIB, &kernel, Some(0x1_2345)).unwrap();
            assert_eq!(layout.initrd, Some(GuestRange::new(0xffe_d000, 0x1_2345)));
            assert_eq!(layout.kernel, kernel.footprint().range);
            assert_eq!(layout.entry, 0x10_0200);
            assert_eq!(layout.firmware_tables, layout::ACPI_TABLES);
            assert_eq!(placed(256 * MIB, &kernel, None).unwrap().initrd, None);
        }

        #[test]
        fn initrd_respects_initrd_addr_max() {
            // 4 GiB: low RAM ends at the hole (3 GiB), the kernel allows up to 0x37ff_ffff.
            let hdr = setup_header {
                initrd_addr_max: 0x37ff_ffff,
                ..header()
            };
            let initrd = placed(4 * GIB, &load(&hdr).unwrap(), Some(0x3000))
                .unwrap()
                .initrd;
            assert_eq!(initrd, Some(GuestRange::new(0x3800_0000 - 0x3000, 0x3000)));

            // Without that limit, the end of RAM below the hole.
            let hdr = setup_header {
                initrd_addr_max: 0xffff_ffff,
                ..header()
            };
            let initrd = placed(4 * GIB, &load(&hdr).unwrap(), Some(0x3000))
                .unwrap()
                .initrd
                .unwrap();
            assert_eq!(initrd.end(), layout::MMIO_HOLE.base);
        }

        #[test]
        fn initrd_errors() {
            let kernel = load(&header()).unwrap();

            let err = placed(32 * MIB, &kernel, Some(0)).unwrap_err();
            assert!(matches!(err, LayoutError::EmptyInitrd));

            // The kernel owns up to 24 MiB; 9 MiB do not fit above it.
            let size = 9 * MIB;
            let err = placed(32 * MIB, &kernel, Some(size)).unwrap_err();
            assert!(
                matches!(
                    err,
                    LayoutError::InitrdDoesNotFit { size: s, floor, ceiling }
                        if s == size && floor == 24 * MIB && ceiling == 32 * MIB
                ),
                "{err}"
            );

            let elsewhere = [GuestRange::new(HIGH, GIB)];
            let err = boot_layout(&elsewhere, &kernel.footprint(), Some(10)).unwrap_err();
            assert!(
                matches!(err, LayoutError::KernelDoesNotFit { range } if range.base == 0x10_0000),
                "{err}"
            );
        }

        fn read_zero_page(mem: &GuestMemoryMmap) -> boot_params {
            mem.read_obj(GuestAddress(layout::ZERO_PAGE)).unwrap()
        }

        fn raw_u32(mem: &GuestMemoryMmap, offset: u64) -> u32 {
            mem.read_obj(GuestAddress(layout::ZERO_PAGE + offset))
                .unwrap()
        }

        fn e820(params: &boot_params) -> Vec<(u64, u64, u32)> {
            let table = params.e820_table;
            table[..usize::from(params.e820_entries)]
                .iter()
                .map(|e| (e.addr, e.size, e.r#type))
                .collect()
        }

        #[test]
        fn zero_page_for_256_mib() {
            let mem = guest_memory(256 * MIB);
            let kernel = loaded_kernel(&mem, &header());
            let initrd = GuestRange::new(0xff0_0000, 0x8_1234);
            let platform = platform(256 * MIB, "console=ttyS0 panic=-1", Some(initrd));
            write_boot_params(&mem, &platform, &kernel, 0xe_0000).unwrap();

            let params = read_zero_page(&mem);
            assert_eq!(
                e820(&params),
                vec![
                    (0, layout::EBDA, E820_RAM),
                    (layout::EBDA, 0xe_0000 - layout::EBDA, E820_RESERVED),
                    (0xe_0000, 0x2_0000, E820_ACPI),
                    (0x10_0000, 256 * MIB - 0x10_0000, E820_RAM),
                ]
            );
            let hdr = params.hdr;
            assert_eq!(hdr.type_of_loader, 0xff);
            assert_eq!(hdr.loadflags, LOADED_HIGH | CAN_USE_HEAP);
            assert_eq!({ hdr.heap_end_ptr }, HEAP_END_PTR);
            assert_eq!({ hdr.cmd_line_ptr }, layout::CMDLINE as u32);
            assert_eq!({ hdr.ramdisk_image }, 0xff0_0000);
            assert_eq!({ hdr.ramdisk_size }, 0x8_1234);
            assert_eq!({ hdr.version }, 0x020f);
            assert_eq!({ hdr.code32_start }, 0x10_0000);
            assert_eq!({ params.ext_ramdisk_image }, 0);
            assert_eq!({ params.acpi_rsdp_addr }, 0xe_0000);

            // The same fields at the boot protocol's offsets, independent of `boot_params`.
            assert_eq!(raw_u32(&mem, 0x070), 0xe_0000);
            assert_eq!(raw_u32(&mem, 0x1e8) & 0xff, 4);
            assert_eq!(
                raw_u32(&mem, 0x210) & 0xffff,
                0x80ff | u32::from(LOADED_HIGH) << 8
            );
            assert_eq!(raw_u32(&mem, 0x218), 0xff0_0000);
            assert_eq!(raw_u32(&mem, 0x21c), 0x8_1234);
            assert_eq!(raw_u32(&mem, 0x224) & 0xffff, u32::from(HEAP_END_PTR));
            assert_eq!(raw_u32(&mem, 0x228), layout::CMDLINE as u32);
            assert_eq!(raw_u32(&mem, 0x202), HDRS_MAGIC);
            // Third e820 entry: addr at +0, size at +8, type at +16 of a 20-byte entry.
            assert_eq!(raw_u32(&mem, 0x2d0 + 2 * 20), 0xe_0000);
            assert_eq!(raw_u32(&mem, 0x2d0 + 2 * 20 + 16), E820_ACPI);
            assert_eq!(raw_u32(&mem, 0x1ef) & 0xff, 0, "sentinel must be clear");

            let mut cmdline = [0xaau8; 24];
            mem.read_slice(&mut cmdline, GuestAddress(layout::CMDLINE))
                .unwrap();
            assert_eq!(&cmdline[..23], b"console=ttyS0 panic=-1\0");
        }

        #[test]
        fn zero_page_for_4_gib_splits_around_the_hole() {
            let mem = guest_memory(4 * GIB);
            let kernel = loaded_kernel(&mem, &header());
            let platform = platform(4 * GIB, "", None);
            write_boot_params(&mem, &platform, &kernel, 0).unwrap();

            let params = read_zero_page(&mem);
            assert_eq!(
                e820(&params),
                vec![
                    (0, layout::EBDA, E820_RAM),
                    (layout::EBDA, 0xe_0000 - layout::EBDA, E820_RESERVED),
                    (0xe_0000, 0x2_0000, E820_ACPI),
                    (0x10_0000, 0xc000_0000 - 0x10_0000, E820_RAM),
                    (0x1_0000_0000, GIB, E820_RAM),
                ]
            );
            let hdr = params.hdr;
            assert_eq!({ hdr.ramdisk_image }, 0);
            assert_eq!({ hdr.ramdisk_size }, 0);
            assert_eq!({ params.acpi_rsdp_addr }, 0);
            let mut nul = [0xaau8; 1];
            mem.read_slice(&mut nul, GuestAddress(layout::CMDLINE))
                .unwrap();
            assert_eq!(nul, [0]);
        }

        #[test]
        fn initrd_above_4_gib_uses_ext_fields() {
            let mem = guest_memory(256 * MIB);
            let kernel = loaded_kernel(&mem, &header());
            let initrd = GuestRange::new(0x1_2345_6000, 0x1_0000_0010);
            write_boot_params(&mem, &platform(256 * MIB, "", Some(initrd)), &kernel, 0).unwrap();
            let params = read_zero_page(&mem);
            let hdr = params.hdr;
            assert_eq!({ hdr.ramdisk_image }, 0x2345_6000);
            assert_eq!({ params.ext_ramdisk_image }, 1);
            assert_eq!({ hdr.ramdisk_size }, 0x10);
            assert_eq!({ params.ext_ramdisk_size }, 1);
        }

        #[test]
        fn cmdline_is_bounded() {
            let mem = guest_memory(64 * MIB);
            let hdr = setup_header {
                cmdline_size: 16,
                ..header()
            };
            let kernel = loaded_kernel(&mem, &hdr);

            let fits = "0123456789abcdef";
            write_boot_params(&mem, &platform(64 * MIB, fits, None), &kernel, 0).unwrap();
            let mut back = [0xaau8; 17];
            mem.read_slice(&mut back, GuestAddress(layout::CMDLINE))
                .unwrap();
            assert_eq!(&back[..16], fits.as_bytes());
            assert_eq!(back[16], 0);

            let long = "0123456789abcdefg";
            let err =
                write_boot_params(&mem, &platform(64 * MIB, long, None), &kernel, 0).unwrap_err();
            assert!(
                matches!(
                    err,
                    BootError::Cmdline(LayoutError::CmdlineTooLong { len: 17, max: 16 })
                ),
                "{err}"
            );

            // Within the 16 bytes, so the NUL itself is the problem.
            let nul = "root=/vda\0sh";
            let err =
                write_boot_params(&mem, &platform(64 * MIB, nul, None), &kernel, 0).unwrap_err();
            assert!(matches!(err, BootError::Cmdline(LayoutError::CmdlineNul)));

            // The layout's buffer bounds a kernel that claims more.
            let hdr = setup_header {
                cmdline_size: u32::MAX,
                ..header()
            };
            let kernel = loaded_kernel(&mem, &hdr);
            let huge = "x".repeat(layout::CMDLINE_MAX as usize);
            let err =
                write_boot_params(&mem, &platform(64 * MIB, &huge, None), &kernel, 0).unwrap_err();
            assert!(matches!(
                err,
                BootError::Cmdline(LayoutError::CmdlineTooLong { max, .. })
                    if max == layout::CMDLINE_MAX - 1
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acpi::testutil::x86_platform;

    pub(super) const MIB: u64 = 1 << 20;
    pub(super) const HIGH: u64 = layout::HIGH_RAM_START;

    pub(super) fn platform(
        memory_size: u64,
        cmdline: &str,
        initrd: Option<GuestRange>,
    ) -> Platform {
        Platform {
            memory: layout::ram_regions(memory_size),
            cmdline: cmdline.to_string(),
            initrd,
            ..x86_platform(1)
        }
    }

    #[test]
    fn e820_rejects_overlapping_memory() {
        let mut p = platform(256 * MIB, "", None);
        p.memory = vec![
            GuestRange::new(0, 256 * MIB),
            GuestRange::new(128 * MIB, MIB),
        ];
        let err = e820_map(&p).unwrap_err();
        assert!(matches!(err, BootError::E820Overlap { .. }), "{err}");
        assert!(err.to_string().contains("0x8000000"), "{err}");
    }

    #[test]
    fn e820_rejects_too_many_regions() {
        let mut p = platform(256 * MIB, "", None);
        p.memory = (0..200u64)
            .map(|i| GuestRange::new(HIGH + i * 2 * MIB, MIB))
            .collect();
        assert!(matches!(
            e820_map(&p),
            Err(BootError::TooManyE820Entries(202))
        ));
    }
}
