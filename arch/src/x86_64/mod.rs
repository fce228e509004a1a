//! x86_64 guests: address map, bzImage loading, zero page and e820, boot CPU state.

pub mod boot;
#[cfg(target_arch = "x86_64")]
pub mod cpuid;
pub mod layout;
#[cfg(target_arch = "x86_64")]
pub mod regs;
