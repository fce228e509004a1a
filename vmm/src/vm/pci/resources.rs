//! Host resources behind an assigned function, each owned by a value whose `Drop` releases it:
//! a [`MappedBar`] owns a KVM memslot over its host mapping of a VFIO region and removes the
//! memslot before it unmaps; an [`Irqfd`] deassigns itself. KVM and the VFIO region mmap sit
//! behind [`MemslotSink`], [`IrqfdSink`] and [`RegionMapper`], so the release order is tested
//! with fakes.

use std::collections::BTreeMap;
use std::mem::ManuallyDrop;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, PoisonError};

use devices::pci::DirectMapping;
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Error as KvmError, VmFd};
use vfio_ioctls::VfioDevice;
use vmm_sys_util::eventfd::EventFd;

#[derive(Debug, thiserror::Error)]
pub enum MapError {
    #[error("BAR range of {0:#x} bytes does not fit the host's address space")]
    Size(u64),
    #[error("mmap of VFIO region {index} at {offset:#x} ({size:#x} bytes)")]
    Mmap {
        index: u32,
        offset: u64,
        size: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("adding memslot {slot} at guest {gpa:#x}")]
    Memslot {
        slot: u32,
        gpa: u64,
        #[source]
        source: KvmError,
    },
}

/// KVM user memory slots (KVM_SET_USER_MEMORY_REGION).
pub trait MemslotSink: Send + Sync {
    /// Backs guest `gpa..gpa + size` with host memory at `host_addr`.
    ///
    /// # Safety
    /// `host_addr..host_addr + size` must stay mapped until `remove` of `slot` succeeds.
    unsafe fn add(&self, slot: u32, gpa: u64, size: u64, host_addr: u64) -> Result<(), KvmError>;

    /// Deletes `slot`; on success the guest no longer reaches the memory behind it.
    fn remove(&self, slot: u32, gpa: u64, host_addr: u64) -> Result<(), KvmError>;
}

fn memory_region(slot: u32, gpa: u64, size: u64, host_addr: u64) -> kvm_userspace_memory_region {
    kvm_userspace_memory_region {
        slot,
        flags: 0,
        guest_phys_addr: gpa,
        memory_size: size,
        userspace_addr: host_addr,
    }
}

impl MemslotSink for VmFd {
    unsafe fn add(&self, slot: u32, gpa: u64, size: u64, host_addr: u64) -> Result<(), KvmError> {
        // SAFETY: the caller keeps the host range mapped until the slot is removed.
        unsafe { self.set_user_memory_region(memory_region(slot, gpa, size, host_addr)) }
    }

    fn remove(&self, slot: u32, gpa: u64, host_addr: u64) -> Result<(), KvmError> {
        // SAFETY: a zero-sized region deletes the slot; KVM references no host memory for it
        // afterwards.
        unsafe { self.set_user_memory_region(memory_region(slot, gpa, 0, host_addr)) }
    }
}

/// KVM irqfds (KVM_IRQFD).
pub trait IrqfdSink: Send + Sync {
    /// Injects GSI `gsi` when `eventfd` is signalled; level-triggered with a resample fd.
    fn attach_irqfd(
        &self,
        eventfd: &EventFd,
        gsi: u32,
        resample: Option<&EventFd>,
    ) -> Result<(), KvmError>;

    fn detach_irqfd(&self, eventfd: &EventFd, gsi: u32) -> Result<(), KvmError>;
}

impl IrqfdSink for VmFd {
    fn attach_irqfd(
        &self,
        eventfd: &EventFd,
        gsi: u32,
        resample: Option<&EventFd>,
    ) -> Result<(), KvmError> {
        match resample {
            Some(resample) => self.register_irqfd_with_resample(eventfd, resample, gsi),
            None => self.register_irqfd(eventfd, gsi),
        }
    }

    fn detach_irqfd(&self, eventfd: &EventFd, gsi: u32) -> Result<(), KvmError> {
        self.unregister_irqfd(eventfd, gsi)
    }
}

/// Maps parts of a device's VFIO regions into the VMM.
pub trait RegionMapper: Send + Sync {
    /// Maps `size` bytes of region `index` from `offset`, shared and read-write; returns the
    /// host address.
    fn map(&self, index: u32, offset: u64, size: usize) -> std::io::Result<usize>;

    /// # Safety
    /// `addr` and `size` are a mapping `map` returned, and nothing refers to it any more.
    unsafe fn unmap(&self, addr: usize, size: usize);
}

impl RegionMapper for VfioDevice {
    fn map(&self, index: u32, offset: u64, size: usize) -> std::io::Result<usize> {
        let at = self.get_region_offset(index).saturating_add(offset);
        let at = libc::off_t::try_from(at).map_err(std::io::Error::other)?;
        // SAFETY: maps `size` bytes of the device fd at a region offset VFIO reported; the
        // kernel refuses ranges it does not allow to be mapped; the result is checked, and the
        // mapping is the caller's until it calls `unmap`.
        let host = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.as_raw_fd(),
                at,
            )
        };
        if host == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(host as usize)
    }

    unsafe fn unmap(&self, addr: usize, size: usize) {
        // SAFETY: the caller passes a mapping `map` made that nothing refers to any more.
        if unsafe { libc::munmap(addr as *mut libc::c_void, size) } != 0 {
            log::error!(
                "munmap of a VFIO region at {addr:#x}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// KVM memslot numbers for BAR mappings, shared by all segments.
pub struct Memslots {
    next: u32,
    free: Vec<u32>,
}

impl Memslots {
    /// Numbers above the `used` slots guest RAM holds.
    pub fn after(used: u32) -> Self {
        Memslots {
            next: used,
            free: Vec::new(),
        }
    }

    fn take(&mut self) -> u32 {
        self.free.pop().unwrap_or_else(|| {
            self.next += 1;
            self.next - 1
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A mapping of part of a VFIO region; unmapped on drop.
struct HostMapping {
    mapper: Arc<dyn RegionMapper>,
    addr: usize,
    size: usize,
}

impl Drop for HostMapping {
    fn drop(&mut self) {
        // SAFETY: `map` made this mapping; a MappedBar drops it only after removing the
        // memslot over it, and leaks it when that removal fails.
        unsafe { self.mapper.unmap(self.addr, self.size) };
    }
}

/// A BAR range mapped straight into the guest: a memslot over a host mapping of the region.
pub struct MappedBar {
    sink: Arc<dyn MemslotSink>,
    memslots: Arc<Mutex<Memslots>>,
    slot: u32,
    gpa: u64,
    /// Dropped by hand once the memslot is gone.
    mapping: ManuallyDrop<HostMapping>,
}

impl MappedBar {
    /// Maps `mapping` of the device's BAR region and puts a memslot over it. On failure
    /// nothing stays acquired: the memslot was not added, the region is unmapped again and the
    /// slot number is returned.
    pub fn new(
        sink: Arc<dyn MemslotSink>,
        memslots: Arc<Mutex<Memslots>>,
        mapper: Arc<dyn RegionMapper>,
        mapping: &DirectMapping,
    ) -> Result<Self, MapError> {
        let index = u32::from(mapping.bar);
        let size = usize::try_from(mapping.size).map_err(|_| MapError::Size(mapping.size))?;
        let addr = mapper
            .map(index, mapping.bar_offset, size)
            .map_err(|source| MapError::Mmap {
                index,
                offset: mapping.bar_offset,
                size,
                source,
            })?;
        let host = HostMapping { mapper, addr, size };
        let slot = lock(&memslots).take();
        let gpa = mapping.guest_addr;
        // SAFETY: `host` is a live mapping of `size` bytes; on success it moves into the
        // MappedBar, whose Drop removes this memslot before unmapping it.
        if let Err(source) = unsafe { sink.add(slot, gpa, mapping.size, addr as u64) } {
            lock(&memslots).free.push(slot);
            return Err(MapError::Memslot { slot, gpa, source });
        }
        Ok(MappedBar {
            sink,
            memslots,
            slot,
            gpa,
            mapping: ManuallyDrop::new(host),
        })
    }
}

impl Drop for MappedBar {
    fn drop(&mut self) {
        let host = self.mapping.addr as u64;
        if let Err(e) = self.sink.remove(self.slot, self.gpa, host) {
            // The guest may still reach the pages: leave them mapped and the slot taken.
            log::error!(
                "removing memslot {} at guest {:#x}: {e}; its mapping stays",
                self.slot,
                self.gpa
            );
            return;
        }
        // SAFETY: the mapping is dropped once, here, and not used after.
        unsafe { ManuallyDrop::drop(&mut self.mapping) };
        lock(&self.memslots).free.push(self.slot);
    }
}

/// An eventfd attached to a GSI as a KVM irqfd; detached on drop.
pub struct Irqfd {
    sink: Arc<dyn IrqfdSink>,
    eventfd: Arc<EventFd>,
    gsi: u32,
    attached: bool,
}

impl Irqfd {
    pub fn attach(
        sink: Arc<dyn IrqfdSink>,
        eventfd: Arc<EventFd>,
        gsi: u32,
        resample: Option<&EventFd>,
    ) -> Result<Self, KvmError> {
        sink.attach_irqfd(&eventfd, gsi, resample)?;
        Ok(Irqfd {
            sink,
            eventfd,
            gsi,
            attached: true,
        })
    }

    /// Detaches now, reporting failure (the irqfd then stays, and Drop tries again).
    pub fn detach(mut self) -> Result<(), (Self, KvmError)> {
        match self.sink.detach_irqfd(&self.eventfd, self.gsi) {
            Ok(()) => {
                self.attached = false;
                Ok(())
            }
            Err(e) => Err((self, e)),
        }
    }
}

impl Drop for Irqfd {
    fn drop(&mut self) {
        if self.attached
            && let Err(e) = self.sink.detach_irqfd(&self.eventfd, self.gsi)
        {
            log::error!("detaching the irqfd of GSI {}: {e}", self.gsi);
        }
    }
}

/// One MSI/MSI-X vector of a function: its GSI, the eventfd VFIO signals, and its irqfd while
/// the guest has the vector routed.
pub struct Vector {
    pub gsi: u32,
    pub eventfd: Arc<EventFd>,
    pub irqfd: Option<Irqfd>,
}

/// What the VMM holds for one assigned function. Fields drop in order: interrupts first,
/// then the BAR mappings, then the region mapper (the device fd) they were made from.
pub struct FunctionResources {
    pub msi_device_id: u32,
    pub vectors: Vec<Vector>,
    /// Held for its `Drop`.
    _intx: Option<Irqfd>,
    /// By (BAR, offset in the BAR).
    mappings: BTreeMap<(u8, u64), MappedBar>,
    mapper: Arc<dyn RegionMapper>,
}

impl FunctionResources {
    pub fn new(
        mapper: Arc<dyn RegionMapper>,
        msi_device_id: u32,
        vectors: Vec<Vector>,
        intx: Option<Irqfd>,
    ) -> Self {
        FunctionResources {
            msi_device_id,
            vectors,
            _intx: intx,
            mappings: BTreeMap::new(),
            mapper,
        }
    }

    /// Maps a BAR range into the guest; returns its memslot.
    pub fn map(
        &mut self,
        sink: Arc<dyn MemslotSink>,
        memslots: Arc<Mutex<Memslots>>,
        mapping: &DirectMapping,
    ) -> Result<u32, MapError> {
        let key = (mapping.bar, mapping.bar_offset);
        // A range mapped again replaces its older mapping, released first so they never overlap.
        self.mappings.remove(&key);
        let bar = MappedBar::new(sink, memslots, self.mapper.clone(), mapping)?;
        let slot = bar.slot;
        self.mappings.insert(key, bar);
        Ok(slot)
    }

    /// Takes a BAR range out of the guest; false if it was not mapped.
    pub fn unmap(&mut self, mapping: &DirectMapping) -> bool {
        self.mappings
            .remove(&(mapping.bar, mapping.bar_offset))
            .is_some()
    }
}

#[cfg(test)]
mod tests {
    //! Fakes for KVM and the VFIO region mmap that log every acquire and release, so the tests
    //! check what teardown leaves behind and in which order it releases.

    use devices::pci::PciAddress;

    use super::super::Functions;
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Event {
        Map(usize),
        Unmap(usize),
        AddSlot { slot: u32, host: usize },
        RemoveSlot(u32),
        Attach(u32),
        Detach(u32),
    }

    /// Both the VM and a device's regions; fails the calls it is told to.
    #[derive(Default)]
    struct FakeHost {
        log: Mutex<Vec<Event>>,
        maps: Mutex<usize>,
        adds: Mutex<usize>,
        /// Fails the n-th memslot add (1-based).
        fail_add: Option<usize>,
        fail_map: bool,
        fail_remove: bool,
        fail_attach: bool,
    }

    impl FakeHost {
        fn log(&self) -> Vec<Event> {
            lock(&self.log).clone()
        }

        /// Logs `event`, or fails (EINVAL) without logging it.
        fn record(&self, fail: bool, event: Event) -> Result<(), KvmError> {
            if fail {
                return Err(KvmError::new(libc::EINVAL));
            }
            lock(&self.log).push(event);
            Ok(())
        }
    }

    impl MemslotSink for FakeHost {
        unsafe fn add(&self, slot: u32, _gpa: u64, _size: u64, host: u64) -> Result<(), KvmError> {
            let mut adds = lock(&self.adds);
            *adds += 1;
            let host = host as usize;
            self.record(self.fail_add == Some(*adds), Event::AddSlot { slot, host })
        }

        fn remove(&self, slot: u32, _gpa: u64, _host: u64) -> Result<(), KvmError> {
            self.record(self.fail_remove, Event::RemoveSlot(slot))
        }
    }

    impl IrqfdSink for FakeHost {
        fn attach_irqfd(
            &self,
            _eventfd: &EventFd,
            gsi: u32,
            _resample: Option<&EventFd>,
        ) -> Result<(), KvmError> {
            self.record(self.fail_attach, Event::Attach(gsi))
        }

        fn detach_irqfd(&self, _eventfd: &EventFd, gsi: u32) -> Result<(), KvmError> {
            self.record(false, Event::Detach(gsi))
        }
    }

    impl RegionMapper for FakeHost {
        fn map(&self, _index: u32, _offset: u64, _size: usize) -> std::io::Result<usize> {
            if self.fail_map {
                return Err(std::io::Error::from_raw_os_error(libc::ENOMEM));
            }
            let mut maps = lock(&self.maps);
            *maps += 1;
            let addr = 0x7f00_0000_0000 + *maps * 0x100_0000;
            lock(&self.log).push(Event::Map(addr));
            Ok(addr)
        }

        unsafe fn unmap(&self, addr: usize, _size: usize) {
            lock(&self.log).push(Event::Unmap(addr));
        }
    }

    fn bar(bar: u8, bar_offset: u64, guest_addr: u64) -> DirectMapping {
        DirectMapping {
            bar,
            bar_offset,
            size: 0x4000,
            guest_addr,
        }
    }

    fn vector(gsi: u32) -> Vector {
        Vector {
            gsi,
            eventfd: Arc::new(EventFd::new(0).unwrap()),
            irqfd: None,
        }
    }

    /// Nothing stays acquired: every mapping unmapped once, every memslot removed once and
    /// before its mapping, every irqfd detached; and no resource holds a handle any more.
    fn assert_all_released(host: &Arc<FakeHost>) {
        let log = host.log();
        let position = |e: Event| log.iter().position(|&x| x == e);
        let count = |e: Event| log.iter().filter(|&&x| x == e).count();
        for (at, &event) in log.iter().enumerate() {
            match event {
                Event::Map(addr) => {
                    assert_eq!(count(Event::Unmap(addr)), 1, "{addr:#x} unmapped once");
                    assert!(position(Event::Unmap(addr)) > Some(at));
                }
                Event::AddSlot { slot, host } => {
                    let removed = log[at..].iter().position(|&e| e == Event::RemoveSlot(slot));
                    let unmapped = log[at..].iter().position(|&e| e == Event::Unmap(host));
                    assert!(removed.is_some(), "memslot {slot} removed");
                    assert!(
                        removed < unmapped,
                        "memslot {slot} removed before its unmap"
                    );
                }
                Event::Attach(gsi) => {
                    let attached = log.iter().filter(|&&e| e == Event::Attach(gsi)).count();
                    assert_eq!(count(Event::Detach(gsi)), attached, "GSI {gsi} irqfds");
                }
                _ => {}
            }
        }
        assert_eq!(
            Arc::strong_count(host),
            1,
            "a resource still holds the host"
        );
    }

    #[test]
    fn full_teardown_removes_memslots_before_unmapping_and_leaves_nothing() {
        let host = Arc::new(FakeHost::default());
        let memslots = Arc::new(Mutex::new(Memslots::after(2)));
        let functions: Functions = Default::default();
        let mut a = FunctionResources::new(
            host.clone(),
            0x100,
            vec![vector(40), vector(41)],
            Some(Irqfd::attach(host.clone(), Arc::new(EventFd::new(0).unwrap()), 5, None).unwrap()),
        );
        // The guest routes vector 0.
        a.vectors[0].irqfd =
            Some(Irqfd::attach(host.clone(), a.vectors[0].eventfd.clone(), 40, None).unwrap());
        let mut b = FunctionResources::new(host.clone(), 0x108, vec![vector(42)], None);
        let slot = |f: &mut FunctionResources, m| f.map(host.clone(), memslots.clone(), &m);
        assert_eq!(slot(&mut a, bar(0, 0, 0x1000_0000)).unwrap(), 2);
        assert_eq!(slot(&mut a, bar(0, 0x8000, 0x1000_8000)).unwrap(), 3);
        assert_eq!(slot(&mut b, bar(2, 0, 0x2000_0000)).unwrap(), 4);

        // The guest moves BAR 0: its first range goes (memslot, then mapping) and comes back
        // on the freed slot.
        assert!(a.unmap(&bar(0, 0, 0x1000_0000)));
        assert!(!a.unmap(&bar(0, 0, 0x1000_0000)));
        let Some(&Event::Map(first_addr)) = host.log().iter().find(|e| matches!(e, Event::Map(_)))
        else {
            panic!("no mapping made");
        };
        assert_eq!(
            host.log()[host.log().len() - 2..],
            [Event::RemoveSlot(2), Event::Unmap(first_addr)]
        );
        assert_eq!(slot(&mut a, bar(0, 0, 0x3000_0000)).unwrap(), 2);

        lock(&functions).insert(PciAddress::new(0, 1, 0).unwrap(), a);
        lock(&functions).insert(PciAddress::new(0, 2, 0).unwrap(), b);
        let before = host.log().len();
        lock(&functions).clear();
        let teardown = host.log()[before..].to_vec();
        // Function A first: its irqfds, then its memslots and mappings; then function B.
        assert_eq!(teardown[..2], [Event::Detach(40), Event::Detach(5)]);
        assert!(matches!(teardown[2], Event::RemoveSlot(_)));
        assert_eq!(teardown.len(), 2 + 3 * 2);
        drop(functions);
        assert_all_released(&host);
        let mut free = lock(&memslots).free.clone();
        free.sort();
        assert_eq!(free, [2, 3, 4], "every memslot number returned");
    }

    #[test]
    fn a_build_failing_half_way_releases_what_it_acquired() {
        // The second BAR's memslot cannot be added.
        let host = Arc::new(FakeHost {
            fail_add: Some(2),
            ..Default::default()
        });
        let memslots = Arc::new(Mutex::new(Memslots::after(1)));
        let mut f = FunctionResources::new(host.clone(), 0, vec![vector(33)], None);
        f.vectors[0].irqfd =
            Some(Irqfd::attach(host.clone(), f.vectors[0].eventfd.clone(), 33, None).unwrap());
        assert_eq!(
            f.map(host.clone(), memslots.clone(), &bar(0, 0, 0x1000_0000))
                .unwrap(),
            1
        );
        let err = f
            .map(host.clone(), memslots.clone(), &bar(2, 0, 0x2000_0000))
            .unwrap_err();
        assert!(matches!(err, MapError::Memslot { slot: 2, .. }), "{err}");
        // Its mapping is gone again (no memslot was added over it) and slot 2 is free.
        let log = host.log();
        let Event::Map(second) = log[log.len() - 2] else {
            panic!("{log:?}")
        };
        assert_eq!(log[log.len() - 1], Event::Unmap(second));
        assert_eq!(lock(&memslots).free, [2]);
        // The build gives up: the half-built function is dropped with all it holds.
        drop(f);
        assert_all_released(&host);
        let log = host.log();
        assert_eq!(
            log[log.len() - 3..log.len() - 1],
            [Event::Detach(33), Event::RemoveSlot(1)]
        );
        let mut free = lock(&memslots).free.clone();
        free.sort();
        assert_eq!(free, [1, 2]);
    }

    #[test]
    fn failed_acquisitions_hold_nothing() {
        let host = Arc::new(FakeHost {
            fail_map: true,
            fail_attach: true,
            ..Default::default()
        });
        let memslots = Arc::new(Mutex::new(Memslots::after(3)));
        let err = MappedBar::new(host.clone(), memslots.clone(), host.clone(), &bar(0, 0, 0))
            .err()
            .unwrap();
        assert!(matches!(err, MapError::Mmap { index: 0, .. }), "{err}");
        let irqfd = Irqfd::attach(host.clone(), Arc::new(EventFd::new(0).unwrap()), 7, None);
        assert!(irqfd.is_err());
        drop(irqfd);
        assert!(host.log().is_empty());
        // No slot number was consumed.
        assert_eq!(lock(&memslots).take(), 3);
        assert_all_released(&host);
    }

    #[test]
    fn a_memslot_that_cannot_be_removed_keeps_its_mapping() {
        let host = Arc::new(FakeHost {
            fail_remove: true,
            ..Default::default()
        });
        let memslots = Arc::new(Mutex::new(Memslots::after(0)));
        let mapped =
            MappedBar::new(host.clone(), memslots.clone(), host.clone(), &bar(0, 0, 0)).unwrap();
        drop(mapped);
        // KVM may still reach the pages: no unmap, and slot 0 stays taken.
        assert!(!host.log().iter().any(|e| matches!(e, Event::Unmap(_))));
        assert!(lock(&memslots).free.is_empty());
        assert_eq!(lock(&memslots).take(), 1);
    }

    #[test]
    fn a_detached_irqfd_is_not_detached_again() {
        let host = Arc::new(FakeHost::default());
        let irqfd = Irqfd::attach(host.clone(), Arc::new(EventFd::new(0).unwrap()), 9, None);
        irqfd.unwrap().detach().map_err(|(_, e)| e).unwrap();
        assert_eq!(host.log(), [Event::Attach(9), Event::Detach(9)]);
        assert_all_released(&host);
    }
}
