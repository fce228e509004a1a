//! Nested vSMMUv3s: the guest-visible model (`devices::smmuv3`) on the MMIO bus, its interrupts
//! as irqfds on the plan's SPIs, and the host backend its plan's mode names (nested: the iommufd
//! backend in `crate::nested`) over the host SMMU the plan paired it with.

use std::sync::{Arc, Mutex};

use arch::platform::{SmmuMode, VirtualSmmu};
use devices::bus::Bus;
use devices::pci::MsiMessage;
use devices::smmuv3::{SmmuBackend, SmmuInterrupts, SmmuIrq, Smmuv3};
use iommufd_ioctls::IommuFd;
use kvm_ioctls::VmFd;
use vfio_ioctls::VfioDevice;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::VmError;
use super::event_loop::FdWatch;
use crate::nested::NestedSmmu;

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
) -> Result<(SmmuInstance, FdWatch), VmError> {
    let boxed = |e: crate::nested::NestedError| VmError::Vfio(Box::new(e));
    let Some(first) = functions.first() else {
        return Err(VmError::Firmware(format!(
            "vSMMU {} has no device behind it",
            plan.index
        )));
    };
    let (backend, event_fd): (Box<dyn SmmuBackend>, _) = match plan.mode {
        SmmuMode::Nested => {
            let mut nested =
                NestedSmmu::new(iommufd, ioas, &plan.host_smmu, first.dev_id, &first.bdf)
                    .map_err(boxed)?;
            for f in functions {
                nested
                    .add_device(f.device.clone(), f.dev_id, f.sid, &f.bdf)
                    .map_err(boxed)?;
            }
            let event_fd = nested.event_fd();
            (Box::new(nested), event_fd)
        }
    };
    let irq = |spi: u32| -> Result<EventFd, VmError> {
        let evt = EventFd::new(EFD_NONBLOCK).map_err(super::io_err("creating a vSMMU eventfd"))?;
        vm.register_irqfd(&evt, spi)
            .map_err(super::kvm_err("KVM_IRQFD for a vSMMU interrupt"))?;
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
    .map_err(|e| VmError::Firmware(format!("vSMMU {}: {e}", plan.index)))?;
    for f in functions {
        model.add_stream(f.sid).map_err(|e| {
            VmError::Firmware(format!("vSMMU {} stream {}: {e}", plan.index, f.bdf))
        })?;
    }
    let model = Arc::new(Mutex::new(model));
    mmio.insert(plan.registers.base, plan.registers.size, model.clone())?;
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
