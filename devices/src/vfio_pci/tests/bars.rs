//! BAR sizes, direct and trapped ranges, and trapped accesses.

use super::*;
use crate::testutil::{M32, M64, M64_PREF};

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
            (0, M32, 0x4000),
            (1, BarKind::Io, 0x100),
            (2, M64, 0x10000),
            (4, M64_PREF, 8 * GIB),
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
