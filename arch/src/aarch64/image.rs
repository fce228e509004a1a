//! The arm64 Linux `Image` (raw or gzip-compressed) and the placement of the boot blobs around it,
//! per Linux `Documentation/arch/arm64/booting.rst`.
//!
//! Inspecting and loading an Image use linux-loader's header type and PE loader, which exist only
//! on arm64 (and riscv64) hosts: they are gated on the host, as a kernel is only ever loaded for
//! the host's own architecture. Placing the kernel, device tree, firmware tables and initrd is part
//! of the plan and builds everywhere.

use std::io;

use thiserror::Error;

use crate::boot::{BootLayout, LayoutError};
use crate::platform::GuestRange;

#[cfg(target_arch = "aarch64")]
pub use pe::{Image, inspect};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// The kernel goes `text_offset` bytes above a base aligned to this (booting.rst).
pub const KERNEL_BASE_ALIGN: u64 = 2 * MIB;
/// The largest device tree the kernel accepts (booting.rst; also its 8-byte alignment holds
/// for any 2 MiB-aligned base).
pub const FDT_MAX_SIZE: u64 = 2 * MIB;
/// The region below the device tree kept for ACPI tables and the EFI system table and memory map.
pub const FIRMWARE_TABLES_SIZE: u64 = 2 * MIB;
/// The most a gzip kernel may decompress to, so a hostile file cannot run on without end.
pub const MAX_DECOMPRESSED_SIZE: u64 = 128 * MIB;
/// The initrd is aligned to the largest arm64 page size, so it is page-aligned whatever granule
/// the kernel was built with.
pub const INITRD_ALIGN: u64 = 64 * KIB;
/// The arm64 kernel's command line buffer (`COMMAND_LINE_SIZE`), counting the terminating NUL.
pub const CMDLINE_CAPACITY: usize = 2048;
/// The initrd and the kernel must both lie in one 1 GiB-aligned window of at most 32 GiB
/// (booting.rst), or the kernel's linear map may not reach the initrd.
const INITRD_WINDOW_ALIGN: u64 = GIB;
const INITRD_WINDOW_SIZE: u64 = 32 * GIB;

/// "ARM\x64", little-endian.
const IMAGE_MAGIC: u32 = 0x644d_5241;
const HEADER_SIZE: usize = 64;

/// Why a kernel file is no arm64 Image this VMM boots.
#[derive(Debug, Error)]
pub enum ImageError {
    #[error("cannot read the kernel file")]
    Read(#[source] io::Error),
    #[error("cannot decompress the gzip kernel")]
    Decompress(#[source] io::Error),
    #[error("kernel Image header truncated: {0} of {HEADER_SIZE} bytes")]
    TruncatedHeader(usize),
    #[error("bad arm64 Image magic {0:#010x} (expected {IMAGE_MAGIC:#010x}, \"ARM\\x64\")")]
    BadMagic(u32),
    #[error("kernel Image is big-endian; only little-endian guests are supported")]
    BigEndian,
    #[error("kernel Image image_size is 0 (a pre-3.17 kernel): its memory footprint is unknown")]
    UnknownImageSize,
    #[error("kernel Image image_size {0:#x} is smaller than its own {HEADER_SIZE}-byte header")]
    ImageSizeBelowHeader(u64),
    #[error("kernel Image file is longer than its header's image_size {0:#x}")]
    FileLongerThanImageSize(u64),
    #[error("gzip kernel decompresses to more than {MAX_DECOMPRESSED_SIZE:#x} bytes")]
    DecompressedTooLarge,
    #[error("kernel Image changed on disk after it was checked")]
    Changed,
    #[error("cannot load the kernel into guest memory at {0:#x}")]
    Load(u64, #[source] linux_loader::loader::Error),
}

/// What placing an Image needs of its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageFootprint {
    /// How far above its 2 MiB-aligned base the Image goes.
    pub text_offset: u64,
    /// The loaded file plus its bss.
    pub image_size: u64,
}

/// Where the kernel goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelLoad {
    /// The first instruction (`code0`), where the boot vCPU's PC starts.
    pub entry: u64,
    /// The kernel's whole footprint: the loaded file plus its bss, `image_size` bytes.
    pub range: GuestRange,
}

/// The Image `text_offset` above the first 2 MiB-aligned address of `ram` (booting.rst asks for a
/// base as low in RAM as possible). linux-loader takes the base from the VMM.
pub fn kernel_placement(
    footprint: &ImageFootprint,
    ram: GuestRange,
) -> Result<KernelLoad, LayoutError> {
    let ram_end = ram_end(ram)?;
    let base = ram
        .base
        .checked_add(KERNEL_BASE_ALIGN - 1)
        .map(|a| align_down(a, KERNEL_BASE_ALIGN));
    let fits = base.and_then(|base| {
        let load = base.checked_add(footprint.text_offset)?;
        let end = load.checked_add(footprint.image_size)?;
        (end <= ram_end).then_some(KernelLoad {
            entry: load,
            range: GuestRange::new(load, footprint.image_size),
        })
    });
    fits.ok_or(LayoutError::ImageLargerThanRam {
        base: base.unwrap_or(ram.base),
        text_offset: footprint.text_offset,
        size: footprint.image_size,
        ram_base: ram.base,
        ram_end,
    })
}

/// Where the device tree and the firmware tables go in `ram`, whatever the kernel: (fdt,
/// firmware tables).
fn firmware_layout(ram: GuestRange) -> Result<(GuestRange, GuestRange), LayoutError> {
    let ram_end = ram_end(ram)?;
    let no_room = |what, size| LayoutError::NoRoom {
        what,
        size,
        ram_base: ram.base,
        ram_end,
    };

    let fdt_base = ram_end
        .checked_sub(FDT_MAX_SIZE)
        .map(|top| align_down(top, FDT_MAX_SIZE))
        .filter(|&base| base >= ram.base)
        .ok_or_else(|| no_room("device tree", FDT_MAX_SIZE))?;
    let fdt = GuestRange::new(fdt_base, FDT_MAX_SIZE);

    let firmware_tables = fdt_base
        .checked_sub(FIRMWARE_TABLES_SIZE)
        .filter(|&base| base >= ram.base)
        .map(|base| GuestRange::new(base, FIRMWARE_TABLES_SIZE))
        .ok_or_else(|| no_room("firmware tables", FIRMWARE_TABLES_SIZE))?;
    Ok((fdt, firmware_tables))
}

/// Places the device tree, the firmware tables and the initrd top-down at the end of `ram`, clear
/// of the kernel. Hand-written: linux-loader leaves placement to the VMM.
pub fn boot_layout(
    ram: GuestRange,
    kernel: &KernelLoad,
    initrd_size: Option<u64>,
) -> Result<BootLayout, LayoutError> {
    let ram_end = ram_end(ram)?;
    let no_room = |what, size| LayoutError::NoRoom {
        what,
        size,
        ram_base: ram.base,
        ram_end,
    };
    let (fdt, firmware_tables) = firmware_layout(ram)?;
    clear_of_kernel("device tree", fdt, kernel)?;
    clear_of_kernel("firmware tables", firmware_tables, kernel)?;

    let initrd = match initrd_size {
        None => None,
        Some(0) => return Err(LayoutError::EmptyInitrd),
        Some(size) => {
            let window_error = || LayoutError::InitrdWindow {
                kernel_base: kernel.range.base,
                kernel_end: kernel.range.end(),
            };
            let window_start = align_down(kernel.range.base, INITRD_WINDOW_ALIGN);
            let window_end = window_start
                .checked_add(INITRD_WINDOW_SIZE)
                .ok_or_else(window_error)?;
            if kernel.range.end() > window_end {
                return Err(window_error());
            }
            // Below the firmware tables, unless RAM reaches past the kernel's window.
            let top = firmware_tables.base.min(window_end);
            let base = top
                .checked_sub(size)
                .map(|base| align_down(base, INITRD_ALIGN))
                .filter(|&base| base >= ram.base)
                .ok_or_else(|| no_room("initrd", size))?;
            let initrd = GuestRange::new(base, size);
            clear_of_kernel("initrd", initrd, kernel)?;
            if base < window_start {
                return Err(window_error());
            }
            Some(initrd)
        }
    };

    Ok(BootLayout {
        kernel: kernel.range,
        entry: kernel.entry,
        initrd,
        firmware_tables,
        device_tree: Some(fdt),
    })
}

fn clear_of_kernel(
    what: &'static str,
    range: GuestRange,
    kernel: &KernelLoad,
) -> Result<(), LayoutError> {
    if range.overlaps(&kernel.range) {
        return Err(LayoutError::OverlapsKernel {
            what,
            base: range.base,
            end: range.end(),
            kernel_base: kernel.range.base,
            kernel_end: kernel.range.end(),
        });
    }
    Ok(())
}

fn ram_end(ram: GuestRange) -> Result<u64, LayoutError> {
    ram.base.checked_add(ram.size).ok_or(LayoutError::RamWraps {
        base: ram.base,
        size: ram.size,
    })
}

/// `align` is a power of two.
const fn align_down(addr: u64, align: u64) -> u64 {
    addr & !(align - 1)
}

/// Inspecting and loading the Image: header checks and gzip are ours, the copy is linux-loader's.
#[cfg(target_arch = "aarch64")]
mod pe {
    use std::io::{self, Cursor, Read, Seek, SeekFrom};

    use flate2::read::GzDecoder;
    use linux_loader::loader::{KernelLoader, PE, arm64_image_header};
    use vm_memory::{ByteValued, GuestAddress, GuestMemoryBackend, ReadVolatile};

    use super::*;

    const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
    const _: () = assert!(size_of::<arm64_image_header>() == HEADER_SIZE);

    /// The `flags` field of the Image header (booting.rst).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct ImageFlags(u64);

    impl ImageFlags {
        /// Bit 0: kernel endianness, 1 = big-endian.
        fn big_endian(self) -> bool {
            self.0 & 1 != 0
        }

        /// Bits 1-2: the kernel's page size in bytes, if the kernel says.
        fn page_size(self) -> Option<u64> {
            match (self.0 >> 1) & 0b11 {
                1 => Some(4 * KIB),
                2 => Some(16 * KIB),
                3 => Some(64 * KIB),
                _ => None,
            }
        }
    }

    /// A checked Image, not yet in guest memory.
    #[derive(Debug)]
    pub struct Image {
        header: arm64_image_header,
        gzip: bool,
        /// A gzip kernel's Image as inspection decompressed it, until the first load takes it:
        /// the VMM does not hold a kernel's worth of memory for the guest's lifetime, and a
        /// restarted guest decompresses it again.
        decompressed: std::sync::Mutex<Option<Vec<u8>>>,
    }

    /// Reads and checks the raw or gzip-compressed Image in `kernel` without touching guest
    /// memory: its header, and that the file is no longer than the footprint it claims.
    pub fn inspect(kernel: &mut (impl Read + Seek)) -> Result<Image, ImageError> {
        let head = read_head(kernel).map_err(ImageError::Read)?;
        // A raw Image's code0 may happen to start with the gzip magic; its own magic decides first.
        let raw = head.len() == HEADER_SIZE && head[56..60] == IMAGE_MAGIC.to_le_bytes();
        if !raw && head.starts_with(&GZIP_MAGIC) {
            let image = decompress(kernel)?;
            let header = check(&mut Cursor::new(&image))?;
            Ok(Image {
                header,
                gzip: true,
                decompressed: std::sync::Mutex::new(Some(image)),
            })
        } else {
            let header = check(kernel)?;
            Ok(Image {
                header,
                gzip: false,
                decompressed: std::sync::Mutex::new(None),
            })
        }
    }

    impl Image {
        pub fn footprint(&self) -> ImageFootprint {
            ImageFootprint {
                text_offset: self.header.text_offset,
                image_size: self.header.image_size,
            }
        }

        /// Has linux-loader copy the Image to `kernel`, the placement of its
        /// [`footprint`](Self::footprint) in `mem`. `file` is the inspected file; it is read
        /// (and a gzip one decompressed) again unless inspection's Image is still at hand.
        pub fn load<M, F>(
            &self,
            mem: &M,
            kernel: GuestRange,
            file: &mut F,
        ) -> Result<(), ImageError>
        where
            M: GuestMemoryBackend,
            F: Read + ReadVolatile + Seek,
        {
            let base = kernel.base.saturating_sub(self.header.text_offset);
            let kept = self
                .decompressed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            let loaded = match (kept, self.gzip) {
                (Some(image), _) => {
                    PE::load(mem, Some(GuestAddress(base)), &mut Cursor::new(image), None)
                }
                (None, true) => {
                    let mut image = Cursor::new(decompress(file)?);
                    self.same_header(check(&mut image)?)?;
                    PE::load(mem, Some(GuestAddress(base)), &mut image, None)
                }
                (None, false) => {
                    // The file may have changed since it was inspected.
                    self.same_header(check(file)?)?;
                    PE::load(mem, Some(GuestAddress(base)), file, None)
                }
            }
            .map_err(|e| ImageError::Load(kernel.base, e))?;
            log::debug!(
                "arm64 Image: code0 {:#010x} code1 {:#010x}, loaded at {:#x}, image_size {:#x}, \
                 page size {:?}",
                self.header.code0,
                self.header.code1,
                loaded.kernel_load.0,
                self.header.image_size,
                ImageFlags(self.header.flags).page_size(),
            );
            Ok(())
        }
    }

    impl Image {
        /// The plan placed the Image inspection saw: a file changed since then is refused.
        fn same_header(&self, header: arm64_image_header) -> Result<(), ImageError> {
            if header.as_slice() == self.header.as_slice() {
                Ok(())
            } else {
                Err(ImageError::Changed)
            }
        }
    }

    /// Decompresses the whole file, stopping at [`MAX_DECOMPRESSED_SIZE`]. Ours: linux-loader
    /// loads only raw Images.
    fn decompress(file: &mut (impl Read + Seek)) -> Result<Vec<u8>, ImageError> {
        file.seek(SeekFrom::Start(0)).map_err(ImageError::Read)?;
        let mut image = Vec::new();
        GzDecoder::new(file)
            .take(MAX_DECOMPRESSED_SIZE + 1)
            .read_to_end(&mut image)
            .map_err(ImageError::Decompress)?;
        if image.len() as u64 > MAX_DECOMPRESSED_SIZE {
            return Err(ImageError::DecompressedTooLarge);
        }
        Ok(image)
    }

    /// The raw Image's header, after the checks linux-loader does not make (it checks only the
    /// magic): the header's fields, and the file no longer than `image_size`.
    fn check(image: &mut (impl Read + Seek)) -> Result<arm64_image_header, ImageError> {
        let header = parse_header(&read_head(image).map_err(ImageError::Read)?)?;
        let len = image.seek(SeekFrom::End(0)).map_err(ImageError::Read)?;
        if len > header.image_size {
            return Err(ImageError::FileLongerThanImageSize(header.image_size));
        }
        Ok(header)
    }

    /// Up to the first [`HEADER_SIZE`] bytes of `reader`, read from its start.
    fn read_head(reader: &mut (impl Read + Seek)) -> io::Result<Vec<u8>> {
        reader.seek(SeekFrom::Start(0))?;
        let mut head = Vec::with_capacity(HEADER_SIZE);
        reader.take(HEADER_SIZE as u64).read_to_end(&mut head)?;
        Ok(head)
    }

    /// The header with its fields in host order, refused where linux-loader would accept it: a
    /// big-endian kernel, or no `image_size` (the crate then guesses a `text_offset`).
    fn parse_header(bytes: &[u8]) -> Result<arm64_image_header, ImageError> {
        let mut header = arm64_image_header::default();
        if bytes.len() < HEADER_SIZE {
            return Err(ImageError::TruncatedHeader(bytes.len()));
        }
        header.as_mut_slice().copy_from_slice(&bytes[..HEADER_SIZE]);
        let magic = u32::from_le(header.magic);
        if magic != IMAGE_MAGIC {
            return Err(ImageError::BadMagic(magic));
        }
        header.code0 = u32::from_le(header.code0);
        header.code1 = u32::from_le(header.code1);
        header.text_offset = u64::from_le(header.text_offset);
        header.image_size = u64::from_le(header.image_size);
        header.flags = u64::from_le(header.flags);
        if ImageFlags(header.flags).big_endian() {
            return Err(ImageError::BigEndian);
        }
        match header.image_size {
            0 => Err(ImageError::UnknownImageSize),
            n if n < HEADER_SIZE as u64 => Err(ImageError::ImageSizeBelowHeader(n)),
            _ => Ok(header),
        }
    }

    #[cfg(test)]
    mod tests {
        use std::io::{Cursor, Write};

        use flate2::Compression;
        use flate2::write::GzEncoder;
        use vm_memory::{Bytes, GuestMemoryMmap};

        use super::*;

        const RAM_BASE: u64 = 0x4000_0000;

        fn memory(ram: GuestRange) -> GuestMemoryMmap<()> {
            GuestMemoryMmap::from_ranges(&[(GuestAddress(ram.base), ram.size as usize)])
                .expect("test guest memory")
        }

        fn header(text_offset: u64, image_size: u64, flags: u64) -> Vec<u8> {
            let mut h = vec![0u8; HEADER_SIZE];
            // code0: `b #0x40` style branch, code1: 0; any bytes do, the loader does not run them.
            h[0..4].copy_from_slice(&0x1400_0010u32.to_le_bytes());
            h[8..16].copy_from_slice(&text_offset.to_le_bytes());
            h[16..24].copy_from_slice(&image_size.to_le_bytes());
            h[24..32].copy_from_slice(&flags.to_le_bytes());
            h[56..60].copy_from_slice(b"ARM\x64");
            h
        }

        /// A 64-byte header followed by `payload_len` bytes of a recognisable pattern.
        fn image(text_offset: u64, image_size: u64, payload_len: usize) -> Vec<u8> {
            let mut img = header(text_offset, image_size, 0b1010);
            img.extend((0..payload_len).map(|i| (i * 7 + 3) as u8));
            img
        }

        fn gzip(bytes: &[u8]) -> Vec<u8> {
            let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
            enc.write_all(bytes).unwrap();
            enc.finish().unwrap()
        }

        /// Inspects `file`, places it at the start of `ram` and loads it into `mem`.
        fn load_kernel<F>(
            mem: &GuestMemoryMmap<()>,
            ram: GuestRange,
            file: &mut F,
        ) -> Result<KernelLoad, ImageError>
        where
            F: Read + ReadVolatile + Seek,
        {
            let image = inspect(file)?;
            let placed = kernel_placement(&image.footprint(), ram).expect("the test Image fits");
            image.load(mem, placed.range, file)?;
            Ok(placed)
        }

        fn guest_bytes(mem: &GuestMemoryMmap<()>, addr: u64, len: usize) -> Vec<u8> {
            let mut buf = vec![0u8; len];
            mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
            buf
        }

        #[test]
        fn header_parses_fields() {
            let mut bytes = [0u8; HEADER_SIZE];
            bytes.copy_from_slice(&header(0x8_0000, 0x1234_5000, 0b1010));
            let h = parse_header(&bytes).unwrap();
            assert_eq!(h.code0, 0x1400_0010);
            assert_eq!(h.code1, 0);
            assert_eq!(h.text_offset, 0x8_0000);
            assert_eq!(h.image_size, 0x1234_5000);
            assert!(!ImageFlags(h.flags).big_endian());
            assert_eq!(ImageFlags(h.flags).page_size(), Some(4 * KIB));
            assert_eq!(ImageFlags(0b110).page_size(), Some(64 * KIB));
            assert_eq!(ImageFlags(0).page_size(), None);
        }

        #[test]
        fn raw_image_lands_at_ram_base_plus_text_offset() {
            let ram = GuestRange::new(RAM_BASE, 64 * MIB);
            let mem = memory(ram);
            let img = image(0x8_0000, 4 * MIB, MIB as usize + 4321);
            let load = load_kernel(&mem, ram, &mut Cursor::new(&img)).unwrap();
            assert_eq!(load.entry, RAM_BASE + 0x8_0000);
            assert_eq!(load.range, GuestRange::new(RAM_BASE + 0x8_0000, 4 * MIB));
            assert_eq!(guest_bytes(&mem, load.entry, img.len()), img);
            // Nothing spilled before the load address or after the file.
            assert_eq!(guest_bytes(&mem, load.entry - 16, 16), vec![0; 16]);
            assert_eq!(
                guest_bytes(&mem, load.entry + img.len() as u64, 16),
                vec![0; 16]
            );
        }

        #[test]
        fn unaligned_ram_start_rounds_up_to_2mib() {
            let ram = GuestRange::new(RAM_BASE + 0x1000, 16 * MIB);
            let mem = memory(ram);
            let img = image(0, MIB, 100);
            let load = load_kernel(&mem, ram, &mut Cursor::new(&img)).unwrap();
            assert_eq!(load.entry, RAM_BASE + 2 * MIB);
            assert_eq!(guest_bytes(&mem, load.entry, img.len()), img);
        }

        #[test]
        fn gzip_image_is_decompressed() {
            let ram = GuestRange::new(RAM_BASE, 32 * MIB);
            let mem = memory(ram);
            let img = image(0, 8 * MIB, 3 * MIB as usize + 17);
            let load = load_kernel(&mem, ram, &mut Cursor::new(gzip(&img))).unwrap();
            assert_eq!(load.entry, RAM_BASE);
            assert_eq!(load.range, GuestRange::new(RAM_BASE, 8 * MIB));
            assert_eq!(guest_bytes(&mem, RAM_BASE, img.len()), img);
        }

        /// A restarted guest loads the kernel again: a gzip one is decompressed again (inspection's
        /// copy went to the first load), and a file that changed since inspection is refused.
        #[test]
        fn images_load_again_and_refuse_a_changed_file() {
            let ram = GuestRange::new(RAM_BASE, 32 * MIB);
            let img = image(0, 8 * MIB, MIB as usize + 17);
            for bytes in [gzip(&img), img.clone()] {
                let mut file = Cursor::new(bytes);
                let image = inspect(&mut file).unwrap();
                let placed = kernel_placement(&image.footprint(), ram).unwrap();
                for _ in 0..2 {
                    let mem = memory(ram);
                    image.load(&mem, placed.range, &mut file).unwrap();
                    assert_eq!(guest_bytes(&mem, RAM_BASE, img.len()), img);
                }
                let other = image_with_size(&img, 9 * MIB);
                let mut changed = Cursor::new(if image.gzip { gzip(&other) } else { other });
                assert!(matches!(
                    image.load(&memory(ram), placed.range, &mut changed),
                    Err(ImageError::Changed)
                ));
            }
        }

        fn image_with_size(img: &[u8], image_size: u64) -> Vec<u8> {
            let mut other = img.to_vec();
            other[16..24].copy_from_slice(&image_size.to_le_bytes());
            other
        }

        #[test]
        fn raw_image_starting_like_gzip_is_raw() {
            let ram = GuestRange::new(RAM_BASE, 8 * MIB);
            let mem = memory(ram);
            let mut img = image(0, MIB, 100);
            // `b` with imm26 0x8b1f encodes as 1f 8b 00 14.
            img[0..4].copy_from_slice(&[0x1f, 0x8b, 0x00, 0x14]);
            let load = load_kernel(&mem, ram, &mut Cursor::new(&img)).unwrap();
            assert_eq!(guest_bytes(&mem, load.entry, img.len()), img);
        }

        #[test]
        fn reader_position_does_not_matter() {
            let ram = GuestRange::new(RAM_BASE, 8 * MIB);
            let mem = memory(ram);
            let img = image(0, MIB, 10);
            let mut file = Cursor::new(&img);
            file.set_position(30);
            let load = load_kernel(&mem, ram, &mut file).unwrap();
            assert_eq!(guest_bytes(&mem, load.entry, img.len()), img);
        }

        #[test]
        fn bad_magic_is_named() {
            let ram = GuestRange::new(RAM_BASE, 8 * MIB);
            let mem = memory(ram);
            let mut img = image(0, MIB, 10);
            img[56..60].copy_from_slice(b"RISC");
            let err = load_kernel(&mem, ram, &mut Cursor::new(&img)).unwrap_err();
            assert!(matches!(err, ImageError::BadMagic(0x4353_4952)), "{err:?}");
            // The same through gzip.
            let err = load_kernel(&mem, ram, &mut Cursor::new(gzip(&img))).unwrap_err();
            assert!(matches!(err, ImageError::BadMagic(_)), "{err:?}");
            assert!(err.to_string().contains("0x43534952"), "{err}");
        }

        #[test]
        fn truncated_files() {
            let ram = GuestRange::new(RAM_BASE, 8 * MIB);
            let mem = memory(ram);
            let img = image(0, MIB, 0);
            for len in [0, 1, 2, 40, 63] {
                let err = load_kernel(&mem, ram, &mut Cursor::new(&img[..len])).unwrap_err();
                assert!(
                    matches!(err, ImageError::TruncatedHeader(n) if n == len),
                    "{err:?}"
                );
            }
            let err = load_kernel(&mem, ram, &mut Cursor::new(gzip(&img[..40]))).unwrap_err();
            assert!(matches!(err, ImageError::TruncatedHeader(40)), "{err:?}");
            // A header alone is a complete (if useless) Image.
            assert!(load_kernel(&mem, ram, &mut Cursor::new(&img)).is_ok());
        }

        #[test]
        fn truncated_gzip_stream_is_a_decompression_error() {
            let ram = GuestRange::new(RAM_BASE, 8 * MIB);
            let mem = memory(ram);
            let gz = gzip(&image(0, MIB, 100_000));
            let err = load_kernel(&mem, ram, &mut Cursor::new(&gz[..gz.len() / 2])).unwrap_err();
            assert!(matches!(err, ImageError::Decompress(_)), "{err:?}");
        }

        /// A gzip Image that decompresses to exactly `len` bytes: a header, then zeros.
        fn zeros_gz(image_size: u64, len: u64) -> Vec<u8> {
            let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
            enc.write_all(&header(0, image_size, 0)).unwrap();
            let zeros = vec![0u8; MIB as usize];
            let mut left = len - HEADER_SIZE as u64;
            while left > 0 {
                let n = left.min(MIB);
                enc.write_all(&zeros[..n as usize]).unwrap();
                left -= n;
            }
            enc.finish().unwrap()
        }

        #[test]
        fn zip_bomb_stops_at_the_cap() {
            // The header claims more than the cap and RAM holds it: only the cap stops the stream.
            let ram = GuestRange::new(RAM_BASE, 256 * MIB);
            let mem = memory(ram);
            let bomb = zeros_gz(200 * MIB, MAX_DECOMPRESSED_SIZE + 1);
            assert!(bomb.len() < MIB as usize);
            let err = load_kernel(&mem, ram, &mut Cursor::new(bomb)).unwrap_err();
            assert!(matches!(err, ImageError::DecompressedTooLarge), "{err:?}");
            // Exactly the cap is still a kernel.
            let at_cap = zeros_gz(200 * MIB, MAX_DECOMPRESSED_SIZE);
            let load = load_kernel(&mem, ram, &mut Cursor::new(at_cap)).unwrap();
            assert_eq!(load.range, GuestRange::new(RAM_BASE, 200 * MIB));
        }

        #[test]
        fn file_longer_than_image_size() {
            let ram = GuestRange::new(RAM_BASE, 8 * MIB);
            let mem = memory(ram);
            let err = load_kernel(&mem, ram, &mut Cursor::new(image(0, 128, 65))).unwrap_err();
            assert!(
                matches!(err, ImageError::FileLongerThanImageSize(128)),
                "{err:?}"
            );
            assert!(load_kernel(&mem, ram, &mut Cursor::new(image(0, 128, 64))).is_ok());
        }

        #[test]
        fn header_field_checks() {
            let ram = GuestRange::new(RAM_BASE, 8 * MIB);
            let mem = memory(ram);
            let be = header(0, MIB, 1);
            let err = load_kernel(&mem, ram, &mut Cursor::new(be)).unwrap_err();
            assert!(matches!(err, ImageError::BigEndian), "{err:?}");
            let err = load_kernel(&mem, ram, &mut Cursor::new(header(0x8_0000, 0, 0))).unwrap_err();
            assert!(matches!(err, ImageError::UnknownImageSize), "{err:?}");
            let err = load_kernel(&mem, ram, &mut Cursor::new(header(0, 63, 0))).unwrap_err();
            assert!(
                matches!(err, ImageError::ImageSizeBelowHeader(63)),
                "{err:?}"
            );
        }

        #[test]
        fn ram_not_backed_by_memory() {
            let mem = memory(GuestRange::new(RAM_BASE, 8 * MIB));
            let ram = GuestRange::new(RAM_BASE + 16 * MIB, 8 * MIB);
            let err = load_kernel(&mem, ram, &mut Cursor::new(image(0, MIB, 10))).unwrap_err();
            assert!(
                matches!(err, ImageError::Load(addr, _) if addr == RAM_BASE + 16 * MIB),
                "{err:?}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAM_BASE: u64 = 0x4000_0000;

    fn kernel_at(base: u64, size: u64) -> KernelLoad {
        KernelLoad {
            entry: base,
            range: GuestRange::new(base, size),
        }
    }

    fn footprint(text_offset: u64, image_size: u64) -> ImageFootprint {
        ImageFootprint {
            text_offset,
            image_size,
        }
    }

    #[test]
    fn kernel_at_the_first_2mib_boundary_of_ram() {
        let ram = GuestRange::new(RAM_BASE + 0x1000, 16 * MIB);
        let placed = kernel_placement(&footprint(0x8_0000, MIB), ram).unwrap();
        assert_eq!(placed.entry, RAM_BASE + 2 * MIB + 0x8_0000);
        assert_eq!(placed.range, GuestRange::new(placed.entry, MIB));
    }

    #[test]
    fn image_larger_than_ram() {
        let ram = GuestRange::new(RAM_BASE, 8 * MIB);
        let err = kernel_placement(&footprint(0, 8 * MIB + 1), ram).unwrap_err();
        assert!(
            matches!(err, LayoutError::ImageLargerThanRam { base: RAM_BASE, size, .. } if size == 8 * MIB + 1),
            "{err:?}"
        );
        // text_offset counts too.
        let err = kernel_placement(&footprint(MIB, 7 * MIB + 1), ram).unwrap_err();
        assert!(
            matches!(err, LayoutError::ImageLargerThanRam { .. }),
            "{err:?}"
        );
        // Exactly fitting is fine.
        assert!(kernel_placement(&footprint(MIB, 7 * MIB), ram).is_ok());
        // A hostile text_offset cannot wrap around.
        let err = kernel_placement(&footprint(u64::MAX - 10, MIB), ram).unwrap_err();
        assert!(
            matches!(err, LayoutError::ImageLargerThanRam { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn layout_top_down() {
        let ram = GuestRange::new(RAM_BASE, GIB);
        let end = RAM_BASE + GIB;
        let kernel = kernel_at(RAM_BASE, 40 * MIB);
        let initrd_size = 10 * MIB + 123;
        let layout = boot_layout(ram, &kernel, Some(initrd_size)).unwrap();
        assert_eq!(
            layout.device_tree.unwrap(),
            GuestRange::new(end - 2 * MIB, 2 * MIB)
        );
        assert_eq!(
            layout.firmware_tables,
            GuestRange::new(end - 4 * MIB, 2 * MIB)
        );
        let initrd = layout.initrd.unwrap();
        assert_eq!(initrd.size, initrd_size);
        assert!(initrd.base.is_multiple_of(INITRD_ALIGN));
        assert!(initrd.end() <= layout.firmware_tables.base);
        assert!(layout.firmware_tables.base - initrd.end() < INITRD_ALIGN);
        assert_eq!(
            initrd.base,
            align_down(end - 4 * MIB - initrd_size, 64 * KIB)
        );

        let layout = boot_layout(ram, &kernel, None).unwrap();
        assert_eq!(layout.initrd, None);
        assert_eq!(layout.device_tree.unwrap().base, end - 2 * MIB);
    }

    #[test]
    fn layout_unaligned_ram_end() {
        let ram = GuestRange::new(RAM_BASE, 64 * MIB + 0x1000);
        let layout = boot_layout(ram, &kernel_at(RAM_BASE, 8 * MIB), None).unwrap();
        assert_eq!(
            layout.device_tree.unwrap(),
            GuestRange::new(RAM_BASE + 62 * MIB, 2 * MIB)
        );
        assert!(layout.device_tree.unwrap().base.is_multiple_of(8));
        assert!(layout.device_tree.unwrap().end() <= ram.end());
    }

    #[test]
    fn layout_initrd_too_big() {
        let ram = GuestRange::new(RAM_BASE, 64 * MIB);
        let kernel = kernel_at(RAM_BASE, 40 * MIB);
        // 20 MiB fits exactly between the kernel and the firmware tables.
        let layout = boot_layout(ram, &kernel, Some(20 * MIB)).unwrap();
        assert_eq!(
            layout.initrd,
            Some(GuestRange::new(RAM_BASE + 40 * MIB, 20 * MIB))
        );
        let err = boot_layout(ram, &kernel, Some(20 * MIB + 1)).unwrap_err();
        assert!(
            matches!(err, LayoutError::OverlapsKernel { what: "initrd", .. }),
            "{err:?}"
        );
        let err = boot_layout(ram, &kernel, Some(64 * MIB)).unwrap_err();
        assert!(
            matches!(err, LayoutError::NoRoom { what: "initrd", .. }),
            "{err:?}"
        );
        let err = boot_layout(ram, &kernel, Some(0)).unwrap_err();
        assert!(matches!(err, LayoutError::EmptyInitrd), "{err:?}");
    }

    #[test]
    fn layout_tiny_ram() {
        let kernel = kernel_at(RAM_BASE, MIB);
        let err = boot_layout(GuestRange::new(RAM_BASE, MIB), &kernel, None).unwrap_err();
        assert!(
            matches!(
                err,
                LayoutError::NoRoom {
                    what: "device tree",
                    ..
                }
            ),
            "{err:?}"
        );
        let err = boot_layout(GuestRange::new(RAM_BASE, 3 * MIB), &kernel, None).unwrap_err();
        assert!(
            matches!(
                err,
                LayoutError::NoRoom {
                    what: "firmware tables",
                    ..
                }
            ),
            "{err:?}"
        );
        // Room for both, but the kernel is in the way.
        let err = boot_layout(GuestRange::new(RAM_BASE, 4 * MIB), &kernel, None).unwrap_err();
        assert!(
            matches!(
                err,
                LayoutError::OverlapsKernel {
                    what: "firmware tables",
                    ..
                }
            ),
            "{err:?}"
        );
        let err = boot_layout(
            GuestRange::new(RAM_BASE, 4 * MIB),
            &kernel_at(RAM_BASE, 3 * MIB),
            None,
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                LayoutError::OverlapsKernel {
                    what: "device tree",
                    ..
                }
            ),
            "{err:?}"
        );
        let err = boot_layout(GuestRange::new(u64::MAX - MIB, 2 * MIB), &kernel, None).unwrap_err();
        assert!(matches!(err, LayoutError::RamWraps { .. }), "{err:?}");
    }

    #[test]
    fn layout_initrd_stays_in_the_kernel_window() {
        // 64 GiB of RAM: the top is beyond the 32 GiB window starting at the kernel's 1 GiB.
        let ram = GuestRange::new(RAM_BASE, 64 * GIB);
        let kernel = kernel_at(RAM_BASE, 40 * MIB);
        let layout = boot_layout(ram, &kernel, Some(100 * MIB)).unwrap();
        let initrd = layout.initrd.unwrap();
        assert_eq!(initrd.end(), RAM_BASE + 32 * GIB);
        assert_eq!(layout.device_tree.unwrap().end(), RAM_BASE + 64 * GIB);
        // A kernel that does not itself fit a window cannot get an initrd.
        let huge = kernel_at(RAM_BASE, 33 * GIB);
        let err = boot_layout(ram, &huge, Some(MIB)).unwrap_err();
        assert!(matches!(err, LayoutError::InitrdWindow { .. }), "{err:?}");
    }
}
