//! Capability policy and the configuration-space shadow: which of the device's capabilities the
//! guest sees (each decision with its reason), and for each byte whether it lives in the shadow,
//! is read live from the device, or has its writes forwarded to the device.

use super::{VFIO_PCI_CONFIG_REGION_INDEX, VfioPciDevice};
use crate::pci::capability::{self, ext_id, id};
use crate::pci::config::{CONFIG_SPACE_SIZE, STANDARD_CONFIG_SIZE};
use crate::pci::msi::{MsiCapability, MsixCapability, MsixTable};
use crate::pci::{raw_bytes, raw_u16, raw_u32};

use super::interrupts::Msix;

/// What happens to a capability the device has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CapPolicy {
    /// Not linked into the guest's list.
    Hide,
    /// A shadow copy; the listed fields are guest-writable in the shadow only.
    Shadow,
    /// Reads come from the device, writes go to it.
    PassThrough,
    Msi,
    Msix,
}

/// Standard capabilities, one line of reasoning each.
fn standard_policy(cap_id: u8) -> CapPolicy {
    match cap_id {
        // Kept so drivers find D-states, but the device stays in D0: power transitions of an
        // assigned function are the host's (they can lose state the VMM cannot restore).
        id::POWER_MANAGEMENT => CapPolicy::Shadow,
        id::MSI => CapPolicy::Msi,
        id::MSIX => CapPolicy::Msix,
        // Drivers read link and device capabilities; control writes stay in the shadow so the
        // guest cannot change payload sizes or ASPM under the host, and FLR is intercepted.
        id::PCI_EXPRESS => CapPolicy::Shadow,
        // Device-specific registers drivers rely on (e.g. virtio, GPU firmware mailboxes).
        id::VENDOR_SPECIFIC => CapPolicy::PassThrough,
        // Advanced Features (conventional PCI FLR) and Enhanced Allocation (fixed host BAR
        // addresses) and anything unknown: hidden, the VMM cannot mediate them.
        _ => CapPolicy::Hide,
    }
}

/// Extended capabilities.
fn extended_policy(cap_id: u16) -> CapPolicy {
    match cap_id {
        // A read-only identity some drivers use.
        ext_id::DEVICE_SERIAL_NUMBER => CapPolicy::Shadow,
        // Device-specific, as for the standard vendor capability.
        ext_id::VENDOR_SPECIFIC => CapPolicy::PassThrough,
        // AER: the host owns error handling and recovery. SR-IOV: only the host creates VFs.
        // Resizable BAR: sizes are fixed when the device is assigned. ATS/PRI/PASID: need a
        // vIOMMU the device model does not know about. ACS: meaningful on ports only. The rest
        // (LTR, L1 PM substates, ...) are host power management. All hidden.
        _ => CapPolicy::Hide,
    }
}

/// PCIe capability structure offsets (PCIe 6.0 section 7.5.3).
pub(super) mod pcie {
    pub const DEVICE_CONTROL: u16 = 0x08;
    pub const DEVICE_STATUS: u16 = 0x0a;
    pub const LINK_CONTROL: u16 = 0x10;
    pub const LINK_STATUS: u16 = 0x12;
    pub const DEVICE_CONTROL_2: u16 = 0x28;
    pub const LINK_CONTROL_2: u16 = 0x30;
    pub const LINK_STATUS_2: u16 = 0x32;
    /// Device Control bit 15.
    pub const INITIATE_FLR: u16 = 1 << 15;
    /// Version 2 structures are 0x3c bytes, version 1 0x24.
    pub const LEN_V1: u16 = 0x24;
    pub const LEN_V2: u16 = 0x3c;
}

/// Power Management Control/Status offset and its writable bits (power state, PME enable).
const PM_CONTROL_STATUS: u16 = 0x04;
const PM_LEN: u16 = 8;

/// A bit per configuration byte.
#[derive(Clone)]
pub(super) struct ByteSet([u64; CONFIG_SPACE_SIZE / 64]);

impl ByteSet {
    pub(super) fn new() -> Self {
        ByteSet([0; CONFIG_SPACE_SIZE / 64])
    }

    pub(super) fn insert(&mut self, start: u16, len: u16) {
        for at in usize::from(start)..(usize::from(start) + usize::from(len)).min(CONFIG_SPACE_SIZE)
        {
            self.0[at / 64] |= 1 << (at % 64);
        }
    }

    fn contains(&self, at: usize) -> bool {
        self.0
            .get(at / 64)
            .is_some_and(|w| w & (1 << (at % 64)) != 0)
    }
}

impl VfioPciDevice {
    pub(super) fn add_capabilities(&mut self, raw: &[u8]) {
        for cap in capability::standard_capabilities(raw) {
            let o = cap.offset;
            let room = STANDARD_CONFIG_SIZE as u16 - o;
            let placed = match standard_policy(cap.id) {
                CapPolicy::Hide => {
                    log::debug!("VFIO: hiding capability {:#04x} at {o:#x}", cap.id);
                    continue;
                }
                CapPolicy::Msi => {
                    let msi = MsiCapability::new(o, raw_u16(raw, o + 2));
                    let placed = self.config.place_capability(o, &msi.body(), &msi.wmask());
                    placed.map(|()| self.msi = Some(msi))
                }
                CapPolicy::Msix => {
                    let msix = MsixCapability::new(
                        o,
                        raw_u16(raw, o + 2),
                        raw_u32(raw, o + 4),
                        raw_u32(raw, o + 8),
                    );
                    if !self.msix_fits(&msix) {
                        log::warn!("VFIO: MSI-X table or PBA outside its BAR; hiding MSI-X");
                        continue;
                    }
                    let table = MsixTable::new(msix.table_size);
                    let placed = self.config.place_capability(o, &msix.body(), &msix.wmask());
                    placed.map(|()| self.msix = Some(Msix { cap: msix, table }))
                }
                CapPolicy::Shadow if cap.id == id::POWER_MANAGEMENT => {
                    let mut body = raw_bytes(raw, o, PM_LEN.min(room));
                    let mut wmask = vec![0; body.len()];
                    if let Some(b) = body.get_mut(usize::from(PM_CONTROL_STATUS)) {
                        *b &= !0x3; // D0
                    }
                    if let Some(w) = wmask.get_mut(usize::from(PM_CONTROL_STATUS)..) {
                        w.iter_mut().zip([0x03, 0x01]).for_each(|(w, m)| *w = m);
                    }
                    self.config.place_capability(o, &body, &wmask)
                }
                CapPolicy::Shadow => {
                    // PCI Express.
                    let len = if raw[usize::from(o) + 2] & 0xf >= 2 {
                        pcie::LEN_V2
                    } else {
                        pcie::LEN_V1
                    }
                    .min(room);
                    let body = raw_bytes(raw, o, len);
                    let mut wmask = vec![0; body.len()];
                    for (field, mask) in [
                        // FLR is intercepted, never stored.
                        (pcie::DEVICE_CONTROL, 0x7fffu16),
                        (pcie::LINK_CONTROL, 0x0fff),
                        (pcie::DEVICE_CONTROL_2, 0xffff),
                        (pcie::LINK_CONTROL_2, 0xffff),
                    ] {
                        let at = usize::from(field);
                        if let Some(w) = wmask.get_mut(at..at + 2) {
                            w.copy_from_slice(&mask.to_le_bytes());
                        }
                    }
                    self.config.place_capability(o, &body, &wmask).map(|()| {
                        self.pcie = Some(o);
                        for field in [pcie::DEVICE_STATUS, pcie::LINK_STATUS, pcie::LINK_STATUS_2] {
                            if field + 2 <= len {
                                self.live.insert(o + field, 2);
                            }
                        }
                    })
                }
                CapPolicy::PassThrough => {
                    // Vendor-specific: its length is its third byte.
                    let len = u16::from(raw[usize::from(o) + 2]).max(3).min(room);
                    let body = raw_bytes(raw, o, len);
                    self.config.place_capability(o, &body, &[]).map(|()| {
                        self.live.insert(o + 2, len.saturating_sub(2));
                        self.forward.insert(o + 2, len.saturating_sub(2));
                    })
                }
            };
            if let Err(e) = placed {
                log::warn!("VFIO: dropping capability {:#04x}: {e}", cap.id);
            }
        }
    }

    pub(super) fn add_extended_capabilities(&mut self, raw: &[u8]) {
        for cap in capability::extended_capabilities(raw) {
            let o = cap.offset;
            let room = CONFIG_SPACE_SIZE as u16 - o;
            let placed = match extended_policy(cap.id) {
                CapPolicy::Shadow => {
                    let body = raw_bytes(raw, o, 12.min(room));
                    self.config.place_extended_capability(o, &body, &[])
                }
                CapPolicy::PassThrough => {
                    // Vendor-specific: its length is in the top 12 bits of the second dword.
                    let len = ((raw_u32(raw, o + 4) >> 20) as u16).max(8).min(room);
                    let body = raw_bytes(raw, o, len);
                    self.config
                        .place_extended_capability(o, &body, &[])
                        .map(|()| {
                            self.live.insert(o + 4, len.saturating_sub(4));
                            self.forward.insert(o + 4, len.saturating_sub(4));
                        })
                }
                _ => {
                    log::debug!("VFIO: hiding extended capability {:#06x} at {o:#x}", cap.id);
                    continue;
                }
            };
            if let Err(e) = placed {
                log::warn!("VFIO: dropping extended capability {:#06x}: {e}", cap.id);
            }
        }
    }

    /// Replaces the live bytes of a shadow read with the device's.
    pub(super) fn read_live(&self, offset: u16, data: &mut [u8]) {
        let at = usize::from(offset);
        if !(0..data.len()).any(|i| self.live.contains(at + i)) {
            return;
        }
        let mut device = vec![0u8; data.len()];
        if let Err(e) =
            self.backend
                .region_read(VFIO_PCI_CONFIG_REGION_INDEX, offset.into(), &mut device)
        {
            log::warn!("VFIO: config read at {offset:#x}: {e}");
            device.fill(0xff);
        }
        for (i, byte) in data.iter_mut().enumerate() {
            if self.live.contains(at + i) {
                *byte = device[i];
            }
        }
    }

    /// Sends the forwarded bytes of a guest write to the device, as naturally aligned pieces of
    /// each contiguous run.
    pub(super) fn forward_write(&mut self, offset: u16, data: &[u8]) {
        let at = usize::from(offset);
        let mut i = 0;
        while i < data.len() {
            if !self.forward.contains(at + i) {
                i += 1;
                continue;
            }
            let run_end = (i..data.len())
                .find(|&j| !self.forward.contains(at + j))
                .unwrap_or(data.len());
            let size = [4, 2, 1]
                .into_iter()
                .find(|&size| (at + i) % size == 0 && i + size <= run_end)
                .unwrap_or(1);
            if let Err(e) = self.backend.region_write(
                VFIO_PCI_CONFIG_REGION_INDEX,
                (at + i) as u64,
                &data[i..i + size],
            ) {
                log::warn!("VFIO: config write at {:#x}: {e}", at + i);
            }
            i += size;
        }
    }
}
