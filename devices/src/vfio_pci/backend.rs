//! The host side of an assigned PCI function: what the model needs from VFIO, and nothing more.
//! The VMM implements it over a VFIO device fd (cdev + iommufd); tests implement it in memory.

use vmm_sys_util::eventfd::EventFd;

use crate::pci::BarRange;

/// VFIO's fixed region indices for a PCI device (linux/vfio.h): BAR `n` is region `n`.
pub const VFIO_PCI_ROM_REGION_INDEX: u32 = 6;
pub const VFIO_PCI_CONFIG_REGION_INDEX: u32 = 7;

pub type BackendError = Box<dyn std::error::Error + Send + Sync>;

/// A VFIO region (VFIO_DEVICE_GET_REGION_INFO).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RegionInfo {
    /// 0 when the region (a BAR) is not implemented.
    pub size: u64,
    pub readable: bool,
    pub writable: bool,
    /// VFIO_REGION_INFO_FLAG_MMAP: the region can be mapped into the VMM.
    pub mmap: bool,
    /// With `mmap`: the mappable parts (VFIO_REGION_INFO_CAP_SPARSE_MMAP); empty means all of it.
    pub sparse_areas: Vec<BarRange>,
}

/// VFIO's PCI interrupt indices (VFIO_PCI_INTX_IRQ_INDEX and the next two).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqType {
    Intx,
    Msi,
    Msix,
}

/// One assigned PCI function on the host.
pub trait VfioBackend: Send {
    /// Region `index`: BARs 0-5, [`VFIO_PCI_ROM_REGION_INDEX`], [`VFIO_PCI_CONFIG_REGION_INDEX`].
    fn region_info(&self, index: u32) -> Result<RegionInfo, BackendError>;

    /// Reads `data.len()` bytes at `offset` in region `index` (pread on the device fd).
    fn region_read(&self, index: u32, offset: u64, data: &mut [u8]) -> Result<(), BackendError>;

    /// Writes at `offset` in region `index` (pwrite on the device fd).
    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<(), BackendError>;

    /// How many interrupts of a type the device has (VFIO_DEVICE_GET_IRQ_INFO `count`).
    fn irq_count(&self, irq: IrqType) -> u32;

    /// Enables MSI with one eventfd per vector, vector `i` signalling `eventfds[i]`
    /// (VFIO_DEVICE_SET_IRQS, ACTION_TRIGGER | DATA_EVENTFD, start 0).
    fn enable_msi(&mut self, eventfds: &[EventFd]) -> Result<(), BackendError>;

    /// Enables MSI-X the same way; the host kernel programs the device's real table.
    fn enable_msix(&mut self, eventfds: &[EventFd]) -> Result<(), BackendError>;

    /// Enables INTx: the device's line signals `trigger`, and the host unmasks the line when
    /// `unmask` is signalled (ACTION_UNMASK with an eventfd: the KVM irqfd resample fd).
    fn enable_intx(&mut self, trigger: &EventFd, unmask: &EventFd) -> Result<(), BackendError>;

    /// Disables an interrupt type (VFIO_DEVICE_SET_IRQS, DATA_NONE, count 0).
    fn disable_irq(&mut self, irq: IrqType) -> Result<(), BackendError>;

    /// Resets the function (VFIO_DEVICE_RESET).
    fn reset(&mut self) -> Result<(), BackendError>;
}
