//! Context descriptors (5.4, CD) and their tables. The nested backend never reads them (the host
//! SMMU walks them through stage 2); the model sizes the table to validate an STE, and a shadow
//! backend can locate and parse one.

use super::backend::GuestMemoryAccess;
use super::regs::{bits, mask};
use super::ste::{CdTableFormat, Ste};

pub const CD_BYTES: u64 = 64;
const L1_CD_DESCRIPTOR_BYTES: u64 = 8;

/// log2 of the CDs one level-2 table holds.
fn split(format: CdTableFormat) -> Option<u8> {
    match format {
        CdTableFormat::Linear => None,
        CdTableFormat::TwoLevel4K => Some(6),
        CdTableFormat::TwoLevel64K => Some(10),
    }
}

/// The bytes at S1ContextPtr the SMMU may read: the linear CD table or the level-1 table.
pub fn cd_table_bytes(format: CdTableFormat, s1_cd_max: u8) -> u64 {
    let cds = 1u64 << s1_cd_max;
    match split(format) {
        _ if s1_cd_max == 0 => CD_BYTES,
        None => cds * CD_BYTES,
        Some(split) => (cds >> split).max(1) * L1_CD_DESCRIPTOR_BYTES,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CdFault {
    /// C_BAD_SUBSTREAMID.
    #[error("SubstreamID {0} beyond S1CDMax")]
    BadSubstreamId(u32),
    /// F_CD_FETCH.
    #[error("CD fetch at {0:#x} failed")]
    Fetch(u64),
    /// The level-1 descriptor is invalid (C_BAD_CD on a transaction).
    #[error("level-1 CD descriptor invalid")]
    InvalidL1,
}

/// The guest physical address of the CD for `ssid` under a stage-1 STE.
pub fn cd_address(ste: &Ste, ssid: u32, memory: &dyn GuestMemoryAccess) -> Result<u64, CdFault> {
    if u64::from(ssid) >> ste.s1_cd_max != 0 {
        return Err(CdFault::BadSubstreamId(ssid));
    }
    let base = ste.s1_context_ptr;
    let ssid = u64::from(ssid);
    let Some(split) = split(ste.s1_format).filter(|_| ste.s1_cd_max != 0) else {
        return base
            .checked_add(ssid * CD_BYTES)
            .ok_or(CdFault::Fetch(base));
    };
    let l1_address = base
        .checked_add((ssid >> split) * L1_CD_DESCRIPTOR_BYTES)
        .ok_or(CdFault::Fetch(base))?;
    let mut raw = [0u8; 8];
    memory
        .read(l1_address, &mut raw)
        .map_err(|_| CdFault::Fetch(l1_address))?;
    let l1 = u64::from_le_bytes(raw);
    if l1 & 1 == 0 {
        return Err(CdFault::InvalidL1);
    }
    (l1 & mask(51, 12))
        .checked_add((ssid & ((1 << split) - 1)) * CD_BYTES)
        .ok_or(CdFault::Fetch(l1_address))
}

/// The stage-1 fields of a context descriptor (the TTB1 half is unused by Linux and omitted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContextDescriptor {
    pub valid: bool,
    pub t0sz: u8,
    /// TG0: 0 = 4 KiB, 1 = 64 KiB, 2 = 16 KiB.
    pub tg0: u8,
    pub epd0: bool,
    pub epd1: bool,
    /// ENDI: big-endian tables (the model advertises little-endian only).
    pub big_endian: bool,
    pub ips: u8,
    pub aa64: bool,
    pub asid: u16,
    pub ttb0: u64,
    pub mair: u64,
}

impl ContextDescriptor {
    pub fn parse(words: &[u64; 8]) -> Self {
        let [w0, w1, _, w3, ..] = *words;
        ContextDescriptor {
            valid: w0 & (1 << 31) != 0,
            t0sz: bits(w0, 5, 0) as u8,
            tg0: bits(w0, 7, 6) as u8,
            epd0: w0 & (1 << 14) != 0,
            epd1: w0 & (1 << 30) != 0,
            big_endian: w0 & (1 << 15) != 0,
            ips: bits(w0, 34, 32) as u8,
            aa64: w0 & (1 << 41) != 0,
            asid: bits(w0, 63, 48) as u16,
            ttb0: w1 & mask(51, 4),
            mair: w3,
        }
    }
}
