//! Host discovery: which PCI devices the configuration names, whether each is ready for
//! passthrough (bound to vfio-pci, with a VFIO cdev), and which IOMMU instance it sits behind.
//! Everything is read from sysfs and /dev, whose roots are parameters so tests use a fake tree.

use std::fs;
use std::path::{Path, PathBuf};

use crate::config::{DeviceConfig, normalize_device};

/// A host PCI function ready to be passed through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostDevice {
    /// Index in the configuration's `devices` list.
    pub index: usize,
    /// `DDDD:BB:DD.F`
    pub bdf: String,
    /// `/sys/bus/pci/devices/<bdf>`
    pub sysfs: PathBuf,
    /// `/dev/vfio/devices/vfioN`
    pub cdev: PathBuf,
    /// The host IOMMU instance (`smmu3.0x...`, `dmar0`), if the device sits behind one.
    pub iommu: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HostError {
    #[error("devices[{index}] ({spec}): no such PCI device on this host")]
    NoDevice { index: usize, spec: String },
    #[error("devices[{index}] ({bdf}): bound to {driver}, not vfio-pci")]
    NotVfio {
        index: usize,
        bdf: String,
        driver: String,
    },
    #[error("devices[{index}] ({bdf}): bound to no driver; bind it to vfio-pci first")]
    Unbound { index: usize, bdf: String },
    #[error(
        "devices[{index}] ({bdf}): has no VFIO cdev (the host kernel needs CONFIG_VFIO_DEVICE_CDEV)"
    )]
    NoCdev { index: usize, bdf: String },
    #[error("{0} is missing: the host kernel needs CONFIG_IOMMUFD for passthrough")]
    NoIommufd(PathBuf),
}

/// The host's sysfs and /dev.
pub struct Host {
    sys: PathBuf,
    dev: PathBuf,
}

impl Default for Host {
    fn default() -> Self {
        Host::with_roots("/sys", "/dev")
    }
}

impl Host {
    pub fn with_roots(sys: impl Into<PathBuf>, dev: impl Into<PathBuf>) -> Self {
        Host {
            sys: sys.into(),
            dev: dev.into(),
        }
    }

    /// Checks every configured device and returns them in configuration order. Fails on the
    /// first device that cannot be passed through, naming it.
    pub fn probe(&self, devices: &[DeviceConfig]) -> Result<Vec<HostDevice>, HostError> {
        if devices.is_empty() {
            return Ok(Vec::new());
        }
        let iommu = self.dev.join("iommu");
        if !iommu.exists() {
            return Err(HostError::NoIommufd(iommu));
        }
        devices
            .iter()
            .enumerate()
            .map(|(index, d)| self.device(index, &d.vfio))
            .collect()
    }

    fn device(&self, index: usize, spec: &str) -> Result<HostDevice, HostError> {
        let no_device = || HostError::NoDevice {
            index,
            spec: spec.to_string(),
        };
        let bdf = if spec.starts_with('/') {
            // A sysfs path: whatever it resolves to, its last component is the address.
            let real = fs::canonicalize(spec).map_err(|_| no_device())?;
            base_name(&real).ok_or_else(no_device)?
        } else {
            normalize_device(spec)
        };
        let sysfs = self.sys.join("bus/pci/devices").join(&bdf);
        if !sysfs.join("config").exists() {
            return Err(no_device());
        }
        let driver = fs::read_link(sysfs.join("driver"))
            .ok()
            .and_then(|t| base_name(&t));
        match driver.as_deref() {
            Some("vfio-pci") => {}
            Some(other) => {
                return Err(HostError::NotVfio {
                    index,
                    bdf,
                    driver: other.to_string(),
                });
            }
            None => return Err(HostError::Unbound { index, bdf }),
        }
        let cdev_name = fs::read_dir(sysfs.join("vfio-dev"))
            .ok()
            .and_then(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .find(|n| n.starts_with("vfio"))
            })
            .ok_or_else(|| HostError::NoCdev {
                index,
                bdf: bdf.clone(),
            })?;
        let iommu = fs::read_link(sysfs.join("iommu"))
            .ok()
            .and_then(|t| base_name(&t));
        Ok(HostDevice {
            index,
            cdev: self.dev.join("vfio/devices").join(cdev_name),
            sysfs,
            bdf,
            iommu,
        })
    }
}

fn base_name(path: &Path) -> Option<String> {
    path.file_name().map(|n| n.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    struct FakeHost {
        root: PathBuf,
    }

    impl FakeHost {
        fn new(name: &str) -> Self {
            let root =
                std::env::temp_dir().join(format!("microvmm-host-{}-{name}", std::process::id()));
            let _ = fs::remove_dir_all(&root);
            fs::create_dir_all(root.join("sys/bus/pci/devices")).unwrap();
            fs::create_dir_all(root.join("dev")).unwrap();
            fs::write(root.join("dev/iommu"), "").unwrap();
            FakeHost { root }
        }

        fn device(&self, bdf: &str, driver: Option<&str>, iommu: Option<&str>) {
            let dir = self.root.join("sys/devices/pci0000:00").join(bdf);
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("config"), [0u8; 64]).unwrap();
            symlink(&dir, self.root.join("sys/bus/pci/devices").join(bdf)).unwrap();
            if let Some(driver) = driver {
                let d = self.root.join("sys/bus/pci/drivers").join(driver);
                fs::create_dir_all(&d).unwrap();
                symlink(&d, dir.join("driver")).unwrap();
                if driver == "vfio-pci" {
                    fs::create_dir_all(dir.join("vfio-dev/vfio7")).unwrap();
                }
            }
            if let Some(iommu) = iommu {
                let i = self.root.join("sys/devices/virtual/iommu").join(iommu);
                fs::create_dir_all(&i).unwrap();
                symlink(&i, dir.join("iommu")).unwrap();
            }
        }

        fn host(&self) -> Host {
            Host::with_roots(self.root.join("sys"), self.root.join("dev"))
        }
    }

    impl Drop for FakeHost {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.root);
        }
    }

    fn devices(specs: &[&str]) -> Vec<DeviceConfig> {
        specs
            .iter()
            .map(|s| DeviceConfig {
                vfio: s.to_string(),
                bridge: 0,
            })
            .collect()
    }

    #[test]
    fn finds_a_ready_device_by_bdf_and_by_path() {
        let fake = FakeHost::new("ready");
        fake.device("0000:02:00.0", Some("vfio-pci"), Some("smmu3.0x9050000"));
        let path = fake.root.join("sys/bus/pci/devices/0000:02:00.0");
        let found = fake.host().probe(&devices(&["02:00.0"])).unwrap().remove(0);
        assert_eq!(found.bdf, "0000:02:00.0");
        assert_eq!(found.cdev, fake.root.join("dev/vfio/devices/vfio7"));
        assert_eq!(found.iommu.as_deref(), Some("smmu3.0x9050000"));
        let by_path = fake
            .host()
            .probe(&devices(&[path.to_str().unwrap()]))
            .unwrap();
        assert_eq!(by_path[0].bdf, "0000:02:00.0");
    }

    #[test]
    fn each_problem_names_the_device() {
        let fake = FakeHost::new("bad");
        fake.device("0000:02:00.0", Some("virtio-pci"), None);
        fake.device("0000:03:00.0", None, None);
        let host = fake.host();
        let err = |spec: &str| host.probe(&devices(&["0000:09:00.0", spec])).unwrap_err();
        assert_eq!(
            host.probe(&devices(&["0000:09:00.0"]))
                .unwrap_err()
                .to_string(),
            "devices[0] (0000:09:00.0): no such PCI device on this host"
        );
        fake.device("0000:09:00.0", Some("vfio-pci"), None);
        assert_eq!(
            err("02:00.0").to_string(),
            "devices[1] (0000:02:00.0): bound to virtio-pci, not vfio-pci"
        );
        assert!(matches!(
            err("03:00.0"),
            HostError::Unbound { index: 1, .. }
        ));
        assert!(matches!(
            err("/nonexistent"),
            HostError::NoDevice { index: 1, .. }
        ));
        fs::remove_file(fake.root.join("dev/iommu")).unwrap();
        assert!(matches!(
            host.probe(&devices(&["0000:09:00.0"])),
            Err(HostError::NoIommufd(_))
        ));
        assert_eq!(
            host.probe(&[]),
            Ok(Vec::new()),
            "no devices, no requirements"
        );
    }

    #[test]
    fn missing_cdev_is_reported() {
        let fake = FakeHost::new("nocdev");
        fake.device("0000:02:00.0", Some("vfio-pci"), None);
        fs::remove_dir_all(
            fake.root
                .join("sys/devices/pci0000:00/0000:02:00.0/vfio-dev"),
        )
        .unwrap();
        assert!(matches!(
            fake.host().probe(&devices(&["0000:02:00.0"])),
            Err(HostError::NoCdev { index: 0, .. })
        ));
    }
}
