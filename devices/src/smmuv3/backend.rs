//! What the vSMMUv3 model needs from the outside: the host backend that applies stream
//! configurations and invalidations, guest memory, and the interrupt sink.
//!
//! One model, several backends: nested (iommufd vIOMMU, the hardware walks the guest's stage 1),
//! shadow (later), and [`super::fake::FakeBackend`] for tests.

use std::fmt;

use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

use super::command::Invalidation;
use super::ste::NestedSte;
use crate::pci::MsiMessage;

pub type BackendError = Box<dyn std::error::Error + Send + Sync>;

/// How a vSMMU's translations reach the host: the plan's `VirtualSmmu::mode`.
pub use arch::platform::SmmuMode;

/// What one StreamID does now, as the guest's STE (or GBPA, while SMMUEN is 0) says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamConfig {
    /// Every transaction is terminated.
    Abort,
    /// Transactions pass untranslated (guest physical = IOVA, through the host stage 2).
    Bypass,
    /// Stage 1 translation by the guest's context descriptors, nested over the host stage 2.
    Stage1(NestedSte),
}

/// Records the host reported for the guest (a read of the vEVENTQ).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventBatch {
    /// Event queue records (IHI 0070 7.3) as the host delivers them, StreamID already the
    /// guest's (C_BAD_STE, F_STREAM_DISABLED, C_BAD_SUBSTREAMID, C_BAD_CD, F_TRANSLATION,
    /// F_ADDR_SIZE, F_ACCESS, F_PERMISSION).
    pub events: Vec<[u64; 4]>,
    /// The host dropped events (IOMMU_VEVENTQ_FLAG_LOST_EVENTS): the guest sees an overflow.
    pub lost: bool,
}

/// A backend's own counters for `--stats`, named, in the order it reports them: the VMM prints
/// them without knowing the backend.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackendStats(pub Vec<(&'static str, u64)>);

impl BackendStats {
    pub fn get(&self, name: &str) -> Option<u64> {
        self.0
            .iter()
            .find(|(n, _)| *n == name)
            .map(|&(_, value)| value)
    }
}

impl fmt::Display for BackendStats {
    /// `name value, name value, ...`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let counters: Vec<String> = self.0.iter().map(|(n, v)| format!("{n} {v}")).collect();
        f.write_str(&counters.join(", "))
    }
}

/// The host side of one vSMMU. Calls come from the vCPU thread that trapped the register access
/// (or from the VMM's event loop for [`SmmuBackend::read_events`]); each may block briefly.
///
/// Backends receive decoded values and never re-decode guest memory: a nested backend forwards
/// them, a shadowing one walks the guest's tables from the STE's context pointer, a CMDQV one
/// gets only what the trapped command queue carries (its VCMDQs reach the hardware directly).
pub trait SmmuBackend: Send {
    /// How this backend applies the guest's configuration (what the plan chose for the vSMMU).
    fn mode(&self) -> SmmuMode;

    /// StreamID `sid` (the guest's) now behaves as `config`. Called when the guest invalidates an
    /// STE whose meaning changed, enables or disables the SMMU, or updates GBPA; never twice in
    /// a row with the same config for a StreamID.
    ///
    /// Nested backend: the pre-allocated abort or bypass nested HWPT, or a new nested HWPT over
    /// the nest parent with the STE as `IOMMU_HWPT_DATA_ARM_SMMUV3`, then replace-attach the
    /// device (`VFIO_DEVICE_ATTACH_IOMMUFD_PT`) and free the previous one.
    fn set_stream(&mut self, sid: u32, config: StreamConfig) -> Result<(), BackendError>;

    /// Applies a batch of invalidations, in guest order: everything the guest queued since the
    /// previous call (the model calls it at most once per guest CMD_SYNC), with the guest's
    /// StreamIDs, ASIDs and address ranges. Returns how many were applied (all of them unless
    /// the host rejected one; the rest are dropped).
    ///
    /// Nested backend: one `IOMMU_HWPT_INVALIDATE` on the vIOMMU with the raw entries
    /// (`IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3`); the kernel rewrites VMID and vSID.
    fn invalidate(&mut self, batch: &[Invalidation]) -> Result<usize, BackendError>;

    /// Takes the events the host queued for this vSMMU, if any (non-blocking). The VMM watches
    /// the backend's event source and calls `Smmuv3::service_host_events` when it is readable.
    ///
    /// Nested backend: read the vEVENTQ fd; strip `iommufd_vevent_header`s, turning the
    /// LOST_EVENTS flag (or a sequence gap) into `lost`.
    fn read_events(&mut self) -> Result<EventBatch, BackendError>;

    /// The backend's counters since creation.
    fn stats(&self) -> BackendStats;
}

/// The vSMMU's wired interrupt lines (edge-triggered SPIs, `VirtualSmmu::{event,gerror,sync}_irq`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmmuIrq {
    Event,
    Gerror,
    /// CMD_SYNC completion with CS=SIG_IRQ and no MSI address.
    Sync,
}

/// Where the model's interrupts go; the VMM implements it.
pub trait SmmuInterrupts: Send {
    /// Pulses a wired interrupt line.
    fn trigger(&mut self, irq: SmmuIrq);

    /// An MSI write whose address is not guest RAM (the ITS doorbell): the VMM signals it with
    /// the vSMMU's own MSI device ID. Returns false when nothing answers at that address (the
    /// model then reports an MSI abort in GERROR).
    fn msi(&mut self, message: MsiMessage) -> bool;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("guest memory access at {address:#x}+{len:#x} failed")]
pub struct GuestMemoryFault {
    pub address: u64,
    pub len: usize,
}

/// Guest physical memory as the model's table walks and queue accesses see it.
pub trait GuestMemoryAccess: Send {
    fn read(&self, address: u64, data: &mut [u8]) -> Result<(), GuestMemoryFault>;
    fn write(&self, address: u64, data: &[u8]) -> Result<(), GuestMemoryFault>;
    /// True when all of `address..address + len` is guest RAM.
    fn contains(&self, address: u64, len: u64) -> bool;
}

impl<M: GuestMemory + Send> GuestMemoryAccess for M {
    fn read(&self, address: u64, data: &mut [u8]) -> Result<(), GuestMemoryFault> {
        let len = data.len();
        let done = GuestMemoryAccess::contains(self, address, len as u64)
            && self.read_slice(data, GuestAddress(address)).is_ok();
        done.then_some(()).ok_or(GuestMemoryFault { address, len })
    }

    fn write(&self, address: u64, data: &[u8]) -> Result<(), GuestMemoryFault> {
        let len = data.len();
        let done = GuestMemoryAccess::contains(self, address, len as u64)
            && self.write_slice(data, GuestAddress(address)).is_ok();
        done.then_some(()).ok_or(GuestMemoryFault { address, len })
    }

    fn contains(&self, address: u64, len: u64) -> bool {
        let (Ok(len), Some(_)) = (usize::try_from(len), address.checked_add(len)) else {
            return false;
        };
        GuestMemory::check_range(self, GuestAddress(address), len, Permissions::ReadWrite)
    }
}
