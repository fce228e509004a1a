//! An Arm PL011 UART as the SBSA generic UART subset uses it (Arm DDI 0183, SBSA appendix B):
//! the aarch64 guest's console. Linux drives it as `ttyAMA0` through `amba-pl011`, whose console
//! is printed from a kernel thread instead of by whoever holds the console lock, so a slow
//! console does not hold up the guest's boot the way the 8250's legacy console does.
//!
//! Transmission is immediate: the transmit FIFO is always empty, never full, never busy. Received
//! bytes wait in a 32-entry FIFO. The interrupt is delivered as an edge (an irqfd pulse) each time
//! the masked status becomes non-zero or new input arrives.

use std::collections::VecDeque;
use std::io::Write;

use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::serial::ConsoleUart;

/// The register window (one 4 KiB page).
pub const PL011_REGISTERS: u64 = 0x1000;
const RX_FIFO: usize = 32;

// Register offsets.
const DR: u64 = 0x000;
const RSR_ECR: u64 = 0x004;
const FR: u64 = 0x018;
const ILPR: u64 = 0x020;
const IBRD: u64 = 0x024;
const FBRD: u64 = 0x028;
const LCR_H: u64 = 0x02c;
const CR: u64 = 0x030;
const IFLS: u64 = 0x034;
const IMSC: u64 = 0x038;
const RIS: u64 = 0x03c;
const MIS: u64 = 0x040;
const ICR: u64 = 0x044;
const DMACR: u64 = 0x048;
const ID_BASE: u64 = 0xfe0;

// Flag register bits (TXFF, transmit FIFO full, and BUSY are never set: bytes leave at once).
const FR_RXFE: u32 = 1 << 4;
const FR_RXFF: u32 = 1 << 6;
const FR_TXFE: u32 = 1 << 7;

// Interrupt bits (RIS, MIS, IMSC, ICR).
const INT_RX: u32 = 1 << 4;
const INT_TX: u32 = 1 << 5;
const INT_RT: u32 = 1 << 6;
const INT_ALL: u32 = 0x7ff;

/// PeriphID0..3 (part 0x011, designer Arm, revision 3) and PCellID0..3, for the AMBA bus probe.
const ID: [u8; 8] = [0x11, 0x10, 0x34, 0x00, 0x0d, 0xf0, 0x05, 0xb1];

pub struct Pl011 {
    out: Box<dyn Write + Send>,
    interrupt: EventFd,
    rx: VecDeque<u8>,
    raw: u32,
    mask: u32,
    /// Registers the guest configures and reads back; they change nothing here.
    ilpr: u32,
    ibrd: u32,
    fbrd: u32,
    lcr_h: u32,
    cr: u32,
    ifls: u32,
    dmacr: u32,
}

impl Pl011 {
    pub fn new(interrupt: EventFd, out: Box<dyn Write + Send>) -> Self {
        Pl011 {
            out,
            interrupt,
            rx: VecDeque::with_capacity(RX_FIFO),
            // Reset: the empty transmit FIFO is below any trigger level.
            raw: INT_TX,
            mask: 0,
            ilpr: 0,
            ibrd: 0,
            fbrd: 0,
            lcr_h: 0,
            // UARTEN, TXE, RXE: the SBSA UART is always enabled.
            cr: 0x301,
            ifls: 0x12,
            dmacr: 0,
        }
    }

    fn masked(&self) -> u32 {
        self.raw & self.mask
    }

    /// Applies a status change; pulses the interrupt when the masked status becomes non-zero,
    /// or stays non-zero with something new in it.
    fn set_raw(&mut self, raw: u32) {
        let before = self.masked();
        self.raw = raw & INT_ALL;
        let after = self.masked();
        if after & !before != 0 {
            self.pulse();
        }
    }

    fn set_mask(&mut self, mask: u32) {
        let before = self.masked();
        self.mask = mask & INT_ALL;
        if self.masked() & !before != 0 {
            self.pulse();
        }
    }

    fn pulse(&self) {
        if let Err(e) = self.interrupt.write(1) {
            log::warn!("pl011: raising the interrupt: {e}");
        }
    }

    fn flags(&self) -> u32 {
        let mut fr = FR_TXFE;
        if self.rx.is_empty() {
            fr |= FR_RXFE;
        }
        if self.rx.len() == RX_FIFO {
            fr |= FR_RXFF;
        }
        fr
    }

    fn read_register(&mut self, offset: u64) -> u32 {
        match offset {
            DR => {
                let byte = self.rx.pop_front().unwrap_or(0);
                if self.rx.is_empty() {
                    self.set_raw(self.raw & !(INT_RX | INT_RT));
                }
                u32::from(byte)
            }
            RSR_ECR => 0,
            FR => self.flags(),
            ILPR => self.ilpr,
            IBRD => self.ibrd,
            FBRD => self.fbrd,
            LCR_H => self.lcr_h,
            CR => self.cr,
            IFLS => self.ifls,
            IMSC => self.mask,
            RIS => self.raw,
            MIS => self.masked(),
            DMACR => self.dmacr,
            o if (ID_BASE..ID_BASE + 0x20).contains(&o) && o % 4 == 0 => {
                u32::from(ID[((o - ID_BASE) / 4) as usize])
            }
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            DR => {
                // A console that cannot be written is not the guest's problem: drop the byte.
                let byte = value as u8;
                if let Err(e) = self.out.write_all(&[byte]).and_then(|()| self.out.flush()) {
                    log::debug!("pl011: console output: {e}");
                }
                // The byte left at once: the FIFO is empty again, below the trigger level.
                self.set_raw(self.raw | INT_TX);
            }
            RSR_ECR => {}
            ILPR => self.ilpr = value & 0xff,
            IBRD => self.ibrd = value & 0xffff,
            FBRD => self.fbrd = value & 0x3f,
            LCR_H => self.lcr_h = value & 0xff,
            CR => self.cr = value & 0xff87,
            IFLS => self.ifls = value & 0x3f,
            IMSC => self.set_mask(value),
            ICR => self.set_raw(self.raw & !value),
            DMACR => self.dmacr = value & 0x7,
            _ => {}
        }
    }
}

impl Pl011 {
    /// Writes every register as the guest would read it into `page` (the 4 KiB register window,
    /// little-endian 32-bit words) and returns whether reads have no side effect now, i.e.
    /// nothing waits in the receive FIFO. While that holds a VMM may serve the guest's reads from
    /// that page in read-only guest memory and trap only writes: one exit per transmitted byte
    /// instead of two (the flag-register poll no longer exits).
    pub fn mirror(&self, page: &mut [u8]) -> bool {
        let registers = [
            (DR, 0),
            (RSR_ECR, 0),
            (FR, self.flags()),
            (ILPR, self.ilpr),
            (IBRD, self.ibrd),
            (FBRD, self.fbrd),
            (LCR_H, self.lcr_h),
            (CR, self.cr),
            (IFLS, self.ifls),
            (IMSC, self.mask),
            (RIS, self.raw),
            (MIS, self.masked()),
            (DMACR, self.dmacr),
        ];
        let ids = ID
            .iter()
            .enumerate()
            .map(|(i, &b)| (ID_BASE + 4 * i as u64, u32::from(b)));
        for (offset, value) in registers.into_iter().chain(ids) {
            let at = offset as usize;
            if let Some(word) = page.get_mut(at..at + 4) {
                word.copy_from_slice(&value.to_le_bytes());
            }
        }
        self.rx.is_empty()
    }
}

impl ConsoleUart for Pl011 {
    fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let room = RX_FIFO - self.rx.len();
        let n = room.min(bytes.len());
        if n > 0 {
            self.rx.extend(&bytes[..n]);
            self.set_raw(self.raw | INT_RX | INT_RT);
            // New data while the interrupt is already up still deserves a look.
            if self.masked() & (INT_RX | INT_RT) != 0 {
                self.pulse();
            }
        }
        n
    }

    fn input_room(&self) -> usize {
        RX_FIFO - self.rx.len()
    }
}

impl BusDevice for Pl011 {
    /// 8-, 16- and 32-bit accesses to aligned registers (the SBSA UART uses 32-bit ones only);
    /// anything else reads as zero and writes are ignored.
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let aligned = offset & !3;
        let shift = (offset & 3) * 8;
        if data.len() > 4 || (offset & 3) + data.len() as u64 > 4 || offset >= PL011_REGISTERS {
            data.fill(0);
            return;
        }
        let value = self.read_register(aligned) >> shift;
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = (value >> (8 * i)) as u8;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() > 4 || (offset & 3) != 0 || offset >= PL011_REGISTERS {
            return;
        }
        let mut value = 0u32;
        for (i, byte) in data.iter().enumerate() {
            value |= u32::from(*byte) << (8 * i);
        }
        self.write_register(offset, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Sink;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    fn uart() -> (Pl011, Sink, EventFd) {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let sink = Sink::default();
        (
            Pl011::new(evt.try_clone().unwrap(), Box::new(sink.clone())),
            sink,
            evt,
        )
    }

    fn read32(u: &mut Pl011, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        u.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    fn write32(u: &mut Pl011, offset: u64, value: u32) {
        u.write(offset, &value.to_le_bytes());
    }

    fn pulses(evt: &EventFd) -> u64 {
        evt.read().unwrap_or(0)
    }

    #[test]
    fn transmits_every_byte_at_once_and_never_reports_a_full_fifo() {
        let (mut u, sink, _evt) = uart();
        for b in b"ok\n" {
            const FR_BUSY_TXFF: u32 = 1 << 3 | 1 << 5;
            assert_eq!(read32(&mut u, FR) & FR_BUSY_TXFF, 0);
            write32(&mut u, DR, u32::from(*b));
        }
        // A partial line is out too: nothing waits for a newline or an exit.
        write32(&mut u, DR, u32::from(b'$'));
        assert_eq!(sink.0.lock().unwrap().as_slice(), b"ok\n$");
        assert_ne!(read32(&mut u, FR) & FR_TXFE, 0);
    }

    #[test]
    fn interrupts_follow_the_mask_and_clear() {
        let (mut u, _sink, evt) = uart();
        assert_eq!(read32(&mut u, MIS), 0);
        assert_eq!(pulses(&evt), 0);
        // Unmasking TX with the FIFO empty raises it at once.
        write32(&mut u, IMSC, INT_TX);
        assert_eq!(read32(&mut u, MIS), INT_TX);
        assert_eq!(pulses(&evt), 1);
        // Clearing and masking again brings it down without a pulse.
        write32(&mut u, ICR, INT_TX);
        assert_eq!(read32(&mut u, RIS) & INT_TX, 0);
        write32(&mut u, IMSC, 0);
        assert_eq!(pulses(&evt), 0);
    }

    #[test]
    fn received_bytes_wait_in_a_bounded_fifo() {
        let (mut u, _sink, evt) = uart();
        write32(&mut u, IMSC, INT_RX | INT_RT);
        assert_eq!(pulses(&evt), 0);
        assert_ne!(read32(&mut u, FR) & FR_RXFE, 0);
        let input = [b'x'; 40];
        assert_eq!(u.enqueue_input(&input), RX_FIFO);
        assert_eq!(u.input_room(), 0);
        assert_eq!(u.enqueue_input(b"y"), 0);
        assert_ne!(read32(&mut u, FR) & FR_RXFF, 0);
        assert!(pulses(&evt) >= 1);
        for _ in 0..RX_FIFO {
            assert_eq!(read32(&mut u, DR), u32::from(b'x'));
        }
        // Empty again: the receive interrupt is gone and reads return 0.
        assert_eq!(read32(&mut u, MIS), 0);
        assert_ne!(read32(&mut u, FR) & FR_RXFE, 0);
        assert_eq!(read32(&mut u, DR), 0);
    }

    #[test]
    fn the_mirror_reads_like_the_registers_while_nothing_was_received() {
        let (mut u, _sink, _evt) = uart();
        write32(&mut u, IMSC, INT_TX | INT_RX);
        write32(&mut u, IBRD, 13);
        let mut page = vec![0xaau8; PL011_REGISTERS as usize];
        assert!(u.mirror(&mut page));
        let word = |page: &[u8], o: u64| {
            u32::from_le_bytes(page[o as usize..o as usize + 4].try_into().unwrap())
        };
        for offset in [DR, FR, IBRD, CR, IMSC, RIS, MIS, ID_BASE, ID_BASE + 28] {
            assert_eq!(word(&page, offset), read32(&mut u, offset), "{offset:#x}");
        }
        // Input waiting: a read of DR would pop it, so the mirror must not serve reads.
        u.enqueue_input(b"k");
        assert!(!u.mirror(&mut page));
        assert_eq!(word(&page, FR) & FR_RXFE, 0);
        read32(&mut u, DR);
        assert!(u.mirror(&mut page));
    }

    #[test]
    fn identifies_as_a_pl011_and_ignores_odd_accesses() {
        let (mut u, sink, _evt) = uart();
        let id: Vec<u32> = (0..8).map(|i| read32(&mut u, ID_BASE + 4 * i)).collect();
        assert_eq!(id, [0x11, 0x10, 0x34, 0x00, 0x0d, 0xf0, 0x05, 0xb1]);
        // Byte read of the flag register's low byte; misaligned, wide and out-of-window accesses.
        let mut b = [0u8; 1];
        u.read(FR, &mut b);
        assert_eq!(b[0] as u32, FR_TXFE | FR_RXFE);
        let mut wide = [0xffu8; 8];
        u.read(FR, &mut wide);
        assert_eq!(wide, [0; 8]);
        u.write(DR + 1, b"z");
        u.write(PL011_REGISTERS, b"z");
        u.write(DR, &[b'z'; 8]);
        assert!(sink.0.lock().unwrap().is_empty());
        // Configuration registers read back what was written, masked to their width.
        write32(&mut u, IBRD, 0xdead_beef);
        assert_eq!(read32(&mut u, IBRD), 0xbeef);
    }
}
