//! Interrupt modes: the host device runs INTx until the guest enables MSI or MSI-X, and the
//! routes of vectors follow the guest's programming.
//!
//! Vector `i` of MSI or MSI-X always signals `vector_eventfds()[i]`. A vector whose route is
//! `None` (disabled or masked) must be detached from KVM (irqfd deassigned): its signals then
//! accumulate in the eventfd, which is what the PBA reports as pending, and reattaching the
//! irqfd on unmask delivers them (KVM checks the eventfd on assign).

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::{IrqType, VfioBackend, VfioPciDevice, VfioPciError};
use crate::pci::InterruptRoute;
use crate::pci::msi::{MsixCapability, MsixTable, route_changes};

/// Which interrupt type the host device has enabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum IrqMode {
    None,
    Intx,
    Msi(u32),
    Msix(u32),
}

pub(super) struct Msix {
    pub(super) cap: MsixCapability,
    pub(super) table: MsixTable,
}

pub(super) struct Intx {
    trigger: EventFd,
    resample: EventFd,
}

impl Intx {
    /// INTx when the device has an interrupt pin and the host gives it a line.
    pub(super) fn new(raw: &[u8], backend: &dyn VfioBackend) -> Result<Option<Self>, VfioPciError> {
        if raw.get(0x3d).is_some_and(|&pin| pin != 0) && backend.irq_count(IrqType::Intx) > 0 {
            Ok(Some(Intx {
                trigger: eventfd()?,
                resample: eventfd()?,
            }))
        } else {
            Ok(None)
        }
    }
}

fn eventfd() -> Result<EventFd, VfioPciError> {
    EventFd::new(EFD_NONBLOCK).map_err(VfioPciError::EventFd)
}

impl VfioPciDevice {
    /// An eventfd per vector the larger of MSI and MSI-X can have; then the device interrupts
    /// through INTx until the guest enables MSI or MSI-X.
    pub(super) fn add_vectors(&mut self) -> Result<(), VfioPciError> {
        let msi_vectors = self.msi.map_or(0, |m| u16::from(m.max_vectors()));
        let msix_vectors = self.msix.as_ref().map_or(0, |m| m.cap.table_size);
        for _ in 0..msi_vectors.max(msix_vectors) {
            self.vectors.push(eventfd()?);
        }
        self.routes = vec![None; self.vectors.len()];
        let _ = self.update_interrupts();
        Ok(())
    }

    /// Vector `i` of MSI or MSI-X signals `vector_eventfds()[i]`.
    pub fn vector_eventfds(&self) -> &[EventFd] {
        &self.vectors
    }

    /// INTx: (trigger, resample). The VMM registers `trigger` as a KVM irqfd on the slot's
    /// swizzled INTx line with `resample` as its resample fd; the host unmasks on resample.
    pub fn intx_eventfds(&self) -> Option<(&EventFd, &EventFd)> {
        self.intx.as_ref().map(|i| (&i.trigger, &i.resample))
    }

    /// 1..=4 for INTA..INTD, 0 without INTx.
    pub fn interrupt_pin(&self) -> u8 {
        self.config.u8_at(crate::pci::config::INTERRUPT_PIN)
    }

    /// Whether a configuration write touches the MSI or MSI-X capability.
    pub(super) fn touches_interrupt_capability(&self, offset: u16, len: usize) -> bool {
        self.msi.is_some_and(|m| m.touches(offset, len))
            || self
                .msix
                .as_ref()
                .is_some_and(|m| m.cap.touches(offset, len))
    }

    /// Brings the host's interrupt type and the vector routes in line with the guest's MSI and
    /// MSI-X programming; returns the routes that changed.
    pub(super) fn update_interrupts(&mut self) -> Vec<InterruptRoute> {
        let msix_control = self.msix.as_ref().map(|m| m.cap.control(&self.config));
        let msi_state = self.msi.map(|m| m.state(&self.config));
        let wanted = if let Some(control) = msix_control.filter(|c| c.enabled()) {
            IrqMode::Msix(u32::from(control.table_size()).min(self.vectors.len() as u32))
        } else if let Some(state) = msi_state.filter(|s| s.enabled) {
            IrqMode::Msi(u32::from(state.vectors).min(self.vectors.len() as u32))
        } else if self.intx.is_some() {
            IrqMode::Intx
        } else {
            IrqMode::None
        };
        if wanted != self.mode {
            self.switch_mode(wanted);
        }
        let slots = self.vectors.len();
        let mut routes = match (self.mode, &self.msix, msi_state) {
            (IrqMode::Msix(_), Some(msix), _) => msix.table.routes(msix.cap.control(&self.config)),
            (IrqMode::Msi(_), _, Some(state)) => state.routes(slots),
            _ => Vec::new(),
        };
        routes.resize(slots, None);
        let changes = route_changes(&self.routes, &routes);
        self.routes = routes;
        changes
    }

    pub(super) fn switch_mode(&mut self, wanted: IrqMode) {
        let off = match self.mode {
            IrqMode::None => None,
            IrqMode::Intx => Some(IrqType::Intx),
            IrqMode::Msi(_) => Some(IrqType::Msi),
            IrqMode::Msix(_) => Some(IrqType::Msix),
        };
        if let Some(irq) = off
            && let Err(e) = self.backend.disable_irq(irq)
        {
            log::warn!("VFIO: disabling {irq:?}: {e}");
        }
        let result = match wanted {
            IrqMode::None => Ok(()),
            IrqMode::Intx => match &self.intx {
                Some(intx) => self.backend.enable_intx(&intx.trigger, &intx.resample),
                None => Ok(()),
            },
            IrqMode::Msi(n) => {
                let n = n.min(self.backend.irq_count(IrqType::Msi)) as usize;
                self.backend
                    .enable_msi(&self.vectors[..n.min(self.vectors.len())])
            }
            IrqMode::Msix(n) => {
                let n = n.min(self.backend.irq_count(IrqType::Msix)) as usize;
                self.backend
                    .enable_msix(&self.vectors[..n.min(self.vectors.len())])
            }
        };
        self.mode = match result {
            Ok(()) => wanted,
            Err(e) => {
                log::warn!("VFIO: enabling {wanted:?}: {e}");
                IrqMode::None
            }
        };
    }

    /// MSI-X PBA: a vector is pending when it is masked and its eventfd holds a signal.
    pub(super) fn pba_read(&self, offset: u64, data: &mut [u8]) {
        let aligned = matches!(data.len(), 4 | 8) && offset.is_multiple_of(data.len() as u64);
        let enabled = matches!(self.mode, IrqMode::Msix(_));
        if !aligned {
            data.fill(0xff);
            return;
        }
        let mut bits = 0u64;
        for bit in 0..data.len() as u64 * 8 {
            let vector = offset
                .checked_mul(8)
                .and_then(|v| v.checked_add(bit))
                .and_then(|v| usize::try_from(v).ok());
            let pending = vector.is_some_and(|v| {
                enabled
                    && self.routes.get(v).is_some_and(Option::is_none)
                    && self.vectors.get(v).is_some_and(eventfd_pending)
            });
            bits |= u64::from(pending) << bit;
        }
        data.copy_from_slice(&bits.to_le_bytes()[..data.len()]);
    }
}

/// Whether a non-blocking eventfd holds a signal; leaves the signal in place.
fn eventfd_pending(fd: &EventFd) -> bool {
    match fd.read() {
        Ok(count) => {
            // Put it back: the count only adds, so a signal arriving meanwhile is not lost.
            if let Err(e) = fd.write(count) {
                log::warn!("VFIO: restoring a pending vector's count: {e}");
            }
            true
        }
        Err(_) => false,
    }
}
