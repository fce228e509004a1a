//! A 16550A UART: vm-superio's register model on a bus, its interrupt an eventfd (a KVM irqfd).

use std::io::{self, Write};

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// Raises the UART's interrupt by writing its eventfd, which KVM turns into a guest interrupt.
pub struct EventFdTrigger(EventFd);

impl Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Registers span 8 bytes; the device tree and ACPI describe one byte per register.
pub const SERIAL_REGISTERS: u64 = 8;

pub struct SerialDevice {
    uart: Serial<EventFdTrigger, vm_superio::serial::NoEvents, Box<dyn Write + Send>>,
}

impl SerialDevice {
    pub fn new(interrupt: EventFd, out: Box<dyn Write + Send>) -> Self {
        SerialDevice {
            uart: Serial::new(EventFdTrigger(interrupt), out),
        }
    }
}

/// A console UART the VMM feeds host input into (the 16550 on x86, the PL011 on aarch64).
pub trait ConsoleUart: BusDevice {
    /// Feeds host input to the guest; returns how many bytes fit in the receive FIFO.
    fn enqueue_input(&mut self, bytes: &[u8]) -> usize;
    /// How many bytes the receive FIFO can take now.
    fn input_room(&self) -> usize;
}

impl ConsoleUart for SerialDevice {
    fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let room = self.uart.fifo_capacity().min(bytes.len());
        if room == 0 {
            return 0;
        }
        match self.uart.enqueue_raw_bytes(&bytes[..room]) {
            Ok(n) => n,
            Err(e) => {
                log::warn!("serial: dropping input: {e:?}");
                0
            }
        }
    }

    fn input_room(&self) -> usize {
        self.uart.fifo_capacity()
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // Byte-wide registers only; wider or out-of-range accesses read as zero.
        match (data, u8::try_from(offset)) {
            ([byte], Ok(off)) if u64::from(off) < SERIAL_REGISTERS => *byte = self.uart.read(off),
            (data, _) => data.fill(0),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let ([value], Ok(off)) = (data, u8::try_from(offset))
            && u64::from(off) < SERIAL_REGISTERS
            && let Err(e) = self.uart.write(off, *value)
        {
            log::warn!("serial: {e:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Sink;

    const THR: u64 = 0;
    const IER: u64 = 1;
    const LSR: u64 = 5;

    fn device() -> (SerialDevice, Sink, EventFd) {
        let evt = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
        let sink = Sink::default();
        let dev = SerialDevice::new(evt.try_clone().unwrap(), Box::new(sink.clone()));
        (dev, sink, evt)
    }

    fn read(dev: &mut SerialDevice, offset: u64) -> u8 {
        let mut b = [0u8];
        dev.read(offset, &mut b);
        b[0]
    }

    #[test]
    fn transmits_guest_bytes() {
        let (mut dev, sink, _) = device();
        for &b in b"hi\n" {
            dev.write(THR, &[b]);
        }
        assert_eq!(sink.0.lock().unwrap().as_slice(), b"hi\n");
        // Transmitter empty, holding register empty.
        assert_eq!(read(&mut dev, LSR) & 0x60, 0x60);
    }

    #[test]
    fn input_raises_the_interrupt_and_reads_back() {
        let (mut dev, _, evt) = device();
        dev.write(IER, &[0x01]); // received-data interrupt
        assert_eq!(dev.enqueue_input(b"ok"), 2);
        assert!(evt.read().unwrap() >= 1);
        assert_eq!(read(&mut dev, LSR) & 1, 1); // data ready
        assert_eq!(read(&mut dev, THR), b'o');
        assert_eq!(read(&mut dev, THR), b'k');
        assert_eq!(read(&mut dev, LSR) & 1, 0);
    }

    #[test]
    fn odd_accesses_are_harmless() {
        let (mut dev, sink, _) = device();
        let mut wide = [0xaau8; 4];
        dev.read(0, &mut wide);
        assert_eq!(wide, [0; 4]);
        dev.write(0, &[1, 2]);
        dev.write(SERIAL_REGISTERS, &[1]);
        dev.write(u64::MAX, &[1]);
        assert!(sink.0.lock().unwrap().is_empty());
    }

    #[test]
    fn input_beyond_the_fifo_is_refused_not_lost_silently() {
        let (mut dev, _, _) = device();
        let room = dev.input_room();
        let big = vec![b'x'; room + 10];
        assert_eq!(dev.enqueue_input(&big), room);
        assert_eq!(dev.enqueue_input(b"y"), 0);
    }
}
