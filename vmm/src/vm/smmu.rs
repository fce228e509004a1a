//! Nested vSMMUv3s: the guest-visible model (`devices::smmuv3`) on the MMIO bus, its interrupts
//! as irqfds on the plan's SPIs, and the host backend its plan's mode names (nested: the iommufd
//! backend in `crate::nested`) over the host SMMU the plan paired it with.

use std::sync::{Arc, Mutex};

use arch::platform::{SmmuMode, VirtualSmmu};
use devices::bus::{Bus, BusError};
use devices::pci::MsiMessage;
use devices::smmuv3::{SmmuBackend, SmmuError, SmmuInterrupts, SmmuIrq, Smmuv3};
use iommufd_ioctls::IommuFd;
use kvm_ioctls::VmFd;
use vfio_ioctls::VfioDevice;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::event_loop::FdWatch;
use super::irq::IrqError;
use crate::nested::{NestedError, NestedSmmu};

/// Why a vSMMU could not be built; each names the vSMMU and its host SMMU.
#[derive(Debug, thiserror::Error)]
pub enum VsmmuError {
    #[error("vSMMU {index} (host SMMU {host}) has no device behind it")]
    NoDevice { index: u16, host: String },
    /// The cause names the host SMMU.
    #[error("vSMMU {index}")]
    Nested {
        index: u16,
        host: String,
        #[source]
        source: NestedError,
    },
    #[error("vSMMU {index} (host SMMU {host}): its wired interrupt on SPI {spi}")]
    Irq {
        index: u16,
        host: String,
        spi: u32,
        #[source]
        source: IrqError,
    },
    #[error("vSMMU {index} (host SMMU {host}): its model")]
    Model {
        index: u16,
        host: String,
        #[source]
        source: SmmuError,
    },
    #[error("vSMMU {index} (host SMMU {host}): the stream of {bdf}")]
    Stream {
        index: u16,
        host: String,
        bdf: String,
        #[source]
        source: SmmuError,
    },
    #[error("vSMMU {index} (host SMMU {host}): placing its registers")]
    Bus {
        index: u16,
        host: String,
        #[source]
        source: BusError,
    },
}

/// A function behind a vSMMU: its VFIO device, iommufd device ID, StreamID (= RID), host BDF.
pub struct SmmuFunction {
    pub device: Arc<VfioDevice>,
    pub dev_id: u32,
    pub sid: u32,
    pub bdf: String,
}

/// The vSMMU's wired interrupts: eventfds registered as irqfds on its SPIs.
struct WiredIrqs {
    event: EventFd,
    gerror: EventFd,
    sync: EventFd,
}

impl SmmuInterrupts for WiredIrqs {
    fn trigger(&mut self, irq: SmmuIrq) {
        let evt = match irq {
            SmmuIrq::Event => &self.event,
            SmmuIrq::Gerror => &self.gerror,
            SmmuIrq::Sync => &self.sync,
        };
        if let Err(e) = evt.write(1) {
            log::warn!("vSMMU interrupt {irq:?}: {e}");
        }
    }

    fn msi(&mut self, message: MsiMessage) -> bool {
        // The tables describe wired interrupts only, so a guest never programs vSMMU MSIs.
        log::warn!(
            "vSMMU MSI to {:#x} ignored: the vSMMU uses wired interrupts",
            message.address
        );
        false
    }
}

/// A running vSMMU, kept for its lifetime and for `--stats`.
pub struct SmmuInstance {
    pub plan: VirtualSmmu,
    pub model: Arc<Mutex<Smmuv3>>,
}

/// Builds the vSMMU `plan` over its host SMMU for `functions`, puts it on the bus and returns it
/// with the watch that feeds it host events.
pub fn attach(
    vm: &VmFd,
    plan: &VirtualSmmu,
    memory: &GuestMemoryMmap,
    (iommufd, ioas): (Arc<IommuFd>, u32),
    functions: &[SmmuFunction],
    mmio: &Bus,
) -> Result<(SmmuInstance, FdWatch), VsmmuError> {
    let (index, host) = (plan.index, &plan.host_smmu);
    let nested_err = |source| VsmmuError::Nested {
        index,
        host: host.clone(),
        source,
    };
    let Some(first) = functions.first() else {
        return Err(VsmmuError::NoDevice {
            index,
            host: host.clone(),
        });
    };
    let (backend, event_fd): (Box<dyn SmmuBackend>, _) = match plan.mode {
        SmmuMode::Nested => {
            let mut nested =
                NestedSmmu::new(iommufd, ioas, &plan.host_smmu, first.dev_id, &first.bdf)
                    .map_err(nested_err)?;
            for f in functions {
                nested
                    .add_device(f.device.clone(), f.dev_id, f.sid, &f.bdf)
                    .map_err(nested_err)?;
            }
            let event_fd = nested.event_fd();
            (Box::new(nested), event_fd)
        }
    };
    let irq = |spi: u32| -> Result<EventFd, VsmmuError> {
        let err = |source| VsmmuError::Irq {
            index,
            host: host.clone(),
            spi,
            source,
        };
        let evt = EventFd::new(EFD_NONBLOCK).map_err(|e| err(IrqError::EventFd(e)))?;
        vm.register_irqfd(&evt, spi)
            .map_err(|source| err(IrqError::Irqfd { gsi: spi, source }))?;
        Ok(evt)
    };
    let irqs = WiredIrqs {
        event: irq(plan.event_irq)?,
        gerror: irq(plan.gerror_irq)?,
        sync: irq(plan.sync_irq)?,
    };
    let mut model = Smmuv3::new(
        plan.features,
        Box::new(memory.clone()),
        backend,
        Box::new(irqs),
    )
    .map_err(|source| VsmmuError::Model {
        index,
        host: host.clone(),
        source,
    })?;
    for f in functions {
        model
            .add_stream(f.sid)
            .map_err(|source| VsmmuError::Stream {
                index,
                host: host.clone(),
                bdf: f.bdf.clone(),
                source,
            })?;
    }
    let model = Arc::new(Mutex::new(model));
    mmio.insert(plan.registers.base, plan.registers.size, model.clone())
        .map_err(|source| VsmmuError::Bus {
            index,
            host: host.clone(),
            source,
        })?;
    let served = model.clone();
    let watch = FdWatch {
        fd: event_fd,
        on_ready: Box::new(move || {
            served
                .lock()
                .expect("vSMMU lock poisoned")
                .service_host_events();
        }),
    };
    log::info!(
        "vSMMUv3 {} at {:#x} in front of segment {} over host {}",
        plan.index,
        plan.registers.base,
        plan.segment,
        plan.host_smmu
    );
    Ok((
        SmmuInstance {
            plan: plan.clone(),
            model,
        },
        watch,
    ))
}
