//! Guest-visible device models. Each talks to the host only through small traits, so every model
//! is unit tested here without KVM or VFIO.

pub mod bus;
pub mod pci;
pub mod pl011;
pub mod power;
pub mod serial;
pub mod smmuv3;
#[cfg(test)]
mod testutil;
pub mod vfio_pci;
