//! What microvmm knows about guest instruction-set architectures: address maps, boot protocols, and
//! the device-tree and ACPI encoders. Nothing here knows about VFIO or iommufd; every encoder reads
//! the [`platform::Platform`] the VMM's plan computed.
//!
//! Pure encoders build on every host (so plans for either architecture can be made and checked
//! anywhere); code that programs KVM vCPU state is gated on the host architecture.

pub mod aarch64;
pub mod acpi;
pub mod boot;
pub mod platform;
pub mod x86_64;
