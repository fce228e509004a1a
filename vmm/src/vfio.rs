//! The host side of passthrough: one iommufd with an IOAS holding all guest RAM at IOVA = GPA,
//! the KVM VFIO device, and each assigned function's VFIO cdev behind the device model's
//! [`VfioBackend`] trait.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use devices::pci::BarRange;
use devices::vfio_pci::{BackendError, IrqType, RegionInfo, VfioBackend};
use iommufd_ioctls::IommuFd;
use kvm_bindings::{
    KVM_DEV_VFIO_FILE, KVM_DEV_VFIO_FILE_ADD, kvm_create_device, kvm_device_attr,
    kvm_device_type_KVM_DEV_TYPE_VFIO,
};
use kvm_ioctls::{DeviceFd, VmFd};
use vfio_ioctls::{VfioDevice, VfioIommufd, VfioRegionInfoCap};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::bdf::PciBdf;
use crate::host::{HostDevice, HostHandles};

#[derive(Debug, thiserror::Error)]
pub enum VfioError {
    #[error("creating the KVM VFIO device")]
    KvmDevice(#[source] kvm_ioctls::Error),
    #[error("devices[{index}] ({bdf}): telling KVM about its VFIO cdev")]
    KvmFile {
        index: usize,
        bdf: PciBdf,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("mapping guest RAM {base:#x}+{size:#x} into the IOAS")]
    MapMemory {
        base: u64,
        size: u64,
        #[source]
        source: vfio_ioctls::VfioError,
    },
    #[error("devices[{index}] ({bdf}): attaching it to the guest-RAM IOAS")]
    Attach {
        index: usize,
        bdf: PciBdf,
        #[source]
        source: vfio_ioctls::VfioError,
    },
}

/// Guest RAM mapped into the IOAS: unmapped on drop, before the memory itself goes (the IOAS
/// lives as long as the host's iommufd, across VM restarts).
struct DmaMappings {
    ops: Arc<VfioIommufd>,
    ranges: Vec<(u64, usize)>,
}

impl Drop for DmaMappings {
    fn drop(&mut self) {
        for &(iova, size) in &self.ranges {
            if let Err(e) = self.ops.vfio_dma_unmap(iova, size) {
                log::warn!("unmapping guest RAM {iova:#x}+{size:#x} from the IOAS: {e}");
            }
        }
    }
}

/// What every assigned device of one VM shares.
pub struct VfioContext {
    // Field order is drop order: unmap guest RAM, then drop the KVM VFIO device.
    dma: DmaMappings,
    _kvm_vfio: DeviceFd,
}

impl VfioContext {
    /// Tells KVM about every opened device and maps all of `memory` for DMA in the IOAS the
    /// devices are bound to.
    pub fn new(
        vm: &VmFd,
        memory: &GuestMemoryMmap,
        host: &[HostDevice],
        handles: &HostHandles,
    ) -> Result<Self, VfioError> {
        let mut dev = kvm_create_device {
            type_: kvm_device_type_KVM_DEV_TYPE_VFIO,
            fd: 0,
            flags: 0,
        };
        let kvm_vfio = vm.create_device(&mut dev).map_err(VfioError::KvmDevice)?;
        for (d, open) in host.iter().zip(&handles.devices) {
            let fd = open.device.as_raw_fd();
            let attr = kvm_device_attr {
                flags: 0,
                group: KVM_DEV_VFIO_FILE,
                attr: u64::from(KVM_DEV_VFIO_FILE_ADD),
                addr: &fd as *const i32 as u64,
            };
            kvm_vfio
                .set_device_attr(&attr)
                .map_err(|source| VfioError::KvmFile {
                    index: d.index,
                    bdf: d.bdf,
                    source,
                })?;
        }
        let mut dma = DmaMappings {
            ops: handles.ops.clone(),
            ranges: Vec::new(),
        };
        for region in memory.iter() {
            let (base, size) = (region.start_addr().0, region.len() as usize);
            // SAFETY: the guest memory mappings outlive the IOAS mapping: `dma` unmaps them when
            // the VM drops this context, which it does before guest memory.
            unsafe { dma.ops.vfio_dma_map(base, size, region.as_ptr()) }.map_err(|source| {
                VfioError::MapMemory {
                    base,
                    size: size as u64,
                    source,
                }
            })?;
            dma.ranges.push((base, size));
        }
        Ok(VfioContext {
            dma,
            _kvm_vfio: kvm_vfio,
        })
    }

    /// The iommufd and the IOAS holding guest RAM, for the nested vSMMU backend.
    pub fn iommufd(&self) -> (Arc<IommuFd>, u32) {
        (self.dma.ops.iommufd().clone(), self.dma.ops.ioas().id())
    }

    /// An opened host function, attached to the guest-RAM IOAS (a vSMMU replaces that
    /// attachment with its own page tables).
    pub fn open(&self, host: &HostDevice, handles: &HostHandles) -> Result<HostVfio, VfioError> {
        let open = &handles.devices[host.index];
        open.device
            .attach_hwpt(self.dma.ops.ioas().id())
            .map_err(|source| VfioError::Attach {
                index: host.index,
                bdf: host.bdf,
                source,
            })?;
        Ok(HostVfio {
            device: open.device.clone(),
            dev_id: open.dev_id,
            bdf: host.bdf,
        })
    }
}

/// One assigned function, through its VFIO cdev.
pub struct HostVfio {
    device: Arc<VfioDevice>,
    dev_id: u32,
    bdf: PciBdf,
}

impl Drop for HostVfio {
    /// Leave the function quiet for whoever uses it next (the cdev stays open across guest
    /// restarts, so the kernel's reset on release does not run between them).
    fn drop(&mut self) {
        self.device.reset();
    }
}

/// VFIO_REGION_INFO_FLAG_{READ,WRITE,MMAP} (linux/vfio.h).
const REGION_READ: u32 = 1;
const REGION_WRITE: u32 = 2;
const REGION_MMAP: u32 = 4;

fn irq_index(irq: IrqType) -> u32 {
    match irq {
        IrqType::Intx => 0,
        IrqType::Msi => 1,
        IrqType::Msix => 2,
    }
}

impl HostVfio {
    pub fn bdf(&self) -> PciBdf {
        self.bdf
    }

    /// The VFIO device, for mapping its regions.
    pub fn device(&self) -> Arc<VfioDevice> {
        self.device.clone()
    }

    /// Its iommufd device ID.
    pub fn dev_id(&self) -> u32 {
        self.dev_id
    }
}

impl VfioBackend for HostVfio {
    fn region_info(&self, index: u32) -> Result<RegionInfo, BackendError> {
        let flags = self.device.get_region_flags(index);
        let sparse_areas = self
            .device
            .get_region_caps(index)
            .into_iter()
            .filter_map(|cap| match cap {
                VfioRegionInfoCap::SparseMmap(s) => Some(s.areas),
                _ => None,
            })
            .flatten()
            .map(|a| BarRange {
                offset: a.offset,
                size: a.size,
            })
            .collect();
        Ok(RegionInfo {
            size: self.device.get_region_size(index),
            readable: flags & REGION_READ != 0,
            writable: flags & REGION_WRITE != 0,
            mmap: flags & REGION_MMAP != 0,
            sparse_areas,
        })
    }

    fn region_read(&self, index: u32, offset: u64, data: &mut [u8]) -> Result<(), BackendError> {
        self.device.region_read(index, data, offset);
        Ok(())
    }

    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        self.device.region_write(index, data, offset);
        Ok(())
    }

    fn irq_count(&self, irq: IrqType) -> u32 {
        self.device
            .get_irq_info(irq_index(irq))
            .map_or(0, |i| i.count)
    }

    fn enable_msi(&mut self, eventfds: &[EventFd]) -> Result<(), BackendError> {
        Ok(self.device.enable_msi(eventfds.iter().collect())?)
    }

    fn enable_msix(&mut self, eventfds: &[EventFd]) -> Result<(), BackendError> {
        Ok(self.device.enable_msix(eventfds.iter().collect())?)
    }

    fn enable_intx(&mut self, trigger: &EventFd, unmask: &EventFd) -> Result<(), BackendError> {
        self.device
            .enable_irq(irq_index(IrqType::Intx), vec![trigger])?;
        Ok(self
            .device
            .set_irq_resample_fd(irq_index(IrqType::Intx), vec![unmask])?)
    }

    fn disable_irq(&mut self, irq: IrqType) -> Result<(), BackendError> {
        Ok(self.device.disable_irq(irq_index(irq))?)
    }

    fn reset(&mut self) -> Result<(), BackendError> {
        self.device.reset();
        Ok(())
    }
}
