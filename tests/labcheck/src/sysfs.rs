//! What L1's sysfs says about PCI devices, their host IOMMU instances and their VFIO cdevs.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

#[derive(Debug, thiserror::Error)]
pub enum SysfsError {
    #[error("'{0}' is not a PCI address (want DDDD:BB:DD.F)")]
    BadBdf(String),
    #[error("PCI device {0} does not exist")]
    NoDevice(Bdf),
    #[error("PCI device {0} is behind no IOMMU")]
    NoIommu(Bdf),
    #[error("PCI device {bdf} is bound to {driver}, not vfio-pci")]
    NotVfio { bdf: Bdf, driver: String },
    #[error("PCI device {0} has no VFIO cdev (is CONFIG_VFIO_DEVICE_CDEV set?)")]
    NoCdev(Bdf),
    #[error("devices {first} and {second} should share one IOMMU, but sit behind {a} and {b}")]
    GroupSplit {
        first: Bdf,
        second: Bdf,
        a: String,
        b: String,
    },
    #[error("groups {first} and {second} should sit behind different IOMMUs, but both use {iommu}")]
    GroupsShare {
        first: usize,
        second: usize,
        iommu: String,
    },
    #[error("reading {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A PCI function address: segment, bus, device, function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bdf {
    pub segment: u16,
    pub bus: u8,
    pub device: u8,
    pub function: u8,
}

impl FromStr for Bdf {
    type Err = SysfsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || SysfsError::BadBdf(s.to_string());
        let (segment, rest) = s.split_once(':').ok_or_else(bad)?;
        let (bus, rest) = rest.split_once(':').ok_or_else(bad)?;
        let (device, function) = rest.split_once('.').ok_or_else(bad)?;
        let hex_field = |field: &str, digits: usize| {
            if field.len() == digits && field.bytes().all(|b| b.is_ascii_hexdigit()) {
                u32::from_str_radix(field, 16).map_err(|_| bad())
            } else {
                Err(bad())
            }
        };
        let bdf = Bdf {
            segment: hex_field(segment, 4)? as u16,
            bus: hex_field(bus, 2)? as u8,
            device: hex_field(device, 2)? as u8,
            function: hex_field(function, 1)? as u8,
        };
        if bdf.device > 0x1f || bdf.function > 7 {
            return Err(bad());
        }
        Ok(bdf)
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.segment, self.bus, self.device, self.function
        )
    }
}

/// A sysfs tree: `/sys` on L1, a temporary directory in unit tests.
pub struct Sysfs {
    root: PathBuf,
}

impl Sysfs {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Sysfs { root: root.into() }
    }

    fn device_dir(&self, bdf: Bdf) -> Result<PathBuf, SysfsError> {
        let dir = self.root.join("bus/pci/devices").join(bdf.to_string());
        if dir.exists() {
            Ok(dir)
        } else {
            Err(SysfsError::NoDevice(bdf))
        }
    }

    /// The name of the IOMMU instance the device sits behind (`smmu3.0x...`, `dmar0`).
    pub fn iommu_of(&self, bdf: Bdf) -> Result<String, SysfsError> {
        let link = self.device_dir(bdf)?.join("iommu");
        let target = fs::read_link(&link).map_err(|_| SysfsError::NoIommu(bdf))?;
        base_name(&target).ok_or(SysfsError::NoIommu(bdf))
    }

    /// The driver the device is bound to, if any.
    pub fn driver_of(&self, bdf: Bdf) -> Result<Option<String>, SysfsError> {
        let link = self.device_dir(bdf)?.join("driver");
        Ok(fs::read_link(link).ok().and_then(|t| base_name(&t)))
    }

    /// The VFIO cdev node of a device bound to vfio-pci (`/dev/vfio/devices/vfioN`).
    pub fn vfio_cdev(&self, bdf: Bdf) -> Result<String, SysfsError> {
        match self.driver_of(bdf)? {
            Some(d) if d == "vfio-pci" => {}
            other => {
                return Err(SysfsError::NotVfio {
                    bdf,
                    driver: other.unwrap_or_else(|| "no driver".into()),
                });
            }
        }
        let dir = self.device_dir(bdf)?.join("vfio-dev");
        let names = list_dir(&dir).map_err(|_| SysfsError::NoCdev(bdf))?;
        names
            .into_iter()
            .find(|n| n.starts_with("vfio"))
            .map(|n| format!("/dev/vfio/devices/{n}"))
            .ok_or(SysfsError::NoCdev(bdf))
    }

    /// Every IOMMU instance with the PCI devices it translates, sorted by name.
    pub fn iommus(&self) -> Result<Vec<(String, Vec<Bdf>)>, SysfsError> {
        let class = self.root.join("class/iommu");
        let mut out = Vec::new();
        for name in list_dir(&class)? {
            let devices = list_dir(&class.join(&name).join("devices")).unwrap_or_default();
            let mut bdfs: Vec<Bdf> = devices.iter().filter_map(|d| d.parse().ok()).collect();
            bdfs.sort();
            out.push((name, bdfs));
        }
        Ok(out)
    }

    /// Checks that the devices of each group share one IOMMU instance and that no two groups
    /// share one; returns the instance of each group.
    pub fn check_groups(&self, groups: &[Vec<Bdf>]) -> Result<Vec<String>, SysfsError> {
        let mut found: Vec<String> = Vec::new();
        for (index, group) in groups.iter().enumerate() {
            let Some(&first) = group.first() else {
                continue;
            };
            let iommu = self.iommu_of(first)?;
            for &other in &group[1..] {
                let theirs = self.iommu_of(other)?;
                if theirs != iommu {
                    return Err(SysfsError::GroupSplit {
                        first,
                        second: other,
                        a: iommu,
                        b: theirs,
                    });
                }
            }
            if let Some(earlier) = found.iter().position(|f| *f == iommu) {
                return Err(SysfsError::GroupsShare {
                    first: earlier + 1,
                    second: index + 1,
                    iommu,
                });
            }
            found.push(iommu);
        }
        Ok(found)
    }
}

fn base_name(path: &Path) -> Option<String> {
    path.file_name().map(|n| n.to_string_lossy().into_owned())
}

fn list_dir(dir: &Path) -> Result<Vec<String>, SysfsError> {
    let io_err = |source| SysfsError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err)? {
        names.push(
            entry
                .map_err(io_err)?
                .file_name()
                .to_string_lossy()
                .into_owned(),
        );
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A miniature /sys: two SMMUs, three devices, one of them on vfio-pci.
    struct FakeSys {
        dir: PathBuf,
    }

    impl FakeSys {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("labcheck-{}-{name}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(dir.join("bus/pci/devices")).unwrap();
            fs::create_dir_all(dir.join("class/iommu")).unwrap();
            FakeSys { dir }
        }

        fn device(&self, bdf: &str, iommu: &str, driver: Option<&str>) {
            let dev = self.dir.join("devices").join(bdf);
            fs::create_dir_all(&dev).unwrap();
            symlink(&dev, self.dir.join("bus/pci/devices").join(bdf)).unwrap();
            let iommu_dir = self.dir.join("devices/virtual/iommu").join(iommu);
            fs::create_dir_all(iommu_dir.join("devices")).unwrap();
            let class_link = self.dir.join("class/iommu").join(iommu);
            if !class_link.exists() {
                symlink(&iommu_dir, class_link).unwrap();
            }
            symlink(&iommu_dir, dev.join("iommu")).unwrap();
            symlink(&dev, iommu_dir.join("devices").join(bdf)).unwrap();
            if let Some(driver) = driver {
                let drv = self.dir.join("bus/pci/drivers").join(driver);
                fs::create_dir_all(&drv).unwrap();
                symlink(&drv, dev.join("driver")).unwrap();
                if driver == "vfio-pci" {
                    fs::create_dir_all(dev.join("vfio-dev/vfio3")).unwrap();
                }
            }
        }

        fn sysfs(&self) -> Sysfs {
            Sysfs::new(&self.dir)
        }
    }

    impl Drop for FakeSys {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    fn bdf(s: &str) -> Bdf {
        s.parse().unwrap()
    }

    fn two_smmus(name: &str) -> FakeSys {
        let sys = FakeSys::new(name);
        sys.device("0000:02:00.0", "smmu3.0x0000000009050000", Some("vfio-pci"));
        sys.device("0000:03:00.0", "smmu3.0x0000000009050000", None);
        sys.device("0000:09:00.0", "smmu3.0x00000000090a0000", Some("e1000e"));
        sys
    }

    #[test]
    fn bdf_round_trips_and_rejects_garbage() {
        assert_eq!(bdf("0001:0a:1f.7").to_string(), "0001:0a:1f.7");
        for bad in [
            "",
            "02:00.0",
            "0000:02:00",
            "0000:02:20.0",
            "0000:02:00.8",
            "000g:02:00.0",
        ] {
            assert!(bad.parse::<Bdf>().is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn lists_iommus_with_their_devices() {
        let sys = two_smmus("list");
        let iommus = sys.sysfs().iommus().unwrap();
        assert_eq!(
            iommus,
            vec![
                (
                    "smmu3.0x0000000009050000".to_string(),
                    vec![bdf("0000:02:00.0"), bdf("0000:03:00.0")]
                ),
                (
                    "smmu3.0x00000000090a0000".to_string(),
                    vec![bdf("0000:09:00.0")]
                ),
            ]
        );
    }

    #[test]
    fn groups_accepts_the_true_partition() {
        let sys = two_smmus("groups-ok");
        let groups = vec![
            vec![bdf("0000:02:00.0"), bdf("0000:03:00.0")],
            vec![bdf("0000:09:00.0")],
        ];
        let found = sys.sysfs().check_groups(&groups).unwrap();
        assert_eq!(
            found,
            ["smmu3.0x0000000009050000", "smmu3.0x00000000090a0000"]
        );
    }

    #[test]
    fn groups_rejects_split_and_shared() {
        let sys = two_smmus("groups-bad");
        let split = vec![vec![bdf("0000:02:00.0"), bdf("0000:09:00.0")]];
        assert!(matches!(
            sys.sysfs().check_groups(&split),
            Err(SysfsError::GroupSplit { .. })
        ));
        let shared = vec![vec![bdf("0000:02:00.0")], vec![bdf("0000:03:00.0")]];
        assert!(matches!(
            sys.sysfs().check_groups(&shared),
            Err(SysfsError::GroupsShare {
                first: 1,
                second: 2,
                ..
            })
        ));
        let missing = vec![vec![bdf("0000:04:00.0")]];
        assert!(matches!(
            sys.sysfs().check_groups(&missing),
            Err(SysfsError::NoDevice(_))
        ));
    }

    #[test]
    fn vfio_cdev_needs_vfio_pci() {
        let sys = two_smmus("cdev");
        let s = sys.sysfs();
        assert_eq!(
            s.vfio_cdev(bdf("0000:02:00.0")).unwrap(),
            "/dev/vfio/devices/vfio3"
        );
        let err = s.vfio_cdev(bdf("0000:09:00.0")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "PCI device 0000:09:00.0 is bound to e1000e, not vfio-pci"
        );
        assert!(matches!(
            s.vfio_cdev(bdf("0000:03:00.0")),
            Err(SysfsError::NotVfio { .. })
        ));
    }
}
