//! Capability policy and the configuration-space shadow.

use super::*;

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
