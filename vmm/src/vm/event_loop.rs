//! The main thread's event loop: host input to the guest's serial port, SIGINT/SIGTERM, and the
//! wake-up that tells it the guest ended.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

use devices::serial::ConsoleUart;
use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::epoll::EventSet;

use super::exit::{ExitSignal, GuestExit};

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Blocks SIGINT and SIGTERM in the calling thread (and the threads it starts later) and returns a
/// signalfd that reads them instead.
pub fn signal_fd() -> io::Result<OwnedFd> {
    let mut mask = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set; sigaddset and pthread_sigmask get valid pointers.
    let mask = unsafe {
        libc::sigemptyset(mask.as_mut_ptr());
        libc::sigaddset(mask.as_mut_ptr(), libc::SIGINT);
        libc::sigaddset(mask.as_mut_ptr(), libc::SIGTERM);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, mask.as_ptr(), std::ptr::null_mut());
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        mask.assume_init()
    };
    // SAFETY: the mask is initialised; the result is checked.
    let fd = unsafe { libc::signalfd(-1, &mask, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: signalfd returned a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

struct SignalWatcher {
    fd: OwnedFd,
    exit: Arc<ExitSignal>,
}

impl MutEventSubscriber for SignalWatcher {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.fd, EventSet::IN)) {
            log::error!("watching signals: {e:?}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let mut info = MaybeUninit::<libc::signalfd_siginfo>::uninit();
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reads at most `size` bytes into a buffer of that size.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), info.as_mut_ptr().cast(), size) };
        if n == size as isize {
            // SAFETY: the kernel filled the whole struct.
            let signo = unsafe { info.assume_init() }.ssi_signo as i32;
            log::info!("signal {signo} received; stopping the guest");
            self.exit.report(GuestExit::Signal(signo));
        }
    }
}

struct ExitWatcher {
    exit: Arc<ExitSignal>,
}

impl MutEventSubscriber for ExitWatcher {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.exit.wake_fd(), EventSet::IN)) {
            log::error!("watching for the guest's end: {e:?}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.exit.wake_fd().read();
    }
}

/// Host input (standard input) to the guest's UART.
struct SerialInput {
    fd: RawFd,
    serial: Arc<Mutex<dyn ConsoleUart>>,
}

impl MutEventSubscriber for SerialInput {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new_raw(self.fd, EventSet::IN)) {
            log::warn!("not forwarding standard input to the guest: {e:?}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut serial = self.serial.lock().expect("serial lock poisoned");
        let room = serial.input_room();
        let mut buf = [0u8; 64];
        let want = room.min(buf.len());
        if want == 0 {
            // The guest has not drained its FIFO; drop this keystroke burst rather than spin.
            let _ = read_fd(self.fd, &mut buf);
            log::debug!("serial input FIFO full; input dropped");
            return;
        }
        match read_fd(self.fd, &mut buf[..want]) {
            Ok(0) => {
                // End of input: stop watching, the guest keeps running.
                let _ = ops.remove(events);
            }
            Ok(n) => {
                serial.enqueue_input(&buf[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => {
                log::warn!("reading standard input: {e}; no more input for the guest");
                let _ = ops.remove(events);
            }
        }
    }
}

fn read_fd(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: reads into a valid buffer of the given length.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Puts a terminal on standard input into raw mode while the guest owns it, and restores it.
pub struct RawTerminal {
    saved: Option<libc::termios>,
}

impl RawTerminal {
    pub fn enter() -> Self {
        let mut term = MaybeUninit::<libc::termios>::uninit();
        // SAFETY: isatty and tcgetattr get a valid fd and buffer; the result is checked.
        let saved = unsafe {
            (libc::isatty(0) == 1 && libc::tcgetattr(0, term.as_mut_ptr()) == 0)
                .then(|| term.assume_init())
        };
        if let Some(saved) = saved {
            let mut raw = saved;
            // Keystrokes (Ctrl-C included) go to the guest; the guest echoes.
            raw.c_lflag &= !(libc::ICANON | libc::ECHO | libc::ISIG);
            raw.c_iflag &= !(libc::ICRNL | libc::IXON);
            // SAFETY: valid fd and termios.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, &raw) };
        }
        RawTerminal { saved }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            // SAFETY: restores the settings read in `enter` on the same fd.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, saved) };
        }
    }
}

/// A host fd some device model serves when it is readable (a vSMMU's host event queue).
pub struct FdWatch {
    pub fd: RawFd,
    pub on_ready: Box<dyn FnMut() + Send>,
}

impl MutEventSubscriber for FdWatch {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new_raw(self.fd, EventSet::IN)) {
            log::error!("watching fd {}: {e:?}", self.fd);
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        (self.on_ready)();
    }
}

/// Runs until the guest ends (or a signal arrives) and returns why.
pub fn run(
    exit: Arc<ExitSignal>,
    signals: OwnedFd,
    serial_input: Option<Arc<Mutex<dyn ConsoleUart>>>,
    watches: Vec<FdWatch>,
) -> io::Result<GuestExit> {
    let mut manager = EventManager::<Subscriber>::new()
        .map_err(|e| io::Error::other(format!("creating the event loop: {e:?}")))?;
    manager.add_subscriber(Arc::new(Mutex::new(ExitWatcher { exit: exit.clone() })));
    manager.add_subscriber(Arc::new(Mutex::new(SignalWatcher {
        fd: signals,
        exit: exit.clone(),
    })));
    if let Some(serial) = serial_input {
        manager.add_subscriber(Arc::new(Mutex::new(SerialInput { fd: 0, serial })));
    }
    for watch in watches {
        manager.add_subscriber(Arc::new(Mutex::new(watch)));
    }
    loop {
        if let Some(reason) = exit.reason() {
            return Ok(reason);
        }
        manager
            .run_with_timeout(-1)
            .map_err(|e| io::Error::other(format!("event loop: {e:?}")))?;
    }
}
