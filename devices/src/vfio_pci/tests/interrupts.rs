//! INTx, MSI and MSI-X modes, vector routes and the PBA.

use super::*;

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
fn msix_table_writes_become_routes() {
    let (mut dev, fake) = create(gpu());
    fake.state().irqs.clear();
    // Enable: all entries come out of reset masked, so no route yet.
    assert!(msix_control(&mut dev, 0x80).is_empty());
    assert_eq!(
        fake.state().irqs,
        [IrqCall::Disable(IrqType::Intx), IrqCall::Msix(8)]
    );
    assert!(msix_entry(&mut dev, 1, 0, 0xfee0_1000).is_empty());
    assert!(msix_entry(&mut dev, 1, 4, 0).is_empty());
    assert!(msix_entry(&mut dev, 1, 8, 0x41).is_empty());
    let first = Some(msg(0xfee0_1000, 0x41));
    assert_eq!(msix_entry(&mut dev, 1, 12, 0), [route(1, first)]);
    let entry = 0x3000 + 16;
    let mut back = [0u8; 8];
    dev.mmio_read(2, entry, &mut back);
    assert_eq!(u64::from_le_bytes(back), 0xfee0_1000);
    // Changing the message of an unmasked vector updates its route.
    let moved = Some(msg(0xfee0_2000, 0x41));
    assert_eq!(
        dev.mmio_write(2, entry, &0xfee0_2000u64.to_le_bytes()),
        [route(1, moved)]
    );
    // Function mask hides every vector, clearing it brings them back.
    assert_eq!(msix_control(&mut dev, 0xc0), [route(1, None)]);
    assert_eq!(msix_control(&mut dev, 0x80), [route(1, moved)]);
    // Masking the entry.
    assert_eq!(msix_entry(&mut dev, 1, 12, 1), [route(1, None)]);
    let _ = msix_entry(&mut dev, 1, 12, 0);
    // The table never reaches the device.
    assert!(fake.state().bar_writes.is_empty());
    // Disable: routes go, INTx comes back.
    fake.state().irqs.clear();
    assert_eq!(msix_control(&mut dev, 0x00), [route(1, None)]);
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
        .map(|i| route(i, Some(msg(0xfee0_0000, 0x4020 | u32::from(i)))))
        .collect();
    assert_eq!(changes, expected);
    // Per-vector mask.
    assert_eq!(
        routes(write32(&mut dev, MSI + 0x10, 0b100)),
        [route(2, None)]
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
    let _ = msix_control(&mut dev, 0x80);
    // Vector 3 unmasked, vectors 0 and 3 signalled.
    let _ = msix_entry(&mut dev, 3, 12, 0);
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
