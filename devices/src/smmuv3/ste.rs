//! The stream table (5.2) and Stream Table Entries (5.2, STE): locating a StreamID's STE in guest
//! memory, linear or 2-level, and validating it into a typed [`Ste`].

use super::SmmuFeatures;
use super::backend::{GuestMemoryAccess, StreamConfig};
use super::cd::cd_table_bytes;
use super::regs::{StrtabBase, StrtabBaseCfg, bits, mask, place};

pub const STE_BYTES: u64 = 64;
const L1_DESCRIPTOR_BYTES: u64 = 8;

/// Why a StreamID has no usable configuration; each maps to the event the guest receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StreamFault {
    /// C_BAD_STREAMID: the StreamID is beyond the table (or the table format is reserved).
    #[error("StreamID outside the stream table")]
    BadStreamId,
    /// F_STE_FETCH: the L1 descriptor or STE is not in guest RAM.
    #[error("stream table fetch at {0:#x} failed")]
    Fetch(u64),
    /// C_BAD_STE: a valid STE the model cannot honour.
    #[error("illegal STE: {0}")]
    BadSte(&'static str),
}

/// The stream table as SMMU_STRTAB_BASE(_CFG) describe it, LOG2SIZE clamped to IDR1.SIDSIZE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamTable {
    base: u64,
    log2size: u8,
    format: StreamTableFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamTableFormat {
    Linear,
    /// StreamID bits below `split` index the level-2 table.
    TwoLevel {
        split: u8,
    },
    /// A reserved FMT or SPLIT, or 2-level without IDR0.ST_LEVEL: no StreamID resolves.
    Invalid,
}

impl StreamTable {
    pub fn new(base: StrtabBase, cfg: StrtabBaseCfg, features: &SmmuFeatures) -> Self {
        let format = match cfg.format() {
            0 => StreamTableFormat::Linear,
            1 if features.two_level_stream_table => match cfg.split() {
                split @ (6 | 8 | 10) => StreamTableFormat::TwoLevel { split },
                _ => StreamTableFormat::Invalid,
            },
            _ => StreamTableFormat::Invalid,
        };
        StreamTable {
            base: base.address(),
            log2size: cfg.log2size().min(features.sid_bits),
            format,
        }
    }

    /// The STE's words for `sid`; `Ok(None)` when the table holds no valid entry for it (an
    /// invalid L1 descriptor, a StreamID past its span, or STE.V = 0): the stream aborts
    /// quietly, as Linux leaves unused StreamIDs.
    pub fn fetch(
        &self,
        sid: u32,
        memory: &dyn GuestMemoryAccess,
    ) -> Result<Option<[u64; 8]>, StreamFault> {
        if u64::from(sid) >> self.log2size != 0 {
            return Err(StreamFault::BadStreamId);
        }
        let ste_address = match self.format {
            StreamTableFormat::Invalid => return Err(StreamFault::BadStreamId),
            StreamTableFormat::Linear => self.base.checked_add(u64::from(sid) * STE_BYTES),
            StreamTableFormat::TwoLevel { split } => {
                let l1_address = self
                    .base
                    .checked_add((u64::from(sid) >> split) * L1_DESCRIPTOR_BYTES)
                    .ok_or(StreamFault::Fetch(self.base))?;
                let [l1] = read_words(memory, l1_address)?;
                let l1 = L1StreamDescriptor(l1);
                let Some(entries) = l1.entries(split) else {
                    return Ok(None);
                };
                let l2_index = u64::from(sid) & ((1 << split) - 1);
                if l2_index >= entries {
                    return Ok(None);
                }
                l1.l2_address().checked_add(l2_index * STE_BYTES)
            }
        };
        let ste_address = ste_address.ok_or(StreamFault::Fetch(self.base))?;
        let words: [u64; 8] = read_words(memory, ste_address)?;
        Ok((words[0] & Ste::V != 0).then_some(words))
    }
}

/// `N` little-endian words of guest memory at `address`.
fn read_words<const N: usize>(
    memory: &dyn GuestMemoryAccess,
    address: u64,
) -> Result<[u64; N], StreamFault> {
    let mut raw = [[0u8; 8]; N];
    memory
        .read(address, raw.as_flattened_mut())
        .map_err(|_| StreamFault::Fetch(address))?;
    Ok(raw.map(u64::from_le_bytes))
}

/// A level-1 stream table descriptor (5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L1StreamDescriptor(pub u64);

impl L1StreamDescriptor {
    /// How many STEs its level-2 table holds: 2^(Span - 1); `None` for Span 0 (invalid) and
    /// reserved spans larger than the split allows.
    pub fn entries(self, split: u8) -> Option<u64> {
        let span = bits(self.0, 4, 0) as u8;
        (span != 0 && span <= split + 1).then(|| 1 << (span - 1))
    }

    pub fn l2_address(self) -> u64 {
        self.0 & mask(51, 6)
    }
}

/// STE.Config (5.2), with its encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SteConfig {
    Abort = 0b000,
    Bypass = 0b100,
    Stage1 = 0b101,
}

/// STE.S1Fmt: the context descriptor table's layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CdTableFormat {
    Linear = 0,
    /// 2-level with 4 KiB level-2 tables (64 CDs each).
    TwoLevel4K = 1,
    /// 2-level with 64 KiB level-2 tables (1024 CDs each).
    TwoLevel64K = 2,
}

/// STE.S1DSS: what a transaction without a SubstreamID does when S1CDMax != 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultSubstream {
    Terminate = 0,
    Bypass = 1,
    Substream0 = 2,
}

/// A valid STE the model accepts (V = 1), parsed from the guest's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ste {
    pub config: SteConfig,
    pub s1_format: CdTableFormat,
    /// S1ContextPtr: the CD (table) address.
    pub s1_context_ptr: u64,
    /// S1CDMax: log2 of the number of CDs (0: one CD, no SubstreamIDs).
    pub s1_cd_max: u8,
    pub s1_dss: DefaultSubstream,
    /// S1CIR, S1COR, S1CSH: cacheability of CD and table walks.
    pub s1_cir: u8,
    pub s1_cor: u8,
    pub s1_csh: u8,
    pub s1_stall_disable: bool,
    /// EATS as the guest wrote it (ignored: IDR0.ATS is 0).
    pub eats: u8,
}

impl Ste {
    pub const V: u64 = 1 << 0;

    /// Validates a fetched STE (V = 1) against what the vSMMU advertises and guest RAM.
    pub fn parse(
        words: &[u64; 8],
        features: &SmmuFeatures,
        memory: &dyn GuestMemoryAccess,
    ) -> Result<Ste, StreamFault> {
        let [w0, w1, ..] = *words;
        let config = match bits(w0, 3, 1) {
            0b000 => SteConfig::Abort,
            0b100 => SteConfig::Bypass,
            0b101 => SteConfig::Stage1,
            0b110 | 0b111 => return Err(StreamFault::BadSte("stage 2 is not implemented")),
            _ => return Err(StreamFault::BadSte("reserved Config")),
        };
        let s1_cd_max = bits(w0, 63, 59) as u8;
        let s1_format = match bits(w0, 5, 4) {
            0 => CdTableFormat::Linear,
            1 => CdTableFormat::TwoLevel4K,
            2 => CdTableFormat::TwoLevel64K,
            _ => CdTableFormat::Linear,
        };
        let s1_dss = match bits(w1, 1, 0) {
            0 => DefaultSubstream::Terminate,
            1 => DefaultSubstream::Bypass,
            2 => DefaultSubstream::Substream0,
            _ => DefaultSubstream::Terminate,
        };
        let ste = Ste {
            config,
            s1_format,
            s1_context_ptr: w0 & mask(51, 6),
            s1_cd_max,
            s1_dss,
            s1_cir: bits(w1, 3, 2) as u8,
            s1_cor: bits(w1, 5, 4) as u8,
            s1_csh: bits(w1, 7, 6) as u8,
            s1_stall_disable: w1 & (1 << 27) != 0,
            eats: bits(w1, 29, 28) as u8,
        };
        if config != SteConfig::Stage1 {
            return Ok(ste);
        }
        // S1Fmt and S1DSS only matter when there are SubstreamIDs.
        if s1_cd_max != 0 {
            if s1_cd_max > features.ssid_bits {
                return Err(StreamFault::BadSte("S1CDMax beyond SSIDSIZE"));
            }
            match bits(w0, 5, 4) {
                3 => return Err(StreamFault::BadSte("reserved S1Fmt")),
                1 | 2 if !features.two_level_cd_table => {
                    return Err(StreamFault::BadSte("2-level CD table not offered"));
                }
                _ => {}
            }
            if bits(w1, 1, 0) == 3 {
                return Err(StreamFault::BadSte("reserved S1DSS"));
            }
        }
        if ste.s1_stall_disable && features.stall_model == 2 {
            return Err(StreamFault::BadSte("S1STALLD with forced stalls"));
        }
        let table_bytes = cd_table_bytes(ste.s1_format, ste.s1_cd_max);
        if !memory.contains(ste.s1_context_ptr, table_bytes) {
            return Err(StreamFault::BadSte("CD table outside guest RAM"));
        }
        Ok(ste)
    }

    /// What the backend is told.
    pub fn stream_config(&self) -> StreamConfig {
        match self.config {
            SteConfig::Abort => StreamConfig::Abort,
            SteConfig::Bypass => StreamConfig::Bypass,
            SteConfig::Stage1 => StreamConfig::Stage1(self.nested()),
        }
    }

    /// The canonical STE: words 0 and 1 re-encoded from the validated fields only.
    pub fn nested(&self) -> NestedSte {
        let w0 = Self::V
            | place(self.config as u64, 3, 1)
            | place(self.s1_format as u64, 5, 4)
            | self.s1_context_ptr
            | place(self.s1_cd_max.into(), 63, 59);
        let w1 = place(self.s1_dss as u64, 1, 0)
            | place(self.s1_cir.into(), 3, 2)
            | place(self.s1_cor.into(), 5, 4)
            | place(self.s1_csh.into(), 7, 6)
            | if self.s1_stall_disable { 1 << 27 } else { 0 };
        NestedSte([w0, w1])
    }
}

/// STE words 0 and 1 as backends receive them, holding exactly the fields iommufd accepts for
/// `IOMMU_HWPT_DATA_ARM_SMMUV3`: word 0 V, Config, S1Fmt, S1ContextPtr, S1CDMax; word 1 S1DSS,
/// S1CIR, S1COR, S1CSH, S1STALLD, EATS (always 0: the model does not advertise ATS). Made only
/// by [`Ste::nested`], so no backend masks a guest STE again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NestedSte(pub(super) [u64; 2]);

impl NestedSte {
    /// V = 1, Config = abort.
    pub const ABORT: NestedSte = NestedSte([Ste::V, 0]);
    /// V = 1, Config = bypass.
    pub const BYPASS: NestedSte = NestedSte([Ste::V | 0b100 << 1, 0]);

    pub fn words(&self) -> [u64; 2] {
        self.0
    }
}
