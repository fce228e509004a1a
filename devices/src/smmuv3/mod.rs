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
pub mod queue;
pub mod regs;
pub mod ste;
#[cfg(test)]
mod tests;

pub use backend::{
    BackendError, EventBatch, GuestMemoryAccess, GuestMemoryFault, SmmuBackend, SmmuInterrupts,
    SmmuIrq, StreamConfig,
};
pub use device::{SmmuStats, Smmuv3};

/// log2 of the largest command queue the guest may configure (IDR1.CMDQS): 4096 entries, 64 KiB.
pub const CMDQS: u8 = 12;
/// log2 of the largest event queue (IDR1.EVENTQS): 1024 entries, 32 KiB.
pub const EVENTQS: u8 = 10;

/// What the vSMMU advertises: the plan's feature set, computed from the host's IDRs.
pub use arch::platform::SmmuFeatures;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SmmuError {
    #[error("feature {field} = {value} is beyond what an SMMUv3 can advertise")]
    Feature { field: &'static str, value: u32 },
    #[error("StreamID {sid:#x} needs more than {sid_bits} bits")]
    StreamId { sid: u32, sid_bits: u8 },
}

/// Checks every field of `features` fits its IDR encoding.
pub fn validate_features(features: &SmmuFeatures) -> Result<(), SmmuError> {
    features.check()
}

/// IDR0-5 for `features` plus the fixed bits the model implements.
pub fn id_registers(features: &SmmuFeatures) -> [u32; 6] {
    features.encode()
}

/// The checks and encodings as methods (a local trait: the type belongs to the plan).
pub(crate) trait FeatureRegisters {
    fn check(&self) -> Result<(), SmmuError>;
    fn oas_encoding(&self) -> Option<u32>;
    fn encode(&self) -> [u32; 6];
    fn aidr(&self) -> u32;
}

impl FeatureRegisters for SmmuFeatures {
    /// Checks every field fits its IDR encoding.
    fn check(&self) -> Result<(), SmmuError> {
        let bad = |field, value: u8| {
            Err(SmmuError::Feature {
                field,
                value: value.into(),
            })
        };
        if self.sid_bits > 32 {
            return bad("sid_bits", self.sid_bits);
        }
        if self.ssid_bits > 20 {
            return bad("ssid_bits", self.ssid_bits);
        }
        if self.oas_encoding().is_none() {
            return bad("oas_bits", self.oas_bits);
        }
        if self.stall_model > 2 {
            return bad("stall_model", self.stall_model);
        }
        if !(self.granule_4k || self.granule_16k || self.granule_64k) {
            return bad("granules", 0);
        }
        Ok(())
    }

    /// IDR5.OAS.
    fn oas_encoding(&self) -> Option<u32> {
        Some(match self.oas_bits {
            32 => 0,
            36 => 1,
            40 => 2,
            42 => 3,
            44 => 4,
            48 => 5,
            52 => 6,
            _ => return None,
        })
    }

    /// IDR0..IDR5 (6.3.1-6.3.6).
    fn encode(&self) -> [u32; 6] {
        let flag = |on: bool, bit: u32| if on { 1 << bit } else { 0 };
        let idr0 = (1 << 1) // S1P
            | (0b10 << 2) // TTF: AArch64
            | (1 << 4) // COHACC
            | flag(self.asid16, 12)
            | (1 << 13) // MSI
            | flag(self.two_level_cd_table, 19)
            | (0b10 << 21) // TTENDIAN: little-endian
            | u32::from(self.stall_model & 3) << 24
            | flag(self.two_level_stream_table, 27);
        let idr1 = u32::from(self.sid_bits.min(32))
            | u32::from(self.ssid_bits.min(20)) << 6
            | u32::from(EVENTQS) << 16
            | u32::from(CMDQS) << 21;
        let idr3 = flag(self.range_invalidation, 10);
        let idr5 = self.oas_encoding().unwrap_or(5)
            | flag(self.granule_4k, 4)
            | flag(self.granule_16k, 5)
            | flag(self.granule_64k, 6);
        [idr0, idr1, 0, idr3, 0, idr5]
    }

    /// AIDR: SMMUv3.1, or v3.2 when range invalidation (a v3.2 feature) is advertised.
    fn aidr(&self) -> u32 {
        if self.range_invalidation { 0x02 } else { 0x01 }
    }
}
