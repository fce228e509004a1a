//! vCPU threads: run KVM_RUN, hand trapped accesses to the buses, report how the guest ended.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use devices::bus::Bus;
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{Killable, SIGRTMIN, register_signal_handler};

use super::exit::{ExitSignal, GuestExit};

/// The signal that kicks a vCPU thread out of KVM_RUN (its handler does nothing; the interrupted
/// ioctl returns EINTR and the thread sees the stop flag).
pub fn kick_signal() -> i32 {
    SIGRTMIN()
}

/// Installs the no-op handler for [`kick_signal`]; call once before starting vCPU threads.
pub fn install_kick_handler() -> std::io::Result<()> {
    extern "C" fn noop(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}
    register_signal_handler(kick_signal(), noop)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

/// The address spaces a vCPU's trapped accesses go to.
pub struct Buses {
    pub mmio: Bus,
    /// x86 port I/O; empty on aarch64.
    pub pio: Bus,
}

/// KVM's system-event types (include/uapi/linux/kvm.h).
const SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const SYSTEM_EVENT_RESET: u32 = 2;
const SYSTEM_EVENT_CRASH: u32 = 3;

/// Runs one vCPU until the guest ends or `stop` is set. Returns normally in both cases; a guest
/// ending is reported through `exit`.
pub fn run_vcpu(
    index: u32,
    vcpu: &mut VcpuFd,
    buses: &Buses,
    exit: &ExitSignal,
    stop: &AtomicBool,
) {
    if index == 0 {
        crate::startup::mark("vCPU 0 entering the guest (KVM_RUN)");
    }
    while !stop.load(Ordering::Acquire) {
        match vcpu.run() {
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if !buses.mmio.read(addr, data) {
                    log::trace!("vcpu{index}: unclaimed MMIO read at {addr:#x}");
                }
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                if !buses.mmio.write(addr, data) {
                    log::trace!("vcpu{index}: unclaimed MMIO write at {addr:#x}");
                }
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                buses.pio.read(u64::from(port), data);
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                buses.pio.write(u64::from(port), data);
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => {
                exit.report(match kind {
                    SYSTEM_EVENT_SHUTDOWN => GuestExit::PowerOff,
                    SYSTEM_EVENT_RESET => GuestExit::Reset,
                    SYSTEM_EVENT_CRASH => GuestExit::Crash,
                    other => GuestExit::Fault(format!("vcpu{index}: unknown system event {other}")),
                });
                return;
            }
            // An x86 triple fault: real machines reset. Unlike a reset the guest asked for, it
            // leaves no trace in the guest's console, so say so, with the registers as KVM
            // leaves them (Intel: where it faulted; AMD: already back at the reset vector).
            Ok(VcpuExit::Shutdown) => {
                log::warn!(
                    "vcpu{index}: triple fault (KVM_EXIT_SHUTDOWN){}; the guest resets",
                    fault_state(vcpu)
                );
                exit.report(GuestExit::Reset);
                return;
            }
            Ok(VcpuExit::Hlt) => {
                // Only without an in-kernel irqchip; treat as idle until something happens.
                thread::sleep(Duration::from_millis(1));
            }
            Ok(VcpuExit::Intr) => {}
            Ok(other) => {
                exit.report(GuestExit::Fault(format!(
                    "vcpu{index}: unexpected exit {other:?}"
                )));
                return;
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => {
                exit.report(GuestExit::Fault(format!(
                    "vcpu{index}: KVM_RUN failed: {e}"
                )));
                return;
            }
        }
    }
}

/// Where an x86 vCPU was when it faulted beyond recovery, for the log.
#[cfg(target_arch = "x86_64")]
fn fault_state(vcpu: &VcpuFd) -> String {
    match (vcpu.get_regs(), vcpu.get_sregs()) {
        (Ok(r), Ok(s)) => format!(
            " at rip={:#x} rsp={:#x} cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x}",
            r.rip, r.rsp, s.cr0, s.cr2, s.cr3, s.cr4, s.efer
        ),
        (Err(e), _) | (_, Err(e)) => format!(" (registers unreadable: {e})"),
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn fault_state(_: &VcpuFd) -> String {
    String::new()
}

/// The running vCPU threads of a VM.
pub struct VcpuThreads {
    handles: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl VcpuThreads {
    pub fn start(
        vcpus: Vec<VcpuFd>,
        buses: Arc<Buses>,
        exit: Arc<ExitSignal>,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = VcpuThreads {
            handles: Vec::new(),
            stop: stop.clone(),
        };
        for (index, mut vcpu) in vcpus.into_iter().enumerate() {
            let (buses, exit, stop) = (buses.clone(), exit.clone(), stop.clone());
            let handle = thread::Builder::new()
                .name(format!("vcpu{index}"))
                .spawn(move || run_vcpu(index as u32, &mut vcpu, &buses, &exit, &stop))?;
            threads.handles.push(handle);
        }
        Ok(threads)
    }

    /// Stops every vCPU and joins its thread. A thread can be between its stop-flag check and
    /// KVM_RUN when kicked, so kicks repeat until it is gone.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.handles.iter().any(|h| !h.is_finished()) && Instant::now() < deadline {
            for handle in self.handles.iter().filter(|h| !h.is_finished()) {
                if let Err(e) = handle.kill(kick_signal()) {
                    log::debug!("kicking a vCPU thread: {e}");
                }
            }
            thread::sleep(Duration::from_millis(2));
        }
        for handle in self.handles.drain(..) {
            if handle.is_finished() {
                if handle.join().is_err() {
                    log::error!("a vCPU thread panicked");
                }
            } else {
                log::error!("a vCPU thread did not stop; leaving it");
            }
        }
    }
}

impl Drop for VcpuThreads {
    fn drop(&mut self) {
        if !self.handles.is_empty() {
            self.stop();
        }
    }
}
