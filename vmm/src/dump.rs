//! `--dry-run` and `--dump-platform`: the plan as JSON, and the guest tables built from it by
//! the encoder dispatch and at the layout the VM build uses.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use arch::boot::{BootLayout, EncodeError};
use arch::platform::CheckedPlatform;
use serde::Serialize;

use crate::host::HostDescription;

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("writing {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("encoding the guest tables")]
    Encode(#[from] EncodeError),
}

/// What `--dry-run` prints: the host the plan was made for, the plan, and where the boot payload
/// and the tables go.
#[derive(Serialize)]
pub struct PlanReport<'a> {
    pub host: &'a HostDescription,
    pub platform: &'a CheckedPlatform,
    pub boot: &'a BootLayout,
}

impl PlanReport<'_> {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("the plan always serializes")
    }
}

/// The device tree (full or the ACPI stub) and every ACPI table, named by file: the blobs the
/// build writes, from the same encoder.
pub fn guest_tables(
    platform: &CheckedPlatform,
    boot: &BootLayout,
) -> Result<Vec<(String, Vec<u8>)>, DumpError> {
    let tables = arch::boot::encode(platform, boot)?;
    Ok(tables
        .blobs
        .into_iter()
        .filter_map(|b| Some((b.file?, b.bytes)))
        .collect())
}

/// Writes plan.json and the guest tables into `dir`; returns the files written.
pub fn write(dir: &Path, report: &PlanReport) -> Result<Vec<PathBuf>, DumpError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DumpError::Io { path, source }
    };
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut files = vec![("plan.json".to_string(), report.to_json().into_bytes())];
    files.extend(guest_tables(report.platform, report.boot)?);
    let mut written = Vec::new();
    for (name, bytes) in files {
        let path = dir.join(name);
        fs::write(&path, bytes).map_err(io_err(&path))?;
        written.push(path);
    }
    Ok(written)
}
