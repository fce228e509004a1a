//! The guest-visible PCI layer: a shadowed configuration space per function, MSI and MSI-X
//! capability models, and a root complex that dispatches ECAM and BAR accesses to functions.
//!
//! Functions never touch KVM: their writes return explicit results (BAR moves, decode changes,
//! interrupt routes) that the [`PciRoot`] hands to the VMM through [`PciSegmentHost`].

pub mod capability;
pub mod config;
pub mod msi;
pub mod root;

use std::fmt;

pub use config::{
    ActiveBar, BarKind, BarMove, BarSpace, Command, ConfigError, ConfigSpace, ConfigWriteResult,
    Header,
};
pub use msi::{InterruptRoute, MsiMessage};
pub use root::{DirectMapping, PciError, PciRoot, PciSegmentHost, PciWindow};

/// Bus, device and function of a PCI function inside its segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciAddress {
    pub bus: u8,
    pub device: u8,
    pub function: u8,
}

impl PciAddress {
    pub const MAX_DEVICE: u8 = 31;
    pub const MAX_FUNCTION: u8 = 7;

    /// `None` when the device or function number is out of range.
    pub fn new(bus: u8, device: u8, function: u8) -> Option<Self> {
        (device <= Self::MAX_DEVICE && function <= Self::MAX_FUNCTION).then_some(PciAddress {
            bus,
            device,
            function,
        })
    }

    /// Requester ID: bus << 8 | device << 3 | function.
    pub fn rid(&self) -> u16 {
        u16::from(self.bus) << 8 | u16::from(self.device) << 3 | u16::from(self.function)
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.device, self.function)
    }
}

/// A part of a BAR, as an offset from the BAR's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct BarRange {
    pub offset: u64,
    pub size: u64,
}

impl BarRange {
    pub const fn new(offset: u64, size: u64) -> Self {
        BarRange { offset, size }
    }

    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.size)
    }
}

/// A guest-visible PCI function.
///
/// Configuration accesses arrive with `offset < 4096` but otherwise unchecked (any width, any
/// alignment): implementations read all-ones for and ignore what they do not accept. BAR accesses
/// arrive for BARs the function reports in [`PciDevice::active_bars`], with the offset inside it.
pub trait PciDevice: Send {
    /// Reads `data.len()` bytes of configuration space at `offset`.
    fn config_read(&mut self, offset: u16, data: &mut [u8]);

    /// Writes configuration space; returns what the bus owner must apply.
    fn config_write(&mut self, offset: u16, data: &[u8]) -> ConfigWriteResult;

    /// The BARs the guest can reach now: programmed (not mid-sizing, not at 0) and with their
    /// space enabled in the command register.
    fn active_bars(&self) -> Vec<ActiveBar>;

    /// A trapped access to BAR `bar` (memory or I/O) at `offset` inside it.
    fn mmio_read(&mut self, bar: u8, offset: u64, data: &mut [u8]);

    /// A trapped write; returns interrupt routes it changed (MSI-X table writes).
    fn mmio_write(&mut self, bar: u8, offset: u64, data: &[u8]) -> Vec<InterruptRoute>;

    /// The parts of memory BAR `bar` the host can map straight into the guest (page aligned);
    /// everything else is trapped. Emulated functions map nothing.
    fn direct_ranges(&self, _bar: u8) -> Vec<BarRange> {
        Vec::new()
    }
}

/// `len` bytes of a raw configuration image (a device's) from `at`; bytes past its end read as 0.
pub(crate) fn raw_bytes(raw: &[u8], at: u16, len: u16) -> Vec<u8> {
    let at = usize::from(at);
    (at..at + usize::from(len))
        .map(|i| raw.get(i).copied().unwrap_or(0))
        .collect()
}

fn raw_le<const N: usize>(raw: &[u8], at: u16) -> [u8; N] {
    std::array::from_fn(|i| raw.get(usize::from(at) + i).copied().unwrap_or(0))
}

pub(crate) fn raw_u8(raw: &[u8], at: u16) -> u8 {
    u8::from_le_bytes(raw_le(raw, at))
}

pub(crate) fn raw_u16(raw: &[u8], at: u16) -> u16 {
    u16::from_le_bytes(raw_le(raw, at))
}

pub(crate) fn raw_u32(raw: &[u8], at: u16) -> u32 {
    u32::from_le_bytes(raw_le(raw, at))
}

/// True for a 1, 2 or 4 byte, naturally aligned access that ends at or before `limit`: the only
/// configuration accesses PCI defines.
pub fn config_access_ok(offset: u64, len: usize, limit: u64) -> bool {
    matches!(len, 1 | 2 | 4)
        && offset.is_multiple_of(len as u64)
        && offset
            .checked_add(len as u64)
            .is_some_and(|end| end <= limit)
}
