//! MSI and MSI-X capabilities (PCI Local Bus 3.0 sections 6.8.1 and 6.8.2): their layouts, the
//! guest-programmed state parsed into typed values, and the MSI-X table kept in the model.
//!
//! Each vector's effective route is `Some(message)` when the guest enabled the capability and did
//! not mask the vector (or the whole function), `None` otherwise. The VMM applies a change of
//! route to KVM; a `None` route must not deliver (see `vfio_pci` for how pending works).

use super::capability::id;
use super::config::ConfigSpace;

/// An MSI write: the guest-programmed address and data, never seen by the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MsiMessage {
    pub address: u64,
    pub data: u32,
}

/// The route of one MSI or MSI-X vector changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterruptRoute {
    pub vector: u16,
    /// `None`: disabled or masked; the vector must not reach the guest.
    pub message: Option<MsiMessage>,
}

/// The routes that differ between two per-vector route lists (missing entries are `None`).
pub fn route_changes(
    old: &[Option<MsiMessage>],
    new: &[Option<MsiMessage>],
) -> Vec<InterruptRoute> {
    let len = old.len().max(new.len());
    (0..len)
        .filter_map(|i| {
            let before = old.get(i).copied().flatten();
            let after = new.get(i).copied().flatten();
            (before != after).then_some(InterruptRoute {
                vector: i as u16,
                message: after,
            })
        })
        .collect()
}

/// MSI Message Control (section 6.8.1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiControl(pub u16);

impl MsiControl {
    pub const ENABLE: u16 = 1 << 0;
    pub const ADDRESS_64: u16 = 1 << 7;
    pub const PER_VECTOR_MASK: u16 = 1 << 8;

    pub fn enabled(self) -> bool {
        self.0 & Self::ENABLE != 0
    }

    /// log2 of the vectors the function asks for (Multiple Message Capable), at most 5.
    pub fn multiple_message_capable(self) -> u8 {
        ((self.0 >> 1) & 0x7).min(5) as u8
    }

    /// log2 of the vectors the guest granted (Multiple Message Enable).
    pub fn multiple_message_enable(self) -> u8 {
        ((self.0 >> 4) & 0x7) as u8
    }

    pub fn address_64(self) -> bool {
        self.0 & Self::ADDRESS_64 != 0
    }

    pub fn per_vector_mask(self) -> bool {
        self.0 & Self::PER_VECTOR_MASK != 0
    }
}

/// Where an MSI capability's registers are, fixed by its read-only control bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiCapability {
    pub offset: u16,
    /// The control register's read-only bits (capable vectors, 64-bit, per-vector masking).
    pub control: MsiControl,
}

/// The MSI state the guest programmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiState {
    pub enabled: bool,
    /// Vectors granted (1, 2, 4, .. 32), never more than the function can use.
    pub vectors: u8,
    pub address: u64,
    pub data: u16,
    /// Per-vector mask bits (0 without per-vector masking).
    pub mask: u32,
}

impl MsiCapability {
    pub fn new(offset: u16, control: u16) -> Self {
        // Keep only the capability bits: enable and MME start cleared.
        let control =
            MsiControl(control & (0xe | MsiControl::ADDRESS_64 | MsiControl::PER_VECTOR_MASK));
        MsiCapability { offset, control }
    }

    pub fn max_vectors(&self) -> u8 {
        1 << self.control.multiple_message_capable()
    }

    fn data_offset(&self) -> u16 {
        if self.control.address_64() {
            0x0c
        } else {
            0x08
        }
    }

    fn mask_offset(&self) -> Option<u16> {
        self.control
            .per_vector_mask()
            .then_some(self.data_offset() + 4)
    }

    /// Bytes the capability spans (pending bits included).
    pub fn size(&self) -> u16 {
        match self.mask_offset() {
            Some(mask) => mask + 8,
            None => self.data_offset() + 4,
        }
    }

    /// The initial bytes: ID, next (filled in by the list), control, zeroed message.
    pub fn body(&self) -> Vec<u8> {
        let mut body = vec![0; usize::from(self.size())];
        body[0] = id::MSI;
        body[2..4].copy_from_slice(&self.control.0.to_le_bytes());
        body
    }

    /// What the guest can write: enable, MME, the address (dword aligned), data and mask bits.
    pub fn wmask(&self) -> Vec<u8> {
        let mut mask = vec![0; usize::from(self.size())];
        mask[2] = 0x71;
        mask[4..8].copy_from_slice(&0xffff_fffcu32.to_le_bytes());
        if self.control.address_64() {
            mask[8..12].fill(0xff);
        }
        let data = usize::from(self.data_offset());
        mask[data..data + 2].fill(0xff);
        if let Some(m) = self.mask_offset() {
            let vectors = u32::MAX >> (32 - u32::from(self.max_vectors()));
            let m = usize::from(m);
            mask[m..m + 4].copy_from_slice(&vectors.to_le_bytes());
        }
        mask
    }

    /// Parses the guest-programmed state from the shadow configuration space.
    pub fn state(&self, config: &ConfigSpace) -> MsiState {
        let at = |rel: u16| self.offset + rel;
        let control = MsiControl(config.u16_at(at(2)));
        let address_hi = if self.control.address_64() {
            u64::from(config.u32_at(at(8)))
        } else {
            0
        };
        // MME larger than MMC is undefined; grant no more than the function can use.
        let granted = control
            .multiple_message_enable()
            .min(self.control.multiple_message_capable());
        MsiState {
            enabled: control.enabled(),
            vectors: 1 << granted,
            address: address_hi << 32 | u64::from(config.u32_at(at(4)) & !3),
            data: config.u16_at(at(self.data_offset())),
            mask: self.mask_offset().map_or(0, |m| config.u32_at(at(m))),
        }
    }

    /// Whether a write at `offset..offset + len` touches this capability.
    pub fn touches(&self, offset: u16, len: usize) -> bool {
        ranges_overlap(self.offset, self.size(), offset, len)
    }
}

impl MsiState {
    /// Per-vector routes for `vectors` slots: vector `i` of a multiple-message grant carries the
    /// data with its low bits replaced by `i`.
    pub fn routes(&self, slots: usize) -> Vec<Option<MsiMessage>> {
        (0..slots)
            .map(|i| {
                let granted = i < usize::from(self.vectors);
                let masked = i < 32 && self.mask & (1 << i) != 0;
                (self.enabled && granted && !masked).then(|| MsiMessage {
                    address: self.address,
                    data: u32::from(self.data) & !(u32::from(self.vectors) - 1) | i as u32,
                })
            })
            .collect()
    }
}

/// MSI-X Message Control (section 6.8.2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixControl(pub u16);

impl MsixControl {
    pub const FUNCTION_MASK: u16 = 1 << 14;
    pub const ENABLE: u16 = 1 << 15;

    /// Table entries (Table Size + 1).
    pub fn table_size(self) -> u16 {
        (self.0 & 0x7ff) + 1
    }

    pub fn enabled(self) -> bool {
        self.0 & Self::ENABLE != 0
    }

    pub fn function_mask(self) -> bool {
        self.0 & Self::FUNCTION_MASK != 0
    }
}

/// A structure inside a BAR, located by a BIR and an offset register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarLocation {
    pub bar: u8,
    pub offset: u64,
}

impl BarLocation {
    /// Decodes a Table or PBA Offset/BIR register.
    pub fn from_register(value: u32) -> Self {
        BarLocation {
            bar: (value & 0x7) as u8,
            offset: u64::from(value & !0x7),
        }
    }

    fn register(&self) -> u32 {
        (self.offset as u32 & !0x7) | u32::from(self.bar)
    }
}

/// Where an MSI-X capability and its table and PBA are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixCapability {
    pub offset: u16,
    pub table_size: u16,
    pub table: BarLocation,
    pub pba: BarLocation,
}

pub const MSIX_CAPABILITY_LEN: u16 = 12;
pub const MSIX_ENTRY_SIZE: u64 = 16;

impl MsixCapability {
    /// From the capability's control, Table Offset/BIR and PBA Offset/BIR registers.
    pub fn new(offset: u16, control: u16, table: u32, pba: u32) -> Self {
        MsixCapability {
            offset,
            table_size: MsixControl(control).table_size(),
            table: BarLocation::from_register(table),
            pba: BarLocation::from_register(pba),
        }
    }

    pub fn table_bytes(&self) -> u64 {
        u64::from(self.table_size) * MSIX_ENTRY_SIZE
    }

    /// One bit per vector, in whole qwords.
    pub fn pba_bytes(&self) -> u64 {
        u64::from(self.table_size).div_ceil(64) * 8
    }

    pub fn body(&self) -> Vec<u8> {
        let mut body = vec![0; usize::from(MSIX_CAPABILITY_LEN)];
        body[0] = id::MSIX;
        body[2..4].copy_from_slice(&(self.table_size - 1).to_le_bytes());
        body[4..8].copy_from_slice(&self.table.register().to_le_bytes());
        body[8..12].copy_from_slice(&self.pba.register().to_le_bytes());
        body
    }

    /// Only the enable and function mask bits are writable.
    pub fn wmask(&self) -> Vec<u8> {
        let mut mask = vec![0; usize::from(MSIX_CAPABILITY_LEN)];
        mask[3] = 0xc0;
        mask
    }

    pub fn control(&self, config: &ConfigSpace) -> MsixControl {
        MsixControl(config.u16_at(self.offset + 2))
    }

    pub fn touches(&self, offset: u16, len: usize) -> bool {
        ranges_overlap(self.offset, MSIX_CAPABILITY_LEN, offset, len)
    }
}

/// One MSI-X table entry (section 6.8.2.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixEntry {
    pub address: u64,
    pub data: u32,
    pub vector_control: u32,
}

impl MsixEntry {
    pub const MASKED: u32 = 1;

    pub fn masked(&self) -> bool {
        self.vector_control & Self::MASKED != 0
    }

    fn dword(&self, index: u64) -> u32 {
        match index {
            0 => self.address as u32,
            1 => (self.address >> 32) as u32,
            2 => self.data,
            _ => self.vector_control,
        }
    }

    fn set_dword(&mut self, index: u64, value: u32) {
        match index {
            0 => self.address = (self.address & !0xffff_ffff) | u64::from(value & !3),
            1 => self.address = (self.address & 0xffff_ffff) | u64::from(value) << 32,
            2 => self.data = value,
            // Bits other than the mask are reserved.
            _ => self.vector_control = value & Self::MASKED,
        }
    }
}

impl Default for MsixEntry {
    /// Entries come out of reset masked.
    fn default() -> Self {
        MsixEntry {
            address: 0,
            data: 0,
            vector_control: Self::MASKED,
        }
    }
}

/// The MSI-X table, kept in the model: the guest's table accesses are trapped and never reach
/// the device.
#[derive(Debug, Clone)]
pub struct MsixTable {
    entries: Vec<MsixEntry>,
}

impl MsixTable {
    pub fn new(size: u16) -> Self {
        MsixTable {
            entries: vec![MsixEntry::default(); usize::from(size)],
        }
    }

    pub fn entries(&self) -> &[MsixEntry] {
        &self.entries
    }

    /// Whether the table serves an access: a dword or qword, naturally aligned, inside.
    fn access_ok(&self, offset: u64, len: usize) -> bool {
        let end = self.entries.len() as u64 * MSIX_ENTRY_SIZE;
        matches!(len, 4 | 8)
            && offset.is_multiple_of(len as u64)
            && offset.checked_add(len as u64).is_some_and(|e| e <= end)
    }

    /// Dword or aligned qword reads; anything else reads all-ones.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        if !self.access_ok(offset, data.len()) {
            data.fill(0xff);
            return;
        }
        for (i, chunk) in data.chunks_exact_mut(4).enumerate() {
            let at = offset + 4 * i as u64;
            let value = self
                .entries
                .get((at / MSIX_ENTRY_SIZE) as usize)
                .map_or(u32::MAX, |e| e.dword((at % MSIX_ENTRY_SIZE) / 4));
            chunk.copy_from_slice(&value.to_le_bytes());
        }
    }

    /// Dword or aligned qword writes; returns the entry written, if any.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Option<u16> {
        if !self.access_ok(offset, data.len()) {
            return None;
        }
        let vector = offset / MSIX_ENTRY_SIZE;
        let entry = self.entries.get_mut(vector as usize)?;
        for (i, chunk) in data.chunks_exact(4).enumerate() {
            let at = offset + 4 * i as u64;
            let value = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            entry.set_dword((at % MSIX_ENTRY_SIZE) / 4, value);
        }
        Some(vector as u16)
    }

    /// Per-vector routes given the capability's enable and function mask.
    pub fn routes(&self, control: MsixControl) -> Vec<Option<MsiMessage>> {
        self.entries
            .iter()
            .map(|e| {
                (control.enabled() && !control.function_mask() && !e.masked()).then_some(
                    MsiMessage {
                        address: e.address,
                        data: e.data,
                    },
                )
            })
            .collect()
    }
}

fn ranges_overlap(start: u16, len: u16, offset: u16, access: usize) -> bool {
    let (start, end) = (usize::from(start), usize::from(start) + usize::from(len));
    let offset = usize::from(offset);
    offset < end && start < offset + access
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::config::Header;

    fn msg(address: u64, data: u32) -> Option<MsiMessage> {
        Some(MsiMessage { address, data })
    }

    fn config_with_msi(control: u16) -> (ConfigSpace, MsiCapability) {
        let mut config = ConfigSpace::new(&Header::default());
        let cap = MsiCapability::new(0, control);
        let offset = config.add_capability(&cap.body(), &cap.wmask()).unwrap();
        (config, MsiCapability { offset, ..cap })
    }

    #[test]
    fn msi_layouts() {
        let lens: Vec<u16> = [0, 0x80, 0x100, 0x180]
            .iter()
            .map(|&c| MsiCapability::new(0x50, c).size())
            .collect();
        assert_eq!(lens, [0x0c, 0x10, 0x14, 0x18]);
        // Enable and MME are never part of the capability bits.
        assert_eq!(MsiCapability::new(0, 0xffff).control.0, 0x18e);
        assert_eq!(MsiCapability::new(0, 0x0e).max_vectors(), 32);
    }

    #[test]
    fn msi_state_parses_guest_writes() {
        // 64-bit, per-vector masking, 8 vectors capable.
        let (mut config, cap) = config_with_msi(0x186);
        let o = cap.offset;
        let _ = config.write(o + 4, &0xfee0_1003u32.to_le_bytes());
        let _ = config.write(o + 8, &0x1u32.to_le_bytes());
        let _ = config.write(o + 0xc, &0x4043u16.to_le_bytes());
        let _ = config.write(o + 0x10, &0xffff_ff02u32.to_le_bytes());
        // Enable with MME = 2 (4 vectors); the capable bits stay.
        let _ = config.write(o + 2, &[0x21]);
        let state = cap.state(&config);
        assert_eq!(
            state,
            MsiState {
                enabled: true,
                vectors: 4,
                address: 0x1_fee0_1000,
                data: 0x4043,
                mask: 0x02, // only 8 mask bits exist
            }
        );
        assert_eq!(config.u16_at(o + 2), 0x1a7);
        let vector_msg = |data| msg(0x1_fee0_1000, data);
        assert_eq!(
            state.routes(6),
            [
                vector_msg(0x4040),
                None,
                vector_msg(0x4042),
                vector_msg(0x4043),
                None,
                None
            ]
        );
        // MME beyond MMC is clamped.
        let _ = config.write(o + 2, &[0x71]);
        assert_eq!(cap.state(&config).vectors, 8);
        let _ = config.write(o + 2, &[0x70]);
        assert!(cap.state(&config).routes(8).iter().all(Option::is_none));
    }

    #[test]
    fn msi_32bit_without_masking() {
        let (mut config, cap) = config_with_msi(0);
        let o = cap.offset;
        let _ = config.write(o + 4, &0xfee0_0000u32.to_le_bytes());
        let _ = config.write(o + 8, &0x31u16.to_le_bytes());
        let _ = config.write(o + 2, &[0x71]);
        let state = cap.state(&config);
        assert_eq!((state.vectors, state.mask, state.data), (1, 0, 0x31));
        assert_eq!(state.routes(2), [msg(0xfee0_0000, 0x31), None]);
    }

    #[test]
    fn msix_table_reads_writes_and_routes() {
        let mut table = MsixTable::new(3);
        let mut q = [0u8; 8];
        table.read(8, &mut q);
        assert_eq!(q, [0, 0, 0, 0, 1, 0, 0, 0]); // data 0, masked
        assert_eq!(table.write(16, &0x1_fee0_0004u64.to_le_bytes()), Some(1));
        assert_eq!(table.write(24, &0x55u32.to_le_bytes()), Some(1));
        assert_eq!(table.write(28, &0xffff_fffeu32.to_le_bytes()), Some(1));
        let mut d = [0u8; 4];
        table.read(28, &mut d);
        assert_eq!(d, [0; 4]); // reserved bits dropped, unmasked
        table.read(16, &mut q);
        assert_eq!(u64::from_le_bytes(q), 0x1_fee0_0004);
        let enabled = MsixControl(MsixControl::ENABLE);
        assert_eq!(
            table.routes(enabled),
            [None, msg(0x1_fee0_0004, 0x55), None]
        );
        let masked = MsixControl(MsixControl::ENABLE | MsixControl::FUNCTION_MASK);
        assert_eq!(table.routes(masked), [None, None, None]);
        assert_eq!(table.routes(MsixControl(0)), [None, None, None]);
        // Bad widths, misalignment, out of range.
        for (offset, len) in [(0, 2), (2, 4), (4, 8), (48, 4), (44, 8), (u64::MAX - 3, 4)] {
            let mut data = vec![0; len];
            table.read(offset, &mut data);
            assert!(data.iter().all(|&b| b == 0xff));
            assert_eq!(table.write(offset, &data), None);
        }
    }

    #[test]
    fn msix_capability_layout() {
        let cap = MsixCapability::new(0x70, 0x0040, 0x3002, 0x3802);
        assert_eq!(cap.table_size, 0x41);
        let (table, pba) = (cap.table, cap.pba);
        assert_eq!((table.bar, table.offset), (2, 0x3000));
        assert_eq!((pba.bar, pba.offset), (2, 0x3800));
        assert_eq!(cap.table_bytes(), 0x410);
        assert_eq!(cap.pba_bytes(), 16);
        assert_eq!(
            &cap.body()[2..12],
            &[0x40, 0, 0x02, 0x30, 0, 0, 0x02, 0x38, 0, 0]
        );
    }

    #[test]
    fn route_changes_lists_differences() {
        let m = msg(1, 2);
        let changes = route_changes(&[None, m, m], &[m, m]);
        let changes: Vec<_> = changes.iter().map(|r| (r.vector, r.message)).collect();
        assert_eq!(changes, [(0, m), (2, None)]);
    }
}
