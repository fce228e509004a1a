//! The aarch64 guest physical address map (the QEMU `virt` shape, so guests and tools feel at home).
//!
//! ```text
//! 0x0800_0000  GIC distributor (64 KiB)
//! 0x0808_0000  GIC ITS (128 KiB)
//! 0x080A_0000  GIC redistributors (128 KiB per vCPU, up to MAX_VCPUS)
//! 0x0900_0000  16550 UART (4 KiB)
//! 0x0A00_0000  platform devices the plan places (vSMMUs, CMDQV), up to 0x1000_0000
//! 0x1000_0000  PCI 32-bit MMIO windows, up to 0x4000_0000
//! 0x4000_0000  RAM, up to RAM_LIMIT (256 GiB)
//! 0x40_0000_0000  PCI ECAM windows (256 MiB per host bridge)
//! 0x80_0000_0000  PCI 64-bit windows, up to 1 TiB
//! ```
//! The host kernel's MSI window for nested translation is IOVA [0x800_0000, 0x810_0000); guest RAM
//! never overlaps it, so RAM can be mapped at IOVA = GPA.

use crate::platform::GuestRange;

pub const GIC_DIST: GuestRange = GuestRange::new(0x0800_0000, 0x1_0000);
pub const GIC_ITS: GuestRange = GuestRange::new(0x0808_0000, 0x2_0000);
pub const GIC_REDIST_BASE: u64 = 0x080A_0000;
pub const GIC_REDIST_STRIDE: u64 = 0x2_0000;
pub const UART: GuestRange = GuestRange::new(0x0900_0000, 0x1000);
pub const PLATFORM_MMIO: GuestRange = GuestRange::new(0x0A00_0000, 0x0600_0000);
pub const PCI_MMIO32: GuestRange = GuestRange::new(0x1000_0000, 0x3000_0000);
pub const RAM_BASE: u64 = 0x4000_0000;
/// Guest RAM ends below here; PCI windows live above it.
pub const RAM_LIMIT: u64 = 0x40_0000_0000;
/// ECAM windows of all PCI host bridges (256 MiB each: 256 buses at most).
pub const PCI_ECAM_REGION: GuestRange = GuestRange::new(0x40_0000_0000, 0x10_0000_0000);
/// 64-bit prefetchable windows of all PCI host bridges; ends at 1 TiB (KVM's default 40-bit IPA).
pub const PCI_MMIO64_REGION: GuestRange = GuestRange::new(0x80_0000_0000, 0x80_0000_0000);
/// vSMMUv3 `i` occupies a 1 MiB slot from here: registers (128 KiB) at its start, room for a
/// Tegra241 CMDQV window after them.
pub const SMMU_SLOT_BASE: u64 = PLATFORM_MMIO.base;
pub const SMMU_SLOT_SIZE: u64 = 0x10_0000;
pub const SMMU_REGISTERS_SIZE: u64 = 0x2_0000;
/// SPIs of vSMMUv3 `i`: event queue, global error, CMD_SYNC = base + 3i, +1, +2.
pub const SMMU_SPI_BASE: u32 = 128;
/// The host kernel's MSI window for nested translation (IOVA), which the guest must
/// identity-map in stage 1 (IORT RMR).
pub const HOST_MSI_WINDOW: GuestRange = GuestRange::new(0x800_0000, 0x10_0000);
/// SPIs for PCI INTx: four per host bridge from here.
pub const PCI_INTX_SPI_BASE: u32 = 32;
/// Most PCI host bridges (segments) a guest gets.
pub const MAX_PCI_BRIDGES: u32 = 16;

/// As many vCPUs as redistributors fit below the UART.
pub const MAX_VCPUS: u32 = ((UART.base - GIC_REDIST_BASE) / GIC_REDIST_STRIDE) as u32;

/// GIC interrupt IDs: PPIs are 16..32 (PPI numbers 0..16), SPIs start at 32.
pub const GIC_PPI_BASE: u32 = 16;
pub const GIC_NR_PPIS: u32 = 16;
pub const GIC_SPI_BASE: u32 = 32;

/// The UART's SPI (interrupt ID 33).
pub const UART_SPI: u32 = 1;
/// Interrupt IDs KVM's vGIC is created with: 32 private + 224 SPIs.
pub const GIC_NR_IRQS: u32 = 256;

/// Architectural timer PPIs, as on every Arm server (SBSA): IDs 29, 30, 27, 26.
pub const TIMER_SECURE_PHYS_PPI: u32 = 13;
pub const TIMER_NONSECURE_PHYS_PPI: u32 = 14;
pub const TIMER_VIRT_PPI: u32 = 11;
pub const TIMER_HYP_PPI: u32 = 10;

/// The 16550's input clock: the classic 1.8432 MHz, so divisor 1 is 115200 baud.
pub const UART_CLOCK_HZ: u32 = 1_843_200;

/// Redistributor region for `vcpus` vCPUs.
pub const fn gic_redistributors(vcpus: u32) -> GuestRange {
    GuestRange::new(GIC_REDIST_BASE, GIC_REDIST_STRIDE * vcpus as u64)
}

/// The MPIDR_EL1 affinity KVM gives vCPU `index` (Aff0 = low 4 bits, Aff1 the next 8, Aff2 the
/// next 8), which the device tree's cpu `reg` and the MADT's GICC entries must repeat.
pub const fn mpidr(index: u32) -> u64 {
    let i = index as u64;
    (i & 0xf) | (((i >> 4) & 0xff) << 8) | (((i >> 12) & 0xff) << 16)
}

/// The GICv3 virtual CPU interface maintenance interrupt, as a PPI (interrupt ID 25, the SBSA
/// choice KVM also uses for a nested guest's vGIC).
pub const GIC_MAINTENANCE_PPI: u32 = 9;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_is_disjoint() {
        let regions = [
            GIC_DIST,
            GIC_ITS,
            gic_redistributors(MAX_VCPUS),
            UART,
            PLATFORM_MMIO,
            PCI_MMIO32,
        ];
        for (i, a) in regions.iter().enumerate() {
            for b in &regions[i + 1..] {
                assert!(!a.overlaps(b), "{a:?} overlaps {b:?}");
            }
            assert!(a.end() <= RAM_BASE);
        }
        assert_eq!(MAX_VCPUS, 123);
    }

    #[test]
    fn mpidr_matches_kvm() {
        assert_eq!(mpidr(0), 0);
        assert_eq!(mpidr(15), 0xf);
        assert_eq!(mpidr(16), 0x100);
        assert_eq!(mpidr(0x1234), 0x01_2304);
    }
}
