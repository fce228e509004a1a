//! Resets: the function is reset when it is opened (where it can be), when the guest initiates
//! a function level reset through its PCI Express capability, and it is left quiet when the
//! model goes away.

use super::capabilities::pcie;
use super::interrupts::IrqMode;
use super::{VfioBackend, VfioPciDevice};

/// Starts from a known state; a device that cannot be reset is used as it is.
pub(super) fn on_open(backend: &mut dyn VfioBackend) {
    if let Err(e) = backend.reset() {
        log::info!("VFIO device cannot be reset ({e}); using it as it is");
    }
}

impl VfioPciDevice {
    /// Resets the device when a write sets Initiate Function Level Reset; the bit itself is
    /// never stored in the shadow.
    pub(super) fn intercept_flr(&mut self, offset: u16, data: &[u8]) {
        let Some(pcie) = self.pcie else { return };
        let control_hi = usize::from(pcie + pcie::DEVICE_CONTROL + 1);
        let Some(byte) = control_hi
            .checked_sub(usize::from(offset))
            .and_then(|i| data.get(i))
        else {
            return;
        };
        if (u16::from(*byte) << 8) & pcie::INITIATE_FLR != 0 {
            log::info!("VFIO: guest requested a function level reset");
            if let Err(e) = self.backend.reset() {
                log::warn!("VFIO: function level reset: {e}");
            }
        }
    }
}

impl Drop for VfioPciDevice {
    /// Stops the host from signalling the guest's vectors before the backend goes (and resets
    /// the function): the VMM has detached its irqfds by then, this detaches VFIO's triggers.
    fn drop(&mut self) {
        if self.mode != IrqMode::None {
            self.switch_mode(IrqMode::None);
        }
    }
}
