//! Helpers shared by the crate's tests.

use crate::pci::BarKind;

pub const M32: BarKind = BarKind::Memory32 {
    prefetchable: false,
};
pub const M64: BarKind = BarKind::Memory64 {
    prefetchable: false,
};
pub const M64_PREF: BarKind = BarKind::Memory64 { prefetchable: true };

/// A console writer the test reads while the device model owns it.
#[derive(Clone, Default)]
pub struct Sink(pub std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

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
