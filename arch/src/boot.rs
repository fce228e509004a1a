//! The boot layout, planned once from what inspecting the kernel and initramfs learnt, and the one
//! dispatch from a checked platform to the firmware blobs the guest gets: `--dump-platform` and
//! the VM build both encode through [`encode`], so a dump is byte for byte what the guest reads.

use linux_loader::cmdline::{Cmdline, Error as CmdlineError};
use serde::Serialize;
use thiserror::Error;

use crate::aarch64::efi::{self, EfiError};
use crate::aarch64::fdt::{self, FdtError};
use crate::aarch64::image::{self, ImageFootprint};
use crate::acpi::{self, AcpiError};
use crate::platform::{CheckedPlatform, FirmwareInterface, GuestArch, GuestRange, Platform};
use crate::x86_64::boot::{self as x86, BzImageFootprint};

/// What the plan needs of a kernel, from its header; nothing of it is in guest memory yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFootprint {
    Arm64Image(ImageFootprint),
    BzImage(BzImageFootprint),
}

/// What the plan needs of the boot payload, learnt by inspecting it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadFootprint {
    pub kernel: KernelFootprint,
    /// The initramfs's size in bytes, if there is one.
    pub initrd_size: Option<u64>,
}

/// Where the kernel, the initramfs and the firmware blobs go in guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BootLayout {
    /// The kernel's whole footprint: the image and the memory it claims beyond it (bss, or a
    /// bzImage's decompression area). Nothing else is placed here.
    pub kernel: GuestRange,
    /// The boot vCPU's first instruction.
    pub entry: u64,
    /// The initramfs's exact extent; also [`Platform::initrd`].
    pub initrd: Option<GuestRange>,
    /// The ACPI tables (the RSDP at its base) and, on aarch64, the EFI handoff behind them.
    pub firmware_tables: GuestRange,
    /// aarch64: the slot the device tree (full, or the ACPI boot's stub) is written at.
    pub device_tree: Option<GuestRange>,
}

/// Why the payload cannot be placed in the planned guest.
#[derive(Debug, PartialEq, Eq, Error)]
pub enum LayoutError {
    #[error("a {0:?} guest cannot boot this kernel, which is for another architecture")]
    WrongKernel(GuestArch),
    #[error("the guest has no RAM to place the kernel in")]
    NoRam,
    #[error("RAM range {base:#x}+{size:#x} wraps around the address space")]
    RamWraps { base: u64, size: u64 },
    #[error(
        "kernel Image needs {size:#x} bytes at {base:#x} + text_offset {text_offset:#x}, \
         beyond RAM {ram_base:#x}..{ram_end:#x}"
    )]
    ImageLargerThanRam {
        base: u64,
        text_offset: u64,
        size: u64,
        ram_base: u64,
        ram_end: u64,
    },
    #[error("kernel needs guest RAM from {:#x} to {:#x}", .range.base, .range.end())]
    KernelDoesNotFit { range: GuestRange },
    #[error("initrd is empty")]
    EmptyInitrd,
    #[error("RAM {ram_base:#x}..{ram_end:#x} has no room for the {what} ({size:#x} bytes)")]
    NoRoom {
        what: &'static str,
        size: u64,
        ram_base: u64,
        ram_end: u64,
    },
    #[error(
        "the {what} at {base:#x}..{end:#x} would overlap the kernel at {kernel_base:#x}..{kernel_end:#x}"
    )]
    OverlapsKernel {
        what: &'static str,
        base: u64,
        end: u64,
        kernel_base: u64,
        kernel_end: u64,
    },
    #[error(
        "kernel {kernel_base:#x}..{kernel_end:#x} and initrd do not fit one 1 GiB-aligned 32 GiB window"
    )]
    InitrdWindow { kernel_base: u64, kernel_end: u64 },
    #[error("initrd of {size:#x} bytes does not fit between {floor:#x} and {ceiling:#x}")]
    InitrdDoesNotFit { size: u64, floor: u64, ceiling: u64 },
    #[error("kernel command line contains a NUL byte")]
    CmdlineNul,
    #[error("kernel command line is {len} bytes, at most {max} allowed")]
    CmdlineTooLong { len: usize, max: u64 },
    #[error("kernel command line is invalid")]
    Cmdline(#[source] CmdlineError),
}

/// Places the kernel, the initramfs and the firmware blobs in `platform`'s RAM, and checks the
/// command line against what the kernel takes.
pub fn layout(platform: &Platform, payload: &PayloadFootprint) -> Result<BootLayout, LayoutError> {
    let initrd_size = payload.initrd_size;
    match (platform.arch, &payload.kernel) {
        (GuestArch::Aarch64, KernelFootprint::Arm64Image(footprint)) => {
            kernel_cmdline(&platform.cmdline, image::CMDLINE_CAPACITY as u64 - 1)?;
            let ram = *platform.memory.first().ok_or(LayoutError::NoRam)?;
            let placed = image::kernel_placement(footprint, ram)?;
            image::boot_layout(ram, &placed, initrd_size)
        }
        (GuestArch::X86_64, KernelFootprint::BzImage(footprint)) => {
            kernel_cmdline(&platform.cmdline, footprint.cmdline_max())?;
            x86::boot_layout(&platform.memory, footprint, initrd_size)
        }
        (arch, _) => Err(LayoutError::WrongKernel(arch)),
    }
}

/// The command line as linux-loader's `Cmdline`, checked for NUL bytes and against the kernel's
/// buffer of `max` bytes (without the terminating NUL).
pub fn kernel_cmdline(cmdline: &str, max: u64) -> Result<Cmdline, LayoutError> {
    let cmdline_err = |e| match e {
        CmdlineError::InvalidCapacity => LayoutError::CmdlineTooLong {
            len: cmdline.len(),
            max,
        },
        CmdlineError::NullTerminator => LayoutError::CmdlineNul,
        e => LayoutError::Cmdline(e),
    };
    let capacity = usize::try_from(max).map_or(usize::MAX, |m| m.saturating_add(1));
    let built = Cmdline::try_from(cmdline, capacity).map_err(cmdline_err)?;
    built.as_cstring().map_err(cmdline_err)?;
    Ok(built)
}

/// One blob for guest memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestBlob {
    /// What it is, for error messages.
    pub what: &'static str,
    pub address: u64,
    pub bytes: Vec<u8>,
    /// The file `--dump-platform` writes it to; the EFI structures are not dumped.
    pub file: Option<String>,
}

/// Everything the firmware interface puts in guest memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestTables {
    pub blobs: Vec<GuestBlob>,
    /// The ACPI RSDP's address, for x86's zero page.
    pub rsdp: Option<u64>,
}

#[derive(Debug, Error)]
pub enum EncodeError {
    #[error("cannot encode the device tree")]
    Fdt(#[from] FdtError),
    #[error("cannot encode the ACPI tables and the EFI handoff")]
    Efi(#[from] EfiError),
    #[error("cannot encode the ACPI tables")]
    Acpi(#[from] AcpiError),
    #[error("the device tree is {size} bytes, more than the {max} the boot layout reserves")]
    DeviceTreeTooLarge { size: usize, max: u64 },
    #[error("the boot layout reserves no room for the device tree")]
    NoDeviceTreeSlot,
}

/// The device tree or the ACPI tables (with, on aarch64, the EFI handoff and its stub device
/// tree) of `platform`, at the addresses `layout` reserves.
pub fn encode(platform: &CheckedPlatform, layout: &BootLayout) -> Result<GuestTables, EncodeError> {
    let device_tree = |bytes: Vec<u8>| {
        let slot = layout.device_tree.ok_or(EncodeError::NoDeviceTreeSlot)?;
        if bytes.len() as u64 > slot.size {
            return Err(EncodeError::DeviceTreeTooLarge {
                size: bytes.len(),
                max: slot.size,
            });
        }
        Ok(GuestBlob {
            what: "the device tree",
            address: slot.base,
            bytes,
            file: Some("guest.dtb".into()),
        })
    };
    let acpi_blobs = |tables: acpi::AcpiTables| {
        tables.tables.into_iter().map(|t| GuestBlob {
            what: "an ACPI table",
            address: t.address,
            file: Some(format!("{}.aml", t.signature)),
            bytes: t.bytes,
        })
    };
    Ok(match (platform.arch, platform.firmware) {
        (GuestArch::Aarch64, FirmwareInterface::DeviceTree) => GuestTables {
            blobs: vec![device_tree(fdt::device_tree(platform)?)?],
            rsdp: None,
        },
        (GuestArch::Aarch64, FirmwareInterface::Acpi) => {
            let boot = efi::acpi_boot(platform, layout.firmware_tables)?;
            let rsdp = Some(boot.tables.rsdp);
            let mut blobs = vec![device_tree(boot.stub_dtb)?];
            blobs.extend(acpi_blobs(boot.tables));
            blobs.extend(boot.efi.blobs.into_iter().map(|b| GuestBlob {
                what: b.name,
                address: b.address,
                bytes: b.bytes,
                file: None,
            }));
            GuestTables { blobs, rsdp }
        }
        (GuestArch::X86_64, _) => {
            let tables = acpi::build(platform, layout.firmware_tables)?;
            let rsdp = Some(tables.rsdp);
            GuestTables {
                blobs: acpi_blobs(tables).collect(),
                rsdp,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acpi::testutil::{MIB, aarch64_firmware_region, aarch64_platform, x86_platform};
    use crate::x86_64::layout as x86_layout;

    fn arm64_kernel() -> PayloadFootprint {
        PayloadFootprint {
            kernel: KernelFootprint::Arm64Image(ImageFootprint {
                text_offset: 0,
                image_size: 32 * MIB,
            }),
            initrd_size: None,
        }
    }

    fn bzimage(cmdline_size: u32) -> PayloadFootprint {
        PayloadFootprint {
            kernel: KernelFootprint::BzImage(BzImageFootprint {
                range: GuestRange::new(x86_layout::HIMEM_START, 24 * MIB),
                entry: x86_layout::HIMEM_START + 0x200,
                initrd_addr_max: 0x7fff_ffff,
                cmdline_size,
            }),
            initrd_size: None,
        }
    }

    #[test]
    fn cmdline_fits_the_kernel_buffer() {
        let mut arm = aarch64_platform(1);
        arm.cmdline = "x".repeat(image::CMDLINE_CAPACITY - 1);
        layout(&arm, &arm64_kernel()).unwrap();
        let cmdline = kernel_cmdline(&arm.cmdline, 2047).unwrap();
        assert_eq!(
            cmdline.as_cstring().unwrap().as_bytes(),
            arm.cmdline.as_bytes()
        );

        arm.cmdline.push('x');
        let err = layout(&arm, &arm64_kernel()).unwrap_err();
        assert!(
            matches!(err, LayoutError::CmdlineTooLong { len, max: 2047 } if len == image::CMDLINE_CAPACITY),
            "{err:?}"
        );
        assert!(err.to_string().contains("at most 2047"), "{err}");

        arm.cmdline = "console=ttyAMA0\0init=/bin/sh".into();
        let err = layout(&arm, &arm64_kernel()).unwrap_err();
        assert!(matches!(err, LayoutError::CmdlineNul), "{err:?}");

        // An x86 kernel says how long a line it takes.
        let mut pc = x86_platform(1);
        pc.cmdline = "0123456789abcdefg".into();
        let err = layout(&pc, &bzimage(16)).unwrap_err();
        assert_eq!(err, LayoutError::CmdlineTooLong { len: 17, max: 16 });
        layout(&pc, &bzimage(17)).unwrap();
    }

    #[test]
    fn a_kernel_for_another_arch_is_refused() {
        let err = layout(&x86_platform(1), &arm64_kernel()).unwrap_err();
        assert_eq!(err, LayoutError::WrongKernel(GuestArch::X86_64));
        let err = layout(&aarch64_platform(1), &bzimage(2047)).unwrap_err();
        assert_eq!(err, LayoutError::WrongKernel(GuestArch::Aarch64));
        let mut none = aarch64_platform(1);
        none.memory.clear();
        assert_eq!(layout(&none, &arm64_kernel()), Err(LayoutError::NoRam));
    }

    fn checked(platform: Platform) -> CheckedPlatform {
        platform.check().expect("a valid platform")
    }

    #[test]
    fn acpi_boot_blobs_are_the_stub_then_the_tables_then_the_efi_structures() {
        let platform = checked(aarch64_platform(4));
        let boot = layout(&platform, &arm64_kernel()).unwrap();
        assert_eq!(boot.firmware_tables, aarch64_firmware_region());
        let tables = encode(&platform, &boot).unwrap();
        let acpi = efi::acpi_boot(&platform, boot.firmware_tables).unwrap();
        let mut expected = vec![(boot.device_tree.unwrap().base, acpi.stub_dtb.clone())];
        expected.extend(
            acpi.tables
                .tables
                .iter()
                .map(|t| (t.address, t.bytes.clone())),
        );
        expected.extend(acpi.efi.blobs.iter().map(|b| (b.address, b.bytes.clone())));
        let got: Vec<(u64, Vec<u8>)> = tables
            .blobs
            .iter()
            .map(|b| (b.address, b.bytes.clone()))
            .collect();
        assert_eq!(got, expected);
        assert_eq!(tables.rsdp, Some(acpi.tables.rsdp));
        // Dumped: the stub and the tables, by name; not the EFI structures.
        let files: Vec<&str> = tables
            .blobs
            .iter()
            .filter_map(|b| b.file.as_deref())
            .collect();
        assert_eq!(files.len(), 1 + acpi.tables.tables.len());
        assert_eq!(files[0], "guest.dtb");
        assert!(files.contains(&"SPCR.aml"));
    }

    #[test]
    fn the_device_tree_goes_in_its_slot_or_is_refused() {
        let mut arm = aarch64_platform(1);
        arm.firmware = FirmwareInterface::DeviceTree;
        let platform = checked(arm);
        let mut boot = layout(&platform, &arm64_kernel()).unwrap();
        let tables = encode(&platform, &boot).unwrap();
        assert_eq!(tables.blobs.len(), 1);
        assert_eq!(tables.blobs[0].address, boot.device_tree.unwrap().base);
        assert_eq!(tables.blobs[0].bytes, fdt::device_tree(&platform).unwrap());
        assert_eq!(tables.rsdp, None);

        boot.device_tree = Some(GuestRange::new(boot.device_tree.unwrap().base, 64));
        assert!(matches!(
            encode(&platform, &boot),
            Err(EncodeError::DeviceTreeTooLarge { max: 64, .. })
        ));
        boot.device_tree = None;
        assert!(matches!(
            encode(&platform, &boot),
            Err(EncodeError::NoDeviceTreeSlot)
        ));
    }

    #[test]
    fn x86_tables_are_the_acpi_tables_at_their_fixed_place() {
        let platform = checked(x86_platform(2));
        let boot = layout(&platform, &bzimage(2047)).unwrap();
        assert_eq!(boot.firmware_tables, x86_layout::ACPI_TABLES);
        assert_eq!(boot.device_tree, None);
        let tables = encode(&platform, &boot).unwrap();
        let acpi = acpi::build(&platform, x86_layout::ACPI_TABLES).unwrap();
        assert_eq!(tables.rsdp, Some(acpi.rsdp));
        let got: Vec<(Option<String>, u64)> = tables
            .blobs
            .iter()
            .map(|b| (b.file.clone(), b.address))
            .collect();
        let want: Vec<(Option<String>, u64)> = acpi
            .tables
            .iter()
            .map(|t| (Some(format!("{}.aml", t.signature)), t.address))
            .collect();
        assert_eq!(got, want);
    }
}
