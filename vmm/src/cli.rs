//! The command line: every flag fills the same configuration tree a JSON file does, and wins over
//! the file's value.

use std::path::PathBuf;

use clap::Parser;

use crate::config::{
    BootMode, BridgeConfig, ByteSize, ConfigError, DeviceConfig, IommuMode, LogLevel, RebootAction,
    SerialConfig, VmConfig,
};

const AFTER_HELP: &str = "\
Configuration: --config FILE.json gives the same settings as the flags (see resources/examples/);
flags given on the command line override the file. --print-config shows the merged result.

Exit status:
  0    the guest powered off
  1    microvmm failed (setup or a runtime fault)
  2    the configuration is invalid or names a device the host cannot pass
       through (nothing was started)
  3    the guest reset and --on-reboot is exit
  4    the guest reported a crash
  130  stopped by SIGINT, 143 stopped by SIGTERM";

/// A small VMM for aarch64 and x86_64 Linux guests.
#[derive(Debug, Parser)]
#[command(name = "microvmm", version, about, after_help = AFTER_HELP)]
pub struct Cli {
    /// JSON configuration file; flags on the command line override its values.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Kernel to boot: an arm64 Image (raw or gzip-compressed) or an x86 bzImage.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,

    /// Initramfs (cpio, optionally compressed) loaded for the kernel.
    #[arg(long, value_name = "PATH")]
    pub initramfs: Option<PathBuf>,

    /// Kernel command line.
    #[arg(long, value_name = "STRING", allow_hyphen_values = true)]
    pub cmdline: Option<String>,

    /// Number of vCPUs [default: 1].
    #[arg(long, value_name = "N")]
    pub cpus: Option<u32>,

    /// Guest RAM, e.g. 512M or 2G (a multiple of 2M) [default: 512M].
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<ByteSize>,

    /// Guest serial console: stdio, none, or file=PATH (output appended) [default: stdio].
    #[arg(long, value_name = "stdio|none|file=PATH")]
    pub serial: Option<SerialConfig>,

    /// aarch64 only: describe the hardware with a device tree or with ACPI tables [default: dt].
    #[arg(long, value_enum)]
    pub boot: Option<BootMode>,

    /// What a guest reboot does [default: exit].
    #[arg(long, value_enum, value_name = "ACTION")]
    pub on_reboot: Option<RebootAction>,

    /// Log verbosity (to standard error) [default: warn].
    #[arg(long, value_enum, value_name = "LEVEL")]
    pub log_level: Option<LogLevel>,

    /// Pass a host PCI device bound to vfio-pci through to the guest, on guest PCI host bridge n
    /// (default 0). Repeatable; replaces the config file's device list.
    #[arg(long = "device", value_name = "vfio=<BDF|sysfs path>[,bridge=<n>]")]
    pub devices: Vec<DeviceConfig>,

    /// Declare a guest PCI host bridge and size its 64-bit window (bridges named by devices
    /// exist anyway). Repeatable; replaces the config file's bridge list.
    #[arg(long = "pci-bridge", value_name = "id=<n>[,mmio64=<size>]")]
    pub pci_bridges: Vec<BridgeConfig>,

    /// Virtual IOMMU: off, or nested-smmuv3 (one vSMMUv3 per host SMMU, each in front of its
    /// own PCI host bridge; aarch64) [default: off].
    #[arg(long, value_enum, value_name = "MODE")]
    pub iommu: Option<IommuMode>,

    /// Print device counters at exit (vSMMU guest commands by kind, CMD_SYNCs, host
    /// invalidation ioctls, events forwarded).
    #[arg(long)]
    pub stats: bool,

    /// Print the platform plan (and the host it was made for) as JSON and exit without starting
    /// a guest.
    #[arg(long)]
    pub dry_run: bool,

    /// Write the plan, the guest device tree and every ACPI table (one .aml each) into DIR.
    #[arg(long, value_name = "DIR")]
    pub dump_platform: Option<PathBuf>,

    /// Plan for the host described in FILE (the "host" object --dry-run prints) instead of
    /// probing this one; only with --dry-run.
    #[arg(long, value_name = "FILE")]
    pub host_description: Option<PathBuf>,

    /// Print the merged configuration as JSON and exit.
    #[arg(long)]
    pub print_config: bool,
}

impl Cli {
    /// The configuration file's tree (or the defaults) with every given flag applied on top.
    pub fn merged_config(&self) -> Result<VmConfig, ConfigError> {
        let mut config = match &self.config {
            Some(path) => VmConfig::from_file(path)?,
            None => VmConfig::default(),
        };
        let payload = &mut config.payload;
        if let Some(v) = &self.kernel {
            payload.kernel = Some(v.clone());
        }
        if let Some(v) = &self.initramfs {
            payload.initramfs = Some(v.clone());
        }
        if let Some(v) = &self.cmdline {
            payload.cmdline = v.clone();
        }
        if let Some(v) = self.cpus {
            config.cpus.boot = v;
        }
        if let Some(v) = self.memory {
            config.memory.size = v;
        }
        if let Some(v) = &self.serial {
            config.serial = v.clone();
        }
        if let Some(v) = self.boot {
            config.boot = Some(v);
        }
        if let Some(v) = self.on_reboot {
            config.on_reboot = v;
        }
        if let Some(v) = self.log_level {
            config.log_level = v;
        }
        if !self.devices.is_empty() {
            config.devices = self.devices.clone();
        }
        if !self.pci_bridges.is_empty() {
            config.pci_bridges = self.pci_bridges.clone();
        }
        if let Some(v) = self.iommu {
            config.iommu = v;
        }
        if self.stats {
            config.stats = true;
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("microvmm").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn flags_override_the_file() {
        let mut file = tempfile("override.json");
        write!(
            file.1,
            r#"{{"payload": {{"kernel": "/from/file", "cmdline": "a"}}, "cpus": {{"boot": 4}},
                "memory": {{"size": "1G"}}}}"#
        )
        .unwrap();
        let path = file.0.to_str().unwrap().to_string();
        let merged = cli(&["--config", &path, "--cpus", "2", "--cmdline", "-b c"])
            .merged_config()
            .unwrap();
        assert_eq!(merged.payload.kernel, Some("/from/file".into()));
        assert_eq!(merged.payload.cmdline, "-b c");
        assert_eq!(merged.cpus.boot, 2);
        assert_eq!(merged.memory.size, ByteSize(1 << 30));
        let _ = std::fs::remove_file(&file.0);
    }

    #[test]
    fn flags_parse() {
        let c = cli(&[
            "--kernel",
            "/k",
            "--memory",
            "256M",
            "--serial",
            "file=/tmp/s",
            "--boot",
            "acpi",
            "--on-reboot",
            "restart",
            "--log-level",
            "debug",
        ])
        .merged_config()
        .unwrap();
        assert_eq!(c.memory.size, ByteSize(256 << 20));
        assert_eq!(
            c.serial,
            SerialConfig::File {
                path: "/tmp/s".into()
            }
        );
        assert_eq!(c.boot, Some(BootMode::Acpi));
        assert_eq!(c.on_reboot, RebootAction::Restart);
        assert_eq!(c.log_level, LogLevel::Debug);
        let bad = Cli::try_parse_from(["microvmm", "--memory", "lots"]).unwrap_err();
        assert!(bad.to_string().contains("'lots' is not a size"), "{bad}");
    }

    fn tempfile(name: &str) -> (PathBuf, std::fs::File) {
        let path = std::env::temp_dir().join(format!("microvmm-{}-{name}", std::process::id()));
        let file = std::fs::File::create(&path).unwrap();
        (path, file)
    }
}
