//! The host side of passthrough: one iommufd with an IOAS holding all guest RAM at IOVA = GPA,
//! the KVM VFIO device, and each assigned function's VFIO cdev behind the device model's
//! [`VfioBackend`] trait.

use std::sync::Arc;

use devices::pci::BarRange;
use devices::vfio_pci::{BackendError, IrqType, RegionInfo, VfioBackend};
use iommufd_ioctls::IommuFd;
use kvm_bindings::{kvm_create_device, kvm_device_type_KVM_DEV_TYPE_VFIO};
use kvm_ioctls::VmFd;
use vfio_ioctls::{VfioDevice, VfioDeviceFd, VfioIommufd, VfioRegionInfoCap};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::host::HostDevice;

#[derive(Debug, thiserror::Error)]
pub enum VfioError {
    #[error("opening /dev/iommu")]
    Iommufd(#[source] iommufd_ioctls::IommufdError),
    #[error("creating the KVM VFIO device")]
    KvmDevice(#[source] kvm_ioctls::Error),
    #[error("allocating the IOAS")]
    Ioas(#[source] vfio_ioctls::VfioError),
    #[error("mapping guest RAM into the IOAS")]
    MapMemory(#[source] vfio_ioctls::VfioError),
    #[error("devices[{index}] ({bdf}): opening its VFIO cdev and attaching it to the IOAS")]
    Open {
        index: usize,
        bdf: String,
        #[source]
        source: vfio_ioctls::VfioError,
    },
}

/// What every assigned device of one VM shares.
pub struct VfioContext {
    ops: Arc<VfioIommufd>,
}

impl VfioContext {
    /// Opens iommufd, tells KVM about VFIO, and maps all of `memory` for DMA.
    pub fn new(vm: &VmFd, memory: &GuestMemoryMmap) -> Result<Self, VfioError> {
        let iommufd = Arc::new(IommuFd::new().map_err(VfioError::Iommufd)?);
        let mut dev = kvm_create_device {
            type_: kvm_device_type_KVM_DEV_TYPE_VFIO,
            fd: 0,
            flags: 0,
        };
        let kvm_vfio = vm.create_device(&mut dev).map_err(VfioError::KvmDevice)?;
        let handle = Arc::new(VfioDeviceFd::new_from_kvm(kvm_vfio));
        let ops = Arc::new(VfioIommufd::new(iommufd, None, Some(handle)).map_err(VfioError::Ioas)?);
        for region in memory.iter() {
            // SAFETY: the guest memory mappings outlive the IOAS: the VM drops its devices and
            // this context (closing iommufd and with it every mapping) before guest memory.
            unsafe {
                ops.vfio_dma_map(
                    region.start_addr().0,
                    region.len() as usize,
                    region.as_ptr(),
                )
            }
            .map_err(VfioError::MapMemory)?;
        }
        Ok(VfioContext { ops })
    }

    /// The iommufd and the IOAS holding guest RAM, for the nested vSMMU backend.
    pub fn iommufd(&self) -> (Arc<IommuFd>, u32) {
        (self.ops.iommufd().clone(), self.ops.ioas().id())
    }

    /// Binds a host function's cdev to the iommufd and attaches it to the IOAS.
    pub fn open(&self, host: &HostDevice) -> Result<HostVfio, VfioError> {
        let device = VfioDevice::new(&host.sysfs, self.ops.clone(), true).map_err(|source| {
            VfioError::Open {
                index: host.index,
                bdf: host.bdf.clone(),
                source,
            }
        })?;
        Ok(HostVfio {
            device: Arc::new(device),
            bdf: host.bdf.clone(),
        })
    }
}

/// One assigned function, through its VFIO cdev.
pub struct HostVfio {
    device: Arc<VfioDevice>,
    bdf: String,
}

impl Drop for HostVfio {
    /// Leave the function quiet for whoever uses it next (the kernel resets it again on release
    /// where it can; this covers devices whose reset needs the open fd).
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
    pub fn bdf(&self) -> &str {
        &self.bdf
    }

    /// The VFIO device, for mapping its regions.
    pub fn device(&self) -> Arc<VfioDevice> {
        self.device.clone()
    }

    /// Its iommufd device ID.
    pub fn dev_id(&self) -> Option<u32> {
        self.device.iommufd_dev_id()
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
