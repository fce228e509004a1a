//! How a guest run ends, and the one place every thread reports it.

use std::sync::Mutex;

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// Why the guest stopped running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestExit {
    /// The guest powered off (PSCI SYSTEM_OFF, ACPI S5).
    PowerOff,
    /// The guest asked for a reset (PSCI SYSTEM_RESET, ACPI reset register, x86 triple fault).
    Reset,
    /// The guest reported a crash (PSCI/KVM crash event).
    Crash,
    /// The VMM was told to stop by a signal.
    Signal(i32),
    /// A vCPU or device failed in a way the guest cannot recover from.
    Fault(String),
}

impl GuestExit {
    /// Process exit status for this ending (documented in `microvmm --help`).
    pub fn status(&self) -> i32 {
        match self {
            GuestExit::PowerOff => 0,
            GuestExit::Fault(_) => 1,
            GuestExit::Reset => 3,
            GuestExit::Crash => 4,
            GuestExit::Signal(sig) => 128 + sig,
        }
    }
}

/// Shared by the vCPU threads, device models and the event loop: the first reported exit wins,
/// and the event loop is woken through the eventfd.
pub struct ExitSignal {
    reason: Mutex<Option<GuestExit>>,
    wake: EventFd,
}

impl ExitSignal {
    pub fn new() -> std::io::Result<Self> {
        Ok(ExitSignal {
            reason: Mutex::new(None),
            wake: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    pub fn report(&self, exit: GuestExit) {
        let mut reason = self.reason.lock().expect("exit lock poisoned");
        if reason.is_none() {
            log::debug!("guest exit: {exit:?}");
            *reason = Some(exit);
        }
        drop(reason);
        // A full counter still wakes the loop; nothing else can go wrong with an eventfd write.
        let _ = self.wake.write(1);
    }

    pub fn reason(&self) -> Option<GuestExit> {
        self.reason.lock().expect("exit lock poisoned").clone()
    }

    pub fn wake_fd(&self) -> &EventFd {
        &self.wake
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_report_wins_and_wakes() {
        let exit = ExitSignal::new().unwrap();
        assert_eq!(exit.reason(), None);
        exit.report(GuestExit::Reset);
        exit.report(GuestExit::PowerOff);
        assert_eq!(exit.reason(), Some(GuestExit::Reset));
        assert_eq!(exit.wake_fd().read().unwrap(), 2);
    }

    #[test]
    fn statuses_are_distinct() {
        let all = [
            GuestExit::PowerOff,
            GuestExit::Fault(String::new()),
            GuestExit::Reset,
            GuestExit::Crash,
            GuestExit::Signal(15),
        ];
        let mut statuses: Vec<_> = all.iter().map(GuestExit::status).collect();
        statuses.sort();
        statuses.dedup();
        assert_eq!(statuses, [0, 1, 3, 4, 143]);
    }
}
