//! The boot payload, opened and checked once before planning: the kernel's format and footprint,
//! the initramfs's size. The plan places both from what is learnt here; the build writes them
//! where the plan says, from the files opened here, and reads nothing else.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use arch::boot::{BootLayout, KernelFootprint, PayloadFootprint};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError};

use crate::config::VmConfig;

/// The kernel format of the host's (and so the guest's) architecture.
#[cfg(target_arch = "aarch64")]
use arch::aarch64::image::{Image as Kernel, ImageError as KernelError, inspect};
#[cfg(target_arch = "x86_64")]
use arch::x86_64::boot::{BootError as KernelError, BzImage as Kernel, inspect};

#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("payload.kernel: no kernel given")]
    NoKernel,
    #[error("payload.{field}: cannot open {path}")]
    Open {
        field: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("payload.kernel: {path} is no kernel this guest can boot")]
    Kernel {
        path: PathBuf,
        #[source]
        source: KernelError,
    },
    #[error("payload.kernel: cannot load {path}")]
    LoadKernel {
        path: PathBuf,
        #[source]
        source: KernelError,
    },
    #[error("payload.initramfs: {path} is empty")]
    EmptyInitramfs { path: PathBuf },
    #[error("payload.initramfs: cannot read {path} into guest memory at {addr:#x}")]
    LoadInitramfs {
        path: PathBuf,
        addr: u64,
        #[source]
        source: GuestMemoryError,
    },
}

/// A file of the payload, open.
#[derive(Debug)]
struct Opened {
    path: PathBuf,
    file: File,
}

impl Opened {
    fn open(field: &'static str, path: &Path) -> Result<Self, PayloadError> {
        let file = File::open(path).map_err(|source| PayloadError::Open {
            field,
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Opened {
            path: path.to_path_buf(),
            file,
        })
    }
}

/// The kernel and the initramfs, checked.
#[derive(Debug)]
pub struct Payload {
    kernel_file: Opened,
    kernel: Kernel,
    /// With its size, taken once.
    initramfs: Option<(Opened, u64)>,
}

impl Payload {
    /// Opens and inspects the kernel and the initramfs `config` names.
    pub fn open(config: &VmConfig) -> Result<Self, PayloadError> {
        let path = config
            .payload
            .kernel
            .as_deref()
            .ok_or(PayloadError::NoKernel)?;
        let kernel_file = Opened::open("kernel", path)?;
        let kernel = inspect(&mut &kernel_file.file).map_err(|source| PayloadError::Kernel {
            path: path.to_path_buf(),
            source,
        })?;
        let initramfs = match &config.payload.initramfs {
            None => None,
            Some(path) => {
                let opened = Opened::open("initramfs", path)?;
                let size =
                    (&opened.file)
                        .seek(SeekFrom::End(0))
                        .map_err(|source| PayloadError::Open {
                            field: "initramfs",
                            path: path.clone(),
                            source,
                        })?;
                if size == 0 {
                    return Err(PayloadError::EmptyInitramfs { path: path.clone() });
                }
                Some((opened, size))
            }
        };
        Ok(Payload {
            kernel_file,
            kernel,
            initramfs,
        })
    }

    /// What the plan needs to place the payload.
    pub fn footprint(&self) -> PayloadFootprint {
        #[cfg(target_arch = "aarch64")]
        let kernel = KernelFootprint::Arm64Image(self.kernel.footprint());
        #[cfg(target_arch = "x86_64")]
        let kernel = KernelFootprint::BzImage(self.kernel.footprint());
        PayloadFootprint {
            kernel,
            initrd_size: self.initramfs.as_ref().map(|(_, size)| *size),
        }
    }

    /// The inspected bzImage, whose setup header goes into the zero page.
    #[cfg(target_arch = "x86_64")]
    pub fn bzimage(&self) -> &Kernel {
        &self.kernel
    }

    /// Writes the kernel and the initramfs where `layout`, planned from this payload, puts them.
    pub fn load<M: GuestMemoryBackend>(
        &self,
        mem: &M,
        layout: &BootLayout,
    ) -> Result<(), PayloadError> {
        let kernel_err = |source| PayloadError::LoadKernel {
            path: self.kernel_file.path.clone(),
            source,
        };
        #[cfg(target_arch = "aarch64")]
        self.kernel
            .load(mem, layout.kernel, &mut &self.kernel_file.file)
            .map_err(kernel_err)?;
        #[cfg(target_arch = "x86_64")]
        self.kernel
            .load(mem, &mut &self.kernel_file.file)
            .map_err(kernel_err)?;
        if let (Some((initramfs, size)), Some(range)) = (&self.initramfs, layout.initrd) {
            let load_err = |source| PayloadError::LoadInitramfs {
                path: initramfs.path.clone(),
                addr: range.base,
                source,
            };
            let mut file = &initramfs.file;
            file.seek(SeekFrom::Start(0))
                .map_err(|e| load_err(GuestMemoryError::IOError(e)))?;
            // The plan placed `size` bytes in guest RAM, so they fit in usize.
            mem.read_exact_volatile_from(GuestAddress(range.base), &mut file, *size as usize)
                .map_err(load_err)?;
        }
        Ok(())
    }
}
