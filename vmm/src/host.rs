//! Host discovery: which PCI devices the configuration names, whether each is ready for
//! passthrough (bound to vfio-pci, with a VFIO cdev), and which IOMMU instance it sits behind.
//! Everything is read from sysfs and /dev, whose roots are parameters so tests use a fake tree.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::{DeviceConfig, IommuMode, VmConfig, normalize_device};

/// A host PCI function ready to be passed through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostDevice {
    /// Index in the configuration's `devices` list.
    #[serde(default)]
    pub index: usize,
    /// `DDDD:BB:DD.F`
    pub bdf: String,
    /// `/sys/bus/pci/devices/<bdf>`
    #[serde(default)]
    pub sysfs: PathBuf,
    /// `/dev/vfio/devices/vfioN`
    #[serde(default)]
    pub cdev: PathBuf,
    /// The host IOMMU instance (`smmu3.0x...`, `dmar0`), if the device sits behind one.
    #[serde(default)]
    pub iommu: Option<String>,
}

/// A host SMMUv3 instance as IOMMU_GET_HW_INFO reports it (type ARM_SMMUV3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostSmmu {
    /// The IOMMU instance name (`smmu3.0x...`).
    pub name: String,
    pub idr: [u32; 6],
    pub iidr: u32,
    pub aidr: u32,
    /// Bit 0: ERRATA_REPEAT_TLBI_CFGI.
    #[serde(default)]
    pub flags: u32,
}

/// What the plan needs to know about the host: printed by `--dry-run` under "host", read back by
/// `--host-description`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostDescription {
    /// The configured devices, in configuration order.
    pub devices: Vec<HostDevice>,
    /// The SMMUv3 instances those devices sit behind (with `--iommu nested-smmuv3`).
    #[serde(default)]
    pub smmus: Vec<HostSmmu>,
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
    #[error("devices[{index}] ({bdf}): reading the hardware of its IOMMU {iommu}: {message}")]
    HwInfo {
        index: usize,
        bdf: String,
        iommu: String,
        message: String,
    },
    #[error("host description {path}: {message}")]
    Description { path: PathBuf, message: String },
    #[error("host description: devices[{index}] is {found}, but the configuration names {wanted}")]
    DescriptionMismatch {
        index: usize,
        found: String,
        wanted: String,
    },
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

    /// Probes the configured devices and, for nested translation, reads the hardware of every
    /// host IOMMU instance they sit behind.
    pub fn describe(&self, config: &VmConfig) -> Result<HostDescription, HostError> {
        let devices = self.probe(&config.devices)?;
        let mut smmus: Vec<HostSmmu> = Vec::new();
        if config.iommu == IommuMode::NestedSmmuv3 {
            for device in &devices {
                let Some(name) = &device.iommu else { continue };
                if smmus.iter().any(|s| &s.name == name) {
                    continue;
                }
                if let Some(smmu) = read_hw_info(device, name)? {
                    smmus.push(smmu);
                }
            }
        }
        Ok(HostDescription { devices, smmus })
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

/// IOMMU_GET_HW_INFO through a device behind the instance (the uAPI asks per device); None when
/// the IOMMU is not an SMMUv3 (such devices get a bridge without a vSMMU).
fn read_hw_info(device: &HostDevice, iommu: &str) -> Result<Option<HostSmmu>, HostError> {
    use iommufd_bindings::iommufd::{
        iommu_hw_info_arm_smmuv3, iommu_hw_info_type_IOMMU_HW_INFO_TYPE_ARM_SMMUV3,
    };
    use iommufd_ioctls::{IommuFd, IommufdHwInfoData};
    let fail = |message: String| HostError::HwInfo {
        index: device.index,
        bdf: device.bdf.clone(),
        iommu: iommu.to_string(),
        message,
    };
    let iommufd = Arc::new(IommuFd::new().map_err(|e| fail(e.to_string()))?);
    let ops = Arc::new(
        vfio_ioctls::VfioIommufd::new(iommufd.clone(), None, None)
            .map_err(|e| fail(e.to_string()))?,
    );
    let vfio = vfio_ioctls::VfioDevice::new(&device.sysfs, ops, false)
        .map_err(|e| fail(format!("binding its cdev: {e}")))?;
    let dev_id = vfio
        .iommufd_dev_id()
        .ok_or_else(|| fail("no iommufd device id".into()))?;
    let mut data = IommufdHwInfoData::Smmuv3(iommu_hw_info_arm_smmuv3::default());
    let info = iommufd
        .device_hw_info(dev_id, &mut data)
        .map_err(|e| fail(e.to_string()))?;
    // SAFETY: both members of the union are u32; the kernel wrote out_data_type.
    let kind = unsafe { info.__bindgen_anon_1.out_data_type };
    if kind != iommu_hw_info_type_IOMMU_HW_INFO_TYPE_ARM_SMMUV3 {
        return Ok(None);
    }
    let IommufdHwInfoData::Smmuv3(smmu) = data;
    Ok(Some(HostSmmu {
        name: iommu.to_string(),
        idr: smmu.idr,
        iidr: smmu.iidr,
        aidr: smmu.aidr,
        flags: smmu.flags,
    }))
}

impl HostDescription {
    /// Reads a description `--dry-run` printed (its "host" object, or the whole output) and
    /// checks it names the configured devices in order.
    pub fn from_file(path: &Path, config: &VmConfig) -> Result<Self, HostError> {
        let err = |message: String| HostError::Description {
            path: path.to_path_buf(),
            message,
        };
        let text = fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
        let host = value.get("host").cloned().unwrap_or(value);
        let mut description: HostDescription =
            serde_json::from_value(host).map_err(|e| err(e.to_string()))?;
        if description.devices.len() != config.devices.len() {
            return Err(err(format!(
                "describes {} devices, the configuration names {}",
                description.devices.len(),
                config.devices.len()
            )));
        }
        for (index, (host, wanted)) in description
            .devices
            .iter_mut()
            .zip(&config.devices)
            .enumerate()
        {
            host.index = index;
            if normalize_device(&host.bdf) != normalize_device(&wanted.vfio) {
                return Err(HostError::DescriptionMismatch {
                    index,
                    found: host.bdf.clone(),
                    wanted: wanted.vfio.clone(),
                });
            }
        }
        Ok(description)
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
