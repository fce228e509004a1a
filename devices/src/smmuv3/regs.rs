//! The register file's offsets and layouts (IHI 0070 chapter 6), as typed values with accessors.
//!
//! Every layout keeps the guest's raw value; the accessors are the only place that knows where a
//! field lives.

/// Register page 0 and page 1, 64 KiB each.
pub const PAGE_SIZE: u64 = 0x1_0000;
/// The whole MMIO window the device decodes.
pub const MMIO_SIZE: u64 = 2 * PAGE_SIZE;

/// Offsets in page 0 (page 1 holds the queue indices Linux reaches through `page1`).
pub mod offset {
    pub const IDR0: u64 = 0x00;
    pub const IDR1: u64 = 0x04;
    pub const IDR3: u64 = 0x0c;
    pub const IDR5: u64 = 0x14;
    pub const IIDR: u64 = 0x18;
    pub const AIDR: u64 = 0x1c;
    pub const CR0: u64 = 0x20;
    pub const CR0ACK: u64 = 0x24;
    pub const CR1: u64 = 0x28;
    pub const CR2: u64 = 0x2c;
    pub const GBPA: u64 = 0x44;
    pub const IRQ_CTRL: u64 = 0x50;
    pub const IRQ_CTRLACK: u64 = 0x54;
    pub const GERROR: u64 = 0x60;
    pub const GERRORN: u64 = 0x64;
    pub const GERROR_IRQ_CFG0: u64 = 0x68;
    pub const GERROR_IRQ_CFG1: u64 = 0x70;
    pub const GERROR_IRQ_CFG2: u64 = 0x74;
    pub const STRTAB_BASE: u64 = 0x80;
    pub const STRTAB_BASE_CFG: u64 = 0x88;
    pub const CMDQ_BASE: u64 = 0x90;
    pub const CMDQ_PROD: u64 = 0x98;
    pub const CMDQ_CONS: u64 = 0x9c;
    pub const EVENTQ_BASE: u64 = 0xa0;
    /// Also at `PAGE_SIZE + EVENTQ_PROD` (page 1), where Linux accesses it.
    pub const EVENTQ_PROD: u64 = 0xa8;
    /// Also at `PAGE_SIZE + EVENTQ_CONS` (page 1).
    pub const EVENTQ_CONS: u64 = 0xac;
    pub const EVENTQ_IRQ_CFG0: u64 = 0xb0;
    pub const EVENTQ_IRQ_CFG1: u64 = 0xb8;
    pub const EVENTQ_IRQ_CFG2: u64 = 0xbc;

    /// The 64-bit registers (8-byte accesses allowed; 4-byte accesses reach either half).
    pub const REG64: [u64; 5] = [
        GERROR_IRQ_CFG0,
        STRTAB_BASE,
        CMDQ_BASE,
        EVENTQ_BASE,
        EVENTQ_IRQ_CFG0,
    ];
}

/// Bits `lo..=hi` of `value`, shifted down.
pub(crate) const fn bits(value: u64, hi: u32, lo: u32) -> u64 {
    (value >> lo) & (u64::MAX >> (63 - (hi - lo)))
}

/// `field` placed at bits `lo..=hi` (truncated to the field's width).
pub(crate) const fn place(field: u64, hi: u32, lo: u32) -> u64 {
    (field & (u64::MAX >> (63 - (hi - lo)))) << lo
}

/// A mask of bits `lo..=hi`.
pub(crate) const fn mask(hi: u32, lo: u32) -> u64 {
    place(u64::MAX, hi, lo)
}

/// SMMU_CR0 and SMMU_CR0ACK (6.3.9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cr0(pub u32);

impl Cr0 {
    pub const SMMUEN: u32 = 1 << 0;
    pub const EVENTQEN: u32 = 1 << 2;
    pub const CMDQEN: u32 = 1 << 3;
    /// What the model implements; the rest is RES0 (no PRI queue, no ATS check, no VMW).
    pub const IMPLEMENTED: u32 = Self::SMMUEN | Self::EVENTQEN | Self::CMDQEN;

    pub fn from_guest(value: u32) -> Self {
        Cr0(value & Self::IMPLEMENTED)
    }
    pub fn smmu_enabled(self) -> bool {
        self.0 & Self::SMMUEN != 0
    }
    pub fn eventq_enabled(self) -> bool {
        self.0 & Self::EVENTQEN != 0
    }
    pub fn cmdq_enabled(self) -> bool {
        self.0 & Self::CMDQEN != 0
    }
}

/// SMMU_CR1 (6.3.11): table and queue cacheability, recorded only (guest memory is coherent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cr1(pub u32);

impl Cr1 {
    pub fn from_guest(value: u32) -> Self {
        Cr1(value & mask(11, 0) as u32)
    }
}

/// SMMU_CR2 (6.3.12): PTM, RECINVSID (recorded only); E2H is RES0 without IDR0.HYP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cr2(pub u32);

impl Cr2 {
    pub const RECINVSID: u32 = 1 << 1;
    pub const PTM: u32 = 1 << 2;

    pub fn from_guest(value: u32) -> Self {
        Cr2(value & (Self::RECINVSID | Self::PTM))
    }
}

/// SMMU_GBPA (6.3.14): what streams do while SMMUEN is 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gbpa(pub u32);

impl Default for Gbpa {
    /// Reset: bypass, SHCFG = use incoming.
    fn default() -> Self {
        Gbpa(1 << 12)
    }
}

impl Gbpa {
    pub const UPDATE: u32 = 1 << 31;
    pub const ABORT: u32 = 1 << 20;
    /// ABORT, INSTCFG, PRIVCFG, SHCFG, ALLOCCFG, MTCFG, MEMATTR.
    const FIELDS: u32 = (1 << 20) | (0xf << 16) | (0x3 << 12) | (0xf << 8) | (1 << 4) | 0xf;

    /// The fields of a guest write (without UPDATE).
    pub fn from_guest(value: u32) -> Self {
        Gbpa(value & Self::FIELDS)
    }
    pub fn update_requested(value: u32) -> bool {
        value & Self::UPDATE != 0
    }
    pub fn abort(self) -> bool {
        self.0 & Self::ABORT != 0
    }
}

/// SMMU_IRQ_CTRL and SMMU_IRQ_CTRLACK (6.3.16).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IrqCtrl(pub u32);

impl IrqCtrl {
    pub const GERROR_IRQEN: u32 = 1 << 0;
    pub const EVENTQ_IRQEN: u32 = 1 << 2;

    pub fn from_guest(value: u32) -> Self {
        IrqCtrl(value & (Self::GERROR_IRQEN | Self::EVENTQ_IRQEN))
    }
    pub fn gerror(self) -> bool {
        self.0 & Self::GERROR_IRQEN != 0
    }
    pub fn eventq(self) -> bool {
        self.0 & Self::EVENTQ_IRQEN != 0
    }
}

/// SMMU_GERROR / SMMU_GERRORN bits (6.3.18): an error is active while the two differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Gerror(pub u32);

impl Gerror {
    pub const CMDQ_ERR: u32 = 1 << 0;
    pub const EVENTQ_ABT_ERR: u32 = 1 << 2;
    pub const MSI_CMDQ_ABT_ERR: u32 = 1 << 4;
    pub const MSI_EVENTQ_ABT_ERR: u32 = 1 << 5;
    pub const MSI_GERROR_ABT_ERR: u32 = 1 << 7;
    pub const ALL: u32 = 0x1fd;

    pub fn from_guest(value: u32) -> Self {
        Gerror(value & Self::ALL)
    }
}

/// The *_IRQ_CFG0..2 triple of an MSI-capable interrupt source (6.3.19-21, 6.3.31-33).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IrqCfg {
    /// CFG0.ADDR, bits 51:2; 0 means "use the wired interrupt".
    pub address: u64,
    /// CFG1.DATA.
    pub data: u32,
    /// CFG2: SH and MemAttr, recorded only.
    pub attributes: u32,
}

impl IrqCfg {
    pub const ADDRESS_MASK: u64 = mask(51, 2);

    pub fn set_address(&mut self, value: u64) {
        self.address = value & Self::ADDRESS_MASK;
    }
    pub fn set_attributes(&mut self, value: u32) {
        self.attributes = value & 0x3f;
    }
}

/// SMMU_STRTAB_BASE (6.3.23).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StrtabBase(pub u64);

impl StrtabBase {
    pub const RA: u64 = 1 << 62;
    pub const ADDRESS_MASK: u64 = mask(51, 6);

    pub fn from_guest(value: u64) -> Self {
        StrtabBase(value & (Self::RA | Self::ADDRESS_MASK))
    }
    pub fn address(self) -> u64 {
        self.0 & Self::ADDRESS_MASK
    }
}

/// SMMU_STRTAB_BASE_CFG (6.3.24).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StrtabBaseCfg(pub u32);

impl StrtabBaseCfg {
    pub fn from_guest(value: u32) -> Self {
        StrtabBaseCfg(value & (mask(17, 16) | mask(10, 6) | mask(5, 0)) as u32)
    }
    /// FMT: 0 linear, 1 2-level, the rest reserved.
    pub fn format(self) -> u8 {
        bits(self.0.into(), 17, 16) as u8
    }
    pub fn split(self) -> u8 {
        bits(self.0.into(), 10, 6) as u8
    }
    pub fn log2size(self) -> u8 {
        bits(self.0.into(), 5, 0) as u8
    }
}

/// SMMU_CMDQ_BASE and SMMU_EVENTQ_BASE (6.3.25, 6.3.28).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueBase(pub u64);

impl QueueBase {
    pub const RA: u64 = 1 << 62;
    pub const ADDRESS_MASK: u64 = mask(51, 5);

    pub fn from_guest(value: u64) -> Self {
        QueueBase(value & (Self::RA | Self::ADDRESS_MASK | mask(4, 0)))
    }
    pub fn address(self) -> u64 {
        self.0 & Self::ADDRESS_MASK
    }
    pub fn log2size(self) -> u8 {
        bits(self.0, 4, 0) as u8
    }
}

/// SMMU_CMDQ_CONS.ERR (6.3.27): why the command queue stopped (0: it did not; no ATS, so no
/// CERROR_ATC_INV_SYNC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CmdqError {
    /// CERROR_ILL: an illegal or unsupported command.
    Illegal = 1,
    /// CERROR_ABT: the command could not be fetched.
    Abort = 2,
}

impl CmdqError {
    pub const SHIFT: u32 = 24;
    pub const MASK: u32 = 0x7f << Self::SHIFT;
}

/// The overflow flag of EVENTQ_PROD (OVFLG) and the acknowledge flag of EVENTQ_CONS (OVACKFLG).
pub const QUEUE_OVERFLOW_FLAG: u32 = 1 << 31;
