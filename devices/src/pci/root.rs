//! A PCI root complex: the ECAM window of one host bridge (PCIe 6.0 section 7.2.2), an emulated
//! host bridge function at 00.0, and dispatch of trapped BAR accesses by the BARs' current
//! guest addresses.
//!
//! The VMM puts the [`PciRoot`] on the MMIO bus over the bridge's ECAM window and a
//! [`PciWindow`] over each of its MMIO apertures, so BAR moves never change the bus. What guest
//! writes change (direct BAR mappings, interrupt routes) goes to the [`PciSegmentHost`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::config::{
    ActiveBar, BarSpace, ConfigSpace, ConfigWriteResult, FIRST_CAPABILITY, Header,
};
use super::{InterruptRoute, PciAddress, PciDevice, config_access_ok};
use crate::bus::BusDevice;

/// Configuration space per bus in the ECAM window.
pub const ECAM_BUS_SIZE: u64 = 1 << 20;
const ECAM_FUNCTION_SIZE: u64 = 1 << 12;

/// The host bridge's identity: Red Hat's "QEMU PCIe host bridge" ID, which guests bind no
/// driver to; base class 06h (bridge), sub-class 00h (host bridge).
const HOST_BRIDGE_VENDOR: u16 = 0x1b36;
const HOST_BRIDGE_DEVICE: u16 = 0x0008;
const HOST_BRIDGE_CLASS: u32 = 0x06_00_00;

/// A part of a BAR the host maps straight into the guest (a KVM memslot over the host's mmap of
/// that BAR), at `guest_addr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectMapping {
    pub bar: u8,
    pub bar_offset: u64,
    pub size: u64,
    pub guest_addr: u64,
}

pub type HostError = Box<dyn std::error::Error + Send + Sync>;

/// The VMM's side of one PCI segment. Called from a vCPU thread in the middle of a trapped
/// access, with the root locked (not the device): implementations must not touch the root.
pub trait PciSegmentHost: Send {
    /// Maps a BAR range directly. On failure the range stays trapped: the guest's accesses go
    /// through [`PciDevice::mmio_read`]/`mmio_write`, slower but still correct.
    fn map_direct(&mut self, device: PciAddress, mapping: &DirectMapping) -> Result<(), HostError>;

    /// Removes a mapping `map_direct` made.
    fn unmap_direct(&mut self, device: PciAddress, mapping: &DirectMapping);

    /// Applies changed MSI/MSI-X vector routes (KVM GSI routes and irqfds).
    fn update_routes(&mut self, device: PciAddress, routes: &[InterruptRoute]);
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciError {
    #[error("PCI {address}: slot already taken")]
    SlotTaken { address: PciAddress },
    #[error("PCI {address}: bus outside the bridge's {start:#04x}..={end:#04x}")]
    BusOutOfRange {
        address: PciAddress,
        start: u8,
        end: u8,
    },
}

struct Slot {
    device: Arc<Mutex<dyn PciDevice>>,
    /// Direct mappings the host accepted.
    mapped: Vec<DirectMapping>,
}

impl Slot {
    fn new(device: Arc<Mutex<dyn PciDevice>>) -> Self {
        Slot {
            device,
            mapped: Vec::new(),
        }
    }
}

/// The functions behind one host bridge.
pub struct PciRoot {
    bus_start: u8,
    bus_end: u8,
    slots: BTreeMap<PciAddress, Slot>,
    host: Box<dyn PciSegmentHost>,
}

impl PciRoot {
    /// A root for buses `bus_start..=bus_end` (the plan's `PciBridge`), with its host bridge at
    /// `bus_start`:00.0.
    pub fn new(bus_start: u8, bus_end: u8, host: Box<dyn PciSegmentHost>) -> Self {
        let host_bridge = PciAddress {
            bus: bus_start,
            device: 0,
            function: 0,
        };
        PciRoot {
            bus_start,
            bus_end: bus_end.max(bus_start),
            slots: BTreeMap::from([(
                host_bridge,
                Slot::new(Arc::new(Mutex::new(HostBridge::new()))),
            )]),
            host,
        }
    }

    /// Bytes of ECAM window the bridge's buses span.
    pub fn ecam_size(&self) -> u64 {
        (u64::from(self.bus_end - self.bus_start) + 1) * ECAM_BUS_SIZE
    }

    pub fn add_device(
        &mut self,
        address: PciAddress,
        device: Arc<Mutex<dyn PciDevice>>,
    ) -> Result<(), PciError> {
        if !(self.bus_start..=self.bus_end).contains(&address.bus) {
            return Err(PciError::BusOutOfRange {
                address,
                start: self.bus_start,
                end: self.bus_end,
            });
        }
        if self.slots.contains_key(&address) {
            return Err(PciError::SlotTaken { address });
        }
        self.slots.insert(address, Slot::new(device));
        Ok(())
    }

    /// ECAM offset -> function and register.
    fn decode(&self, offset: u64) -> Option<(PciAddress, u16)> {
        let bus = u8::try_from(offset / ECAM_BUS_SIZE).ok()?;
        let bus = self.bus_start.checked_add(bus)?;
        if bus > self.bus_end {
            return None;
        }
        let address = PciAddress {
            bus,
            device: ((offset >> 15) & 0x1f) as u8,
            function: ((offset >> 12) & 0x7) as u8,
        };
        Some((address, (offset % ECAM_FUNCTION_SIZE) as u16))
    }

    /// A configuration read; all-ones from empty slots and for undefined access widths.
    pub fn config_read(&self, address: PciAddress, offset: u16, data: &mut [u8]) {
        match self.slots.get(&address) {
            Some(slot) if config_access_ok(offset.into(), data.len(), ECAM_FUNCTION_SIZE) => {
                lock(&slot.device).config_read(offset, data);
            }
            _ => data.fill(0xff),
        }
    }

    /// A configuration write, with its result applied.
    pub fn config_write(&mut self, address: PciAddress, offset: u16, data: &[u8]) {
        let Some(slot) = self.slots.get(&address) else {
            return;
        };
        if !config_access_ok(offset.into(), data.len(), ECAM_FUNCTION_SIZE) {
            return;
        }
        let result = lock(&slot.device).config_write(offset, data);
        match result {
            ConfigWriteResult::Interrupts(routes) if !routes.is_empty() => {
                self.host.update_routes(address, &routes);
            }
            ConfigWriteResult::Interrupts(_) => {}
            // Any header write may start or end BAR sizing, which hides or shows a BAR without
            // moving it; re-syncing an unchanged function costs nothing.
            ConfigWriteResult::None if offset >= FIRST_CAPABILITY => {}
            _ => self.sync_mappings(address),
        }
    }

    /// Brings the host's direct mappings of a function in line with its active BARs: removed
    /// ones first, so a moved range never overlaps its old self.
    fn sync_mappings(&mut self, address: PciAddress) {
        let Some(slot) = self.slots.get_mut(&address) else {
            return;
        };
        let wanted: Vec<DirectMapping> = {
            let device = lock(&slot.device);
            device
                .active_bars()
                .iter()
                .filter(|bar| bar.kind.space() == BarSpace::Memory)
                .flat_map(|bar| {
                    device
                        .direct_ranges(bar.index)
                        .into_iter()
                        .filter(|r| r.end() <= bar.size)
                        .map(|r| DirectMapping {
                            bar: bar.index,
                            bar_offset: r.offset,
                            size: r.size,
                            guest_addr: bar.addr + r.offset,
                        })
                })
                .collect()
        };
        let host = &mut self.host;
        slot.mapped.retain(|m| {
            let keep = wanted.contains(m);
            if !keep {
                host.unmap_direct(address, m);
            }
            keep
        });
        for m in wanted {
            if slot.mapped.contains(&m) {
                continue;
            }
            match host.map_direct(address, &m) {
                Ok(()) => slot.mapped.push(m),
                Err(e) => log::warn!(
                    "PCI {address}: BAR {} range {:#x}+{:#x} stays trapped: {e}",
                    m.bar,
                    m.bar_offset,
                    m.size
                ),
            }
        }
    }

    /// The function and BAR decoding `addr..addr + len` in `space`.
    fn find_bar(
        &self,
        space: BarSpace,
        addr: u64,
        len: usize,
    ) -> Option<(PciAddress, &Slot, ActiveBar)> {
        self.slots.iter().find_map(|(&address, slot)| {
            let bars = lock(&slot.device).active_bars();
            bars.into_iter()
                .find(|bar| bar.contains(space, addr, len as u64))
                .map(|bar| (address, slot, bar))
        })
    }

    /// A trapped BAR read; all-ones where no BAR decodes.
    pub fn bar_read(&self, space: BarSpace, addr: u64, data: &mut [u8]) {
        match self.find_bar(space, addr, data.len()) {
            Some((_, slot, bar)) => lock(&slot.device).mmio_read(bar.index, addr - bar.addr, data),
            None => data.fill(0xff),
        }
    }

    /// A trapped BAR write; dropped where no BAR decodes.
    pub fn bar_write(&mut self, space: BarSpace, addr: u64, data: &[u8]) {
        let Some((address, slot, bar)) = self.find_bar(space, addr, data.len()) else {
            return;
        };
        let routes = lock(&slot.device).mmio_write(bar.index, addr - bar.addr, data);
        if !routes.is_empty() {
            self.host.update_routes(address, &routes);
        }
    }
}

fn lock(device: &Arc<Mutex<dyn PciDevice>>) -> std::sync::MutexGuard<'_, dyn PciDevice + 'static> {
    device.lock().expect("a PCI device model panicked")
}

/// The ECAM window.
impl BusDevice for PciRoot {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match self.decode(offset) {
            Some((address, register)) => self.config_read(address, register, data),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some((address, register)) = self.decode(offset) {
            self.config_write(address, register, data);
        }
    }
}

/// One of the bridge's MMIO apertures (or an I/O port window) on the bus, dispatching to BARs.
pub struct PciWindow {
    root: Arc<Mutex<PciRoot>>,
    base: u64,
    space: BarSpace,
}

impl PciWindow {
    /// A window inserted on the bus at `base`; offsets are turned back into addresses.
    pub fn new(root: Arc<Mutex<PciRoot>>, base: u64, space: BarSpace) -> Self {
        PciWindow { root, base, space }
    }
}

impl BusDevice for PciWindow {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let root = self.root.lock().expect("the PCI root panicked");
        match self.base.checked_add(offset) {
            Some(addr) => root.bar_read(self.space, addr, data),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(addr) = self.base.checked_add(offset) {
            let mut root = self.root.lock().expect("the PCI root panicked");
            root.bar_write(self.space, addr, data);
        }
    }
}

/// The emulated host bridge at 00.0: an identity and nothing else.
struct HostBridge {
    config: ConfigSpace,
}

impl HostBridge {
    fn new() -> Self {
        HostBridge {
            config: ConfigSpace::new(&Header {
                vendor_id: HOST_BRIDGE_VENDOR,
                device_id: HOST_BRIDGE_DEVICE,
                class_code: HOST_BRIDGE_CLASS,
                ..Header::default()
            }),
        }
    }
}

impl PciDevice for HostBridge {
    fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        self.config.read(offset, data);
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) -> ConfigWriteResult {
        self.config.write(offset, data)
    }

    fn active_bars(&self) -> Vec<ActiveBar> {
        Vec::new()
    }

    fn mmio_read(&mut self, _bar: u8, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn mmio_write(&mut self, _bar: u8, _offset: u64, _data: &[u8]) -> Vec<InterruptRoute> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::config::COMMAND;
    use crate::pci::{BarRange, MsiMessage};
    use crate::testutil::{M64, XorShift};

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Event {
        Map(PciAddress, DirectMapping),
        Unmap(PciAddress, DirectMapping),
        Routes(PciAddress, Vec<InterruptRoute>),
    }

    #[derive(Clone, Default)]
    struct Recorder {
        events: Arc<Mutex<Vec<Event>>>,
        refuse_maps: bool,
    }

    impl Recorder {
        fn take(&self) -> Vec<Event> {
            std::mem::take(&mut self.events.lock().unwrap())
        }
    }

    impl PciSegmentHost for Recorder {
        fn map_direct(&mut self, device: PciAddress, m: &DirectMapping) -> Result<(), HostError> {
            if self.refuse_maps {
                return Err("no memslots left".into());
            }
            self.events.lock().unwrap().push(Event::Map(device, *m));
            Ok(())
        }
        fn unmap_direct(&mut self, device: PciAddress, m: &DirectMapping) {
            self.events.lock().unwrap().push(Event::Unmap(device, *m));
        }
        fn update_routes(&mut self, device: PciAddress, routes: &[InterruptRoute]) {
            self.events
                .lock()
                .unwrap()
                .push(Event::Routes(device, routes.to_vec()));
        }
    }

    /// A function with one 8 KiB memory BAR whose second page maps directly; BAR reads return
    /// the offset, BAR writes change vector 0's route.
    struct TestFunction {
        config: ConfigSpace,
        writes: Vec<(u8, u64, Vec<u8>)>,
    }

    impl TestFunction {
        fn new(device_id: u16) -> Self {
            let mut config = ConfigSpace::new(&Header {
                vendor_id: 0x1234,
                device_id,
                class_code: 0xff_00_00,
                ..Header::default()
            });
            config.add_bar(0, M64, 0x2000).unwrap();
            TestFunction {
                config,
                writes: Vec::new(),
            }
        }
    }

    impl PciDevice for TestFunction {
        fn config_read(&mut self, offset: u16, data: &mut [u8]) {
            self.config.read(offset, data);
        }
        fn config_write(&mut self, offset: u16, data: &[u8]) -> ConfigWriteResult {
            self.config.write(offset, data)
        }
        fn active_bars(&self) -> Vec<ActiveBar> {
            self.config.active_bars()
        }
        fn mmio_read(&mut self, _bar: u8, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn mmio_write(&mut self, bar: u8, offset: u64, data: &[u8]) -> Vec<InterruptRoute> {
            self.writes.push((bar, offset, data.to_vec()));
            vec![route_to(offset)]
        }
        fn direct_ranges(&self, _bar: u8) -> Vec<BarRange> {
            vec![BarRange::new(0x1000, 0x1000)]
        }
    }

    /// Vector 0 routed to `address`, what a `TestFunction` BAR write returns.
    fn route_to(address: u64) -> InterruptRoute {
        let message = MsiMessage { address, data: 1 };
        InterruptRoute {
            vector: 0,
            message: Some(message),
        }
    }

    fn function(device_id: u16) -> Arc<Mutex<TestFunction>> {
        Arc::new(Mutex::new(TestFunction::new(device_id)))
    }

    fn addr(bus: u8, device: u8, function: u8) -> PciAddress {
        PciAddress::new(bus, device, function).unwrap()
    }

    fn ecam(bus_rel: u64, device: u64, function: u64, reg: u64) -> u64 {
        bus_rel << 20 | device << 15 | function << 12 | reg
    }

    fn read32(root: &mut PciRoot, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        root.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    fn root_with(bus_start: u8, bus_end: u8) -> (PciRoot, Recorder) {
        let recorder = Recorder::default();
        (
            PciRoot::new(bus_start, bus_end, Box::new(recorder.clone())),
            recorder,
        )
    }

    #[test]
    fn ecam_decodes_to_functions_and_empty_slots_read_all_ones() {
        let (mut root, _) = root_with(0x10, 0x11);
        assert_eq!(root.ecam_size(), 2 << 20);
        root.add_device(addr(0x10, 3, 0), function(0xa)).unwrap();
        root.add_device(addr(0x11, 31, 7), function(0xb)).unwrap();
        assert_eq!(read32(&mut root, ecam(0, 3, 0, 0)), 0x000a_1234);
        assert_eq!(read32(&mut root, ecam(1, 31, 7, 0)), 0x000b_1234);
        let mut half = [0u8; 2];
        root.read(ecam(1, 31, 7, 2), &mut half);
        assert_eq!(half, [0xb, 0]);
        // Empty slots, other functions, buses past the bridge.
        assert_eq!(read32(&mut root, ecam(0, 3, 1, 0)), u32::MAX);
        assert_eq!(read32(&mut root, ecam(0, 4, 0, 0)), u32::MAX);
        assert_eq!(read32(&mut root, ecam(2, 3, 0, 0)), u32::MAX);
        assert_eq!(read32(&mut root, u64::MAX - 3), u32::MAX);
        // Extended registers are not aliases of the first 256 bytes.
        assert_eq!(read32(&mut root, ecam(0, 3, 0, 0x100)), 0);
        assert_eq!(read32(&mut root, ecam(0, 3, 0, 0xffc)), 0);
        // Writes reach the addressed function only.
        root.write(ecam(0, 3, 0, 0x3c), &[0x33]);
        assert_eq!(read32(&mut root, ecam(0, 3, 0, 0x3c)) & 0xff, 0x33);
        assert_eq!(read32(&mut root, ecam(1, 31, 7, 0x3c)) & 0xff, 0);
        root.write(ecam(0, 9, 0, 0x3c), &[0x33]);
        assert_eq!(
            root.add_device(addr(0x10, 3, 0), Arc::new(Mutex::new(HostBridge::new()))),
            Err(PciError::SlotTaken {
                address: addr(0x10, 3, 0)
            })
        );
        assert!(matches!(
            root.add_device(addr(0x12, 0, 0), Arc::new(Mutex::new(HostBridge::new()))),
            Err(PciError::BusOutOfRange { .. })
        ));
    }

    #[test]
    fn host_bridge_sits_at_00_0() {
        let (mut root, _) = root_with(0, 0);
        assert_eq!(read32(&mut root, 0), 0x0008_1b36);
        assert_eq!(read32(&mut root, 8) >> 8, 0x06_00_00);
        assert_eq!(read32(&mut root, 0xc) >> 16 & 0x7f, 0); // header type 0
        assert!(matches!(
            root.add_device(addr(0, 0, 0), Arc::new(Mutex::new(HostBridge::new()))),
            Err(PciError::SlotTaken { .. })
        ));
    }

    #[test]
    fn bar_programming_maps_and_unmaps_direct_ranges() {
        let (mut root, rec) = root_with(0, 0);
        let dev = addr(0, 1, 0);
        root.add_device(dev, function(1)).unwrap();
        let cfg = |reg| ecam(0, 1, 0, reg);
        root.write(cfg(0x10), &0x8000_0000u32.to_le_bytes());
        root.write(cfg(0x14), &0x1u32.to_le_bytes());
        assert!(rec.take().is_empty()); // decode still off
        root.write(cfg(u64::from(COMMAND)), &[0x2]);
        let at = |guest_addr| DirectMapping {
            bar: 0,
            bar_offset: 0x1000,
            size: 0x1000,
            guest_addr,
        };
        assert_eq!(rec.take(), [Event::Map(dev, at(0x1_8000_1000))]);
        // Sizing while decoding: the BAR is unreachable until restored.
        root.write(cfg(0x10), &u32::MAX.to_le_bytes());
        assert_eq!(rec.take(), [Event::Unmap(dev, at(0x1_8000_1000))]);
        root.write(cfg(0x10), &0x8000_0000u32.to_le_bytes());
        assert_eq!(rec.take(), [Event::Map(dev, at(0x1_8000_1000))]);
        root.write(cfg(0x10), &0x9000_0000u32.to_le_bytes());
        assert_eq!(
            rec.take(),
            [
                Event::Unmap(dev, at(0x1_8000_1000)),
                Event::Map(dev, at(0x1_9000_1000))
            ]
        );
        root.write(cfg(u64::from(COMMAND)), &[0x0]);
        assert_eq!(rec.take(), [Event::Unmap(dev, at(0x1_9000_1000))]);
    }

    #[test]
    fn refused_mappings_stay_trapped_and_are_retried() {
        let recorder = Recorder {
            refuse_maps: true,
            ..Recorder::default()
        };
        let mut root = PciRoot::new(0, 0, Box::new(recorder.clone()));
        root.add_device(addr(0, 1, 0), function(1)).unwrap();
        root.write(ecam(0, 1, 0, 0x10), &0x8000_0000u32.to_le_bytes());
        root.write(ecam(0, 1, 0, 4), &[0x2]);
        assert!(recorder.take().is_empty());
        // Nothing recorded as mapped, so nothing is unmapped.
        root.write(ecam(0, 1, 0, 4), &[0x0]);
        assert!(recorder.take().is_empty());
    }

    #[test]
    fn windows_dispatch_by_bar_address() {
        let (root, rec) = root_with(0, 0);
        let root = Arc::new(Mutex::new(root));
        let dev = addr(0, 2, 0);
        let function = function(1);
        root.lock()
            .unwrap()
            .add_device(dev, function.clone())
            .unwrap();
        {
            let mut r = root.lock().unwrap();
            r.write(ecam(0, 2, 0, 0x10), &0x4000_0000u32.to_le_bytes());
            r.write(ecam(0, 2, 0, 4), &[0x2]);
        }
        rec.take();
        let mut window = PciWindow::new(root.clone(), 0x4000_0000, BarSpace::Memory);
        let mut data = [0u8; 4];
        window.read(0x10, &mut data);
        assert_eq!(data, [0x10; 4]);
        window.read(0x1ffe, &mut data); // straddles the BAR's end
        assert_eq!(data, [0xff; 4]);
        window.read(0x2000, &mut data);
        assert_eq!(data, [0xff; 4]);
        window.write(0x20, &[1, 2, 3, 4]);
        assert_eq!(
            function.lock().unwrap().writes,
            [(0, 0x20, vec![1, 2, 3, 4])]
        );
        assert_eq!(rec.take(), [Event::Routes(dev, vec![route_to(0x20)])]);
        // The I/O space does not see memory BARs.
        let mut io = PciWindow::new(root.clone(), 0x4000_0000, BarSpace::Io);
        io.read(0, &mut data);
        assert_eq!(data, [0xff; 4]);
        io.write(0, &[0]);
        // Decode off: the BAR vanishes.
        root.lock().unwrap().write(ecam(0, 2, 0, 4), &[0x0]);
        window.read(0x10, &mut data);
        assert_eq!(data, [0xff; 4]);
        let mut far = PciWindow::new(root, u64::MAX, BarSpace::Memory);
        far.read(2, &mut data);
        assert_eq!(data, [0xff; 4]);
    }

    #[test]
    fn hostile_ecam_accesses_never_panic() {
        let (mut root, _) = root_with(0, 255);
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20_000 {
            let r = rng.next();
            let len = [0, 1, 2, 3, 4, 8][(r % 6) as usize];
            // Mostly slot 00.0's config space, sometimes anywhere.
            let offset = if r & 0x100 != 0 {
                (r >> 16) % 0x1004
            } else {
                r >> 16
            };
            let mut data = vec![(r >> 8) as u8; len];
            if r & 0x200 != 0 {
                root.write(offset, &data);
            } else {
                root.read(offset, &mut data);
            }
        }
        assert_eq!(read32(&mut root, 0), 0x0008_1b36);
    }
}
