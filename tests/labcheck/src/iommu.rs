//! Walks a VFIO device through iommufd the way microvmm will: plain IOAS attach, and the SMMUv3
//! nesting sequence (hw info, nest-parent S2, vIOMMU, vDEVICE, nested HWPTs, vEVENTQ).

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;
use std::sync::Arc;

use iommufd_bindings::iommufd::*;
use iommufd_ioctls::{IommuFd, IommufdError, IommufdHwInfoData, IommufdIoas};
use vfio_ioctls::{VfioDevice, VfioError, VfioIommufd};

use crate::sysfs::Bdf;

#[derive(Debug, thiserror::Error)]
pub enum IommuError {
    #[error("opening /dev/iommu")]
    OpenIommu(#[source] IommufdError),
    #[error("{step}")]
    Iommufd {
        step: &'static str,
        #[source]
        source: IommufdError,
    },
    #[error("{step}")]
    Vfio {
        step: &'static str,
        #[source]
        source: VfioError,
    },
    #[error("creating the memfd that backs the test IOAS")]
    Memfd(#[source] std::io::Error),
    #[error("the IOMMU reports hw_info type {0}, not ARM SMMUv3 (2)")]
    NotSmmuv3(u32),
    #[error("microvmm's nested backend: {0}")]
    Backend(String),
}

/// Size and IOVA of the buffer each check maps into its IOAS.
const TEST_IOVA: u64 = 0x4000_0000;
const TEST_LEN: u64 = 2 << 20;

/// STE word 0: V (bit 0) and Cfg (bits 3:1); Cfg 0b100 = bypass, 0b000 = abort.
const STE_V: u64 = 1;
const STE_CFG_BYPASS: u64 = 0b100 << 1;

/// An iommufd with one IOAS backed by a memfd, and a VFIO device bound to it.
struct Bound {
    iommufd: Arc<IommuFd>,
    ioas: Arc<IommufdIoas>,
    device: VfioDevice,
    dev_id: u32,
}

fn bind(bdf: Bdf) -> Result<Bound, IommuError> {
    let iommufd = Arc::new(IommuFd::new().map_err(IommuError::OpenIommu)?);
    let ioas =
        Arc::new(
            IommufdIoas::new(iommufd.clone()).map_err(|source| IommuError::Iommufd {
                step: "IOMMU_IOAS_ALLOC",
                source,
            })?,
        );
    let memfd = memfd(TEST_LEN)?;
    ioas.map_file(memfd.as_raw_fd(), 0, TEST_LEN, TEST_IOVA, true)
        .map_err(|source| IommuError::Iommufd {
            step: "IOMMU_IOAS_MAP_FILE",
            source,
        })?;
    let ops = Arc::new(
        VfioIommufd::new(iommufd.clone(), Some(ioas.clone()), None).map_err(|source| {
            IommuError::Vfio {
                step: "setting up the VFIO iommufd wrapper",
                source,
            }
        })?,
    );
    let sysfs = format!("/sys/bus/pci/devices/{bdf}");
    let device =
        VfioDevice::new(Path::new(&sysfs), ops, false).map_err(|source| IommuError::Vfio {
            step: "VFIO_DEVICE_BIND_IOMMUFD",
            source,
        })?;
    let dev_id = device.iommufd_dev_id().ok_or(IommuError::Vfio {
        step: "VFIO_DEVICE_BIND_IOMMUFD returned no device id",
        source: VfioError::InvalidVfioDev,
    })?;
    Ok(Bound {
        iommufd,
        ioas,
        device,
        dev_id,
    })
}

fn memfd(len: u64) -> Result<File, IommuError> {
    // SAFETY: the name is a valid NUL-terminated string; the result is checked.
    let fd = unsafe { libc::memfd_create(c"labcheck".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(IommuError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: fd is a freshly created descriptor nobody else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(len).map_err(IommuError::Memfd)?;
    Ok(file)
}

fn attach(device: &VfioDevice, pt_id: u32, step: &'static str) -> Result<(), IommuError> {
    device
        .attach_hwpt(pt_id)
        .map_err(|source| IommuError::Vfio { step, source })
}

/// Plain passthrough: bind the cdev to iommufd and attach it to an IOAS with a mapping.
pub fn check_vfio(bdf: Bdf) -> Result<String, IommuError> {
    let bound = bind(bdf)?;
    attach(
        &bound.device,
        bound.ioas.id(),
        "VFIO_DEVICE_ATTACH_IOMMUFD_PT (IOAS)",
    )?;
    Ok(format!(
        "dev_id={} ioas={} mapped {:#x}+{:#x}",
        bound.dev_id,
        bound.ioas.id(),
        TEST_IOVA,
        TEST_LEN
    ))
}

/// The nested SMMUv3 sequence microvmm's nested backend performs for one device.
pub fn check_nesting(bdf: Bdf) -> Result<String, IommuError> {
    let b = bind(bdf)?;
    let fd = &b.iommufd;
    let iommufd_err = |step| move |source| IommuError::Iommufd { step, source };

    let mut data = IommufdHwInfoData::Smmuv3(iommu_hw_info_arm_smmuv3::default());
    let info = fd
        .device_hw_info(b.dev_id, &mut data)
        .map_err(iommufd_err("IOMMU_GET_HW_INFO"))?;
    let IommufdHwInfoData::Smmuv3(smmu) = data;
    // SAFETY: both union members are u32; the kernel wrote out_data_type.
    let kind = unsafe { info.__bindgen_anon_1.out_data_type };
    if kind != iommu_hw_info_type_IOMMU_HW_INFO_TYPE_ARM_SMMUV3 {
        return Err(IommuError::NotSmmuv3(kind));
    }

    let mut s2 = iommu_hwpt_alloc {
        size: size_of::<iommu_hwpt_alloc>() as u32,
        flags: iommufd_hwpt_alloc_flags_IOMMU_HWPT_ALLOC_NEST_PARENT,
        dev_id: b.dev_id,
        pt_id: b.ioas.id(),
        ..Default::default()
    };
    fd.alloc_iommu_hwpt(&mut s2)
        .map_err(iommufd_err("IOMMU_HWPT_ALLOC (nest parent)"))?;
    attach(
        &b.device,
        s2.out_hwpt_id,
        "VFIO_DEVICE_ATTACH_IOMMUFD_PT (S2)",
    )?;

    let mut viommu = iommu_viommu_alloc {
        size: size_of::<iommu_viommu_alloc>() as u32,
        type_: iommu_viommu_type_IOMMU_VIOMMU_TYPE_ARM_SMMUV3,
        dev_id: b.dev_id,
        hwpt_id: s2.out_hwpt_id,
        ..Default::default()
    };
    fd.alloc_iommu_viommu(&mut viommu)
        .map_err(iommufd_err("IOMMU_VIOMMU_ALLOC"))?;

    let vsid = (u64::from(bdf.bus) << 8) | (u64::from(bdf.device) << 3) | u64::from(bdf.function);
    let mut vdevice = iommu_vdevice_alloc {
        size: size_of::<iommu_vdevice_alloc>() as u32,
        viommu_id: viommu.out_viommu_id,
        dev_id: b.dev_id,
        virt_id: vsid,
        ..Default::default()
    };
    fd.alloc_iommu_vdevice(&mut vdevice)
        .map_err(iommufd_err("IOMMU_VDEVICE_ALLOC"))?;

    let nested = |ste0: u64, step| {
        let ste = iommu_hwpt_arm_smmuv3 { ste: [ste0, 0] };
        let mut hwpt = iommu_hwpt_alloc {
            size: size_of::<iommu_hwpt_alloc>() as u32,
            dev_id: b.dev_id,
            pt_id: viommu.out_viommu_id,
            data_type: iommu_hwpt_data_type_IOMMU_HWPT_DATA_ARM_SMMUV3,
            data_len: size_of::<iommu_hwpt_arm_smmuv3>() as u32,
            data_uptr: &ste as *const _ as u64,
            ..Default::default()
        };
        fd.alloc_iommu_hwpt(&mut hwpt)
            .map(|()| hwpt.out_hwpt_id)
            .map_err(iommufd_err(step))
    };
    let bypass = nested(STE_V | STE_CFG_BYPASS, "IOMMU_HWPT_ALLOC (nested bypass)")?;
    let abort = nested(STE_V, "IOMMU_HWPT_ALLOC (nested abort)")?;
    attach(&b.device, bypass, "replace-attach (nested bypass)")?;
    attach(&b.device, abort, "replace-attach (nested abort)")?;

    let mut veventq = iommu_veventq_alloc {
        size: size_of::<iommu_veventq_alloc>() as u32,
        viommu_id: viommu.out_viommu_id,
        type_: iommu_veventq_type_IOMMU_VEVENTQ_TYPE_ARM_SMMUV3,
        veventq_depth: 64,
        ..Default::default()
    };
    let (_veventq_id, _veventq_fd) = fd
        .alloc_veventq(&mut veventq)
        .map_err(iommufd_err("IOMMU_VEVENTQ_ALLOC"))?;

    attach(&b.device, s2.out_hwpt_id, "replace-attach (back to S2)")?;
    Ok(format!(
        "idr0={:#010x} idr1={:#010x} idr3={:#x} idr5={:#x} s2={} viommu={} vdevice={} vsid={:#x} \
         bypass={} abort={}",
        smmu.idr[0],
        smmu.idr[1],
        smmu.idr[3],
        smmu.idr[5],
        s2.out_hwpt_id,
        viommu.out_viommu_id,
        vdevice.out_vdevice_id,
        vsid,
        bypass,
        abort
    ))
}

/// microvmm's own nested backend (`vmm::nested::NestedSmmu`) on a real host SMMU: vIOMMU, vDEVICE,
/// bypass / abort / stage-1-less STE changes by replace-attach, one batched invalidation, and an
/// empty event read.
pub fn check_nested_backend(bdf: Bdf) -> Result<String, IommuError> {
    use devices::smmuv3::{BackendError, Invalidation, SmmuBackend, StreamConfig};
    use vmm::nested::{NestedError, NestedSmmu};
    let b = bind(bdf)?;
    let nested_err = |e: NestedError| IommuError::Backend(vmm::error_chain(&e));
    let backend_err = |e: BackendError| IommuError::Backend(vmm::error_chain(&*e));
    let vsid = (u32::from(bdf.bus) << 8) | (u32::from(bdf.device) << 3) | u32::from(bdf.function);
    let device = std::sync::Arc::new(b.device);
    let mut smmu = NestedSmmu::new(
        b.iommufd.clone(),
        b.ioas.id(),
        "host SMMU",
        b.dev_id,
        &bdf.to_string(),
    )
    .map_err(nested_err)?;
    smmu.add_device(device, b.dev_id, vsid, &bdf.to_string())
        .map_err(nested_err)?;
    smmu.set_stream(vsid, StreamConfig::Bypass)
        .map_err(backend_err)?;
    smmu.set_stream(vsid, StreamConfig::Abort)
        .map_err(backend_err)?;
    // TLBI_NH_ALL, TLBI_NH_ASID (ASID 1), CFGI_CD_ALL for this vSID: one ioctl.
    let batch: Vec<Invalidation> = [[0x10, 0], [0x11 | (1 << 48), 0]]
        .into_iter()
        .filter_map(Invalidation::decode)
        .chain([Invalidation::cfgi_cd_all(vsid)])
        .collect();
    let handled = smmu.invalidate(&batch).map_err(backend_err)?;
    if handled != batch.len() {
        return Err(IommuError::Backend(format!(
            "{handled} of {} invalidations handled",
            batch.len()
        )));
    }
    let events = smmu.read_events().map_err(backend_err)?;
    let stats = smmu.counters();
    Ok(format!(
        "vsid={vsid:#x} invalidations={} in {} ioctl(s) hwpts={} events={} lost={}",
        stats.invalidation_commands,
        stats.invalidation_ioctls,
        stats.hwpt_allocations,
        events.events.len(),
        events.lost
    ))
}
