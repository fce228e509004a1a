//! Event queue records (7.3): 32 bytes; the model builds the configuration errors it detects
//! itself, host events arrive already encoded.

use super::regs::mask;
use super::ste::StreamFault;

pub const EVENT_BYTES: u64 = 32;

/// The event type numbers the model raises (7.3, bits 7:0 of word 0).
pub mod event_id {
    pub const C_BAD_STREAMID: u8 = 0x02;
    pub const F_STE_FETCH: u8 = 0x03;
    pub const C_BAD_STE: u8 = 0x04;
}

/// An event record as four little-endian words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event(pub [u64; 4]);

impl Event {
    /// The record a configuration fault of StreamID `sid` produces (no SubstreamID).
    pub fn for_stream_fault(sid: u32, fault: StreamFault) -> Self {
        let (id, fetch_address) = match fault {
            StreamFault::BadStreamId => (event_id::C_BAD_STREAMID, 0),
            StreamFault::Fetch(address) => (event_id::F_STE_FETCH, address & mask(51, 3)),
            StreamFault::BadSte(_) => (event_id::C_BAD_STE, 0),
        };
        Event([u64::from(id) | u64::from(sid) << 32, 0, 0, fetch_address])
    }
}
