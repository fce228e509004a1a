//! A host PCI function assigned to the guest through VFIO.
//!
//! The guest sees a shadow of the device's configuration space: the real identity, the real BAR
//! sizes at guest-assigned addresses, and the device's capability list with MSI and MSI-X
//! virtualised (the device never sees a guest MSI address; vectors reach the guest through
//! eventfds that the VMM attaches to KVM as irqfds). Which capabilities are kept is decided in
//! `standard_policy` and `extended_policy`.
//!
//! BARs are mapped straight into the guest where the host allows it, except the pages holding
//! the MSI-X table and PBA, which are trapped and emulated here; other trapped accesses go to the
//! device through the backend.
//!
//! Interrupts: vector `i` of MSI or MSI-X always signals `vector_eventfds()[i]`. A vector whose
//! route is `None` (disabled or masked) must be detached from KVM (irqfd deassigned): its
//! signals then accumulate in the eventfd, which is what the PBA reports as pending, and
//! reattaching the irqfd on unmask delivers them (KVM checks the eventfd on assign).

mod backend;
#[cfg(test)]
mod tests;

pub use backend::{
    BackendError, IrqType, RegionInfo, VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_ROM_REGION_INDEX,
    VfioBackend,
};

use std::io;

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::pci::capability::{self, ext_id, id};
use crate::pci::config::{
    BarInfo, BarKind, COMMAND, CONFIG_SPACE_SIZE, ConfigError, ConfigSpace, Header, NUM_BARS,
    STANDARD_CONFIG_SIZE, STATUS,
};
use crate::pci::msi::{MsiCapability, MsixCapability, MsixTable, route_changes};
use crate::pci::{
    ActiveBar, BarRange, BarSpace, ConfigWriteResult, InterruptRoute, MsiMessage, PciDevice,
    config_access_ok,
};

#[derive(Debug, thiserror::Error)]
pub enum VfioPciError {
    #[error("page size {0:#x} is not a power of two")]
    PageSize(u64),
    #[error("{what}")]
    Backend {
        what: &'static str,
        #[source]
        source: BackendError,
    },
    #[error("region {index} info")]
    RegionInfo {
        index: u32,
        #[source]
        source: BackendError,
    },
    #[error("the configuration region has {size:#x} bytes, less than a header's 256")]
    ConfigRegion { size: u64 },
    #[error("no function answers (vendor ID {vendor_id:#06x})")]
    NoDevice { vendor_id: u16 },
    #[error("header type {0:#04x} is not an endpoint's (bridges cannot be assigned)")]
    NotEndpoint(u8),
    #[error("BAR {index}")]
    Bar {
        index: usize,
        #[source]
        source: ConfigError,
    },
    #[error("creating an interrupt eventfd")]
    EventFd(#[source] io::Error),
}

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
mod pcie {
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
struct ByteSet([u64; CONFIG_SPACE_SIZE / 64]);

impl ByteSet {
    fn new() -> Self {
        ByteSet([0; CONFIG_SPACE_SIZE / 64])
    }

    fn insert(&mut self, start: u16, len: u16) {
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

/// Which interrupt type the host device has enabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IrqMode {
    None,
    Intx,
    Msi(u32),
    Msix(u32),
}

struct Msix {
    cap: MsixCapability,
    table: MsixTable,
}

struct Intx {
    trigger: EventFd,
    resample: EventFd,
}

/// The guest-visible model of an assigned PCI function.
pub struct VfioPciDevice {
    backend: Box<dyn VfioBackend>,
    config: ConfigSpace,
    /// Configuration bytes read from the device rather than the shadow.
    live: ByteSet,
    /// Configuration bytes whose writes are also sent to the device.
    forward: ByteSet,
    msi: Option<MsiCapability>,
    msix: Option<Msix>,
    /// Offset of the PCI Express capability.
    pcie: Option<u16>,
    regions: [RegionInfo; NUM_BARS],
    direct: [Vec<BarRange>; NUM_BARS],
    vectors: Vec<EventFd>,
    intx: Option<Intx>,
    mode: IrqMode,
    routes: Vec<Option<MsiMessage>>,
}

fn backend_err(what: &'static str) -> impl FnOnce(BackendError) -> VfioPciError {
    move |source| VfioPciError::Backend { what, source }
}

fn eventfd() -> Result<EventFd, VfioPciError> {
    EventFd::new(EFD_NONBLOCK).map_err(VfioPciError::EventFd)
}

fn u16_at(raw: &[u8], at: u16) -> u16 {
    let at = usize::from(at);
    u16::from_le_bytes([0, 1].map(|i| raw.get(at + i).copied().unwrap_or(0)))
}

fn u32_at(raw: &[u8], at: u16) -> u32 {
    u32::from(u16_at(raw, at)) | u32::from(u16_at(raw, at.saturating_add(2))) << 16
}

fn slice(raw: &[u8], at: u16, len: u16) -> Vec<u8> {
    (0..len)
        .map(|i| {
            raw.get(usize::from(at) + usize::from(i))
                .copied()
                .unwrap_or(0)
        })
        .collect()
}

impl VfioPciDevice {
    /// Reads the device through `backend` and builds its guest-visible model. `page_size` is the
    /// host page size: direct BAR mappings are whole host pages. Resets the function first when
    /// it can be reset.
    pub fn new(mut backend: Box<dyn VfioBackend>, page_size: u64) -> Result<Self, VfioPciError> {
        if !page_size.is_power_of_two() {
            return Err(VfioPciError::PageSize(page_size));
        }
        if let Err(e) = backend.reset() {
            log::info!("VFIO device cannot be reset ({e}); using it as it is");
        }
        let raw = read_config(backend.as_ref())?;
        let vendor_id = u16_at(&raw, 0);
        if vendor_id == 0xffff || vendor_id == 0 {
            return Err(VfioPciError::NoDevice { vendor_id });
        }
        let header_type = raw[0x0e] & 0x7f;
        if header_type != 0 {
            return Err(VfioPciError::NotEndpoint(header_type));
        }

        let intx = if raw[0x3d] != 0 && backend.irq_count(IrqType::Intx) > 0 {
            Some(Intx {
                trigger: eventfd()?,
                resample: eventfd()?,
            })
        } else {
            None
        };
        let header = Header {
            vendor_id,
            device_id: u16_at(&raw, 2),
            revision_id: raw[8],
            class_code: u32_at(&raw, 8) >> 8,
            subsystem_vendor_id: u16_at(&raw, 0x2c),
            subsystem_id: u16_at(&raw, 0x2e),
            interrupt_pin: if intx.is_some() { raw[0x3d] } else { 0 },
        };
        let mut device = VfioPciDevice {
            backend,
            config: ConfigSpace::new(&header),
            live: ByteSet::new(),
            forward: ByteSet::new(),
            msi: None,
            msix: None,
            pcie: None,
            regions: Default::default(),
            direct: Default::default(),
            vectors: Vec::new(),
            intx,
            mode: IrqMode::None,
            routes: Vec::new(),
        };
        // Command goes to the device too (bus master for DMA, decode for its BARs); the error
        // half of status (RW1C) is the device's own.
        device.forward.insert(COMMAND, 2);
        device.live.insert(STATUS + 1, 1);
        device.forward.insert(STATUS + 1, 1);

        device.add_bars(&raw)?;
        device.add_capabilities(&raw);
        device.add_extended_capabilities(&raw);
        device.direct = std::array::from_fn(|i| device.compute_direct_ranges(i, page_size));

        let msi_vectors = device.msi.map_or(0, |m| u16::from(m.max_vectors()));
        let msix_vectors = device.msix.as_ref().map_or(0, |m| m.cap.table_size);
        for _ in 0..msi_vectors.max(msix_vectors) {
            device.vectors.push(eventfd()?);
        }
        device.routes = vec![None; device.vectors.len()];
        // Until the guest enables MSI or MSI-X, the device interrupts through INTx.
        let _ = device.update_interrupts();
        Ok(device)
    }

    fn add_bars(&mut self, raw: &[u8]) -> Result<(), VfioPciError> {
        let mut index = 0;
        while index < NUM_BARS {
            let region = self.backend.region_info(index as u32).map_err(|source| {
                VfioPciError::RegionInfo {
                    index: index as u32,
                    source,
                }
            })?;
            let register = u32_at(raw, 0x10 + 4 * index as u16);
            let kind = BarKind::from_register(register);
            let Some(kind) = kind.filter(|_| region.size > 0) else {
                index += 1;
                continue;
            };
            // VFIO reports the BAR's size; round odd ones up as the BAR decodes them.
            let size = region.size.checked_next_power_of_two().unwrap_or(0).max(16);
            self.config
                .add_bar(index, kind, size)
                .map_err(|source| VfioPciError::Bar { index, source })?;
            self.regions[index] = region;
            index += if kind.is_64bit() { 2 } else { 1 };
        }
        Ok(())
    }

    fn add_capabilities(&mut self, raw: &[u8]) {
        for cap in capability::standard_capabilities(raw) {
            let o = cap.offset;
            let room = STANDARD_CONFIG_SIZE as u16 - o;
            let placed = match standard_policy(cap.id) {
                CapPolicy::Hide => {
                    log::debug!("VFIO: hiding capability {:#04x} at {o:#x}", cap.id);
                    continue;
                }
                CapPolicy::Msi => {
                    let msi = MsiCapability::new(o, u16_at(raw, o + 2));
                    let placed = self.config.place_capability(o, &msi.body(), &msi.wmask());
                    if placed.is_ok() {
                        self.msi = Some(msi);
                    }
                    placed
                }
                CapPolicy::Msix => {
                    let msix = MsixCapability::new(
                        o,
                        u16_at(raw, o + 2),
                        u32_at(raw, o + 4),
                        u32_at(raw, o + 8),
                    );
                    if !self.msix_fits(&msix) {
                        log::warn!("VFIO: MSI-X table or PBA outside its BAR; hiding MSI-X");
                        continue;
                    }
                    let placed = self.config.place_capability(o, &msix.body(), &msix.wmask());
                    if placed.is_ok() {
                        self.msix = Some(Msix {
                            table: MsixTable::new(msix.table_size),
                            cap: msix,
                        });
                    }
                    placed
                }
                CapPolicy::Shadow if cap.id == id::POWER_MANAGEMENT => {
                    let mut body = slice(raw, o, PM_LEN.min(room));
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
                    let body = slice(raw, o, len);
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
                    let placed = self.config.place_capability(o, &body, &wmask);
                    if placed.is_ok() {
                        self.pcie = Some(o);
                        for field in [pcie::DEVICE_STATUS, pcie::LINK_STATUS, pcie::LINK_STATUS_2] {
                            if field + 2 <= len {
                                self.live.insert(o + field, 2);
                            }
                        }
                    }
                    placed
                }
                CapPolicy::PassThrough => {
                    // Vendor-specific: its length is its third byte.
                    let len = u16::from(raw[usize::from(o) + 2]).max(3).min(room);
                    let placed = self.config.place_capability(o, &slice(raw, o, len), &[]);
                    if placed.is_ok() {
                        self.live.insert(o + 2, len.saturating_sub(2));
                        self.forward.insert(o + 2, len.saturating_sub(2));
                    }
                    placed
                }
            };
            if let Err(e) = placed {
                log::warn!("VFIO: dropping capability {:#04x}: {e}", cap.id);
            }
        }
    }

    fn add_extended_capabilities(&mut self, raw: &[u8]) {
        for cap in capability::extended_capabilities(raw) {
            let o = cap.offset;
            let room = CONFIG_SPACE_SIZE as u16 - o;
            let placed = match extended_policy(cap.id) {
                CapPolicy::Shadow => {
                    let body = slice(raw, o, 12.min(room));
                    self.config.place_extended_capability(o, &body, &[])
                }
                CapPolicy::PassThrough => {
                    // Vendor-specific: its length is in the top 12 bits of the second dword.
                    let len = ((u32_at(raw, o + 4) >> 20) as u16).max(8).min(room);
                    let placed = self
                        .config
                        .place_extended_capability(o, &slice(raw, o, len), &[]);
                    if placed.is_ok() {
                        self.live.insert(o + 4, len.saturating_sub(4));
                        self.forward.insert(o + 4, len.saturating_sub(4));
                    }
                    placed
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

    fn msix_fits(&self, msix: &MsixCapability) -> bool {
        let inside = |bar: u8, offset: u64, len: u64| {
            self.config.bar(usize::from(bar)).is_some_and(|b| {
                b.kind.space() == BarSpace::Memory
                    && offset.checked_add(len).is_some_and(|end| end <= b.size)
            })
        };
        inside(msix.table.bar, msix.table.offset, msix.table_bytes())
            && inside(msix.pba.bar, msix.pba.offset, msix.pba_bytes())
    }

    /// The host's mappable parts of a memory BAR, minus the MSI-X table and PBA pages, shrunk
    /// to whole pages.
    fn compute_direct_ranges(&self, index: usize, page: u64) -> Vec<BarRange> {
        let (Some(bar), Some(region)) = (self.config.bar(index), self.regions.get(index)) else {
            return Vec::new();
        };
        if bar.kind.space() != BarSpace::Memory || !region.mmap {
            return Vec::new();
        }
        let mut holes = Vec::new();
        if let Some(msix) = &self.msix {
            for (loc, len) in [
                (msix.cap.table, msix.cap.table_bytes()),
                (msix.cap.pba, msix.cap.pba_bytes()),
            ] {
                if usize::from(loc.bar) == index {
                    let start = loc.offset / page * page;
                    let end = loc.offset.saturating_add(len).next_multiple_of(page);
                    holes.push((start, end));
                }
            }
        }
        let whole = [BarRange {
            offset: 0,
            size: region.size,
        }];
        let areas = if region.sparse_areas.is_empty() {
            &whole[..]
        } else {
            &region.sparse_areas[..]
        };
        let mut ranges = Vec::new();
        for area in areas {
            let mut pieces = vec![(area.offset, area.end().min(bar.size).min(region.size))];
            for &(hole_start, hole_end) in &holes {
                pieces = pieces
                    .into_iter()
                    .flat_map(|(s, e)| [(s, e.min(hole_start)), (s.max(hole_end), e)])
                    .filter(|(s, e)| s < e)
                    .collect();
            }
            for (s, e) in pieces {
                let Some(s) = s.checked_next_multiple_of(page) else {
                    continue;
                };
                let e = e / page * page;
                if s < e {
                    ranges.push(BarRange {
                        offset: s,
                        size: e - s,
                    });
                }
            }
        }
        ranges.sort();
        ranges
    }

    /// The parts of BAR `index` that are trapped: everything not mapped directly (the MSI-X
    /// pages, areas the host cannot mmap, I/O BARs).
    pub fn trapped_ranges(&self, index: u8) -> Vec<BarRange> {
        let Some(bar) = self.config.bar(usize::from(index)) else {
            return Vec::new();
        };
        let mut ranges = Vec::new();
        let mut at = 0;
        for r in self.direct_ranges(index) {
            if r.offset > at {
                ranges.push(BarRange {
                    offset: at,
                    size: r.offset - at,
                });
            }
            at = r.end();
        }
        if at < bar.size {
            ranges.push(BarRange {
                offset: at,
                size: bar.size - at,
            });
        }
        ranges
    }

    /// Every BAR the device has, with its host size and current guest address.
    pub fn bars(&self) -> Vec<BarInfo> {
        self.config.bars()
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

    /// Brings the host's interrupt type and the vector routes in line with the guest's MSI and
    /// MSI-X programming; returns the routes that changed.
    fn update_interrupts(&mut self) -> Vec<InterruptRoute> {
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

    fn switch_mode(&mut self, wanted: IrqMode) {
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
    fn pba_read(&self, offset: u64, data: &mut [u8]) {
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

    /// Where a BAR access falls: the MSI-X table, the PBA, or the device.
    fn msix_target(&self, bar: u8, offset: u64, len: usize) -> MsixTarget {
        let Some(msix) = &self.msix else {
            return MsixTarget::Device;
        };
        let len = len as u64;
        for (loc, size, target) in [
            (
                msix.cap.table,
                msix.cap.table_bytes(),
                MsixTarget::Table as fn(u64) -> _,
            ),
            (msix.cap.pba, msix.cap.pba_bytes(), MsixTarget::Pba),
        ] {
            if loc.bar != bar || offset >= loc.offset + size || offset + len <= loc.offset {
                continue;
            }
            if offset >= loc.offset && offset + len <= loc.offset + size {
                return target(offset - loc.offset);
            }
            return MsixTarget::Straddle;
        }
        MsixTarget::Device
    }

    fn bar_access_ok(&self, bar: u8, offset: u64, len: usize) -> bool {
        matches!(len, 1 | 2 | 4 | 8)
            && self
                .config
                .bar(usize::from(bar))
                .is_some_and(|b| offset.checked_add(len as u64).is_some_and(|e| e <= b.size))
    }

    fn intercept_flr(&mut self, offset: u16, data: &[u8]) {
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

    /// Sends the forwarded bytes of a guest write to the device, as naturally aligned pieces of
    /// each contiguous run.
    fn forward_write(&mut self, offset: u16, data: &[u8]) {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MsixTarget {
    Device,
    Table(u64),
    Pba(u64),
    /// Part table or PBA, part not: not an access the spec allows.
    Straddle,
}

/// Reads the configuration region: the whole 4 KiB when the host exposes it, else 256 bytes.
fn read_config(backend: &dyn VfioBackend) -> Result<Vec<u8>, VfioPciError> {
    let info = backend
        .region_info(VFIO_PCI_CONFIG_REGION_INDEX)
        .map_err(|source| VfioPciError::RegionInfo {
            index: VFIO_PCI_CONFIG_REGION_INDEX,
            source,
        })?;
    if info.size < STANDARD_CONFIG_SIZE as u64 {
        return Err(VfioPciError::ConfigRegion { size: info.size });
    }
    let size = if info.size >= CONFIG_SPACE_SIZE as u64 {
        CONFIG_SPACE_SIZE
    } else {
        STANDARD_CONFIG_SIZE
    };
    let mut raw = vec![0u8; CONFIG_SPACE_SIZE];
    for (i, chunk) in raw[..size].chunks_exact_mut(4).enumerate() {
        backend
            .region_read(VFIO_PCI_CONFIG_REGION_INDEX, 4 * i as u64, chunk)
            .map_err(backend_err("reading the configuration space"))?;
    }
    Ok(raw)
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

impl PciDevice for VfioPciDevice {
    fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        if !config_access_ok(offset.into(), data.len(), CONFIG_SPACE_SIZE as u64) {
            data.fill(0xff);
            return;
        }
        self.config.read(offset, data);
        let at = usize::from(offset);
        if (0..data.len()).any(|i| self.live.contains(at + i)) {
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
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) -> ConfigWriteResult {
        if !config_access_ok(offset.into(), data.len(), CONFIG_SPACE_SIZE as u64) {
            return ConfigWriteResult::None;
        }
        self.intercept_flr(offset, data);
        let result = self.config.write(offset, data);
        self.forward_write(offset, data);
        let msi = self.msi.is_some_and(|m| m.touches(offset, data.len()));
        let msix = self
            .msix
            .as_ref()
            .is_some_and(|m| m.cap.touches(offset, data.len()));
        if msi || msix {
            ConfigWriteResult::Interrupts(self.update_interrupts())
        } else {
            result
        }
    }

    fn active_bars(&self) -> Vec<ActiveBar> {
        self.config.active_bars()
    }

    fn mmio_read(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        if !self.bar_access_ok(bar, offset, data.len()) {
            data.fill(0xff);
            return;
        }
        match self.msix_target(bar, offset, data.len()) {
            MsixTarget::Table(at) => {
                if let Some(msix) = &self.msix {
                    msix.table.read(at, data);
                }
            }
            MsixTarget::Pba(at) => self.pba_read(at, data),
            MsixTarget::Straddle => data.fill(0xff),
            MsixTarget::Device => {
                if let Err(e) = self.backend.region_read(bar.into(), offset, data) {
                    log::warn!("VFIO: BAR {bar} read at {offset:#x}: {e}");
                    data.fill(0xff);
                }
            }
        }
    }

    fn mmio_write(&mut self, bar: u8, offset: u64, data: &[u8]) -> Vec<InterruptRoute> {
        if !self.bar_access_ok(bar, offset, data.len()) {
            return Vec::new();
        }
        match self.msix_target(bar, offset, data.len()) {
            MsixTarget::Table(at) => {
                let written = self.msix.as_mut().and_then(|m| m.table.write(at, data));
                match written {
                    Some(_) => self.update_interrupts(),
                    None => Vec::new(),
                }
            }
            // The PBA is read-only.
            MsixTarget::Pba(_) | MsixTarget::Straddle => Vec::new(),
            MsixTarget::Device => {
                if let Err(e) = self.backend.region_write(bar.into(), offset, data) {
                    log::warn!("VFIO: BAR {bar} write at {offset:#x}: {e}");
                }
                Vec::new()
            }
        }
    }

    fn direct_ranges(&self, bar: u8) -> Vec<BarRange> {
        self.direct
            .get(usize::from(bar))
            .cloned()
            .unwrap_or_default()
    }
}
