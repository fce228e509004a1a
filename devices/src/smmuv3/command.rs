//! Command queue entries (4.1-4.7): 16 bytes, opcode in bits 7:0, decoded into [`Command`].

use super::regs::{IrqCfg, bits};

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

    /// The spec's name, for logs and stats.
    pub fn name(op: u8) -> &'static str {
        match op {
            PREFETCH_CONFIG => "PREFETCH_CONFIG",
            PREFETCH_ADDR => "PREFETCH_ADDR",
            CFGI_STE => "CFGI_STE",
            CFGI_STE_RANGE => "CFGI_STE_RANGE",
            CFGI_CD => "CFGI_CD",
            CFGI_CD_ALL => "CFGI_CD_ALL",
            TLBI_NH_ALL => "TLBI_NH_ALL",
            TLBI_NH_ASID => "TLBI_NH_ASID",
            TLBI_NH_VA => "TLBI_NH_VA",
            TLBI_NH_VAA => "TLBI_NH_VAA",
            TLBI_EL2_ALL => "TLBI_EL2_ALL",
            TLBI_EL2_ASID => "TLBI_EL2_ASID",
            TLBI_EL2_VA => "TLBI_EL2_VA",
            TLBI_EL2_VAA => "TLBI_EL2_VAA",
            TLBI_NSNH_ALL => "TLBI_NSNH_ALL",
            ATC_INV => "ATC_INV",
            RESUME => "RESUME",
            STALL_TERM => "STALL_TERM",
            CMD_SYNC => "CMD_SYNC",
            _ => "illegal",
        }
    }
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
    /// TLBI_*, ATC_INV, CFGI_CD, CFGI_CD_ALL: handed to the backend as the raw entry.
    Invalidate([u64; 2]),
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
                let span_bits = bits(w1, 4, 0) as u32 + 1;
                let span_mask = if span_bits >= 32 {
                    u32::MAX
                } else {
                    (1 << span_bits) - 1
                };
                Command::CfgiSteRange {
                    first: sid & !span_mask,
                    last: sid | span_mask,
                }
            }
            opcode::CFGI_CD
            | opcode::CFGI_CD_ALL
            | opcode::TLBI_NH_ALL
            | opcode::TLBI_NH_ASID
            | opcode::TLBI_NH_VA
            | opcode::TLBI_NH_VAA
            | opcode::TLBI_NSNH_ALL
            | opcode::ATC_INV => Command::Invalidate(words),
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
            op => return Err(CommandError::Opcode(op)),
        })
    }

    /// CFGI_CD_ALL for `sid`, built by the model (see `Smmuv3::refresh_stream`).
    pub fn cfgi_cd_all(sid: u32) -> [u64; 2] {
        [u64::from(opcode::CFGI_CD_ALL) | u64::from(sid) << 32, 0]
    }
}
