//! Helpers shared by the crate's tests.

use crate::pci::BarKind;

pub const M32: BarKind = BarKind::Memory32 {
    prefetchable: false,
};
pub const M64: BarKind = BarKind::Memory64 {
    prefetchable: false,
};
pub const M64_PREF: BarKind = BarKind::Memory64 { prefetchable: true };

/// Seeded xorshift64 for the never-panic tests, no dependencies.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}
