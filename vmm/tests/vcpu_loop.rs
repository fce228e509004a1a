//! The vCPU run loop on this machine's /dev/kvm with tiny real-mode payloads: trapped port I/O
//! reaches the device models through the bus, guest power-off ends the run, and a spinning vCPU
//! is stopped and joined. (This KVM cannot boot Linux; the lab scenarios do that.)
#![cfg(target_arch = "x86_64")]

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::bus::Bus;
use devices::power::{AcpiPowerBlock, POWER_BLOCK_SIZE, PowerEvents};
use devices::serial::{SERIAL_REGISTERS, SerialDevice};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vmm::vm::exit::{ExitSignal, GuestExit};
use vmm::vm::vcpu::{Buses, VcpuThreads, install_kick_handler};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

const LOAD: u64 = 0x1000;
const MEM_SIZE: usize = 0x10000;

/// A VM with 64 KiB of RAM holding `code` at 0x1000 and one real-mode vCPU starting there.
/// Returns None (the test is skipped) where /dev/kvm is missing.
fn tiny_vm(code: &[u8]) -> Option<(VmFd, VcpuFd, *mut u8)> {
    let kvm = Kvm::new().ok()?;
    let vm = kvm.create_vm().unwrap();
    // SAFETY: a fresh anonymous private mapping; checked below; it is leaked for the test's life.
    let mem = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            MEM_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(mem, libc::MAP_FAILED);
    let mem = mem.cast::<u8>();
    // SAFETY: `code` fits inside the mapping at offset LOAD.
    unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), mem.add(LOAD as usize), code.len()) };
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: MEM_SIZE as u64,
        userspace_addr: mem as u64,
    };
    // SAFETY: the mapping outlives the VM (it is never unmapped).
    unsafe { vm.set_user_memory_region(region).unwrap() };
    let vcpu = vm.create_vcpu(0).unwrap();
    let mut sregs = vcpu.get_sregs().unwrap();
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).unwrap();
    let mut regs = vcpu.get_regs().unwrap();
    regs.rip = LOAD;
    regs.rflags = 2;
    vcpu.set_regs(&regs).unwrap();
    Some((vm, vcpu, mem))
}

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct ToExit(Arc<ExitSignal>);

impl PowerEvents for ToExit {
    fn power_off(&self) {
        self.0.report(GuestExit::PowerOff);
    }
    fn reset(&self) {
        self.0.report(GuestExit::Reset);
    }
}

fn wait_for_exit(exit: &ExitSignal) -> Option<GuestExit> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(reason) = exit.reason() {
            return Some(reason);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

#[test]
fn port_io_reaches_the_uart_and_s5_powers_off() {
    #[rustfmt::skip]
    let code = [
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb0, b'O', 0xee, // mov al, 'O'; out dx, al
        0xb0, b'K', 0xee, // mov al, 'K'; out dx, al
        0xba, 0x00, 0x06, // mov dx, 0x600 (sleep control)
        0xb0, 0x34, 0xee, // mov al, SLP_EN | SLP_TYP 5; out dx, al
        0xf4,             // hlt
    ];
    let Some((_vm, vcpu, _mem)) = tiny_vm(&code) else {
        eprintln!("no /dev/kvm: skipped");
        return;
    };
    install_kick_handler().unwrap();
    let exit = Arc::new(ExitSignal::new().unwrap());
    let sink = Sink::default();
    let serial = SerialDevice::new(EventFd::new(EFD_NONBLOCK).unwrap(), Box::new(sink.clone()));
    let pio = Bus::new();
    pio.insert(0x3f8, SERIAL_REGISTERS, Arc::new(Mutex::new(serial)))
        .unwrap();
    let power = AcpiPowerBlock::new(5, 1, Box::new(ToExit(exit.clone())));
    pio.insert(0x600, POWER_BLOCK_SIZE, Arc::new(Mutex::new(power)))
        .unwrap();
    let buses = Arc::new(Buses {
        mmio: Bus::new(),
        pio,
    });
    let mut threads = VcpuThreads::start(vec![vcpu], buses, exit.clone()).unwrap();
    assert_eq!(wait_for_exit(&exit), Some(GuestExit::PowerOff));
    threads.stop();
    assert_eq!(sink.0.lock().unwrap().as_slice(), b"OK");
}

#[test]
fn a_spinning_vcpu_is_stopped_and_joined() {
    let Some((_vm, vcpu, _mem)) = tiny_vm(&[0xeb, 0xfe]) else {
        eprintln!("no /dev/kvm: skipped");
        return;
    };
    install_kick_handler().unwrap();
    let exit = Arc::new(ExitSignal::new().unwrap());
    let buses = Arc::new(Buses {
        mmio: Bus::new(),
        pio: Bus::new(),
    });
    let mut threads = VcpuThreads::start(vec![vcpu], buses, exit.clone()).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let started = Instant::now();
    threads.stop();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "stop took {:?}",
        started.elapsed()
    );
    assert_eq!(exit.reason(), None, "stopping is not a guest exit");
}
