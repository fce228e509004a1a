//! Host discovery: which PCI devices the configuration names, whether each is ready for
//! passthrough (bound to vfio-pci, with a VFIO cdev), and which IOMMU instance it sits behind.
//! Everything is read from sysfs and /dev, whose roots are parameters so tests use a fake tree.
//!
//! Probing a real host opens each device's VFIO cdev once and binds it to the VM's iommufd; the
//! [`ProbedHost`] carries those handles on to the VM build, which never opens a device again.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use iommufd_ioctls::{IommuFd, IommufdError};
use serde::{Deserialize, Serialize};
use vfio_ioctls::{VfioDevice, VfioIommufd};

use crate::bdf::{DeviceRef, PciBdf};
use crate::config::{DeviceConfig, IommuMode, VmConfig};

/// A host PCI function ready to be passed through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostDevice {
    /// Index in the configuration's `devices` list.
    #[serde(default)]
    pub index: usize,
    pub bdf: PciBdf,
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
#[serde(deny_unknown_fields)]
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

/// The host a VM runs on: its description and, when it was probed here rather than read from
/// a file, the devices opened while probing.
pub struct ProbedHost {
    pub description: HostDescription,
    handles: Option<HostHandles>,
}

/// The VM's iommufd with every passed-through device bound to it, in configuration order.
pub struct HostHandles {
    /// The iommufd and its IOAS (empty until the build maps guest RAM into it).
    pub ops: Arc<VfioIommufd>,
    pub devices: Vec<OpenDevice>,
}

/// A device's VFIO cdev, opened and bound to the VM's iommufd.
pub struct OpenDevice {
    pub device: Arc<VfioDevice>,
    /// Its iommufd device ID.
    pub dev_id: u32,
}

impl ProbedHost {
    /// A host known only by its description (`--host-description`): plannable, not bootable.
    pub fn described(description: HostDescription) -> Self {
        ProbedHost {
            description,
            handles: None,
        }
    }

    /// The opened devices; `None` for a described host or a VM without devices.
    pub fn handles(&self) -> Option<&HostHandles> {
        self.handles.as_ref()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("devices[{index}] ({device}): no such PCI device on this host")]
    NoDevice { index: usize, device: DeviceRef },
    #[error("devices[{index}] ({bdf}): bound to {driver}, not vfio-pci")]
    NotVfio {
        index: usize,
        bdf: PciBdf,
        driver: String,
    },
    #[error("devices[{index}] ({bdf}): bound to no driver; bind it to vfio-pci first")]
    Unbound { index: usize, bdf: PciBdf },
    #[error(
        "devices[{index}] ({bdf}): has no VFIO cdev (the host kernel needs CONFIG_VFIO_DEVICE_CDEV)"
    )]
    NoCdev { index: usize, bdf: PciBdf },
    #[error("{0} is missing: the host kernel needs CONFIG_IOMMUFD for passthrough")]
    NoIommufd(PathBuf),
    #[error("opening /dev/iommu")]
    OpenIommufd(#[source] IommufdError),
    #[error("creating the guest-RAM IOAS")]
    Ioas(#[source] vfio_ioctls::VfioError),
    #[error("devices[{index}] ({bdf}): opening its VFIO cdev and binding it to iommufd")]
    Open {
        index: usize,
        bdf: PciBdf,
        #[source]
        source: vfio_ioctls::VfioError,
    },
    #[error("devices[{index}] ({bdf}): bound to iommufd without a device ID")]
    NoDevId { index: usize, bdf: PciBdf },
    #[error("devices[{index}] ({bdf}): reading the hardware of its IOMMU {iommu}")]
    HwInfo {
        index: usize,
        bdf: PciBdf,
        iommu: String,
        #[source]
        source: IommufdError,
    },
    #[error("host description {path}")]
    Description {
        path: PathBuf,
        #[source]
        source: DescriptionError,
    },
    #[error("host description: devices[{index}] is {found}, but the configuration names {wanted}")]
    DescriptionMismatch {
        index: usize,
        found: PciBdf,
        wanted: DeviceRef,
    },
}

/// Why a host description file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DescriptionError {
    #[error("reading it")]
    Read(#[source] std::io::Error),
    #[error("parsing it")]
    Parse(#[source] serde_json::Error),
    #[error("describes {found} devices, the configuration names {wanted}")]
    DeviceCount { found: usize, wanted: usize },
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

    /// Probes the configured devices, opens each one's cdev on the VM's iommufd and, for nested
    /// translation, reads the hardware of every host IOMMU instance they sit behind.
    pub fn describe(&self, config: &VmConfig) -> Result<ProbedHost, HostError> {
        let devices = self.probe(&config.devices)?;
        if devices.is_empty() {
            return Ok(ProbedHost::described(HostDescription::default()));
        }
        let handles = open_devices(&devices)?;
        let mut smmus: Vec<HostSmmu> = Vec::new();
        if config.iommu == IommuMode::NestedSmmuv3 {
            for (device, open) in devices.iter().zip(&handles.devices) {
                let Some(name) = &device.iommu else { continue };
                if smmus.iter().any(|s| &s.name == name) {
                    continue;
                }
                if let Some(smmu) = read_hw_info(handles.ops.iommufd(), device, open, name)? {
                    smmus.push(smmu);
                }
            }
        }
        Ok(ProbedHost {
            description: HostDescription { devices, smmus },
            handles: Some(handles),
        })
    }

    fn device(&self, index: usize, spec: &DeviceRef) -> Result<HostDevice, HostError> {
        let no_device = || HostError::NoDevice {
            index,
            device: spec.clone(),
        };
        let bdf = match spec {
            DeviceRef::Bdf(bdf) => *bdf,
            // A sysfs path: whatever it resolves to, its last component is the address.
            DeviceRef::Sysfs(path) => fs::canonicalize(path)
                .ok()
                .and_then(|real| base_name(&real)?.parse().ok())
                .ok_or_else(no_device)?,
        };
        let sysfs = self.sys.join("bus/pci/devices").join(bdf.to_string());
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
            .ok_or(HostError::NoCdev { index, bdf })?;
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

/// One iommufd for the VM, and every device's cdev bound to it (not yet attached: the build
/// attaches each to the guest-RAM IOAS or to its vSMMU's page tables).
fn open_devices(devices: &[HostDevice]) -> Result<HostHandles, HostError> {
    let iommufd = Arc::new(IommuFd::new().map_err(HostError::OpenIommufd)?);
    let ops = Arc::new(VfioIommufd::new(iommufd, None, None).map_err(HostError::Ioas)?);
    let devices = devices
        .iter()
        .map(|d| {
            let device = VfioDevice::new(&d.sysfs, ops.clone(), false).map_err(|source| {
                HostError::Open {
                    index: d.index,
                    bdf: d.bdf,
                    source,
                }
            })?;
            let dev_id = device.iommufd_dev_id().ok_or(HostError::NoDevId {
                index: d.index,
                bdf: d.bdf,
            })?;
            Ok(OpenDevice {
                device: Arc::new(device),
                dev_id,
            })
        })
        .collect::<Result<_, HostError>>()?;
    Ok(HostHandles { ops, devices })
}

/// IOMMU_GET_HW_INFO through a device behind the instance (the uAPI asks per device); None when
/// the IOMMU is not an SMMUv3 (the plan decides what such devices get).
fn read_hw_info(
    iommufd: &IommuFd,
    device: &HostDevice,
    open: &OpenDevice,
    iommu: &str,
) -> Result<Option<HostSmmu>, HostError> {
    use iommufd_bindings::iommufd::{
        iommu_hw_info_arm_smmuv3, iommu_hw_info_type_IOMMU_HW_INFO_TYPE_ARM_SMMUV3,
    };
    use iommufd_ioctls::IommufdHwInfoData;
    let mut data = IommufdHwInfoData::Smmuv3(iommu_hw_info_arm_smmuv3::default());
    let info = iommufd
        .device_hw_info(open.dev_id, &mut data)
        .map_err(|source| HostError::HwInfo {
            index: device.index,
            bdf: device.bdf,
            iommu: iommu.to_string(),
            source,
        })?;
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
        let err = |source| HostError::Description {
            path: path.to_path_buf(),
            source,
        };
        let text = fs::read_to_string(path).map_err(|e| err(DescriptionError::Read(e)))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| err(DescriptionError::Parse(e)))?;
        let host = value.get("host").cloned().unwrap_or(value);
        let mut description: HostDescription =
            serde_json::from_value(host).map_err(|e| err(DescriptionError::Parse(e)))?;
        if description.devices.len() != config.devices.len() {
            return Err(err(DescriptionError::DeviceCount {
                found: description.devices.len(),
                wanted: config.devices.len(),
            }));
        }
        for (index, (host, wanted)) in description
            .devices
            .iter_mut()
            .zip(&config.devices)
            .enumerate()
        {
            host.index = index;
            if wanted.vfio.bdf() != Some(host.bdf) {
                return Err(HostError::DescriptionMismatch {
                    index,
                    found: host.bdf,
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
                vfio: s.parse().unwrap(),
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
        assert_eq!(found.bdf.to_string(), "0000:02:00.0");
        assert_eq!(found.cdev, fake.root.join("dev/vfio/devices/vfio7"));
        assert_eq!(found.iommu.as_deref(), Some("smmu3.0x9050000"));
        let by_path = fake
            .host()
            .probe(&devices(&[path.to_str().unwrap()]))
            .unwrap();
        assert_eq!(by_path[0].bdf.to_string(), "0000:02:00.0");
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
        assert!(
            host.probe(&[]).unwrap().is_empty(),
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
