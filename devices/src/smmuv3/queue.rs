//! Circular queue geometry and index arithmetic shared by the command and event queues (3.5).
//!
//! A PROD or CONS value holds the entry index in its low `log2size` bits and the wrap bit just
//! above; equal indices mean empty when the wrap bits agree and full when they differ.

use super::regs::QueueBase;

/// One queue as the guest configured it, with its size clamped to what IDR1 advertises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Queue {
    base: u64,
    log2size: u8,
    entry_size: u64,
}

impl Queue {
    /// `max_log2size` is the IDR1 field (CMDQS or EVENTQS); larger guest values are clamped.
    pub fn new(base: QueueBase, max_log2size: u8, entry_size: u64) -> Self {
        Queue {
            base: base.address(),
            log2size: base.log2size().min(max_log2size),
            entry_size,
        }
    }

    pub fn entries(&self) -> u32 {
        1 << self.log2size
    }

    /// Index and wrap bit of a PROD or CONS value; everything above is dropped.
    pub fn pointer(&self, value: u32) -> u32 {
        value & ((2u32 << self.log2size) - 1)
    }

    fn index(&self, pointer: u32) -> u32 {
        pointer & (self.entries() - 1)
    }

    fn wrap(&self, pointer: u32) -> bool {
        pointer & self.entries() != 0
    }

    pub fn is_empty(&self, prod: u32, cons: u32) -> bool {
        self.pointer(prod) == self.pointer(cons)
    }

    pub fn is_full(&self, prod: u32, cons: u32) -> bool {
        self.index(prod) == self.index(cons) && self.wrap(prod) != self.wrap(cons)
    }

    /// The next pointer (index + 1, flipping the wrap bit at the end).
    pub fn next(&self, pointer: u32) -> u32 {
        self.pointer(self.pointer(pointer) + 1)
    }

    /// The guest physical address of the entry `pointer` designates; `None` if it wraps the
    /// address space (the guest picked a base near the top).
    pub fn entry_address(&self, pointer: u32) -> Option<u64> {
        self.base
            .checked_add(u64::from(self.index(pointer)) * self.entry_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_and_clamps() {
        // log2size 10 requested, 2 allowed: four entries.
        let q = Queue::new(QueueBase(0x1000 | 10), 2, 16);
        assert_eq!(q.entries(), 4);
        assert!(q.is_empty(0, 0));
        assert!(q.is_full(0b100, 0));
        assert!(!q.is_full(0b011, 0));
        assert_eq!(q.next(0b011), 0b100);
        assert_eq!(q.next(0b111), 0);
        assert_eq!(q.entry_address(0b110), Some(0x1020));
        assert_eq!(q.pointer(0xffff_fff5), 0b101);
        let top = Queue::new(QueueBase(QueueBase::ADDRESS_MASK | 2), 2, 16);
        assert!(top.entry_address(3).is_some());
    }
}
