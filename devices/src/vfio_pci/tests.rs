//! The VFIO-PCI model against an in-memory device whose configuration space each test scripts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::*;
use crate::pci::BarKind;
use crate::pci::capability::{extended_capabilities, standard_capabilities};
use crate::pci::msi::MsiMessage;

#[derive(Debug, Clone, PartialEq, Eq)]
enum IrqCall {
    Intx,
    Msi(usize),
    Msix(usize),
    Disable(IrqType),
}

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

#[derive(Clone)]
struct Fake(Arc<Mutex<FakeState>>);

impl Fake {
    fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.0.lock().unwrap()
    }
}

fn irq_index(irq: IrqType) -> usize {
    match irq {
        IrqType::Intx => 0,
        IrqType::Msi => 1,
        IrqType::Msix => 2,
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
        if s.broken {
            return Err("broken".into());
        }
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
        self.state().irq_counts[irq_index(irq)]
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
        if s.broken {
            Err("no reset".into())
        } else {
            Ok(())
        }
    }
}

impl Fake {
    fn call(&mut self, call: IrqCall) -> Result<(), BackendError> {
        let mut s = self.state();
        s.irqs.push(call);
        if s.broken {
            Err("broken".into())
        } else {
            Ok(())
        }
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
    put(
        &mut c,
        0x40,
        &[0x01, MSI as u8, 0x03, 0x00, 0x03, 0x00, 0, 0],
    );
    // MSI: 64-bit, per-vector masking, 8 vectors capable; host-programmed junk in the address.
    put(
        &mut c,
        MSI.into(),
        &[0x05, MSIX as u8, 0x86, 0x01, 0xef, 0xbe, 0xad, 0xde],
    );
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
        sparse_areas: vec![
            BarRange {
                offset: 0,
                size: 0x1000_0000,
            },
            BarRange {
                offset: 0x1_0000_0800,
                size: 0x2000,
            },
        ],
        ..region(8 * GIB, true)
    };
    regions[7] = region(4096, false);
    FakeState {
        config: c,
        regions,
        bar_memory: HashMap::new(),
        config_writes: Vec::new(),
        bar_writes: Vec::new(),
        irqs: Vec::new(),
        resets: 0,
        irq_counts: [1, 8, 8],
        broken: false,
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

fn range(offset: u64, size: u64) -> BarRange {
    BarRange { offset, size }
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
fn bars_have_host_sizes_and_guest_addresses() {
    let (mut dev, fake) = create(gpu());
    let bars: Vec<_> = dev
        .bars()
        .iter()
        .map(|b| (b.index, b.kind, b.size))
        .collect();
    assert_eq!(
        bars,
        [
            (
                0,
                BarKind::Memory32 {
                    prefetchable: false
                },
                0x4000
            ),
            (1, BarKind::Io, 0x100),
            (
                2,
                BarKind::Memory64 {
                    prefetchable: false
                },
                0x10000
            ),
            (4, BarKind::Memory64 { prefetchable: true }, 8 * GIB),
        ]
    );
    let sizes: Vec<u32> = (0..6)
        .map(|i| {
            let _ = write32(&mut dev, 0x10 + 4 * i, u32::MAX);
            read32(&mut dev, 0x10 + 4 * i)
        })
        .collect();
    assert_eq!(
        sizes,
        [
            0xffff_c000,
            0xffff_ff01,
            0xffff_0004,
            0xffff_ffff,
            0x0000_000c,
            0xffff_fffe
        ]
    );
    let moved = write32(&mut dev, 0x20, 0x0);
    assert_eq!(moved, ConfigWriteResult::None); // back to where it was
    let moved = write32(&mut dev, 0x24, 0x40);
    assert!(matches!(moved, ConfigWriteResult::BarMoved(m)
        if m.bar == 4 && m.new == 0x40_0000_0000 && m.size == 8 * GIB));
    // BAR programming never reaches the device.
    assert!(fake.state().config_writes.is_empty());
}

#[test]
fn capability_list_virtualises_msi_and_hides_what_the_vmm_cannot_mediate() {
    let (mut dev, _) = create(gpu());
    let view = guest_view(&mut dev);
    let ids: Vec<(u8, u16)> = standard_capabilities(&view)
        .iter()
        .map(|c| (c.id, c.offset))
        .collect();
    assert_eq!(
        ids,
        [
            (0x01, 0x40),
            (0x05, MSI),
            (0x11, MSIX),
            (0x10, PCIE),
            (0x09, VENDOR)
        ]
    );
    let ext: Vec<(u16, u16)> = extended_capabilities(&view)
        .iter()
        .map(|c| (c.id, c.offset))
        .collect();
    assert_eq!(ext, [(0x0003, 0x140), (0x000b, 0x190)]);
    // AER's place holds a null header pointing at DSN; hidden ones read as zero.
    assert_eq!(read32(&mut dev, 0x100), 0x1400_0000);
    assert_eq!(read32(&mut dev, 0x150), 0);
    assert_eq!(read32(&mut dev, 0xd0), 0);
    assert_eq!(read32(&mut dev, 0x144), 0x89ab_cdef);
    // Vendor capability ends the standard list; vendor extended ends the extended one.
    assert_eq!(view[usize::from(VENDOR) + 1], 0);
    assert_eq!(read32(&mut dev, 0x190) >> 20, 0);
    // MSI: capability bits kept, enable/MME clear, the host's address not shown.
    assert_eq!(read32(&mut dev, MSI), 0x0186_7005);
    assert_eq!(read32(&mut dev, MSI + 4), 0);
    // MSI-X: table and PBA where the device has them, disabled.
    assert_eq!(read32(&mut dev, MSIX), 0x0007_8011);
    assert_eq!(read32(&mut dev, MSIX + 4), 0x3002);
    assert_eq!(read32(&mut dev, MSIX + 8), 0x3802);
    // PM shows D0, and the guest's D-state writes stay in the shadow.
    assert_eq!(read32(&mut dev, 0x44) & 3, 0);
    let _ = dev.config_write(0x44, &[3]);
    assert_eq!(read32(&mut dev, 0x44) & 3, 3);
}

#[test]
fn live_and_forwarded_fields() {
    let (mut dev, fake) = create(gpu());
    // PCIe device and link status come from the device.
    assert_eq!(read32(&mut dev, PCIE + 8) >> 16, 0x0010);
    fake.state().config[0x93] = 0x20;
    assert_eq!(read32(&mut dev, PCIE + 0x10) >> 16, 0x2043);
    // Vendor capability body is the device's, writes go to it; its header is the shadow's.
    fake.state().config[0xc4] = 0x99;
    assert_eq!(read32(&mut dev, VENDOR + 4) & 0xff, 0x99);
    let _ = write32(&mut dev, VENDOR + 4, 0x1234_5678);
    assert_eq!(read32(&mut dev, VENDOR), 0x7710_0009);
    let _ = write32(&mut dev, 0x194, 0xffff_ffff);
    assert_eq!(
        fake.state().config_writes,
        [
            (0xc4, 0x1234_5678u32.to_le_bytes().to_vec()),
            (0x194, vec![0xff; 4])
        ]
    );
    // Status error bits are the device's (RW1C), the capability-list bit the shadow's.
    fake.state().config[0x07] = 0x40;
    fake.state().config[0x06] = 0x00;
    assert_eq!(read32(&mut dev, 4) >> 16, 0x4010);
    // PCIe control writes stay in the shadow.
    fake.state().config_writes.clear();
    let _ = write16(&mut dev, PCIE + 8, 0x2810);
    assert_eq!(read32(&mut dev, PCIE + 8) & 0xffff, 0x2810);
    assert!(fake.state().config_writes.is_empty());
}

#[test]
fn command_register_reaches_the_device() {
    let (mut dev, fake) = create(gpu());
    let r = write32(&mut dev, 4, 0xffff_0006);
    assert_eq!(
        r,
        ConfigWriteResult::DecodeChanged {
            memory: true,
            io: false
        }
    );
    // Command and the error half of status go to the device; the shadow owns status bit 4.
    assert_eq!(
        fake.state().config_writes,
        [(4, vec![0x06, 0x00]), (7, vec![0xff])]
    );
    fake.state().config_writes.clear();
    let _ = dev.config_write(5, &[0x04]);
    let _ = dev.config_write(6, &[0xff]);
    assert_eq!(fake.state().config_writes, [(5, vec![0x04])]);
}

#[test]
fn flr_resets_the_device() {
    let (mut dev, fake) = create(gpu());
    let _ = write16(&mut dev, PCIE + 8, 0x8000);
    assert_eq!(fake.state().resets, 2);
    assert_eq!(read32(&mut dev, PCIE + 8) & 0x8000, 0);
    let _ = dev.config_write(PCIE + 8, &[0xff]);
    assert_eq!(fake.state().resets, 2);
}

#[test]
fn intx_is_on_until_msi_or_msix() {
    let (dev, fake) = create(gpu());
    assert_eq!(fake.state().irqs, [IrqCall::Intx]);
    assert!(dev.intx_eventfds().is_some());
    assert_eq!(dev.vector_eventfds().len(), 8);

    let mut state = gpu();
    state.irq_counts[0] = 0;
    let (mut dev, fake) = create(state);
    assert!(fake.state().irqs.is_empty());
    assert!(dev.intx_eventfds().is_none());
    assert_eq!(read32(&mut dev, 0x3c) >> 8 & 0xff, 0);
}

#[test]
fn dropping_the_model_turns_the_host_interrupts_off() {
    let (mut dev, fake) = create(gpu());
    let _ = dev.config_write(MSIX + 3, &[0x80]);
    fake.state().irqs.clear();
    drop(dev);
    assert_eq!(fake.state().irqs, [IrqCall::Disable(IrqType::Msix)]);

    // A device with no interrupt type on needs nothing turned off.
    let mut state = gpu();
    state.irq_counts[0] = 0;
    let (dev, fake) = create(state);
    drop(dev);
    assert!(fake.state().irqs.is_empty());
}

#[test]
fn msix_table_writes_become_routes() {
    let (mut dev, fake) = create(gpu());
    fake.state().irqs.clear();
    // Enable: all entries come out of reset masked, so no route yet.
    assert!(routes(dev.config_write(MSIX + 3, &[0x80])).is_empty());
    assert_eq!(
        fake.state().irqs,
        [IrqCall::Disable(IrqType::Intx), IrqCall::Msix(8)]
    );
    let entry = 0x3000 + 16;
    assert!(
        dev.mmio_write(2, entry, &0xfee0_1000u32.to_le_bytes())
            .is_empty()
    );
    assert!(dev.mmio_write(2, entry + 4, &0u32.to_le_bytes()).is_empty());
    assert!(
        dev.mmio_write(2, entry + 8, &0x41u32.to_le_bytes())
            .is_empty()
    );
    let msg = Some(MsiMessage {
        address: 0xfee0_1000,
        data: 0x41,
    });
    assert_eq!(
        dev.mmio_write(2, entry + 12, &0u32.to_le_bytes()),
        [InterruptRoute {
            vector: 1,
            message: msg
        }]
    );
    let mut back = [0u8; 8];
    dev.mmio_read(2, entry, &mut back);
    assert_eq!(u64::from_le_bytes(back), 0xfee0_1000);
    // Changing the message of an unmasked vector updates its route.
    let moved = Some(MsiMessage {
        address: 0xfee0_2000,
        data: 0x41,
    });
    assert_eq!(
        dev.mmio_write(2, entry, &0xfee0_2000u64.to_le_bytes()),
        [InterruptRoute {
            vector: 1,
            message: moved
        }]
    );
    // Function mask hides every vector, clearing it brings them back.
    assert_eq!(
        routes(dev.config_write(MSIX + 3, &[0xc0])),
        [InterruptRoute {
            vector: 1,
            message: None
        }]
    );
    assert_eq!(
        routes(dev.config_write(MSIX + 3, &[0x80])),
        [InterruptRoute {
            vector: 1,
            message: moved
        }]
    );
    // Masking the entry.
    assert_eq!(
        dev.mmio_write(2, entry + 12, &1u32.to_le_bytes()),
        [InterruptRoute {
            vector: 1,
            message: None
        }]
    );
    let _ = dev.mmio_write(2, entry + 12, &0u32.to_le_bytes());
    // The table never reaches the device.
    assert!(fake.state().bar_writes.is_empty());
    // Disable: routes go, INTx comes back.
    fake.state().irqs.clear();
    assert_eq!(
        routes(dev.config_write(MSIX + 3, &[0x00])),
        [InterruptRoute {
            vector: 1,
            message: None
        }]
    );
    assert_eq!(
        fake.state().irqs,
        [IrqCall::Disable(IrqType::Msix), IrqCall::Intx]
    );
}

#[test]
fn msi_multiple_messages_and_masking() {
    let (mut dev, fake) = create(gpu());
    fake.state().irqs.clear();
    let _ = write32(&mut dev, MSI + 4, 0xfee0_0000);
    let _ = write32(&mut dev, MSI + 8, 0);
    let _ = write16(&mut dev, MSI + 0xc, 0x4020);
    // MME = 2: four vectors, data low bits carry the vector number.
    let changes = routes(dev.config_write(MSI + 2, &[0x87 | 0x20]));
    assert_eq!(
        fake.state().irqs,
        [IrqCall::Disable(IrqType::Intx), IrqCall::Msi(4)]
    );
    let expected: Vec<InterruptRoute> = (0..4)
        .map(|i| InterruptRoute {
            vector: i,
            message: Some(MsiMessage {
                address: 0xfee0_0000,
                data: 0x4020 | u32::from(i),
            }),
        })
        .collect();
    assert_eq!(changes, expected);
    // Per-vector mask.
    assert_eq!(
        routes(write32(&mut dev, MSI + 0x10, 0b100)),
        [InterruptRoute {
            vector: 2,
            message: None
        }]
    );
    // Granting more vectors re-enables MSI on the host with the new count.
    fake.state().irqs.clear();
    let changes = routes(dev.config_write(MSI + 2, &[0x87 | 0x30]));
    assert_eq!(
        fake.state().irqs,
        [IrqCall::Disable(IrqType::Msi), IrqCall::Msi(8)]
    );
    // Vectors 4..8 appear; 0, 1 and 3 keep their messages, 2 stays masked.
    assert_eq!(
        changes.iter().map(|r| r.vector).collect::<Vec<_>>(),
        [4, 5, 6, 7]
    );
    // Disable.
    fake.state().irqs.clear();
    let changes = routes(dev.config_write(MSI + 2, &[0x86]));
    assert_eq!(changes.len(), 7);
    assert!(changes.iter().all(|r| r.message.is_none()));
    assert_eq!(
        fake.state().irqs,
        [IrqCall::Disable(IrqType::Msi), IrqCall::Intx]
    );
    // The device never saw the guest's MSI programming.
    assert!(fake.state().config_writes.is_empty());
}

#[test]
fn pba_reports_signals_of_masked_vectors() {
    let (mut dev, _) = create(gpu());
    let _ = dev.config_write(MSIX + 3, &[0x80]);
    // Vector 3 unmasked, vectors 0 and 3 signalled.
    let _ = dev.mmio_write(2, 0x3000 + 3 * 16 + 12, &0u32.to_le_bytes());
    dev.vector_eventfds()[0].write(1).unwrap();
    dev.vector_eventfds()[3].write(1).unwrap();
    let mut pba = [0u8; 8];
    dev.mmio_read(2, 0x3800, &mut pba);
    assert_eq!(u64::from_le_bytes(pba), 0b1);
    // Reading the PBA does not consume the signal.
    assert_eq!(dev.vector_eventfds()[0].read().unwrap(), 1);
    dev.mmio_read(2, 0x3800, &mut pba);
    assert_eq!(u64::from_le_bytes(pba), 0);
    let mut half = [0u8; 4];
    dev.mmio_read(2, 0x3804, &mut half);
    assert_eq!(half, [0; 4]);
    // PBA writes are ignored, odd widths read all-ones.
    assert!(dev.mmio_write(2, 0x3800, &[0xff; 8]).is_empty());
    let mut odd = [0u8; 2];
    dev.mmio_read(2, 0x3800, &mut odd);
    assert_eq!(odd, [0xff; 2]);
}

#[test]
fn direct_and_trapped_bar_ranges() {
    let (dev, _) = create(gpu());
    assert_eq!(dev.direct_ranges(0), [range(0, 0x4000)]);
    assert!(dev.trapped_ranges(0).is_empty());
    // I/O BAR: never mapped.
    assert!(dev.direct_ranges(1).is_empty());
    assert_eq!(dev.trapped_ranges(1), [range(0, 0x100)]);
    // The MSI-X table and PBA page is trapped.
    assert_eq!(
        dev.direct_ranges(2),
        [range(0, 0x3000), range(0x4000, 0xc000)]
    );
    assert_eq!(dev.trapped_ranges(2), [range(0x3000, 0x1000)]);
    // Sparse areas, shrunk to whole pages.
    assert_eq!(
        dev.direct_ranges(4),
        [range(0, 0x1000_0000), range(0x1_0000_1000, 0x1000)]
    );
    assert_eq!(
        dev.trapped_ranges(4),
        [
            range(0x1000_0000, 0xf000_1000),
            range(0x1_0000_2000, 4 * GIB - 0x2000)
        ]
    );
    assert!(dev.direct_ranges(3).is_empty() && dev.direct_ranges(7).is_empty());
    assert!(dev.trapped_ranges(3).is_empty() && dev.trapped_ranges(200).is_empty());

    // 64 KiB host pages: BAR 0 is too small, BAR 2 is all MSI-X page.
    let (dev, _) = create_paged(gpu(), 0x10000);
    assert!(dev.direct_ranges(0).is_empty());
    assert!(dev.direct_ranges(2).is_empty());
    assert_eq!(dev.trapped_ranges(2), [range(0, 0x10000)]);
    assert_eq!(dev.direct_ranges(4), [range(0, 0x1000_0000)]);

    // A region the host cannot mmap is all trapped.
    let mut state = gpu();
    state.regions[0].mmap = false;
    let (dev, _) = create(state);
    assert!(dev.direct_ranges(0).is_empty());
}

#[test]
fn trapped_bar_accesses_go_to_the_device() {
    let (mut dev, fake) = create(gpu());
    let mut data = [0u8; 4];
    dev.mmio_read(2, 0x100, &mut data);
    assert_eq!(data, [0x00, 0x01, 0x02, 0x03]);
    // Same page as the table, outside table and PBA.
    assert!(dev.mmio_write(2, 0x3f00, &[9, 8]).is_empty());
    dev.mmio_read(2, 0x3f00, &mut data);
    assert_eq!(data, [9, 8, 0x02, 0x03]);
    dev.mmio_read(1, 0xfc, &mut data);
    assert_eq!(data, [0xfc, 0xfd, 0xfe, 0xff]);
    let _ = dev.mmio_write(1, 0x10, &[1]);
    assert_eq!(
        fake.state().bar_writes,
        [(2, 0x3f00, vec![9, 8]), (1, 0x10, vec![1])]
    );
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
    let attempt = |state: FakeState, page| {
        VfioPciDevice::new(Box::new(Fake(Arc::new(Mutex::new(state)))), page).map(|_| ())
    };
    assert!(matches!(
        attempt(gpu(), 0x1800),
        Err(VfioPciError::PageSize(0x1800))
    ));
    let mut state = gpu();
    state.config[0..2].copy_from_slice(&[0xff, 0xff]);
    assert!(matches!(
        attempt(state, 4096),
        Err(VfioPciError::NoDevice { .. })
    ));
    let mut state = gpu();
    state.config[0x0e] = 0x81;
    assert!(matches!(
        attempt(state, 4096),
        Err(VfioPciError::NotEndpoint(1))
    ));
    let mut state = gpu();
    state.regions[7].size = 64;
    assert!(matches!(
        attempt(state, 4096),
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
    assert!(routes(dev.config_write(MSIX + 3, &[0x80])).is_empty());
    let _ = dev.mmio_write(2, 0x3000 + 12, &0u32.to_le_bytes());
    let _ = dev.mmio_write(2, 0x100, &[1]);
}

/// Seeded xorshift, no dependencies.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
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
