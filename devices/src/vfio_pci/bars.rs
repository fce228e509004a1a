//! BAR ranges: each BAR sized from its VFIO region, the pages mapped straight into the guest
//! (whole host pages the host lets us mmap, minus the MSI-X table and PBA), and where a trapped
//! access lands.

use super::{VfioPciDevice, VfioPciError};
use crate::pci::config::{BarInfo, BarKind, NUM_BARS};
use crate::pci::msi::MsixCapability;
use crate::pci::{BarRange, BarSpace, raw_u32};

/// Where a trapped BAR access falls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MsixTarget {
    Device,
    Table(u64),
    Pba(u64),
    /// Part table or PBA, part not: not an access the spec allows.
    Straddle,
}

impl VfioPciDevice {
    pub(super) fn add_bars(&mut self, raw: &[u8]) -> Result<(), VfioPciError> {
        let mut index = 0;
        while index < NUM_BARS {
            let region = self.backend.region_info(index as u32).map_err(|source| {
                VfioPciError::RegionInfo {
                    index: index as u32,
                    source,
                }
            })?;
            let register = raw_u32(raw, 0x10 + 4 * index as u16);
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

    /// Whether the MSI-X table and PBA lie inside memory BARs the device has.
    pub(super) fn msix_fits(&self, msix: &MsixCapability) -> bool {
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
    pub(super) fn compute_direct_ranges(&self, index: usize, page: u64) -> Vec<BarRange> {
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
        let whole = [BarRange::new(0, region.size)];
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
                    ranges.push(BarRange::new(s, e - s));
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
        for r in self.direct.get(usize::from(index)).into_iter().flatten() {
            if r.offset > at {
                ranges.push(BarRange::new(at, r.offset - at));
            }
            at = r.end();
        }
        if at < bar.size {
            ranges.push(BarRange::new(at, bar.size - at));
        }
        ranges
    }

    /// Every BAR the device has, with its host size and current guest address.
    pub fn bars(&self) -> Vec<BarInfo> {
        self.config.bars()
    }

    /// Where a BAR access falls: the MSI-X table, the PBA, or the device.
    pub(super) fn msix_target(&self, bar: u8, offset: u64, len: usize) -> MsixTarget {
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

    /// A trapped access the model serves: a naturally sized access inside a BAR the device has.
    pub(super) fn bar_access_ok(&self, bar: u8, offset: u64, len: usize) -> bool {
        matches!(len, 1 | 2 | 4 | 8)
            && self
                .config
                .bar(usize::from(bar))
                .is_some_and(|b| offset.checked_add(len as u64).is_some_and(|e| e <= b.size))
    }
}
