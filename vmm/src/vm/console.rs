//! The console UART behind the bus, and on aarch64 its reads served from memory.
//!
//! A guest printing to a PL011 polls the flag register before every byte it writes, so each byte
//! costs two exits. While nothing waits in the receive FIFO no register read has a side effect,
//! so [`MirroredPl011`] keeps a page with every register's current value mapped read-only over
//! the register window: reads come from that page without an exit, writes still trap (KVM turns
//! a write to a read-only slot into an MMIO exit), and the page is brought up to date after each.
//! When input arrives the page is unmapped first, so the guest's reads trap again until the FIFO
//! is drained.

use std::io;
use std::ptr::NonNull;
use std::sync::Arc;

use devices::bus::BusDevice;
use devices::pl011::{PL011_REGISTERS, Pl011};
use devices::serial::ConsoleUart;
use kvm_bindings::{KVM_MEM_READONLY, kvm_userspace_memory_region};
use kvm_ioctls::VmFd;

const PAGE: usize = PL011_REGISTERS as usize;

/// One anonymous page, unmapped on drop.
struct RegisterPage(NonNull<u8>);

// SAFETY: the page is plain memory owned by this value; access goes through &self/&mut self.
unsafe impl Send for RegisterPage {}

impl RegisterPage {
    fn new() -> io::Result<Self> {
        // SAFETY: a fresh private anonymous mapping that nothing else refers to.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        NonNull::new(addr.cast())
            .map(RegisterPage)
            .ok_or_else(|| io::Error::other("mmap returned null"))
    }

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: PAGE bytes mapped read-write by `new` and owned until drop.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_ptr(), PAGE) }
    }

    fn addr(&self) -> u64 {
        self.0.as_ptr() as u64
    }
}

impl Drop for RegisterPage {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.0.as_ptr().cast(), PAGE) };
    }
}

pub struct MirroredPl011 {
    uart: Pl011,
    // Field order is drop order, but Drop below removes the memslot before either goes.
    page: RegisterPage,
    vm: Arc<VmFd>,
    slot: u32,
    base: u64,
    mapped: bool,
}

impl MirroredPl011 {
    /// The UART at guest address `base`, its register page in KVM memslot `slot` while mapped.
    pub fn new(uart: Pl011, vm: Arc<VmFd>, slot: u32, base: u64) -> io::Result<Self> {
        let mut mirrored = MirroredPl011 {
            uart,
            page: RegisterPage::new()?,
            vm,
            slot,
            base,
            mapped: false,
        };
        mirrored.sync();
        Ok(mirrored)
    }

    fn set_mapped(&mut self, map: bool) {
        let region = kvm_userspace_memory_region {
            slot: self.slot,
            flags: KVM_MEM_READONLY,
            guest_phys_addr: self.base,
            memory_size: if map { PAGE as u64 } else { 0 },
            userspace_addr: self.page.addr(),
        };
        // SAFETY: the page lives as long as this value, whose Drop removes the slot first.
        match unsafe { self.vm.set_user_memory_region(region) } {
            Ok(()) => self.mapped = map,
            // Not fatal: the guest's reads keep trapping, which is only slower.
            Err(e) => log::warn!(
                "console UART: {} its register page: {e}",
                if map { "mapping" } else { "unmapping" }
            ),
        }
    }

    /// Brings the page up to date and maps or unmaps it as reads allow.
    fn sync(&mut self) {
        let quiet = self.uart.mirror(self.page.bytes());
        if quiet != self.mapped {
            self.set_mapped(quiet);
        }
    }
}

impl Drop for MirroredPl011 {
    fn drop(&mut self) {
        if self.mapped {
            self.set_mapped(false);
        }
    }
}

impl BusDevice for MirroredPl011 {
    /// Reached only while the page is unmapped (input pending) or for accesses KVM could not
    /// serve from it.
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.uart.read(offset, data);
        self.sync();
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.uart.write(offset, data);
        self.sync();
    }
}

impl ConsoleUart for MirroredPl011 {
    fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        // Unmap before the FIFO fills: from now on a read of DR must reach the model.
        if self.mapped {
            self.set_mapped(false);
        }
        let n = self.uart.enqueue_input(bytes);
        self.sync();
        n
    }

    fn input_room(&self) -> usize {
        self.uart.input_room()
    }
}
