//! A shadowed 4 KiB configuration space with a type 0 header (PCI Local Bus 3.0 section 6.1,
//! PCIe 6.0 section 7.5.1): per-byte write masks, BAR sizing and relocation, and the capability
//! list. Guest writes return a [`ConfigWriteResult`] the bus owner applies.

use super::{InterruptRoute, config_access_ok};

/// Bytes of configuration space per function (PCIe extended space).
pub const CONFIG_SPACE_SIZE: usize = 4096;
/// The conventional (PCI 3.0) part, where the standard capability list lives.
pub const STANDARD_CONFIG_SIZE: usize = 256;
pub const NUM_BARS: usize = 6;

pub const VENDOR_ID: u16 = 0x00;
pub const DEVICE_ID: u16 = 0x02;
pub const COMMAND: u16 = 0x04;
pub const STATUS: u16 = 0x06;
pub const REVISION_ID: u16 = 0x08;
pub const CACHE_LINE_SIZE: u16 = 0x0c;
pub const BAR0: u16 = 0x10;
pub const SUBSYSTEM_VENDOR_ID: u16 = 0x2c;
pub const SUBSYSTEM_ID: u16 = 0x2e;
pub const EXPANSION_ROM: u16 = 0x30;
pub const CAPABILITIES_POINTER: u16 = 0x34;
pub const INTERRUPT_LINE: u16 = 0x3c;
pub const INTERRUPT_PIN: u16 = 0x3d;
/// The first byte after the type 0 header.
pub const FIRST_CAPABILITY: u16 = 0x40;
/// Where the extended capability list starts.
pub const FIRST_EXTENDED_CAPABILITY: u16 = 0x100;

const BAR_END: u16 = BAR0 + 4 * NUM_BARS as u16;

/// The command register (PCI 3.0 section 6.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Command(pub u16);

impl Command {
    pub const IO_SPACE: u16 = 1 << 0;
    pub const MEMORY_SPACE: u16 = 1 << 1;
    pub const BUS_MASTER: u16 = 1 << 2;
    pub const PARITY_ERROR_RESPONSE: u16 = 1 << 6;
    pub const SERR_ENABLE: u16 = 1 << 8;
    pub const INTX_DISABLE: u16 = 1 << 10;
    /// The bits a guest can change; the rest are hardwired to zero on PCIe.
    pub const WRITABLE: u16 = Self::IO_SPACE
        | Self::MEMORY_SPACE
        | Self::BUS_MASTER
        | Self::PARITY_ERROR_RESPONSE
        | Self::SERR_ENABLE
        | Self::INTX_DISABLE;

    pub fn io_space(self) -> bool {
        self.0 & Self::IO_SPACE != 0
    }

    pub fn memory_space(self) -> bool {
        self.0 & Self::MEMORY_SPACE != 0
    }

    pub fn bus_master(self) -> bool {
        self.0 & Self::BUS_MASTER != 0
    }
}

/// Status register bit saying the capabilities pointer is valid.
pub const STATUS_CAPABILITIES_LIST: u16 = 1 << 4;

/// The address space a BAR decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarSpace {
    Io,
    Memory,
}

/// What a BAR is, fixed by its read-only low bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    Io,
    Memory32 {
        prefetchable: bool,
    },
    /// Occupies its slot and the next (the upper 32 address bits).
    Memory64 {
        prefetchable: bool,
    },
}

impl BarKind {
    /// The read-only low bits of the (lower) BAR register.
    pub fn flags(self) -> u32 {
        match self {
            BarKind::Io => 0x1,
            BarKind::Memory32 { prefetchable } => u32::from(prefetchable) << 3,
            BarKind::Memory64 { prefetchable } => 0x4 | u32::from(prefetchable) << 3,
        }
    }

    /// Decodes the low bits of a BAR register.
    pub fn from_register(value: u32) -> Option<BarKind> {
        if value & 1 != 0 {
            return Some(BarKind::Io);
        }
        let prefetchable = value & 0x8 != 0;
        match (value >> 1) & 0x3 {
            0b00 => Some(BarKind::Memory32 { prefetchable }),
            0b10 => Some(BarKind::Memory64 { prefetchable }),
            _ => None,
        }
    }

    pub fn space(self) -> BarSpace {
        match self {
            BarKind::Io => BarSpace::Io,
            _ => BarSpace::Memory,
        }
    }

    pub fn is_64bit(self) -> bool {
        matches!(self, BarKind::Memory64 { .. })
    }

    /// The address bits of the lower register.
    fn address_mask(self) -> u32 {
        match self {
            BarKind::Io => !0x3,
            _ => !0xf,
        }
    }

    /// The smallest size the spec allows.
    fn min_size(self) -> u64 {
        match self {
            BarKind::Io => 4,
            _ => 16,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bar {
    kind: BarKind,
    size: u64,
    /// The last address the guest committed (sizing writes do not change it).
    addr: u64,
    /// The lower and upper registers hold the all-ones sizing pattern.
    sizing: [bool; 2],
}

impl Bar {
    fn size_mask(&self) -> u64 {
        !(self.size - 1)
    }

    fn register(&self, upper: bool) -> u32 {
        let value = if self.sizing[usize::from(upper)] {
            self.size_mask()
        } else {
            self.addr
        };
        if upper {
            (value >> 32) as u32
        } else {
            (value as u32 & self.kind.address_mask()) | self.kind.flags()
        }
    }
}

/// A BAR as the guest sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarInfo {
    pub index: u8,
    pub kind: BarKind,
    pub size: u64,
    /// The committed guest address (0 until the guest or the VMM programs one).
    pub addr: u64,
}

/// A BAR the guest can reach at `addr..addr + size`.
pub type ActiveBar = BarInfo;

impl BarInfo {
    pub fn contains(&self, space: BarSpace, addr: u64, len: u64) -> bool {
        self.kind.space() == space
            && addr >= self.addr
            && (addr - self.addr)
                .checked_add(len)
                .is_some_and(|end| end <= self.size)
    }
}

/// A BAR the guest moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarMove {
    pub bar: u8,
    pub kind: BarKind,
    pub old: u64,
    pub new: u64,
    pub size: u64,
}

/// What a configuration write changed that the bus owner must act on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[must_use]
pub enum ConfigWriteResult {
    #[default]
    None,
    /// A BAR's committed address changed. Reported whether or not its space is enabled; writing
    /// a 64-bit BAR one half at a time reports each half's move.
    BarMoved(BarMove),
    /// The command register's memory or I/O space enable changed; the new state of both.
    DecodeChanged { memory: bool, io: bool },
    /// MSI or MSI-X vectors whose route changed.
    Interrupts(Vec<InterruptRoute>),
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("BAR {index} does not exist")]
    NoSuchBar { index: usize },
    #[error("BAR {index} is already in use")]
    BarInUse { index: usize },
    #[error("BAR {index}: size {size:#x} is not a power of two the BAR kind allows")]
    BadBarSize { index: usize, size: u64 },
    #[error("BAR {index}: address {addr:#x} is not aligned to its size {size:#x}")]
    MisalignedBar { index: usize, addr: u64, size: u64 },
    #[error("capability at {offset:#x} ({len} bytes) is misplaced or overlaps another")]
    BadCapability { offset: u16, len: usize },
}

/// The identity fields of a type 0 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    pub vendor_id: u16,
    pub device_id: u16,
    pub revision_id: u8,
    /// Base class << 16 | sub-class << 8 | programming interface.
    pub class_code: u32,
    pub subsystem_vendor_id: u16,
    pub subsystem_id: u16,
    /// 0 = none, 1..=4 = INTA..INTD.
    pub interrupt_pin: u8,
}

/// A function's configuration space as the guest sees it.
pub struct ConfigSpace {
    regs: Box<[u8; CONFIG_SPACE_SIZE]>,
    wmask: Box<[u8; CONFIG_SPACE_SIZE]>,
    bars: [Option<Bar>; NUM_BARS],
    /// Standard and extended capabilities as (offset, length), in list order.
    capabilities: Vec<(u16, u16)>,
    extended_capabilities: Vec<(u16, u16)>,
}

impl ConfigSpace {
    pub fn new(header: &Header) -> Self {
        let mut config = ConfigSpace {
            regs: Box::new([0; CONFIG_SPACE_SIZE]),
            wmask: Box::new([0; CONFIG_SPACE_SIZE]),
            bars: [None; NUM_BARS],
            capabilities: Vec::new(),
            extended_capabilities: Vec::new(),
        };
        let class_revision = header.class_code << 8 | u32::from(header.revision_id);
        config.set(VENDOR_ID, &header.vendor_id.to_le_bytes());
        config.set(DEVICE_ID, &header.device_id.to_le_bytes());
        config.set(REVISION_ID, &class_revision.to_le_bytes());
        config.set(
            SUBSYSTEM_VENDOR_ID,
            &header.subsystem_vendor_id.to_le_bytes(),
        );
        config.set(SUBSYSTEM_ID, &header.subsystem_id.to_le_bytes());
        config.regs[usize::from(INTERRUPT_PIN)] = header.interrupt_pin.min(4);
        config.set_wmask(COMMAND, &Command::WRITABLE.to_le_bytes());
        config.wmask[usize::from(CACHE_LINE_SIZE)] = 0xff;
        config.wmask[usize::from(INTERRUPT_LINE)] = 0xff;
        config
    }

    /// Declares BAR `index` (both slots for a 64-bit BAR), unassigned at address 0.
    pub fn add_bar(&mut self, index: usize, kind: BarKind, size: u64) -> Result<(), ConfigError> {
        let last = index + usize::from(kind.is_64bit());
        if last >= NUM_BARS {
            return Err(ConfigError::NoSuchBar { index });
        }
        if (index..=last).any(|i| !matches!(self.slot(i), Slot::Unused)) {
            return Err(ConfigError::BarInUse { index });
        }
        let max = match kind {
            BarKind::Io => 1 << 16,
            BarKind::Memory32 { .. } => 1 << 31,
            BarKind::Memory64 { .. } => 1 << 63,
        };
        if !size.is_power_of_two() || size < kind.min_size() || size > max {
            return Err(ConfigError::BadBarSize { index, size });
        }
        self.bars[index] = Some(Bar {
            kind,
            size,
            addr: 0,
            sizing: [false; 2],
        });
        Ok(())
    }

    /// Programs a BAR's address as firmware would (for BARs the VMM places itself).
    pub fn set_bar_address(&mut self, index: usize, addr: u64) -> Result<(), ConfigError> {
        let bar = self
            .bars
            .get_mut(index)
            .and_then(Option::as_mut)
            .ok_or(ConfigError::NoSuchBar { index })?;
        let limit = if bar.kind.is_64bit() {
            u64::MAX
        } else {
            u64::from(u32::MAX)
        };
        if addr & (bar.size - 1) != 0 || addr > limit {
            return Err(ConfigError::MisalignedBar {
                index,
                addr,
                size: bar.size,
            });
        }
        bar.addr = addr;
        bar.sizing = [false; 2];
        Ok(())
    }

    /// Every declared BAR.
    pub fn bars(&self) -> Vec<BarInfo> {
        (0..NUM_BARS).filter_map(|i| self.bar(i)).collect()
    }

    pub fn bar(&self, index: usize) -> Option<BarInfo> {
        let bar = self.bars.get(index).copied().flatten()?;
        Some(BarInfo {
            index: index as u8,
            kind: bar.kind,
            size: bar.size,
            addr: bar.addr,
        })
    }

    pub fn active_bars(&self) -> Vec<ActiveBar> {
        let command = self.command();
        let active = |bar: &Bar| {
            let enabled = match bar.kind.space() {
                BarSpace::Io => command.io_space(),
                BarSpace::Memory => command.memory_space(),
            };
            enabled && bar.sizing == [false; 2] && bar.addr != 0
        };
        (0..NUM_BARS)
            .filter(|&i| self.bars[i].as_ref().is_some_and(active))
            .filter_map(|i| self.bar(i))
            .collect()
    }

    pub fn command(&self) -> Command {
        Command(self.u16_at(COMMAND))
    }

    /// A guest read: all-ones for accesses PCI does not define.
    pub fn read(&self, offset: u16, data: &mut [u8]) {
        if !config_access_ok(offset.into(), data.len(), CONFIG_SPACE_SIZE as u64) {
            data.fill(0xff);
            return;
        }
        let dword = self.read_dword(offset & !3).to_le_bytes();
        let start = usize::from(offset & 3);
        data.copy_from_slice(&dword[start..start + data.len()]);
    }

    /// A guest write: read-only bits keep their value, bad accesses are dropped.
    pub fn write(&mut self, offset: u16, data: &[u8]) -> ConfigWriteResult {
        if !config_access_ok(offset.into(), data.len(), CONFIG_SPACE_SIZE as u64) {
            return ConfigWriteResult::None;
        }
        let aligned = offset & !3;
        if (BAR0..BAR_END).contains(&aligned) {
            let mut dword = self.read_dword(aligned).to_le_bytes();
            let start = usize::from(offset & 3);
            dword[start..start + data.len()].copy_from_slice(data);
            return self.write_bar(usize::from((aligned - BAR0) / 4), u32::from_le_bytes(dword));
        }
        let before = self.command();
        for (i, &value) in data.iter().enumerate() {
            let at = usize::from(offset) + i;
            let mask = self.wmask[at];
            self.regs[at] = (self.regs[at] & !mask) | (value & mask);
        }
        let after = self.command();
        let decode = Command::IO_SPACE | Command::MEMORY_SPACE;
        if (before.0 ^ after.0) & decode != 0 {
            ConfigWriteResult::DecodeChanged {
                memory: after.memory_space(),
                io: after.io_space(),
            }
        } else {
            ConfigWriteResult::None
        }
    }

    /// The dword at a 4-byte aligned `offset` (BARs included); 0 past the end.
    pub fn read_dword(&self, offset: u16) -> u32 {
        if (BAR0..BAR_END).contains(&offset) {
            return match self.slot(usize::from((offset - BAR0) / 4)) {
                Slot::Lower(bar) => bar.register(false),
                Slot::Upper(bar) => bar.register(true),
                Slot::Unused => 0,
            };
        }
        self.u32_at(offset)
    }

    fn write_bar(&mut self, index: usize, value: u32) -> ConfigWriteResult {
        let (bar_index, upper) = match self.slot(index) {
            Slot::Lower(_) => (index, false),
            Slot::Upper(_) => (index - 1, true),
            Slot::Unused => return ConfigWriteResult::None,
        };
        let Some(bar) = self.bars[bar_index].as_mut() else {
            return ConfigWriteResult::None;
        };
        let old = bar.addr;
        let new = if upper {
            // Sizing writes put all-ones in every address bit; a real address never does.
            bar.sizing[1] = value == u32::MAX;
            if bar.sizing[1] {
                return ConfigWriteResult::None;
            }
            (u64::from(value) << 32 | (old & 0xffff_ffff)) & bar.size_mask()
        } else {
            let mask = bar.kind.address_mask();
            bar.sizing[0] = value & mask == mask;
            if bar.sizing[0] {
                return ConfigWriteResult::None;
            }
            ((old & !0xffff_ffff) | u64::from(value & mask)) & bar.size_mask()
        };
        bar.addr = new;
        if new == old {
            return ConfigWriteResult::None;
        }
        ConfigWriteResult::BarMoved(BarMove {
            bar: bar_index as u8,
            kind: bar.kind,
            old,
            new,
            size: bar.size,
        })
    }

    fn slot(&self, index: usize) -> Slot {
        if let Some(Some(bar)) = self.bars.get(index) {
            return Slot::Lower(*bar);
        }
        match index.checked_sub(1).and_then(|i| self.bars.get(i)) {
            Some(Some(bar)) if bar.kind.is_64bit() => Slot::Upper(*bar),
            _ => Slot::Unused,
        }
    }

    /// Sets bytes and their write masks directly (not a guest access). `wmask` may be shorter
    /// than `bytes`; missing mask bytes are read-only.
    pub fn init_bytes(
        &mut self,
        offset: u16,
        bytes: &[u8],
        wmask: &[u8],
    ) -> Result<(), ConfigError> {
        let start = usize::from(offset);
        let end = start
            .checked_add(bytes.len())
            .filter(|&end| end <= CONFIG_SPACE_SIZE)
            .ok_or(ConfigError::BadCapability {
                offset,
                len: bytes.len(),
            })?;
        self.regs[start..end].copy_from_slice(bytes);
        for (i, m) in self.wmask[start..end].iter_mut().enumerate() {
            *m = wmask.get(i).copied().unwrap_or(0);
        }
        Ok(())
    }

    /// The raw (shadow) byte at `offset`; 0 past the end.
    pub fn u8_at(&self, offset: u16) -> u8 {
        self.regs.get(usize::from(offset)).copied().unwrap_or(0)
    }

    pub fn u16_at(&self, offset: u16) -> u16 {
        u16::from_le_bytes([self.u8_at(offset), self.u8_at(offset.wrapping_add(1))])
    }

    pub fn u32_at(&self, offset: u16) -> u32 {
        u32::from(self.u16_at(offset)) | u32::from(self.u16_at(offset.wrapping_add(2))) << 16
    }

    fn set(&mut self, offset: u16, bytes: &[u8]) {
        let at = usize::from(offset);
        self.regs[at..at + bytes.len()].copy_from_slice(bytes);
    }

    /// Makes bits of the shadow writable (or not) by the guest.
    pub fn set_wmask(&mut self, offset: u16, mask: &[u8]) {
        let start = usize::from(offset).min(CONFIG_SPACE_SIZE);
        let end = (start + mask.len()).min(CONFIG_SPACE_SIZE);
        self.wmask[start..end].copy_from_slice(&mask[..end - start]);
    }

    /// Appends an emulated capability after the last one; `body[0]` is its ID, `body[1]` (the
    /// next pointer) is filled in. Returns its offset.
    pub fn add_capability(&mut self, body: &[u8], wmask: &[u8]) -> Result<u16, ConfigError> {
        let end = self
            .capabilities
            .iter()
            .map(|&(o, l)| o + l)
            .max()
            .unwrap_or(FIRST_CAPABILITY);
        let offset = end.next_multiple_of(4);
        self.place_capability(offset, body, wmask)?;
        Ok(offset)
    }

    /// Places a standard capability at a fixed offset (a passed-through device's layout) and
    /// links it last in the list. The ID and next pointer stay read-only.
    pub fn place_capability(
        &mut self,
        offset: u16,
        body: &[u8],
        wmask: &[u8],
    ) -> Result<(), ConfigError> {
        let len = check_placement(
            &self.capabilities,
            offset,
            body.len(),
            (FIRST_CAPABILITY, 2, STANDARD_CONFIG_SIZE),
        )?;
        self.init_bytes(offset, body, wmask)?;
        self.set_wmask(offset, &[0, 0]);
        self.capabilities.push((offset, len));
        self.link_capabilities();
        Ok(())
    }

    /// Places an extended capability (4-byte header: ID, version, next) at a fixed offset and
    /// links it last in the extended list.
    pub fn place_extended_capability(
        &mut self,
        offset: u16,
        body: &[u8],
        wmask: &[u8],
    ) -> Result<(), ConfigError> {
        let len = check_placement(
            &self.extended_capabilities,
            offset,
            body.len(),
            (FIRST_EXTENDED_CAPABILITY, 4, CONFIG_SPACE_SIZE),
        )?;
        self.init_bytes(offset, body, wmask)?;
        self.set_wmask(offset, &[0; 4]);
        self.extended_capabilities.push((offset, len));
        self.link_extended_capabilities();
        Ok(())
    }

    fn link_capabilities(&mut self) {
        let first = self.capabilities.first().map_or(0, |&(o, _)| o as u8);
        self.regs[usize::from(CAPABILITIES_POINTER)] = first;
        let status = self.u16_at(STATUS) | STATUS_CAPABILITIES_LIST;
        self.set(STATUS, &status.to_le_bytes());
        for i in 0..self.capabilities.len() {
            let next = self.capabilities.get(i + 1).map_or(0, |&(o, _)| o as u8);
            self.regs[usize::from(self.capabilities[i].0) + 1] = next;
        }
    }

    fn link_extended_capabilities(&mut self) {
        let caps = self.extended_capabilities.clone();
        for (i, &(offset, _)) in caps.iter().enumerate() {
            let next = caps.get(i + 1).map_or(0, |&(o, _)| o);
            let header = self.u32_at(offset) & 0x000f_ffff | u32::from(next) << 20;
            self.set(offset, &header.to_le_bytes());
        }
        // The list must start at 0x100: when the device's first capability is hidden, a null
        // header (ID 0) there points at the first one kept.
        if let Some(&(first, _)) = caps.first()
            && first != FIRST_EXTENDED_CAPABILITY
            && !covers(&caps, FIRST_EXTENDED_CAPABILITY)
        {
            self.set(
                FIRST_EXTENDED_CAPABILITY,
                &(u32::from(first) << 20).to_le_bytes(),
            );
        }
    }

    /// Standard capabilities as (offset, length) in list order.
    pub fn capabilities(&self) -> &[(u16, u16)] {
        &self.capabilities
    }

    pub fn extended_capabilities(&self) -> &[(u16, u16)] {
        &self.extended_capabilities
    }
}

#[derive(Debug, Clone, Copy)]
enum Slot {
    Unused,
    Lower(Bar),
    Upper(Bar),
}

/// Where a capability of `len` bytes may go: dword-aligned, inside its list's space (`first` up to
/// `limit`), at least its header (`header` bytes) long, clear of `list`. Returns the length.
fn check_placement(
    list: &[(u16, u16)],
    offset: u16,
    len: usize,
    (first, header, limit): (u16, u16, usize),
) -> Result<u16, ConfigError> {
    let bad = || ConfigError::BadCapability { offset, len };
    let len16 = u16::try_from(len).map_err(|_| bad())?;
    let fits = offset >= first
        && offset.is_multiple_of(4)
        && len16 >= header
        && usize::from(offset) + len <= limit;
    if !fits || overlaps(list, offset, len16) {
        return Err(bad());
    }
    Ok(len16)
}

fn overlaps(list: &[(u16, u16)], offset: u16, len: u16) -> bool {
    list.iter()
        .any(|&(o, l)| offset < o + l && o < offset + len)
}

fn covers(list: &[(u16, u16)], offset: u16) -> bool {
    overlaps(list, offset, 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{M32, M64, M64_PREF};

    fn header() -> Header {
        Header {
            vendor_id: 0x1234,
            device_id: 0x5678,
            revision_id: 2,
            class_code: 0x02_00_00,
            subsystem_vendor_id: 0x1af4,
            subsystem_id: 0x1100,
            interrupt_pin: 1,
        }
    }

    #[test]
    fn capabilities_are_placed_only_where_they_fit() {
        let mut c = ConfigSpace::new(&header());
        c.place_capability(0x40, &[0x01, 0, 0, 0, 0, 0, 0, 0], &[0; 8])
            .unwrap();
        for (offset, len) in [
            (0x3c, 8),
            (0x42, 8),
            (0x44, 8),
            (0x4a, 4),
            (0x50, 1),
            (0xfc, 8),
        ] {
            assert!(
                c.place_capability(offset, &vec![0x05; len], &vec![0; len])
                    .is_err(),
                "{offset:#x}+{len}"
            );
        }
        c.place_extended_capability(0x100, &[0x0b, 0, 1, 0, 0, 0, 0, 0], &[0; 8])
            .unwrap();
        for (offset, len) in [(0xfc, 8), (0x104, 8), (0x200, 2), (0xffc, 8)] {
            assert!(
                c.place_extended_capability(offset, &vec![0x0b; len], &vec![0; len])
                    .is_err(),
                "{offset:#x}+{len}"
            );
        }
        c.place_extended_capability(0x200, &[0x0b, 0, 1, 0], &[0; 4])
            .unwrap();
        assert_eq!(c.extended_capabilities(), [(0x100, 8), (0x200, 4)]);
    }

    fn read32(config: &ConfigSpace, offset: u16) -> u32 {
        let mut b = [0u8; 4];
        config.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn write32(config: &mut ConfigSpace, offset: u16, value: u32) -> ConfigWriteResult {
        config.write(offset, &value.to_le_bytes())
    }

    fn device() -> ConfigSpace {
        let mut c = ConfigSpace::new(&header());
        c.add_bar(0, M32, 0x4000).unwrap();
        c.add_bar(1, BarKind::Io, 0x20).unwrap();
        c.add_bar(2, M64_PREF, 1 << 33).unwrap();
        c.add_bar(4, M64, 0x1000).unwrap();
        c
    }

    #[test]
    fn header_fields_are_read_only() {
        let mut c = device();
        assert_eq!(read32(&c, 0), 0x5678_1234);
        assert_eq!(read32(&c, 8), 0x0200_0002);
        assert_eq!(write32(&mut c, 0, 0), ConfigWriteResult::None);
        write32(&mut c, 8, 0xffff_ffff).ok_none_or_bar();
        c.write(INTERRUPT_PIN, &[4]).ok_none_or_bar();
        assert_eq!(read32(&c, 0), 0x5678_1234);
        assert_eq!(read32(&c, 8), 0x0200_0002);
        assert_eq!(read32(&c, 0x2c), 0x1100_1af4);
        // Interrupt line is scratch; pin is not.
        c.write(INTERRUPT_LINE, &[0x2a]).ok_none_or_bar();
        assert_eq!(read32(&c, 0x3c), 0x0000_012a);
        // No expansion ROM: reads 0 and stays 0.
        write32(&mut c, EXPANSION_ROM, 0xffff_ffff).ok_none_or_bar();
        assert_eq!(read32(&c, EXPANSION_ROM), 0);
    }

    #[test]
    fn bar_sizing_returns_the_size_mask_and_keeps_the_address() {
        let mut c = device();
        c.set_bar_address(0, 0x8000_0000).unwrap();
        assert_eq!(write32(&mut c, 0x10, 0xffff_ffff), ConfigWriteResult::None);
        assert_eq!(read32(&c, 0x10), 0xffff_c000);
        // I/O BAR: bit 0 set, bit 1 reserved.
        write32(&mut c, 0x14, 0xffff_ffff).ok_none_or_bar();
        assert_eq!(read32(&c, 0x14), 0xffff_ffe1);
        // 64-bit, 8 GiB, prefetchable: no low address bits, upper half masks bit 32.
        write32(&mut c, 0x18, 0xffff_ffff).ok_none_or_bar();
        assert_eq!(read32(&c, 0x18), 0x0000_000c);
        write32(&mut c, 0x1c, 0xffff_ffff).ok_none_or_bar();
        assert_eq!(read32(&c, 0x1c), 0xffff_fffe);
        // Upper half of the 4 KiB 64-bit BAR: every bit is an address bit.
        write32(&mut c, 0x24, 0xffff_ffff).ok_none_or_bar();
        assert_eq!(read32(&c, 0x24), 0xffff_ffff);
        // Restoring the original values reports no move.
        assert_eq!(write32(&mut c, 0x10, 0x8000_0000), ConfigWriteResult::None);
        assert_eq!(read32(&c, 0x10), 0x8000_0000);
        assert_eq!(c.bar(0).unwrap().addr, 0x8000_0000);
    }

    #[test]
    fn unused_bar_slot_reads_zero() {
        let mut c = ConfigSpace::new(&header());
        c.add_bar(0, M32, 0x1000).unwrap();
        write32(&mut c, 0x14, 0xffff_ffff).ok_none_or_bar();
        assert_eq!(read32(&c, 0x14), 0);
    }

    #[test]
    fn bar_relocation_reports_moves() {
        let mut c = device();
        assert_eq!(
            write32(&mut c, 0x10, 0x1000_4000),
            ConfigWriteResult::BarMoved(BarMove {
                bar: 0,
                kind: M32,
                old: 0,
                new: 0x1000_4000,
                size: 0x4000,
            })
        );
        // Low address bits below the size are read-only zero.
        let r = write32(&mut c, 0x10, 0x2000_0fff);
        assert!(matches!(r, ConfigWriteResult::BarMoved(m) if m.new == 0x2000_0000));
        assert_eq!(read32(&c, 0x10), 0x2000_0000);
        // 64-bit BAR, one half at a time: each half reports its move.
        let lo = write32(&mut c, 0x20, 0x4000_1000);
        assert!(matches!(lo, ConfigWriteResult::BarMoved(m)
            if m.bar == 4 && m.old == 0 && m.new == 0x4000_1000));
        let hi = write32(&mut c, 0x24, 0x80);
        assert!(matches!(hi, ConfigWriteResult::BarMoved(m)
            if m.bar == 4 && m.old == 0x4000_1000 && m.new == 0x80_4000_1000));
        assert_eq!(read32(&c, 0x20), 0x4000_1004);
        assert_eq!(read32(&c, 0x24), 0x80);
        // Upper half of an 8 GiB BAR: bit 32 is an size bit.
        let hi = write32(&mut c, 0x1c, 0x3);
        assert!(matches!(hi, ConfigWriteResult::BarMoved(m) if m.new == 0x2_0000_0000));
        // Byte writes merge into the dword.
        let r = c.write(0x13, &[0x30]);
        assert!(matches!(r, ConfigWriteResult::BarMoved(m) if m.new == 0x3000_0000));
    }

    #[test]
    fn command_register_reports_decode_changes() {
        let mut c = device();
        assert_eq!(
            c.write(COMMAND, &[0x06]),
            ConfigWriteResult::DecodeChanged {
                memory: true,
                io: false
            }
        );
        assert_eq!(c.write(COMMAND, &[0x06]), ConfigWriteResult::None);
        assert!(c.command().bus_master());
        // Reserved bits stay 0.
        c.write(COMMAND, &0xffffu16.to_le_bytes())
            .ok_none_or_decode();
        assert_eq!(c.command().0, Command::WRITABLE);
        assert_eq!(
            c.write(COMMAND, &[0]),
            ConfigWriteResult::DecodeChanged {
                memory: false,
                io: false
            }
        );
    }

    #[test]
    fn active_bars_need_decode_an_address_and_no_sizing() {
        let mut c = device();
        write32(&mut c, 0x10, 0x1000_0000).ok_none_or_bar();
        assert!(c.active_bars().is_empty());
        c.write(COMMAND, &[0x2]).ok_none_or_decode();
        assert_eq!(c.active_bars().len(), 1);
        write32(&mut c, 0x10, 0xffff_ffff).ok_none_or_bar();
        assert!(c.active_bars().is_empty());
        write32(&mut c, 0x10, 0x1000_0000).ok_none_or_bar();
        let bar = c.active_bars()[0];
        assert!(bar.contains(BarSpace::Memory, 0x1000_3ffc, 4));
        assert!(!bar.contains(BarSpace::Memory, 0x1000_3ffd, 4));
        assert!(!bar.contains(BarSpace::Io, 0x1000_0000, 4));
    }

    impl ConfigWriteResult {
        fn ok_none_or_decode(self) {
            assert!(matches!(
                self,
                ConfigWriteResult::None | ConfigWriteResult::DecodeChanged { .. }
            ));
        }

        fn ok_none_or_bar(self) {
            assert!(matches!(
                self,
                ConfigWriteResult::None | ConfigWriteResult::BarMoved(_)
            ));
        }
    }

    #[test]
    fn bad_bars_are_refused() {
        let mut c = device();
        let io = BarKind::Io;
        for (index, kind, size, err) in [
            (0, io, 4, ConfigError::BarInUse { index: 0 }),
            (3, io, 4, ConfigError::BarInUse { index: 3 }),
            (5, M64, 16, ConfigError::NoSuchBar { index: 5 }),
            (7, io, 4, ConfigError::NoSuchBar { index: 7 }),
        ] {
            assert_eq!(c.add_bar(index, kind, size), Err(err));
        }
        let mut c = ConfigSpace::new(&header());
        for (kind, size) in [(io, 3), (M64, 8), (M32, 1 << 32)] {
            assert!(c.add_bar(0, kind, size).is_err(), "{kind:?} {size:#x}");
        }
        c.add_bar(0, M64, 1 << 40).unwrap();
        assert!(c.set_bar_address(0, 0x1000).is_err());
        assert!(c.set_bar_address(2, 0).is_err());
    }

    #[test]
    fn hostile_accesses_are_harmless() {
        let mut c = device();
        let before: Vec<u32> = (0..1024).map(|i| c.read_dword(i * 4)).collect();
        for (offset, len) in [
            (4095, 4),
            (4094, 4),
            (4096, 1),
            (u16::MAX, 1),
            (1, 2),
            (2, 4),
            (0, 3),
            (0, 8),
            (0, 0),
        ] {
            let mut data = vec![0u8; len];
            c.read(offset, &mut data);
            assert!(data.iter().all(|&b| b == 0xff), "{offset:#x}/{len}");
            assert_eq!(c.write(offset, &vec![0xff; len]), ConfigWriteResult::None);
        }
        let after: Vec<u32> = (0..1024).map(|i| c.read_dword(i * 4)).collect();
        assert_eq!(before, after);
    }

    #[test]
    fn emulated_capabilities_are_linked() {
        let mut c = ConfigSpace::new(&header());
        assert_eq!(c.u16_at(STATUS) & STATUS_CAPABILITIES_LIST, 0);
        let a = c
            .add_capability(&[0x09, 0xee, 6, 0xaa, 0xbb, 0xcc], &[0, 0, 0, 0xff])
            .unwrap();
        let b = c.add_capability(&[0x01, 0, 0, 0, 0, 0, 0, 0], &[]).unwrap();
        assert_eq!((a, b), (0x40, 0x48));
        assert_eq!(c.u8_at(CAPABILITIES_POINTER), 0x40);
        assert_eq!(
            c.u16_at(STATUS) & STATUS_CAPABILITIES_LIST,
            STATUS_CAPABILITIES_LIST
        );
        assert_eq!(c.u8_at(0x41), 0x48);
        assert_eq!(c.u8_at(0x49), 0);
        // The next pointer and ID stay read-only; the body follows its mask.
        c.write(0x40, &[0xff, 0xff, 0xff, 0xff]).ok_none_or_decode();
        assert_eq!(read32(&c, 0x40), 0xff06_4809);
        assert!(c.place_capability(0x44, &[1, 0, 0, 0], &[]).is_err());
        assert!(c.place_capability(0xfe, &[1, 0, 0, 0], &[]).is_err());
        assert!(c.place_capability(0x3c, &[1, 0], &[]).is_err());
    }

    #[test]
    fn extended_list_starts_at_0x100_even_when_its_head_is_hidden() {
        let mut c = ConfigSpace::new(&header());
        c.place_extended_capability(0x140, &[0x03, 0x00, 0x01, 0x00, 1, 2, 3, 4], &[])
            .unwrap();
        c.place_extended_capability(0x200, &[0x0b, 0x00, 0x01, 0xff], &[])
            .unwrap();
        // Null header at 0x100 -> 0x140 -> 0x200 -> end.
        assert_eq!(c.u32_at(0x100), 0x1400_0000);
        assert_eq!(c.u32_at(0x140), 0x2001_0003);
        assert_eq!(c.u32_at(0x200), 0x0001_000b);
        assert!(c.place_extended_capability(0xfc, &[0; 4], &[]).is_err());
        assert!(c.place_extended_capability(0xffe, &[0; 4], &[]).is_err());
    }
}
