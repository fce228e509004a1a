//! A host PCI function assigned to the guest through VFIO.
//!
//! The guest sees a shadow of the device's configuration space: the real identity, the real BAR
//! sizes at guest-assigned addresses, and the device's capability list with MSI and MSI-X
//! virtualised. One concern per file:
//! - `capabilities`: which capabilities the guest sees and how each configuration byte is
//!   shadowed, read live from the device, or forwarded to it;
//! - `bars`: BAR sizing, which pages are mapped straight into the guest and which are trapped
//!   (the MSI-X table and PBA), and where a trapped access lands;
//! - `interrupts`: the INTx/MSI/MSI-X state machine and the vector routes the VMM applies;
//! - `reset`: resets on open, on a guest FLR, and the quiet state the device is left in.
//!
//! This file holds the device type, its construction and its [`PciDevice`] face.

mod backend;
mod bars;
mod capabilities;
mod interrupts;
mod reset;
#[cfg(test)]
mod tests;

pub use backend::{
    BackendError, IrqType, RegionInfo, VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_ROM_REGION_INDEX,
    VfioBackend,
};

use std::io;

use vmm_sys_util::eventfd::EventFd;

use crate::pci::config::{
    COMMAND, CONFIG_SPACE_SIZE, ConfigError, ConfigSpace, Header, NUM_BARS, STANDARD_CONFIG_SIZE,
    STATUS,
};
use crate::pci::msi::MsiCapability;
use crate::pci::{
    ActiveBar, BarRange, ConfigWriteResult, InterruptRoute, MsiMessage, PciDevice,
    config_access_ok, raw_u16, raw_u32,
};
use bars::MsixTarget;
use capabilities::ByteSet;
use interrupts::{Intx, IrqMode, Msix};

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

impl VfioPciDevice {
    /// Reads the device through `backend` and builds its guest-visible model. `page_size` is the
    /// host page size: direct BAR mappings are whole host pages. Resets the function first when
    /// it can be reset.
    pub fn new(mut backend: Box<dyn VfioBackend>, page_size: u64) -> Result<Self, VfioPciError> {
        if !page_size.is_power_of_two() {
            return Err(VfioPciError::PageSize(page_size));
        }
        reset::on_open(backend.as_mut());
        let raw = read_config(backend.as_ref())?;
        let vendor_id = raw_u16(&raw, 0);
        if vendor_id == 0xffff || vendor_id == 0 {
            return Err(VfioPciError::NoDevice { vendor_id });
        }
        let header_type = raw[0x0e] & 0x7f;
        if header_type != 0 {
            return Err(VfioPciError::NotEndpoint(header_type));
        }

        let intx = Intx::new(&raw, backend.as_ref())?;
        let header = Header {
            vendor_id,
            device_id: raw_u16(&raw, 2),
            revision_id: raw[8],
            class_code: raw_u32(&raw, 8) >> 8,
            subsystem_vendor_id: raw_u16(&raw, 0x2c),
            subsystem_id: raw_u16(&raw, 0x2e),
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
        device.add_vectors()?;
        Ok(device)
    }
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

impl PciDevice for VfioPciDevice {
    fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        if !config_access_ok(offset.into(), data.len(), CONFIG_SPACE_SIZE as u64) {
            data.fill(0xff);
            return;
        }
        self.config.read(offset, data);
        self.read_live(offset, data);
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) -> ConfigWriteResult {
        if !config_access_ok(offset.into(), data.len(), CONFIG_SPACE_SIZE as u64) {
            return ConfigWriteResult::None;
        }
        self.intercept_flr(offset, data);
        let result = self.config.write(offset, data);
        self.forward_write(offset, data);
        if self.touches_interrupt_capability(offset, data.len()) {
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
