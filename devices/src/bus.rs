//! Address-range dispatch of trapped guest accesses (MMIO or port I/O) to device models.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

/// A device model that handles accesses to its registers. Offsets are relative to the start of the
/// range the device was inserted at; `data.len()` is the access width (1, 2, 4 or 8).
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("range {base:#x}+{size:#x} is empty or wraps around")]
    BadRange { base: u64, size: u64 },
    #[error("range {base:#x}+{size:#x} overlaps {other_base:#x}+{other_size:#x}")]
    Overlap {
        base: u64,
        size: u64,
        other_base: u64,
        other_size: u64,
    },
}

struct Entry {
    size: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// Non-overlapping ranges, each owned by one device. Ranges can be added and removed while vCPUs
/// dispatch (a guest moving a BAR); a device is called without the bus lock held, so it may
/// change the bus itself.
#[derive(Default)]
pub struct Bus {
    ranges: RwLock<BTreeMap<u64, Entry>>,
}

impl Bus {
    pub fn new() -> Self {
        Bus::default()
    }

    pub fn insert(
        &self,
        base: u64,
        size: u64,
        device: Arc<Mutex<dyn BusDevice>>,
    ) -> Result<(), BusError> {
        let mut ranges = self.ranges.write().expect("bus lock poisoned");
        let end = base.checked_add(size).filter(|_| size > 0);
        let Some(end) = end else {
            return Err(BusError::BadRange { base, size });
        };
        // The closest range starting below `end` is the only one that can overlap.
        if let Some((&other_base, other)) = ranges.range(..end).next_back()
            && other_base + other.size > base
        {
            return Err(BusError::Overlap {
                base,
                size,
                other_base,
                other_size: other.size,
            });
        }
        ranges.insert(base, Entry { size, device });
        Ok(())
    }

    /// Removes the range starting at `base`; returns whether there was one.
    pub fn remove(&self, base: u64) -> bool {
        self.ranges
            .write()
            .expect("bus lock poisoned")
            .remove(&base)
            .is_some()
    }

    fn find(&self, addr: u64, len: usize) -> Option<(u64, Arc<Mutex<dyn BusDevice>>)> {
        let ranges = self.ranges.read().expect("bus lock poisoned");
        let (&base, entry) = ranges.range(..=addr).next_back()?;
        let offset = addr - base;
        // The whole access must fall inside the device's range.
        (offset.checked_add(len as u64)? <= entry.size).then(|| (offset, entry.device.clone()))
    }

    /// Dispatches a read; returns false (and fills `data` with all-ones, as an unclaimed bus
    /// reads) when no device owns the whole access.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        let Some((offset, device)) = self.find(addr, data.len()) else {
            data.fill(0xff);
            return false;
        };
        let mut device = device.lock().expect("a device model panicked");
        device.read(offset, data);
        true
    }

    /// Dispatches a write; returns false when no device owns the whole access (it is dropped).
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        let Some((offset, device)) = self.find(addr, data.len()) else {
            return false;
        };
        let mut device = device.lock().expect("a device model panicked");
        device.write(offset, data);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Remembers the last write, reads back its offset.
    #[derive(Default)]
    struct Probe {
        last: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Probe {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last = Some((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_range_and_offset() {
        let bus = Bus::new();
        let a = Arc::new(Mutex::new(Probe::default()));
        bus.insert(0x1000, 0x10, a.clone()).unwrap();
        bus.insert(0x1010, 0x10, Arc::new(Mutex::new(Probe::default())))
            .unwrap();
        let mut data = [0u8; 2];
        assert!(bus.read(0x1004, &mut data));
        assert_eq!(data, [4, 4]);
        assert!(bus.write(0x100e, &[1, 2]));
        assert_eq!(a.lock().unwrap().last, Some((0xe, vec![1, 2])));
    }

    #[test]
    fn unclaimed_and_straddling_accesses_miss() {
        let bus = Bus::new();
        bus.insert(0x1000, 0x10, Arc::new(Mutex::new(Probe::default())))
            .unwrap();
        let mut data = [0u8; 4];
        assert!(!bus.read(0xfff, &mut data));
        assert_eq!(data, [0xff; 4]);
        assert!(!bus.read(0x100e, &mut data)); // runs past the end
        assert!(!bus.write(0x1010, &[0]));
        assert!(!bus.read(u64::MAX, &mut data));
    }

    #[test]
    fn rejects_overlaps_and_bad_ranges() {
        let bus = Bus::new();
        let dev = || Arc::new(Mutex::new(Probe::default()));
        bus.insert(0x1000, 0x10, dev()).unwrap();
        assert!(matches!(
            bus.insert(0xff8, 0x10, dev()),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(0x100f, 1, dev()),
            Err(BusError::Overlap { .. })
        ));
        assert_eq!(
            bus.insert(0x2000, 0, dev()),
            Err(BusError::BadRange {
                base: 0x2000,
                size: 0
            })
        );
        assert!(bus.insert(u64::MAX, 2, dev()).is_err());
        bus.insert(0x1010, 0x10, dev()).unwrap();
        bus.insert(0xff0, 0x10, dev()).unwrap();
        assert!(bus.remove(0x1010));
        assert!(!bus.remove(0x1010));
        bus.insert(0x1018, 0x8, dev()).unwrap();
    }
}
