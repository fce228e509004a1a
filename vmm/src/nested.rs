//! The nested vSMMUv3 host backend over iommufd: one vIOMMU per host SMMU on a nest-parent
//! stage-2 HWPT over the guest-RAM IOAS, a vDEVICE per function (virtual StreamID = guest RID),
//! and per stream an abort, bypass or stage-1 nested HWPT installed by replace-attach.
//! Invalidations go to the vIOMMU in one IOMMU_HWPT_INVALIDATE per batch; host events come
//! back through a vEVENTQ.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::fd::RawFd;
use std::sync::Arc;

use devices::smmuv3::{
    BackendError, BackendStats, EventBatch, Invalidation, NestedSte, SmmuBackend, SmmuMode,
    StreamConfig,
};
use iommufd_bindings::iommufd::*;
use iommufd_ioctls::{IommuFd, IommufdError};
use vfio_ioctls::VfioDevice;

#[derive(Debug, thiserror::Error)]
pub enum NestedError {
    #[error("host SMMU {smmu}: {step} for {device}")]
    Iommufd {
        smmu: String,
        device: String,
        step: &'static str,
        #[source]
        source: IommufdError,
    },
    #[error("host SMMU {smmu}: attaching {device} to HWPT {hwpt}")]
    Attach {
        smmu: String,
        device: String,
        hwpt: u32,
        #[source]
        source: vfio_ioctls::VfioError,
    },
    #[error("host SMMU {smmu}: no device with virtual StreamID {vsid:#x}")]
    UnknownStream { smmu: String, vsid: u32 },
    #[error("host SMMU {smmu}: reading its event queue")]
    Events {
        smmu: String,
        #[source]
        source: std::io::Error,
    },
}

/// One host event for the guest: the 4-word SMMUv3 event record with the virtual StreamID.
pub type EventRecord = [u64; 4];

/// Counters for `--stats` and the lab logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NestedStats {
    pub invalidation_ioctls: u64,
    pub invalidation_commands: u64,
    pub hwpt_allocations: u64,
    pub events: u64,
    pub lost_events: u64,
}

struct Stream {
    device: Arc<VfioDevice>,
    dev_id: u32,
    vdevice: u32,
    bdf: String,
    /// The stage-1 HWPT currently installed, freed when replaced.
    stage1: Option<u32>,
}

/// The nested backend of one vSMMUv3 (one host SMMU).
pub struct NestedSmmu {
    iommufd: Arc<IommuFd>,
    smmu: String,
    s2_hwpt: u32,
    viommu: u32,
    abort_hwpt: u32,
    bypass_hwpt: u32,
    /// The vEVENTQ fd; closed before the object is destroyed (the fd holds it).
    events: Option<File>,
    veventq: u32,
    streams: BTreeMap<u32, Stream>,
    stats: NestedStats,
}

fn size_of_u32<T>() -> u32 {
    std::mem::size_of::<T>() as u32
}

impl NestedSmmu {
    /// Builds the vIOMMU through a device (bound to `iommufd` as `dev_id`) behind host SMMU
    /// `smmu`: the uAPI allocates per device, and the device and vIOMMU must share the instance.
    pub fn new(
        iommufd: Arc<IommuFd>,
        ioas: u32,
        smmu: &str,
        dev_id: u32,
        bdf: &str,
    ) -> Result<Self, NestedError> {
        let err = |step| {
            let (smmu, device) = (smmu.to_string(), bdf.to_string());
            move |source| NestedError::Iommufd {
                smmu,
                device,
                step,
                source,
            }
        };
        let mut s2 = iommu_hwpt_alloc {
            size: size_of_u32::<iommu_hwpt_alloc>(),
            flags: iommufd_hwpt_alloc_flags_IOMMU_HWPT_ALLOC_NEST_PARENT,
            dev_id,
            pt_id: ioas,
            ..Default::default()
        };
        iommufd
            .alloc_iommu_hwpt(&mut s2)
            .map_err(err("allocating the nest-parent stage-2 HWPT"))?;
        let mut viommu = iommu_viommu_alloc {
            size: size_of_u32::<iommu_viommu_alloc>(),
            type_: iommu_viommu_type_IOMMU_VIOMMU_TYPE_ARM_SMMUV3,
            dev_id,
            hwpt_id: s2.out_hwpt_id,
            ..Default::default()
        };
        iommufd
            .alloc_iommu_viommu(&mut viommu)
            .map_err(err("allocating the vIOMMU"))?;
        let mut veventq = iommu_veventq_alloc {
            size: size_of_u32::<iommu_veventq_alloc>(),
            viommu_id: viommu.out_viommu_id,
            type_: iommu_veventq_type_IOMMU_VEVENTQ_TYPE_ARM_SMMUV3,
            veventq_depth: 256,
            ..Default::default()
        };
        let (veventq_id, events) = iommufd
            .alloc_veventq(&mut veventq)
            .map_err(err("allocating the vEVENTQ"))?;
        let mut nested = NestedSmmu {
            iommufd,
            smmu: smmu.to_string(),
            s2_hwpt: s2.out_hwpt_id,
            viommu: viommu.out_viommu_id,
            abort_hwpt: 0,
            bypass_hwpt: 0,
            events: Some(events),
            veventq: veventq_id,
            streams: BTreeMap::new(),
            stats: NestedStats::default(),
        };
        nested.abort_hwpt = nested.alloc_nested(dev_id, bdf, NestedSte::ABORT)?;
        nested.bypass_hwpt = nested.alloc_nested(dev_id, bdf, NestedSte::BYPASS)?;
        Ok(nested)
    }

    /// The counters by field (`SmmuBackend::stats` names them for `--stats`).
    pub fn counters(&self) -> NestedStats {
        self.stats
    }

    /// The vEVENTQ fd, for the event loop to watch.
    pub fn event_fd(&self) -> RawFd {
        self.events
            .as_ref()
            .map_or(-1, std::os::fd::AsRawFd::as_raw_fd)
    }

    fn alloc_nested(&mut self, dev_id: u32, bdf: &str, ste: NestedSte) -> Result<u32, NestedError> {
        let data = iommu_hwpt_arm_smmuv3 { ste: ste.words() };
        let mut hwpt = iommu_hwpt_alloc {
            size: size_of_u32::<iommu_hwpt_alloc>(),
            dev_id,
            pt_id: self.viommu,
            data_type: iommu_hwpt_data_type_IOMMU_HWPT_DATA_ARM_SMMUV3,
            data_len: size_of_u32::<iommu_hwpt_arm_smmuv3>(),
            data_uptr: &data as *const _ as u64,
            ..Default::default()
        };
        self.iommufd
            .alloc_iommu_hwpt(&mut hwpt)
            .map_err(|source| NestedError::Iommufd {
                smmu: self.smmu.clone(),
                device: bdf.to_string(),
                step: "allocating a nested HWPT",
                source,
            })?;
        self.stats.hwpt_allocations += 1;
        Ok(hwpt.out_hwpt_id)
    }

    fn attach(&self, device: &VfioDevice, bdf: &str, hwpt: u32) -> Result<(), NestedError> {
        device
            .attach_hwpt(hwpt)
            .map_err(|source| NestedError::Attach {
                smmu: self.smmu.clone(),
                device: bdf.to_string(),
                hwpt,
                source,
            })
    }

    /// Puts a function behind this vSMMU with virtual StreamID `vsid`, aborting until the guest
    /// configures its STE.
    pub fn add_device(
        &mut self,
        device: Arc<VfioDevice>,
        dev_id: u32,
        vsid: u32,
        bdf: &str,
    ) -> Result<(), NestedError> {
        self.attach(&device, bdf, self.s2_hwpt)?;
        let mut vdevice = iommu_vdevice_alloc {
            size: size_of_u32::<iommu_vdevice_alloc>(),
            viommu_id: self.viommu,
            dev_id,
            virt_id: u64::from(vsid),
            ..Default::default()
        };
        self.iommufd
            .alloc_iommu_vdevice(&mut vdevice)
            .map_err(|source| NestedError::Iommufd {
                smmu: self.smmu.clone(),
                device: bdf.to_string(),
                step: "allocating the vDEVICE",
                source,
            })?;
        self.attach(&device, bdf, self.abort_hwpt)?;
        self.streams.insert(
            vsid,
            Stream {
                device,
                dev_id,
                vdevice: vdevice.out_vdevice_id,
                bdf: bdf.to_string(),
                stage1: None,
            },
        );
        Ok(())
    }
}

impl SmmuBackend for NestedSmmu {
    fn mode(&self) -> SmmuMode {
        SmmuMode::Nested
    }

    /// Installs what the guest's STE for `vsid` now says: a new nested HWPT replace-attached,
    /// the previous stage-1 HWPT freed.
    fn set_stream(&mut self, vsid: u32, config: StreamConfig) -> Result<(), BackendError> {
        let Some(stream) = self.streams.get(&vsid) else {
            return Err(NestedError::UnknownStream {
                smmu: self.smmu.clone(),
                vsid,
            }
            .into());
        };
        let (device, dev_id, bdf, old) = (
            stream.device.clone(),
            stream.dev_id,
            stream.bdf.clone(),
            stream.stage1,
        );
        let (hwpt, stage1) = match config {
            StreamConfig::Abort => (self.abort_hwpt, None),
            StreamConfig::Bypass => (self.bypass_hwpt, None),
            StreamConfig::Stage1(ste) => {
                let id = self.alloc_nested(dev_id, &bdf, ste)?;
                (id, Some(id))
            }
        };
        if let Err(e) = self.attach(&device, &bdf, hwpt) {
            if let Some(id) = stage1 {
                let _ = self.iommufd.destroy_iommu_object(id);
            }
            return Err(e.into());
        }
        if let Some(old) = old
            && let Err(e) = self.iommufd.destroy_iommu_object(old)
        {
            log::warn!("{}: freeing stage-1 HWPT {old} of {bdf}: {e}", self.smmu);
        }
        if let Some(stream) = self.streams.get_mut(&vsid) {
            stream.stage1 = stage1;
        }
        Ok(())
    }

    /// Forwards a batch of TLBI / ATC_INV / CFGI_CD commands in one ioctl; returns how many the
    /// kernel handled (the rest failed: the model reports CERROR_ILL for the first of them).
    fn invalidate(&mut self, batch: &[Invalidation]) -> Result<usize, BackendError> {
        // Commands naming a StreamID without a vDEVICE (the guest's host bridge, an unused SID)
        // have nothing cached on the host, and the kernel refuses them (EIO): they are done.
        let mut entries: Vec<iommu_viommu_arm_smmuv3_invalidate> = batch
            .iter()
            .filter(|i| {
                i.stream_id()
                    .is_none_or(|sid| self.streams.contains_key(&sid))
            })
            .map(|i| iommu_viommu_arm_smmuv3_invalidate { cmd: i.raw() })
            .collect();
        let skipped = batch.len() - entries.len();
        if entries.is_empty() {
            return Ok(batch.len());
        }
        let mut request = iommu_hwpt_invalidate {
            size: size_of_u32::<iommu_hwpt_invalidate>(),
            hwpt_id: self.viommu,
            data_uptr: entries.as_mut_ptr() as u64,
            data_type: iommu_hwpt_invalidate_data_type_IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3,
            entry_len: size_of_u32::<iommu_viommu_arm_smmuv3_invalidate>(),
            entry_num: entries.len() as u32,
            ..Default::default()
        };
        self.stats.invalidation_ioctls += 1;
        let result = self.iommufd.invalidate_hwpt(&mut request);
        let handled = request.entry_num as usize;
        self.stats.invalidation_commands += handled as u64;
        match result {
            Ok(()) => Ok(handled + skipped),
            Err(source) if handled < entries.len() => {
                log::warn!(
                    "{}: invalidation stopped after {handled}: {source}",
                    self.smmu
                );
                Ok(handled)
            }
            Err(source) => Err(NestedError::Iommufd {
                smmu: self.smmu.clone(),
                device: "the vIOMMU".into(),
                step: "IOMMU_HWPT_INVALIDATE",
                source,
            }
            .into()),
        }
    }

    /// Reads what the host queued: event records (with the virtual StreamID) and whether some
    /// were lost. Non-blocking: an empty queue gives nothing.
    fn read_events(&mut self) -> Result<EventBatch, BackendError> {
        const HEADER: usize = std::mem::size_of::<iommufd_vevent_header>();
        const RECORD: usize = std::mem::size_of::<iommu_vevent_arm_smmuv3>();
        let mut buf = vec![0u8; (HEADER + RECORD) * 64];
        let Some(events) = self.events.as_mut() else {
            return Ok(EventBatch::default());
        };
        let n = match events.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return Ok(EventBatch::default());
            }
            Err(source) => {
                return Err(NestedError::Events {
                    smmu: self.smmu.clone(),
                    source,
                }
                .into());
            }
        };
        let (events, lost) = parse_events(&buf[..n]);
        self.stats.events += events.len() as u64;
        self.stats.lost_events += u64::from(lost);
        Ok(EventBatch { events, lost })
    }

    fn stats(&self) -> BackendStats {
        let s = &self.stats;
        BackendStats(vec![
            ("host invalidation ioctls", s.invalidation_ioctls),
            ("host invalidation commands", s.invalidation_commands),
            ("nested HWPTs allocated", s.hwpt_allocations),
            ("host events", s.events),
            ("host events lost", s.lost_events),
        ])
    }
}

impl Drop for NestedSmmu {
    /// Takes the objects down in dependency order (devices off the nested HWPTs, then HWPTs,
    /// vDEVICEs, vEVENTQ, vIOMMU, the stage-2 parent), so the IOAS can be destroyed after.
    fn drop(&mut self) {
        let destroy = |id: u32, what: &str| {
            if let Err(e) = self.iommufd.destroy_iommu_object(id) {
                log::warn!("{}: destroying {what} {id}: {e}", self.smmu);
            }
        };
        for stream in self.streams.values() {
            if let Err(e) = stream.device.detach_hwpt() {
                log::debug!("{}: detaching {}: {e}", self.smmu, stream.bdf);
            }
        }
        for stream in self.streams.values() {
            if let Some(id) = stream.stage1 {
                destroy(id, "stage-1 HWPT");
            }
            destroy(stream.vdevice, "vDEVICE");
        }
        destroy(self.abort_hwpt, "abort HWPT");
        destroy(self.bypass_hwpt, "bypass HWPT");
        self.events = None;
        destroy(self.veventq, "vEVENTQ");
        destroy(self.viommu, "vIOMMU");
        destroy(self.s2_hwpt, "stage-2 HWPT");
    }
}

/// vEVENTQ read data: headers `{flags u32, sequence u32}`, each followed by a 32-byte record
/// unless its flags say events were lost. Truncated tails are dropped.
pub fn parse_events(bytes: &[u8]) -> (Vec<EventRecord>, bool) {
    let mut records = Vec::new();
    let mut lost = false;
    let mut rest = bytes;
    while rest.len() >= 8 {
        let flags = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes"));
        rest = &rest[8..];
        if flags & iommu_veventq_flag_IOMMU_VEVENTQ_FLAG_LOST_EVENTS != 0 {
            lost = true;
            continue;
        }
        if rest.len() < 32 {
            break;
        }
        let word = |i: usize| u64::from_le_bytes(rest[i * 8..i * 8 + 8].try_into().expect("8"));
        records.push([word(0), word(1), word(2), word(3)]);
        rest = &rest[32..];
    }
    (records, lost)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(flags: u32, seq: u32) -> Vec<u8> {
        [flags.to_le_bytes(), seq.to_le_bytes()].concat()
    }

    #[test]
    fn event_records_parse_with_lost_markers_and_truncation() {
        let mut data = header(0, 1);
        for w in [0x10u64, 0x200, 0x3000, 0x4000] {
            data.extend(w.to_le_bytes());
        }
        data.extend(header(iommu_veventq_flag_IOMMU_VEVENTQ_FLAG_LOST_EVENTS, 2));
        data.extend(header(0, 5));
        data.extend([0u8; 12]); // truncated record
        let (records, lost) = parse_events(&data);
        assert_eq!(records, [[0x10, 0x200, 0x3000, 0x4000]]);
        assert!(lost);
        assert_eq!(parse_events(&[1, 2, 3]), (Vec::new(), false));
    }
}
