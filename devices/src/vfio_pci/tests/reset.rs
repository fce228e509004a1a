//! Resets and the state the model leaves the device in.

use super::*;

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
fn dropping_the_model_turns_the_host_interrupts_off() {
    let (mut dev, fake) = create(gpu());
    let _ = msix_control(&mut dev, 0x80);
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
