//! The boot payload, opened and checked once before planning: the kernel's format and footprint,
//! the initramfs's size. The plan places both from what is learnt here; the build writes them
//! where the plan says, from the files opened here, with the firmware tables the plan encodes to.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use arch::boot::{EncodeError, GuestTables, KernelFootprint, PayloadFootprint};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError};

use crate::config::ValidConfig;
use crate::plan::Plan;

/// The kernel format of the host's (and so the guest's) architecture.
#[cfg(target_arch = "aarch64")]
use arch::aarch64::image::{Image as Kernel, ImageError as KernelError, inspect};
#[cfg(target_arch = "x86_64")]
use arch::x86_64::boot::{BootError as KernelError, BzImage as Kernel, inspect};

#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
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
    #[error("encoding the firmware tables")]
    Encode(#[from] EncodeError),
    #[error("writing {what} to guest memory at {addr:#x}")]
    GuestWrite {
        what: &'static str,
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
    pub fn open(config: &ValidConfig) -> Result<Self, PayloadError> {
        let path = config.kernel();
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

    /// Writes the kernel, the initramfs and the firmware tables where `plan`, made for this
    /// payload, puts them; returns the tables written.
    pub fn load<M: GuestMemoryBackend>(
        &self,
        mem: &M,
        plan: &Plan,
    ) -> Result<GuestTables, PayloadError> {
        let layout = &plan.boot;
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
        let tables = arch::boot::encode(&plan.platform, layout)?;
        for blob in &tables.blobs {
            mem.write_slice(&blob.bytes, GuestAddress(blob.address))
                .map_err(|source| PayloadError::GuestWrite {
                    what: blob.what,
                    addr: blob.address,
                    source,
                })?;
        }
        Ok(tables)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BootMode, ByteSize, HostArch, MemoryConfig, VmConfig};
    use crate::host::HostDescription;

    type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

    fn manifest_dir() -> &'static Path {
        Path::new(env!("CARGO_MANIFEST_DIR"))
    }

    /// The test kernel of `tests/common` for this host, and `initramfs`.
    fn config(initramfs: &Path) -> VmConfig {
        let kernel = if cfg!(target_arch = "aarch64") {
            "Image"
        } else {
            "bzImage"
        };
        let mut c = VmConfig {
            memory: MemoryConfig {
                size: ByteSize(256 << 20),
            },
            ..Default::default()
        };
        c.payload.kernel = Some(manifest_dir().join("tests/kernels").join(kernel));
        c.payload.initramfs = Some(initramfs.to_path_buf());
        c
    }

    fn open(c: &VmConfig) -> Payload {
        Payload::open(&c.validate(HostArch::current()).unwrap()).unwrap()
    }

    /// The plan for `c` on a host without devices.
    fn plan(c: &VmConfig, payload: &Payload) -> Plan {
        let host = HostDescription::default();
        crate::plan::platform(c, HostArch::current(), &host, &payload.footprint()).unwrap()
    }

    fn memory(plan: &Plan) -> GuestMemoryMmap {
        let ranges: Vec<_> = plan
            .memory
            .iter()
            .map(|r| (GuestAddress(r.base), r.size as usize))
            .collect();
        GuestMemoryMmap::from_ranges(&ranges).unwrap()
    }

    fn guest_bytes(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut bytes = vec![0; len];
        mem.read_slice(&mut bytes, GuestAddress(addr)).unwrap();
        bytes
    }

    /// What `--dump-platform` writes is what the build puts in guest memory, initrd included.
    #[test]
    fn the_dump_is_what_the_guest_gets() {
        let initramfs = manifest_dir().join("Cargo.toml");
        for boot in [BootMode::Dt, BootMode::Acpi] {
            let mut c = config(&initramfs);
            let payload = open(&c);
            // The plan decides what `boot` means on this host (x86 guests always get ACPI).
            c.boot = Some(boot);
            let plan = plan(&c, &payload);
            let mem = memory(&plan);
            let written = payload.load(&mem, &plan).unwrap();

            let dumped = crate::dump::guest_tables(&plan.platform, &plan.boot).unwrap();
            let files: Vec<(&String, u64)> = written
                .blobs
                .iter()
                .filter_map(|b| Some((b.file.as_ref()?, b.address)))
                .collect();
            assert_eq!(files.len(), dumped.len());
            for ((name, bytes), (file, address)) in dumped.iter().zip(files) {
                assert_eq!(name, file);
                assert_eq!(&guest_bytes(&mem, address, bytes.len()), bytes, "{name}");
            }

            let initrd = plan.boot.initrd.unwrap();
            assert_eq!(plan.initrd, Some(initrd));
            let data = std::fs::read(&initramfs).unwrap();
            assert_eq!(guest_bytes(&mem, initrd.base, data.len()), data);
            // The kernel's first bytes where the plan put it (a bzImage without its setup code).
            let kernel = std::fs::read(c.payload.kernel.as_ref().unwrap()).unwrap();
            let image = &kernel[if cfg!(target_arch = "aarch64") {
                0
            } else {
                1024
            }..];
            assert_eq!(guest_bytes(&mem, plan.boot.kernel.base, image.len()), image);
        }
    }

    #[test]
    fn an_initramfs_that_shrank_since_it_was_planned_is_named() {
        let path = std::env::temp_dir().join(format!("microvmm-initrd-{}", std::process::id()));
        std::fs::write(&path, vec![7u8; 0x3000]).unwrap();
        let c = config(&path);
        let payload = open(&c);
        let plan = plan(&c, &payload);
        std::fs::write(&path, vec![7u8; 10]).unwrap();
        let mem = memory(&plan);
        let err = payload.load(&mem, &plan).unwrap_err();
        assert!(
            matches!(&err, PayloadError::LoadInitramfs { path: p, .. } if *p == path),
            "{err}"
        );
        let _ = std::fs::remove_file(&path);
    }
}
