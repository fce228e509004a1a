//! Host PCI addresses, parsed once where the user writes them: every later step compares and
//! prints the typed value, so `02:00.0`, `0000:02:00.0` and `0000:02:00.0/` are one device.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A host PCI function: domain (segment), bus, device, function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciBdf {
    /// Linux domains are up to 32 bits (VMD domains start at 0x10000).
    pub domain: u32,
    pub bus: u8,
    /// 0..32
    pub device: u8,
    /// 0..8
    pub function: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{text}' is not a PCI address [DDDD:]BB:DD.F ({why})")]
pub struct BdfError {
    text: String,
    why: &'static str,
}

impl FromStr for PciBdf {
    type Err = BdfError;

    /// `DDDD:BB:DD.F` or `BB:DD.F` (domain 0), hexadecimal, any case.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |why| BdfError {
            text: text.to_string(),
            why,
        };
        let hex = |s: &str, max_digits: usize, why| {
            if s.is_empty() || s.len() > max_digits || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err(why));
            }
            u32::from_str_radix(s, 16).map_err(|_| err(why))
        };
        let (rest, function) = text.rsplit_once('.').ok_or_else(|| err("no .F"))?;
        let mut parts = rest.rsplitn(3, ':');
        let device = parts.next().ok_or_else(|| err("no device"))?;
        let bus = parts.next().ok_or_else(|| err("no bus"))?;
        let domain = parts.next().unwrap_or("0");
        let function = hex(function, 1, "function is one hex digit")?;
        let device = hex(device, 2, "device is two hex digits")?;
        let bus = hex(bus, 2, "bus is two hex digits")?;
        let domain = hex(domain, 8, "domain is up to eight hex digits")?;
        if device >= 32 {
            return Err(err("device is 00..1f"));
        }
        if function >= 8 {
            return Err(err("function is 0..7"));
        }
        Ok(PciBdf {
            domain,
            bus: bus as u8,
            device: device as u8,
            function: function as u8,
        })
    }
}

impl fmt::Display for PciBdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

impl Serialize for PciBdf {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PciBdf {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// How the user names a host device: its PCI address, or its sysfs directory (resolved to the
/// address by the host probe).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceRef {
    Bdf(PciBdf),
    Sysfs(PathBuf),
}

impl DeviceRef {
    /// The address, when the user wrote one (a sysfs path is known only after the probe).
    pub fn bdf(&self) -> Option<PciBdf> {
        match self {
            DeviceRef::Bdf(bdf) => Some(*bdf),
            DeviceRef::Sysfs(path) => path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse().ok()),
        }
    }

    pub fn sysfs(&self) -> Option<&Path> {
        match self {
            DeviceRef::Sysfs(path) => Some(path),
            DeviceRef::Bdf(_) => None,
        }
    }
}

impl FromStr for DeviceRef {
    type Err = BdfError;

    /// An absolute path is a sysfs directory; anything else must be a PCI address.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.starts_with('/') {
            let path = text.trim_end_matches('/');
            return Ok(DeviceRef::Sysfs(PathBuf::from(if path.is_empty() {
                "/"
            } else {
                path
            })));
        }
        text.parse().map(DeviceRef::Bdf)
    }
}

impl fmt::Display for DeviceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceRef::Bdf(bdf) => bdf.fmt(f),
            DeviceRef::Sysfs(path) => path.display().fmt(f),
        }
    }
}

impl Serialize for DeviceRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DeviceRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_in_every_spelling_and_print_one_way() {
        for text in ["02:00.0", "0000:02:00.0", "0000:02:00.0", "0000:02:00.0 "] {
            let bdf: PciBdf = text.trim().parse().unwrap();
            assert_eq!(bdf.to_string(), "0000:02:00.0");
        }
        let bdf: PciBdf = "1000A:Ff:1F.7".parse().unwrap();
        assert_eq!(
            (bdf.domain, bdf.bus, bdf.device, bdf.function),
            (0x1000a, 0xff, 0x1f, 7)
        );
        assert_eq!(bdf.to_string(), "1000a:ff:1f.7");
    }

    #[test]
    fn bad_addresses_say_what_is_wrong() {
        for (text, why) in [
            ("02:00", "no .F"),
            ("0000:02:20.0", "device is 00..1f"),
            ("0000:02:00.8", "function is 0..7"),
            ("0000:102:00.0", "bus is two hex digits"),
            ("0000:02:0g.0", "device is two hex digits"),
            ("123456789:02:00.0", "domain is up to eight hex digits"),
            ("02:00.", "function is one hex digit"),
            ("00.0", "no bus"),
            ("", "no .F"),
        ] {
            let e = text.parse::<PciBdf>().unwrap_err();
            assert_eq!(e.why, why, "{text}");
            assert!(e.to_string().contains(text), "{e}");
        }
    }

    #[test]
    fn device_refs_are_addresses_or_sysfs_paths() {
        let r: DeviceRef = "/sys/bus/pci/devices/0000:02:00.0/".parse().unwrap();
        assert_eq!(r.to_string(), "/sys/bus/pci/devices/0000:02:00.0");
        assert_eq!(r.bdf(), Some("02:00.0".parse().unwrap()));
        let r: DeviceRef = "2:0.1".parse().unwrap();
        assert_eq!(r, DeviceRef::Bdf("0000:02:00.1".parse().unwrap()));
        assert!("vfio0".parse::<DeviceRef>().is_err());
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, "\"0000:02:00.1\"");
        assert_eq!(serde_json::from_str::<DeviceRef>(&json).unwrap(), r);
    }
}
