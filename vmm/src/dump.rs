//! `--dry-run` and `--dump-platform`: the plan as JSON, and the guest tables built from it, the
//! same encoders and layout the VM build uses.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use arch::platform::{CheckedPlatform, FirmwareInterface, GuestArch};
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
    #[error("encoding the guest tables: {0}")]
    Encode(String),
}

/// What `--dry-run` prints: the host the plan was made for, and the plan.
#[derive(Serialize)]
pub struct PlanReport<'a> {
    pub host: &'a HostDescription,
    pub platform: &'a CheckedPlatform,
}

impl PlanReport<'_> {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("the plan always serializes")
    }
}

/// The device tree (full or the ACPI stub) and every ACPI table, named by file.
pub fn guest_tables(platform: &CheckedPlatform) -> Result<Vec<(String, Vec<u8>)>, DumpError> {
    let enc = |e: &dyn std::fmt::Display| DumpError::Encode(e.to_string());
    let mut files = Vec::new();
    match (platform.arch, platform.firmware) {
        (GuestArch::Aarch64, FirmwareInterface::DeviceTree) => {
            files.push((
                "guest.dtb".into(),
                arch::aarch64::fdt::device_tree(platform).map_err(|e| enc(&e))?,
            ));
        }
        (GuestArch::Aarch64, FirmwareInterface::Acpi) => {
            let ram = platform.memory[0];
            let (_, firmware) = arch::aarch64::image::firmware_layout(ram).map_err(|e| enc(&e))?;
            let boot = arch::aarch64::efi::acpi_boot(platform, firmware).map_err(|e| enc(&e))?;
            files.push(("guest.dtb".into(), boot.stub_dtb));
            for table in boot.tables.tables {
                files.push((format!("{}.aml", table.signature), table.bytes));
            }
        }
        (GuestArch::X86_64, _) => {
            let tables = arch::acpi::build(platform, arch::x86_64::layout::ACPI_TABLES)
                .map_err(|e| enc(&e))?;
            for table in tables.tables {
                files.push((format!("{}.aml", table.signature), table.bytes));
            }
        }
    }
    Ok(files)
}

/// Writes plan.json and the guest tables into `dir`; returns the files written.
pub fn write(dir: &Path, report: &PlanReport) -> Result<Vec<PathBuf>, DumpError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DumpError::Io { path, source }
    };
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut files = vec![("plan.json".to_string(), report.to_json().into_bytes())];
    files.extend(guest_tables(report.platform)?);
    let mut written = Vec::new();
    for (name, bytes) in files {
        let path = dir.join(name);
        fs::write(&path, bytes).map_err(io_err(&path))?;
        written.push(path);
    }
    Ok(written)
}
