//! Building a VM from the plan, in one linear fallible pass, and running it until the guest ends.
//!
//! Everything acquired during the build is owned by the values it returns, so an error part way
//! releases what was taken (fds, memory, threads) by `Drop`.

mod console;
pub mod event_loop;
pub mod exit;
pub mod irq;
pub mod pci;
pub mod smmu;
pub mod vcpu;

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "aarch64")]
use aarch64 as guest;
#[cfg(target_arch = "x86_64")]
mod x86_64;
#[cfg(target_arch = "x86_64")]
use x86_64 as guest;

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arch::platform::{GuestRange, RegisterSpace, SerialPort, UartModel};
use devices::bus::{Bus, BusDevice, BusError};
use devices::pl011::Pl011;
use devices::serial::{ConsoleUart, SerialDevice};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::config::{RebootAction, SerialConfig, ValidConfig};
use crate::host::ProbedHost;
use crate::payload::Payload;
use crate::plan::Plan;
use console::MirroredPl011;
use exit::{ExitSignal, GuestExit};
use vcpu::{Buses, VcpuThreads};

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("{step}")]
    Kvm {
        step: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("allocating {size:#x} bytes of guest memory")]
    Memory {
        size: u64,
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
    #[error("{what} {path}")]
    File {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("setting up the guest's boot state")]
    Boot(#[from] guest::BootError),
    #[error("placing a device")]
    Bus(#[from] BusError),
    #[error("passthrough")]
    Passthrough(#[from] pci::PassthroughError),
    #[error("{step}")]
    Io {
        step: &'static str,
        #[source]
        source: io::Error,
    },
}

pub(crate) fn kvm_err(step: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { step, source }
}

pub(crate) fn io_err(step: &'static str) -> impl FnOnce(io::Error) -> VmError {
    move |source| VmError::Io { step, source }
}

/// What the arch-specific build needs and fills in.
pub(crate) struct BuildContext<'a> {
    pub plan: &'a Plan,
    pub payload: &'a Payload,
    pub vm: &'a VmFd,
    #[cfg_attr(target_arch = "aarch64", allow(dead_code))]
    pub kvm: &'a Kvm,
    pub memory: &'a GuestMemoryMmap,
    pub buses: &'a mut Buses,
    /// The console UART, as the bus sees it.
    pub serial: Option<Arc<Mutex<dyn BusDevice>>>,
    /// The UART's interrupt eventfd, to register as an irqfd.
    pub serial_irq: Option<EventFd>,
    #[cfg_attr(target_arch = "aarch64", allow(dead_code))]
    pub exit: Arc<ExitSignal>,
}

/// A built, not yet running VM.
pub struct Vm {
    // Field order is drop order: vCPUs and devices before the VM fd, memory last.
    vcpus: Vec<VcpuFd>,
    buses: Arc<Buses>,
    serial: Option<Arc<Mutex<dyn ConsoleUart>>>,
    /// Standard input feeds the serial port (serial on stdio).
    stdin_input: bool,
    /// `--stats`: print counters at exit.
    print_stats: bool,
    exit: Arc<ExitSignal>,
    pci: Option<pci::PciState>,
    _arch: guest::ArchState,
    _vm: Arc<VmFd>,
    _memory: GuestMemoryMmap,
}

fn serial_output(config: &SerialConfig) -> Result<Option<Box<dyn Write + Send>>, VmError> {
    Ok(match config {
        SerialConfig::None => None,
        SerialConfig::Stdio => Some(Box::new(io::stdout())),
        SerialConfig::File { path } => Some(Box::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| VmError::File {
                    what: "opening the serial output file",
                    path: path.clone(),
                    source,
                })?,
        )),
    })
}

/// The planned UART model, once as the event loop feeds it input and once as the bus sees it.
type Uart = (Arc<Mutex<dyn ConsoleUart>>, Arc<Mutex<dyn BusDevice>>);

/// Where a memory-mapped UART's registers can be served from read-only memory: the VM, the
/// memslot to use and the registers' guest address.
struct Mirror<'a> {
    vm: &'a Arc<VmFd>,
    slot: u32,
    base: u64,
}

fn console_uart(
    port: &SerialPort,
    irq: EventFd,
    out: Box<dyn Write + Send>,
    mirror: Option<Mirror>,
) -> Result<Uart, VmError> {
    fn both<T: ConsoleUart + 'static>(device: T) -> Uart {
        let device = Arc::new(Mutex::new(device));
        (device.clone(), device)
    }
    Ok(match (port.model, mirror) {
        (UartModel::Ns16550a, _) => both(SerialDevice::new(irq, out)),
        (UartModel::Pl011, None) => both(Pl011::new(irq, out)),
        (UartModel::Pl011, Some(m)) => both(
            MirroredPl011::new(Pl011::new(irq, out), m.vm.clone(), m.slot, m.base)
                .map_err(io_err("mapping the console UART's register page"))?,
        ),
    })
}

fn guest_memory(vm: &VmFd, regions: &[GuestRange]) -> Result<GuestMemoryMmap, VmError> {
    let ranges: Vec<_> = regions
        .iter()
        .map(|r| (GuestAddress(r.base), r.size as usize))
        .collect();
    let total = regions.iter().map(|r| r.size).sum();
    let memory = GuestMemoryMmap::from_ranges(&ranges).map_err(|source| VmError::Memory {
        size: total,
        source,
    })?;
    for (slot, region) in memory.iter().enumerate() {
        // Transparent huge pages where the host offers them on request: fewer faults for the
        // guest, and 2 MiB pins and IOMMU mappings when its RAM is mapped for DMA. Only a hint.
        // SAFETY: madvise on a mapping `memory` owns changes no memory contents.
        let advised = unsafe {
            libc::madvise(
                region.as_ptr().cast(),
                region.len() as usize,
                libc::MADV_HUGEPAGE,
            )
        };
        if advised != 0 {
            log::debug!(
                "guest RAM at {:#x}: no transparent huge pages ({})",
                region.start_addr().0,
                io::Error::last_os_error()
            );
        }
        let mem_region = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: the region is a live mapping owned by `memory`, which the Vm keeps until after
        // the VM fd (and with it the memslot) is gone.
        unsafe { vm.set_user_memory_region(mem_region) }
            .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(memory)
}

/// Faults in (and so zeroes) every page of guest RAM, the work split over the host's CPUs.
/// Best effort: what is not faulted in here is faulted in when it is pinned.
fn prefault(memory: &GuestMemoryMmap) {
    const CHUNK: usize = 64 << 20;
    let chunks: Vec<(usize, usize)> = memory
        .iter()
        .flat_map(|region| {
            let (base, len) = (region.as_ptr() as usize, region.len() as usize);
            (0..len)
                .step_by(CHUNK)
                .map(move |off| (base + off, CHUNK.min(len - off)))
        })
        .collect();
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                while let Some(&(addr, len)) =
                    chunks.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
                {
                    // SAFETY: [addr, addr + len) lies in a guest RAM mapping `memory` owns;
                    // MADV_POPULATE_WRITE only faults its pages in, contents stay zero.
                    let r = unsafe {
                        libc::madvise(addr as *mut libc::c_void, len, libc::MADV_POPULATE_WRITE)
                    };
                    if r != 0 {
                        log::debug!("prefaulting guest RAM: {}", io::Error::last_os_error());
                        return;
                    }
                }
            });
        }
    });
    crate::startup::mark("guest RAM faulted in");
}

/// Builds the VM the plan describes on the probed host.
pub fn build(
    config: &ValidConfig,
    plan: &Plan,
    payload: &Payload,
    host: &ProbedHost,
    exit: Arc<ExitSignal>,
) -> Result<Vm, VmError> {
    let platform = &plan.platform;
    // Declared before the VM fd so that, should the build fail, the VM (and its memslots) is
    // dropped before the guest RAM they point at.
    let memory: GuestMemoryMmap;
    let kvm = Kvm::new().map_err(kvm_err("opening /dev/kvm"))?;
    let vm = Arc::new(guest::create_vm(&kvm)?);
    memory = guest_memory(&vm, &platform.memory)?;
    if !platform.pci_bridges.is_empty() {
        // Passed-through devices pin all of guest RAM when it is mapped for DMA; fault it in
        // first, on every host CPU, instead of one page at a time in the pinning ioctl.
        prefault(&memory);
    }
    crate::startup::mark("VM and guest RAM created");
    let mut buses = Buses {
        mmio: Bus::new(),
        pio: Bus::new(),
    };
    let (serial, serial_irq) = match (serial_output(&config.serial)?, platform.serial) {
        (Some(out), Some(port)) => {
            let irq = EventFd::new(EFD_NONBLOCK).map_err(io_err("creating the serial eventfd"))?;
            let irqfd = irq
                .try_clone()
                .map_err(io_err("cloning the serial eventfd"))?;
            // The slot right after guest RAM's; PCI BARs take theirs after it.
            let mirror = match port.registers {
                RegisterSpace::Mmio(base) if kvm.check_extension(Cap::ReadonlyMem) => {
                    Some(Mirror {
                        vm: &vm,
                        slot: platform.memory.len() as u32,
                        base,
                    })
                }
                _ => None,
            };
            let uart = console_uart(&port, irq, out, mirror)?;
            (Some(uart), Some(irqfd))
        }
        _ => (None, None),
    };
    let mut ctx = BuildContext {
        plan,
        payload,
        vm: &vm,
        kvm: &kvm,
        memory: &memory,
        buses: &mut buses,
        serial: serial.as_ref().map(|(_, bus)| bus.clone()),
        serial_irq,
        exit: exit.clone(),
    };
    let (vcpus, arch_state) = guest::setup(&mut ctx)?;
    crate::startup::mark("vCPUs, interrupt controller and boot payload set up");
    let memslots = pci::Memslots::after(platform.memory.len() as u32 + 1);
    let pci = pci::attach(
        &vm,
        platform,
        &memory,
        host,
        &buses.mmio,
        guest::irq_routing(&vm, platform),
        memslots,
    )?;
    if pci.is_some() {
        crate::startup::mark("PCI functions and vSMMUs attached");
    }
    Ok(Vm {
        vcpus,
        buses: Arc::new(buses),
        serial: serial.map(|(console, _)| console),
        stdin_input: config.serial == SerialConfig::Stdio,
        print_stats: config.stats,
        exit,
        pci,
        _arch: arch_state,
        _vm: vm,
        _memory: memory,
    })
}

impl Vm {
    /// The vSMMU counters, logged at exit and printed with `--stats`.
    fn report_stats(&self) {
        for smmu in self.pci.iter().flat_map(|p| &p.smmus) {
            let model = smmu.model.lock().expect("vSMMU lock poisoned");
            let stats = model.stats();
            let line = format!(
                "vSMMU {} (host {}, {:?}): guest CMD_SYNCs {}, {}; guest commands by opcode {:?}",
                smmu.plan.index,
                smmu.plan.host_smmu,
                model.mode(),
                stats.cmd_syncs,
                model.backend_stats(),
                stats.commands
            );
            log::info!("{line}");
            if self.print_stats {
                eprintln!("microvmm: stats: {line}");
            }
        }
    }

    /// Runs the guest until it ends or a signal arrives.
    pub fn run(mut self, signals: OwnedFd) -> Result<GuestExit, VmError> {
        let vcpus = std::mem::take(&mut self.vcpus);
        let mut threads = VcpuThreads::start(vcpus, self.buses.clone(), self.exit.clone())
            .map_err(io_err("starting vCPU threads"))?;
        let input = self.serial.clone().filter(|_| self.stdin_input);
        let reason = {
            let _terminal = input.as_ref().map(|_| event_loop::RawTerminal::enter());
            let watches = self
                .pci
                .as_mut()
                .map(|p| std::mem::take(&mut p.watches))
                .unwrap_or_default();
            event_loop::run(self.exit.clone(), signals, input, watches)
        };
        threads.stop();
        self.report_stats();
        reason.map_err(io_err("running the event loop"))
    }
}

/// Builds and runs the planned guest, restarting it on reset when asked to.
pub fn run(
    config: &ValidConfig,
    plan: &Plan,
    payload: &Payload,
    host: &ProbedHost,
) -> Result<GuestExit, VmError> {
    let signals = event_loop::signal_fd().map_err(io_err("setting up signal handling"))?;
    vcpu::install_kick_handler().map_err(io_err("installing the vCPU kick handler"))?;
    loop {
        let exit = Arc::new(ExitSignal::new().map_err(io_err("creating the exit eventfd"))?);
        let vm = build(config, plan, payload, host, exit)?;
        log::info!(
            "guest starting: {} vCPUs, {} MiB",
            plan.vcpus,
            plan.memory_size() >> 20
        );
        let signals = signals
            .try_clone()
            .map_err(io_err("duplicating the signal fd"))?;
        let reason = vm.run(signals)?;
        match reason {
            GuestExit::Reset if config.on_reboot == RebootAction::Restart => {
                log::info!("guest reset; restarting it");
            }
            other => return Ok(other),
        }
    }
}
