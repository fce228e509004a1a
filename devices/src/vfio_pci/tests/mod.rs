//! The VFIO-PCI model against an in-memory device whose configuration space each test scripts:
//! the fake and helpers, identity and robustness here, one file per concern beside it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::*;
use crate::pci::BarKind;
use crate::pci::capability::{extended_capabilities, standard_capabilities};
use crate::pci::msi::MsiMessage;
use crate::testutil::XorShift;

mod bars;
mod capabilities;
mod interrupts;
mod reset;

#[derive(Debug, Clone, PartialEq, Eq)]
enum IrqCall {
    Intx,
    Msi(usize),
    Msix(usize),
    Disable(IrqType),
}

#[derive(Default)]
struct FakeState {
    config: Vec<u8>,
    regions: Vec<RegionInfo>,
    bar_memory: HashMap<(u32, u64), u8>,
    config_writes: Vec<(u64, Vec<u8>)>,
    bar_writes: Vec<(u32, u64, Vec<u8>)>,
    irqs: Vec<IrqCall>,
    resets: u32,
    irq_counts: [u32; 3],
    /// Fails every call but region info and config reads.
    broken: bool,
}

impl FakeState {
    fn fail_if_broken(&self, what: &str) -> Result<(), BackendError> {
        if self.broken {
            Err(what.into())
        } else {
            Ok(())
        }
    }
}

#[derive(Clone)]
struct Fake(Arc<Mutex<FakeState>>);

impl Fake {
    fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.0.lock().unwrap()
    }
}

impl VfioBackend for Fake {
    fn region_info(&self, index: u32) -> Result<RegionInfo, BackendError> {
        Ok(self
            .state()
            .regions
            .get(index as usize)
            .cloned()
            .unwrap_or_default())
    }

    fn region_read(&self, index: u32, offset: u64, data: &mut [u8]) -> Result<(), BackendError> {
        let s = self.state();
        for (i, b) in data.iter_mut().enumerate() {
            let at = offset + i as u64;
            *b = if index == VFIO_PCI_CONFIG_REGION_INDEX {
                *s.config.get(at as usize).ok_or("past the config region")?
            } else {
                // Unwritten BAR bytes read as their offset's low byte.
                s.bar_memory.get(&(index, at)).copied().unwrap_or(at as u8)
            };
        }
        Ok(())
    }

    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        let mut s = self.state();
        s.fail_if_broken("broken")?;
        if index == VFIO_PCI_CONFIG_REGION_INDEX {
            s.config_writes.push((offset, data.to_vec()));
        } else {
            s.bar_writes.push((index, offset, data.to_vec()));
            for (i, &b) in data.iter().enumerate() {
                s.bar_memory.insert((index, offset + i as u64), b);
            }
        }
        Ok(())
    }

    fn irq_count(&self, irq: IrqType) -> u32 {
        self.state().irq_counts[irq as usize]
    }

    fn enable_msi(&mut self, eventfds: &[EventFd]) -> Result<(), BackendError> {
        self.call(IrqCall::Msi(eventfds.len()))
    }

    fn enable_msix(&mut self, eventfds: &[EventFd]) -> Result<(), BackendError> {
        self.call(IrqCall::Msix(eventfds.len()))
    }

    fn enable_intx(&mut self, _trigger: &EventFd, _unmask: &EventFd) -> Result<(), BackendError> {
        self.call(IrqCall::Intx)
    }

    fn disable_irq(&mut self, irq: IrqType) -> Result<(), BackendError> {
        self.call(IrqCall::Disable(irq))
    }

    fn reset(&mut self) -> Result<(), BackendError> {
        let mut s = self.state();
        s.resets += 1;
        s.fail_if_broken("no reset")
    }
}

impl Fake {
    fn call(&mut self, call: IrqCall) -> Result<(), BackendError> {
        let mut s = self.state();
        s.irqs.push(call);
        s.fail_if_broken("broken")
    }
}

fn put(config: &mut [u8], at: usize, bytes: &[u8]) {
    config[at..at + bytes.len()].copy_from_slice(bytes);
}

fn put32(config: &mut [u8], at: usize, value: u32) {
    put(config, at, &value.to_le_bytes());
}

const MSI: u16 = 0x50;
const MSIX: u16 = 0x70;
const PCIE: u16 = 0x80;
const VENDOR: u16 = 0xc0;
const GIB: u64 = 1 << 30;

fn region(size: u64, mmap: bool) -> RegionInfo {
    RegionInfo {
        size,
        readable: true,
        writable: true,
        mmap,
        sparse_areas: Vec::new(),
    }
}

/// A GPU-like function: BAR0 32-bit 16 KiB, BAR1 I/O 256 bytes, BAR2 64-bit 64 KiB holding
/// the MSI-X table (0x3000) and PBA (0x3800), BAR4 64-bit prefetchable 8 GiB with sparse mmap
/// areas; PM, MSI (64-bit, masking, 8 vectors), MSI-X (8), PCIe, vendor-specific and Enhanced
/// Allocation capabilities; AER, DSN, SR-IOV, vendor-specific and Resizable BAR extended ones.
fn gpu() -> FakeState {
    let mut c = vec![0u8; 4096];
    put(&mut c, 0, &[0xde, 0x10, 0x30, 0x23]);
    put32(&mut c, 0x04, 0x0010_0000); // status: capability list
    put32(&mut c, 0x08, 0x0302_00a1);
    c[0x0e] = 0x80; // multi-function on the host
    put32(&mut c, 0x10, 0x0);
    put32(&mut c, 0x14, 0x1);
    put32(&mut c, 0x18, 0x4);
    put32(&mut c, 0x20, 0xc);
    put32(&mut c, 0x2c, 0x1626_10de);
    put32(&mut c, 0x30, 0xfff0_0001); // a ROM the guest must not see
    c[0x34] = 0x40;
    c[0x3d] = 1;
    // PM: D3hot now.
    put(&mut c, 0x40, &[0x01, MSI as u8, 3, 0, 3, 0, 0, 0]);
    // MSI: 64-bit, per-vector masking, 8 vectors capable; host-programmed junk in the address.
    put(&mut c, MSI.into(), &[0x05, MSIX as u8, 0x86, 0x01]);
    put32(&mut c, 0x54, 0xdead_beef);
    // MSI-X: 8 entries, table and PBA in BAR 2.
    put(&mut c, MSIX.into(), &[0x11, PCIE as u8, 0x07, 0x80]);
    put32(&mut c, 0x74, 0x3002);
    put32(&mut c, 0x78, 0x3802);
    // PCIe v2 endpoint; device status and link status set on the host.
    put(&mut c, PCIE.into(), &[0x10, VENDOR as u8, 0x02, 0x00]);
    put32(&mut c, 0x84, 0x1000_8fc0); // DevCap: FLR capable
    put(&mut c, 0x8a, &[0x10, 0x00]);
    put(&mut c, 0x92, &[0x43, 0x10]);
    // Vendor-specific, 16 bytes.
    put(&mut c, VENDOR.into(), &[0x09, 0xd0, 0x10, 0x77]);
    // Enhanced Allocation: hidden.
    put(&mut c, 0xd0, &[0x14, 0x00, 0x00, 0x00]);
    // Extended: AER -> DSN -> SR-IOV -> vendor-specific -> Resizable BAR.
    put32(&mut c, 0x100, 0x1402_0001);
    put32(&mut c, 0x140, 0x1501_0003);
    put32(&mut c, 0x144, 0x89ab_cdef);
    put32(&mut c, 0x148, 0x0123_4567);
    put32(&mut c, 0x150, 0x1901_0010);
    put32(&mut c, 0x190, 0x1a01_000b);
    put32(&mut c, 0x194, 0x0100_1234); // length 0x10
    put32(&mut c, 0x198, 0x5555_aaaa);
    put32(&mut c, 0x1a0, 0x0001_0015);

    let mut regions = vec![RegionInfo::default(); 8];
    regions[0] = region(0x4000, true);
    regions[1] = region(0x100, false);
    regions[2] = region(0x10000, true);
    regions[4] = RegionInfo {
        sparse_areas: vec![range(0, 0x1000_0000), range(0x1_0000_0800, 0x2000)],
        ..region(8 * GIB, true)
    };
    regions[7] = region(4096, false);
    FakeState {
        config: c,
        regions,
        irq_counts: [1, 8, 8],
        ..Default::default()
    }
}

fn create(state: FakeState) -> (VfioPciDevice, Fake) {
    create_paged(state, 0x1000)
}

fn create_paged(state: FakeState, page: u64) -> (VfioPciDevice, Fake) {
    let fake = Fake(Arc::new(Mutex::new(state)));
    let device = VfioPciDevice::new(Box::new(fake.clone()), page).unwrap();
    (device, fake)
}

fn read32(dev: &mut VfioPciDevice, offset: u16) -> u32 {
    let mut b = [0u8; 4];
    dev.config_read(offset, &mut b);
    u32::from_le_bytes(b)
}

fn write32(dev: &mut VfioPciDevice, offset: u16, value: u32) -> ConfigWriteResult {
    dev.config_write(offset, &value.to_le_bytes())
}

fn write16(dev: &mut VfioPciDevice, offset: u16, value: u16) -> ConfigWriteResult {
    dev.config_write(offset, &value.to_le_bytes())
}

fn guest_view(dev: &mut VfioPciDevice) -> Vec<u8> {
    (0..1024)
        .flat_map(|i| read32(dev, i * 4).to_le_bytes())
        .collect()
}

fn routes(result: ConfigWriteResult) -> Vec<InterruptRoute> {
    match result {
        ConfigWriteResult::Interrupts(routes) => routes,
        other => panic!("expected interrupt routes, got {other:?}"),
    }
}

/// Writes the MSI-X control register's high byte (enable 0x80, function mask 0x40).
fn msix_control(dev: &mut VfioPciDevice, value: u8) -> Vec<InterruptRoute> {
    routes(dev.config_write(MSIX + 3, &[value]))
}

/// Writes dword `at` (0 address, 4 upper address, 8 data, 12 vector control) of a table entry.
fn msix_entry(dev: &mut VfioPciDevice, vector: u64, at: u64, value: u32) -> Vec<InterruptRoute> {
    dev.mmio_write(2, 0x3000 + 16 * vector + at, &value.to_le_bytes())
}

fn range(offset: u64, size: u64) -> BarRange {
    BarRange::new(offset, size)
}

fn msg(address: u64, data: u32) -> MsiMessage {
    MsiMessage { address, data }
}

fn route(vector: u16, message: Option<MsiMessage>) -> InterruptRoute {
    InterruptRoute { vector, message }
}

#[test]
fn shadow_has_the_real_identity() {
    let (mut dev, fake) = create(gpu());
    assert_eq!(fake.state().resets, 1);
    assert_eq!(read32(&mut dev, 0x00), 0x2330_10de);
    assert_eq!(read32(&mut dev, 0x08), 0x0302_00a1);
    assert_eq!(read32(&mut dev, 0x0c) >> 16, 0); // single-function, type 0
    assert_eq!(read32(&mut dev, 0x2c), 0x1626_10de);
    assert_eq!(read32(&mut dev, 0x30), 0); // no ROM
    assert_eq!(read32(&mut dev, 0x3c) >> 8 & 0xff, 1);
    assert_eq!(dev.interrupt_pin(), 1);
    assert_ne!(read32(&mut dev, 0x04) & 0x0010_0000, 0);
    // Read-only in the guest's hands.
    let _ = write32(&mut dev, 0x00, 0);
    let _ = write32(&mut dev, 0x08, 0);
    assert_eq!(read32(&mut dev, 0x00), 0x2330_10de);
    assert_eq!(read32(&mut dev, 0x08), 0x0302_00a1);
}

#[test]
fn hostile_accesses_never_panic_or_reach_the_device() {
    let (mut dev, fake) = create(gpu());
    let mut data = [0u8; 4];
    for (bar, offset, len) in [
        (7u8, 0u64, 4usize),
        (3, 0, 4), // the upper half of BAR 2, not a BAR
        (5, 0, 4),
        (255, 0, 4),
        (0, 0x4000, 1),
        (0, 0x3ffe, 4),
        (0, u64::MAX, 1),
        (0, u64::MAX - 3, 4),
        (0, 0, 3),
        (0, 0, 0),
        (2, 0x307e, 4), // straddles the table's end
        (2, 0x2ffc, 8), // straddles the table's start
        (2, 0x3001, 4), // unaligned table access
    ] {
        let mut buf = vec![0u8; len];
        dev.mmio_read(bar, offset, &mut buf);
        assert!(
            buf.iter().all(|&b| b == 0xff),
            "read {bar}/{offset:#x}/{len}"
        );
        assert!(dev.mmio_write(bar, offset, &vec![0; len]).is_empty());
    }
    assert!(fake.state().bar_writes.is_empty());
    for (offset, len) in [
        (4096u16, 4usize),
        (4095, 1),
        (4094, 4),
        (u16::MAX, 2),
        (1, 4),
        (0, 8),
        (0, 3),
    ] {
        let mut buf = vec![0u8; len];
        dev.config_read(offset, &mut buf);
        if offset == 4095 {
            assert_eq!(buf, [0]);
        } else {
            assert!(buf.iter().all(|&b| b == 0xff), "config {offset:#x}/{len}");
        }
        assert_eq!(
            dev.config_write(offset, &vec![0xff; len]),
            ConfigWriteResult::None
        );
    }
    dev.config_read(0, &mut data);
    assert_eq!(u32::from_le_bytes(data), 0x2330_10de);
}

#[test]
fn bad_devices_are_refused_or_trimmed() {
    let attempt = |change: fn(&mut FakeState), page| {
        let mut state = gpu();
        change(&mut state);
        VfioPciDevice::new(Box::new(Fake(Arc::new(Mutex::new(state)))), page).map(|_| ())
    };
    let odd_page = attempt(|_| {}, 0x1800);
    assert!(matches!(odd_page, Err(VfioPciError::PageSize(0x1800))));
    let no_vendor = attempt(|s| s.config[0..2].fill(0xff), 4096);
    assert!(matches!(no_vendor, Err(VfioPciError::NoDevice { .. })));
    let bridge = attempt(|s| s.config[0x0e] = 0x81, 4096);
    assert!(matches!(bridge, Err(VfioPciError::NotEndpoint(1))));
    let short = attempt(|s| s.regions[7].size = 64, 4096);
    assert!(matches!(
        short,
        Err(VfioPciError::ConfigRegion { size: 64 })
    ));

    // An MSI-X table outside its BAR hides MSI-X.
    let mut state = gpu();
    put32(&mut state.config, 0x74, 0x1_0002);
    let (mut dev, _) = create(state);
    let view = guest_view(&mut dev);
    assert!(standard_capabilities(&view).iter().all(|c| c.id != 0x11));
    assert_eq!(dev.direct_ranges(2), [range(0, 0x10000)]);

    // A capability list that loops, pointers past the end, a vendor capability claiming
    // more than there is, a 256-byte config region.
    let mut state = gpu();
    state.config[usize::from(VENDOR) + 1] = 0x40;
    state.config[usize::from(VENDOR) + 2] = 0xff;
    state.regions[7].size = 256;
    let (mut dev, _) = create(state);
    assert_eq!(standard_capabilities(&guest_view(&mut dev)).len(), 5);
    assert_eq!(read32(&mut dev, 0x100), 0);

    // A host whose every irq call fails: the model carries on without interrupts.
    let mut state = gpu();
    state.broken = true;
    let (mut dev, _) = create(state);
    assert!(msix_control(&mut dev, 0x80).is_empty());
    let _ = msix_entry(&mut dev, 0, 12, 0);
    let _ = dev.mmio_write(2, 0x100, &[1]);
}

#[test]
fn random_guest_accesses_never_panic() {
    for seed in [1u64, 0x2545_f491_4f6c_dd1d, 0xdead_beef] {
        let (mut dev, _) = create(gpu());
        let mut rng = XorShift(seed);
        for _ in 0..20_000 {
            let r = rng.next();
            let len = [1, 2, 4, 8, 3, 0][(r % 6) as usize];
            let value = rng.next().to_le_bytes();
            // Bias towards the interesting places: header, MSI, MSI-X, BAR 2's MSI-X page.
            let config_offset = match (r >> 8) % 4 {
                0 => (r >> 16) as u16 % 0x40,
                1 => MSI + (r >> 16) as u16 % 0x18,
                2 => MSIX + (r >> 16) as u16 % 0x10,
                _ => (r >> 16) as u16,
            };
            let bar = (r >> 32) as u8 % 8;
            let bar_offset = match (r >> 40) % 3 {
                0 => 0x3000 + (r >> 44) % 0x900,
                1 => (r >> 44) % 0x10000,
                _ => rng.next(),
            };
            let mut buf = vec![0u8; len];
            match (r >> 4) % 4 {
                0 => {
                    let _ = dev.config_write(config_offset, &value[..len]);
                }
                1 => dev.config_read(config_offset, &mut buf),
                2 => {
                    let _ = dev.mmio_write(bar, bar_offset, &value[..len]);
                }
                _ => dev.mmio_read(bar, bar_offset, &mut buf),
            }
        }
        // Still itself.
        assert_eq!(read32(&mut dev, 0), 0x2330_10de);
        let _ = dev.active_bars();
    }
}
