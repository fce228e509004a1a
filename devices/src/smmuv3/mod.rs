//! A guest-visible Arm SMMUv3 (IHI 0070) whose translations the host applies: the register file,
//! the command queue consumer, the stream table walk and the event queue producer live here; what
//! a StreamID's configuration means on the host, and how invalidations reach the hardware, is the
//! [`SmmuBackend`]'s business.
//!
//! The VMM creates one [`Smmuv3`] per vSMMU, inserts it on the MMIO bus over
//! `VirtualSmmu::registers` ([`regs::MMIO_SIZE`]), registers the StreamIDs of the devices behind
//! it with [`Smmuv3::add_stream`], and calls [`Smmuv3::service_host_events`] when the backend's
//! event source is readable. Interrupts leave through [`SmmuInterrupts`].
//!
//! What the model implements: stage 1 only (no S2P, no HYP, no ATS/PRI, no SEV), AArch64
//! little-endian tables, MSIs and wired interrupts, coherent accesses.

pub mod backend;
pub mod cd;
pub mod command;
mod device;
pub mod event;
pub mod fake;
pub mod features;
pub mod idr;
pub mod queue;
pub mod regs;
pub mod ste;
#[cfg(test)]
mod tests;

pub use backend::{
    BackendError, BackendStats, EventBatch, GuestMemoryAccess, GuestMemoryFault, SmmuBackend,
    SmmuInterrupts, SmmuIrq, SmmuMode, StreamConfig,
};
pub use command::{Invalidation, InvalidationScope, TlbiVa};
pub use device::{SmmuStats, Smmuv3};
pub use features::{FeatureRegisters, HostSmmuUnfit};
pub use ste::NestedSte;

/// log2 of the largest command queue the guest may configure (IDR1.CMDQS): 4096 entries, 64 KiB.
pub const CMDQS: u8 = 12;
/// log2 of the largest event queue (IDR1.EVENTQS): 1024 entries, 32 KiB.
pub const EVENTQS: u8 = 10;

/// What the vSMMU advertises: the plan's feature set, computed from the host's IDRs by
/// [`FeatureRegisters::from_host`].
pub use arch::platform::SmmuFeatures;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SmmuError {
    #[error("feature {field} = {value} is beyond what an SMMUv3 can advertise")]
    Feature { field: &'static str, value: u32 },
    #[error("StreamID {sid:#x} needs more than {sid_bits} bits")]
    StreamId { sid: u32, sid_bits: u8 },
}
