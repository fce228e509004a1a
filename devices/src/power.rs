//! The x86 hardware-reduced ACPI power block: sleep control, sleep status and reset registers in
//! one small I/O port range, as the FADT describes them (ACPI 6.5 section 4.8.3.7).

use crate::bus::BusDevice;

/// What the guest asked the machine to do.
pub trait PowerEvents: Send {
    fn power_off(&self);
    fn reset(&self);
}

/// Register offsets inside the block.
pub const SLEEP_CONTROL: u64 = 0;
pub const SLEEP_STATUS: u64 = 1;
pub const RESET: u64 = 2;
pub const POWER_BLOCK_SIZE: u64 = 3;

/// Sleep control register: SLP_TYPx in bits 4:2, SLP_EN in bit 5.
const SLP_EN: u8 = 1 << 5;
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0b111;

pub struct AcpiPowerBlock {
    s5_sleep_type: u8,
    reset_value: u8,
    events: Box<dyn PowerEvents>,
}

impl AcpiPowerBlock {
    /// `s5_sleep_type` is the \_S5 package's SLP_TYP; `reset_value` the FADT's RESET_VALUE.
    pub fn new(s5_sleep_type: u8, reset_value: u8, events: Box<dyn PowerEvents>) -> Self {
        AcpiPowerBlock {
            s5_sleep_type,
            reset_value,
            events,
        }
    }
}

impl BusDevice for AcpiPowerBlock {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Nothing is ever asleep or waking: every register reads as zero.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let [value] = *data else { return };
        match offset {
            SLEEP_CONTROL if value & SLP_EN != 0 => {
                let sleep_type = (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
                if sleep_type == self.s5_sleep_type {
                    self.events.power_off();
                } else {
                    log::warn!("guest asked for unsupported sleep type {sleep_type}; ignored");
                }
            }
            RESET if value == self.reset_value => self.events.reset(),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<&'static str>>>);

    impl PowerEvents for Recorder {
        fn power_off(&self) {
            self.0.lock().unwrap().push("off");
        }
        fn reset(&self) {
            self.0.lock().unwrap().push("reset");
        }
    }

    #[test]
    fn s5_powers_off_and_reset_value_resets() {
        let rec = Recorder::default();
        let mut block = AcpiPowerBlock::new(5, 1, Box::new(rec.clone()));
        block.write(SLEEP_CONTROL, &[(5 << 2) | SLP_EN]);
        block.write(RESET, &[1]);
        assert_eq!(*rec.0.lock().unwrap(), ["off", "reset"]);
    }

    #[test]
    fn other_writes_do_nothing() {
        let rec = Recorder::default();
        let mut block = AcpiPowerBlock::new(5, 1, Box::new(rec.clone()));
        block.write(SLEEP_CONTROL, &[5 << 2]); // SLP_EN clear
        block.write(SLEEP_CONTROL, &[(3 << 2) | SLP_EN]); // S3
        block.write(RESET, &[2]);
        block.write(SLEEP_STATUS, &[0xff]);
        block.write(SLEEP_CONTROL, &[0x34, 0]); // two bytes wide
        let mut data = [0xff; 2];
        block.read(SLEEP_STATUS, &mut data);
        assert_eq!(data, [0, 0]);
        assert!(rec.0.lock().unwrap().is_empty());
    }
}
