//! Walking a device's capability lists (PCI 3.0 section 6.7, PCIe 6.0 section 7.6), for passing
//! them through. The input is device-provided: every pointer is checked and loops end.

use super::config::{
    CAPABILITIES_POINTER, FIRST_CAPABILITY, FIRST_EXTENDED_CAPABILITY, STANDARD_CONFIG_SIZE,
};
use super::{raw_u8, raw_u32};

/// The standard capability IDs the model handles (PCI Code and ID Assignment, section 2).
pub mod id {
    pub const POWER_MANAGEMENT: u8 = 0x01;
    pub const MSI: u8 = 0x05;
    pub const VENDOR_SPECIFIC: u8 = 0x09;
    pub const PCI_EXPRESS: u8 = 0x10;
    pub const MSIX: u8 = 0x11;
}

/// The extended capability IDs it keeps (PCI Code and ID Assignment, section 3).
pub mod ext_id {
    pub const DEVICE_SERIAL_NUMBER: u16 = 0x0003;
    pub const VENDOR_SPECIFIC: u16 = 0x000b;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FoundCapability {
    pub id: u8,
    pub offset: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FoundExtendedCapability {
    pub id: u16,
    pub version: u8,
    pub offset: u16,
}

/// The standard capability list of a configuration space image, in list order. Stops at a
/// pointer into the header, past 256 bytes, or back to a capability already seen.
pub fn standard_capabilities(config: &[u8]) -> Vec<FoundCapability> {
    let mut found: Vec<FoundCapability> = Vec::new();
    let mut next = raw_u8(config, CAPABILITIES_POINTER) & !3;
    while next != 0 {
        let offset = u16::from(next);
        let in_range =
            offset >= FIRST_CAPABILITY && usize::from(offset) + 2 <= STANDARD_CONFIG_SIZE;
        if !in_range || found.iter().any(|c| c.offset == offset) {
            break;
        }
        found.push(FoundCapability {
            id: raw_u8(config, offset),
            offset,
        });
        next = raw_u8(config, offset + 1) & !3;
    }
    found
}

/// The extended capability list (from 0x100), in list order, with the same loop protection.
/// A null header (all zero, or ID 0 pointing on) ends or is skipped as the spec allows.
pub fn extended_capabilities(config: &[u8]) -> Vec<FoundExtendedCapability> {
    let mut found: Vec<FoundExtendedCapability> = Vec::new();
    let mut seen: Vec<u16> = Vec::new();
    let mut offset = FIRST_EXTENDED_CAPABILITY;
    loop {
        if usize::from(offset) + 4 > config.len() || seen.contains(&offset) {
            break;
        }
        seen.push(offset);
        let header = raw_u32(config, offset);
        if header == 0 || header == u32::MAX {
            break;
        }
        let id = (header & 0xffff) as u16;
        if id != 0 {
            found.push(FoundExtendedCapability {
                id,
                version: ((header >> 16) & 0xf) as u8,
                offset,
            });
        }
        let next = ((header >> 20) as u16) & !3;
        if next < FIRST_EXTENDED_CAPABILITY {
            break;
        }
        offset = next;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_and_survives_loops_and_bad_pointers() {
        let mut config = [0u8; 4096];
        config[0x34] = 0x40;
        config[0x40] = 0x01;
        config[0x41] = 0x50;
        config[0x50] = 0x05;
        config[0x51] = 0x40; // loops back
        let found = |config: &[u8]| -> Vec<(u8, u16)> {
            let caps = standard_capabilities(config);
            caps.iter().map(|c| (c.id, c.offset)).collect()
        };
        assert_eq!(found(&config), [(1, 0x40), (5, 0x50)]);
        config[0x51] = 0x10; // into the header
        assert_eq!(standard_capabilities(&config).len(), 2);
        config[0x51] = 0xff; // low bits ignored, 0xfc + 2 fits
        assert_eq!(standard_capabilities(&config).len(), 3);
        // Truncated images do not panic.
        assert_eq!(standard_capabilities(&config[..0x35]).len(), 1);

        config[0x100..0x104].copy_from_slice(&0x1401_0001u32.to_le_bytes());
        config[0x140..0x144].copy_from_slice(&0x1001_0003u32.to_le_bytes()); // loops to 0x100
        let ext = extended_capabilities(&config);
        assert_eq!(
            ext.iter().map(|c| (c.id, c.offset)).collect::<Vec<_>>(),
            [(1, 0x100), (3, 0x140)]
        );
        config[0x100..0x104].copy_from_slice(&0x1400_0000u32.to_le_bytes()); // null head
        config[0x140..0x144].copy_from_slice(&0xffc1_0003u32.to_le_bytes()); // 0xffc: 4 bytes fit
        let ext = extended_capabilities(&config);
        assert_eq!(ext.iter().map(|c| c.offset).collect::<Vec<_>>(), [0x140]);
        assert!(extended_capabilities(&config[..0x102]).is_empty());
    }
}
