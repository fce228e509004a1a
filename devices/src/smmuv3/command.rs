//! Command queue entries (4.1-4.7): 16 bytes, opcode in bits 7:0, decoded into [`Command`];
//! invalidations into the [`Invalidation`]s backends receive.

use super::regs::{IrqCfg, bits, mask};

/// Command opcodes (4.1.1).
pub mod opcode {
    pub const PREFETCH_CONFIG: u8 = 0x01;
    pub const PREFETCH_ADDR: u8 = 0x02;
    pub const CFGI_STE: u8 = 0x03;
    /// Also CFGI_ALL (Range = 31).
    pub const CFGI_STE_RANGE: u8 = 0x04;
    pub const CFGI_CD: u8 = 0x05;
    pub const CFGI_CD_ALL: u8 = 0x06;
    pub const TLBI_NH_ALL: u8 = 0x10;
    pub const TLBI_NH_ASID: u8 = 0x11;
    pub const TLBI_NH_VA: u8 = 0x12;
    pub const TLBI_NH_VAA: u8 = 0x13;
    pub const TLBI_EL2_ALL: u8 = 0x20;
    pub const TLBI_EL2_ASID: u8 = 0x21;
    pub const TLBI_EL2_VA: u8 = 0x22;
    pub const TLBI_EL2_VAA: u8 = 0x23;
    pub const TLBI_NSNH_ALL: u8 = 0x30;
    pub const ATC_INV: u8 = 0x40;
    pub const RESUME: u8 = 0x44;
    pub const STALL_TERM: u8 = 0x45;
    pub const CMD_SYNC: u8 = 0x46;
}

pub const COMMAND_BYTES: u64 = 16;

/// CMD_SYNC.CS: how completion is signalled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncSignal {
    None,
    /// SIG_IRQ: an MSI to MSIAddress, or the wired sync interrupt when it is 0.
    Irq,
    /// SIG_SEV: no effect here (IDR0.SEV is 0; the guest polls CONS).
    Sev,
}

/// A command the model executes, with the fields it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// PREFETCH_*, RESUME, STALL_TERM, TLBI_EL2_*: nothing to do.
    NoOp,
    CfgiSte {
        sid: u32,
    },
    /// CFGI_STE_RANGE / CFGI_ALL: StreamIDs `first..=last`.
    CfgiSteRange {
        first: u32,
        last: u32,
    },
    /// TLBI_NH_*, TLBI_NSNH_ALL, ATC_INV, CFGI_CD, CFGI_CD_ALL: handed to the backend.
    Invalidate(Invalidation),
    Sync {
        signal: SyncSignal,
        /// MSIAddress (bits 51:2) and MSIData.
        msi_address: u64,
        msi_data: u32,
    },
}

/// An entry the model rejects with CERROR_ILL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("unknown or unsupported opcode {0:#04x}")]
    Opcode(u8),
    #[error("CMD_SYNC with reserved CS")]
    SyncSignal,
}

impl Command {
    pub fn opcode(words: &[u64; 2]) -> u8 {
        words[0] as u8
    }

    pub fn decode(words: [u64; 2]) -> Result<Command, CommandError> {
        let [w0, w1] = words;
        let sid = bits(w0, 63, 32) as u32;
        Ok(match Self::opcode(&words) {
            opcode::PREFETCH_CONFIG
            | opcode::PREFETCH_ADDR
            | opcode::RESUME
            | opcode::STALL_TERM
            | opcode::TLBI_EL2_ALL
            | opcode::TLBI_EL2_ASID
            | opcode::TLBI_EL2_VA
            | opcode::TLBI_EL2_VAA => Command::NoOp,
            opcode::CFGI_STE => Command::CfgiSte { sid },
            opcode::CFGI_STE_RANGE => {
                // Range n covers 2^(n+1) StreamIDs aligned to that size; 31 is all of them.
                let span_mask = u32::MAX >> (31 - bits(w1, 4, 0));
                Command::CfgiSteRange {
                    first: sid & !span_mask,
                    last: sid | span_mask,
                }
            }
            opcode::CMD_SYNC => Command::Sync {
                signal: match bits(w0, 13, 12) {
                    0 => SyncSignal::None,
                    1 => SyncSignal::Irq,
                    2 => SyncSignal::Sev,
                    _ => return Err(CommandError::SyncSignal),
                },
                msi_address: w1 & IrqCfg::ADDRESS_MASK,
                msi_data: bits(w0, 63, 32) as u32,
            },
            op => match Invalidation::decode(words) {
                Some(invalidation) => Command::Invalidate(invalidation),
                None => return Err(CommandError::Opcode(op)),
            },
        })
    }
}

/// An invalidation command decoded, still carrying the guest's 16 bytes for backends that forward
/// commands as they are (the nested backend's IOMMU_HWPT_INVALIDATE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalidation {
    pub scope: InvalidationScope,
    raw: [u64; 2],
}

/// What an invalidation drops (4.3.5-4.3.6, 4.4, 4.5.1). VMIDs are left out: a stage-1-only
/// vSMMU has none the host would use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidationScope {
    /// TLBI_NH_ALL: every stage-1 TLB entry.
    TlbiNhAll,
    /// TLBI_NH_ASID: the TLB entries of one ASID.
    TlbiNhAsid { asid: u16 },
    /// TLBI_NH_VA: an address (range) in one ASID.
    TlbiNhVa { asid: u16, va: TlbiVa },
    /// TLBI_NH_VAA: an address (range) in every ASID.
    TlbiNhVaa { va: TlbiVa },
    /// TLBI_NSNH_ALL: every non-secure, non-hypervisor TLB entry.
    TlbiNsnhAll,
    /// ATC_INV: a device's ATC entries over 4 KiB × 2^`size` at `address` (52: everything), for
    /// one SubstreamID or, without one, none.
    AtcInv {
        sid: u32,
        ssid: Option<u32>,
        global: bool,
        address: u64,
        size: u8,
    },
    /// CFGI_CD: the CD of `ssid` cached for `sid`; `leaf`: not the level-1 descriptor.
    CfgiCd { sid: u32, ssid: u32, leaf: bool },
    /// CFGI_CD_ALL: every CD cached for `sid`.
    CfgiCdAll { sid: u32 },
}

/// The address operand of TLBI_NH_VA and TLBI_NH_VAA (4.4.3-4.4.4), a range with IDR3.RIL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlbiVa {
    /// Address[63:12].
    pub address: u64,
    /// Leaf: only last-level entries.
    pub leaf: bool,
    /// TTL: the table level of the entries, 0 when unknown.
    pub ttl: u8,
    /// TG: the range's granule (1: 4 KiB, 2: 16 KiB, 3: 64 KiB); 0: one address, no range.
    pub tg: u8,
    /// NUM and SCALE: the range is (NUM + 1) × 2^SCALE granules.
    pub num: u8,
    pub scale: u8,
}

impl TlbiVa {
    fn decode([w0, w1]: [u64; 2]) -> Self {
        TlbiVa {
            address: w1 & mask(63, 12),
            leaf: w1 & 1 != 0,
            ttl: bits(w1, 9, 8) as u8,
            tg: bits(w1, 11, 10) as u8,
            num: bits(w0, 16, 12) as u8,
            scale: bits(w0, 24, 20) as u8,
        }
    }

    /// The bytes a range covers; `None` without one (TG 0: the entries mapping `address`).
    pub fn range_bytes(&self) -> Option<u64> {
        let granule_shift = match self.tg {
            1 => 12,
            2 => 14,
            3 => 16,
            _ => return None,
        };
        Some((u64::from(self.num) + 1) << (u32::from(self.scale) + granule_shift))
    }
}

impl Invalidation {
    /// The invalidation in a command queue entry; `None` for other commands.
    pub fn decode(raw: [u64; 2]) -> Option<Self> {
        let [w0, w1] = raw;
        let sid = bits(w0, 63, 32) as u32;
        let ssid = bits(w0, 31, 12) as u32;
        let asid = bits(w0, 63, 48) as u16;
        let scope = match Command::opcode(&raw) {
            opcode::TLBI_NH_ALL => InvalidationScope::TlbiNhAll,
            opcode::TLBI_NH_ASID => InvalidationScope::TlbiNhAsid { asid },
            opcode::TLBI_NH_VA => InvalidationScope::TlbiNhVa {
                asid,
                va: TlbiVa::decode(raw),
            },
            opcode::TLBI_NH_VAA => InvalidationScope::TlbiNhVaa {
                va: TlbiVa::decode(raw),
            },
            opcode::TLBI_NSNH_ALL => InvalidationScope::TlbiNsnhAll,
            opcode::ATC_INV => InvalidationScope::AtcInv {
                sid,
                // SSV.
                ssid: (w0 & 1 << 11 != 0).then_some(ssid),
                global: w0 & 1 << 9 != 0,
                address: w1 & mask(63, 12),
                size: bits(w1, 5, 0) as u8,
            },
            opcode::CFGI_CD => InvalidationScope::CfgiCd {
                sid,
                ssid,
                leaf: w1 & 1 != 0,
            },
            opcode::CFGI_CD_ALL => InvalidationScope::CfgiCdAll { sid },
            _ => return None,
        };
        Some(Invalidation { scope, raw })
    }

    /// CFGI_CD_ALL for `sid`, issued by the model itself (see `Smmuv3::refresh_stream`).
    pub fn cfgi_cd_all(sid: u32) -> Self {
        Invalidation {
            scope: InvalidationScope::CfgiCdAll { sid },
            raw: [u64::from(opcode::CFGI_CD_ALL) | u64::from(sid) << 32, 0],
        }
    }

    /// The command queue entry as the guest wrote it.
    pub fn raw(&self) -> [u64; 2] {
        self.raw
    }

    /// The StreamID the command names (ATC_INV, CFGI_CD, CFGI_CD_ALL).
    pub fn stream_id(&self) -> Option<u32> {
        match self.scope {
            InvalidationScope::AtcInv { sid, .. }
            | InvalidationScope::CfgiCd { sid, .. }
            | InvalidationScope::CfgiCdAll { sid } => Some(sid),
            _ => None,
        }
    }
}
