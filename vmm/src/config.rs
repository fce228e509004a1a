//! The configuration tree: one set of serde structs that `--config FILE.json` deserializes into and
//! command-line flags override, validated once against the whole tree before anything touches KVM.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::bdf::{BdfError, DeviceRef};

/// The guest architecture this binary runs (microvmm runs guests of its own architecture).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostArch {
    Aarch64,
    X86_64,
}

impl HostArch {
    pub const fn current() -> Self {
        if cfg!(target_arch = "aarch64") {
            HostArch::Aarch64
        } else {
            HostArch::X86_64
        }
    }

    /// Most vCPUs a guest of this architecture can have with microvmm's address map.
    pub fn max_vcpus(self) -> u32 {
        match self {
            HostArch::Aarch64 => arch::aarch64::layout::MAX_VCPUS,
            HostArch::X86_64 => arch::x86_64::layout::MAX_VCPUS,
        }
    }

    pub fn max_pci_bridges(self) -> u32 {
        match self {
            HostArch::Aarch64 => arch::aarch64::layout::MAX_PCI_BRIDGES,
            HostArch::X86_64 => arch::x86_64::layout::MAX_PCI_BRIDGES,
        }
    }

    pub fn pci_mmio64_region_size(self) -> u64 {
        match self {
            HostArch::Aarch64 => arch::aarch64::layout::PCI_MMIO64_REGION.size,
            HostArch::X86_64 => arch::x86_64::layout::PCI_MMIO64_REGION.size,
        }
    }

    /// Longest kernel command line the guest accepts, without the terminating NUL.
    pub fn max_cmdline(self) -> usize {
        match self {
            HostArch::Aarch64 => arch::aarch64::image::CMDLINE_CAPACITY - 1,
            HostArch::X86_64 => arch::x86_64::layout::CMDLINE_MAX as usize - 1,
        }
    }
}

/// A size in bytes, written as a number of bytes or with a K/M/G/T suffix (binary units).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const MIB: u64 = 1 << 20;
}

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (digits, unit) = text.split_at(split);
        let shift = match unit.trim().to_ascii_uppercase().as_str() {
            "" | "B" => 0,
            "K" | "KB" | "KIB" => 10,
            "M" | "MB" | "MIB" => 20,
            "G" | "GB" | "GIB" => 30,
            "T" | "TB" | "TIB" => 40,
            _ => {
                return Err(format!(
                    "'{s}' is not a size (use e.g. 512M, 2G or a byte count)"
                ));
            }
        };
        let value: u64 = digits
            .parse()
            .map_err(|_| format!("'{s}' is not a size (use e.g. 512M, 2G or a byte count)"))?;
        value
            .checked_mul(1 << shift)
            .map(ByteSize)
            .ok_or_else(|| format!("'{s}' is too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u32, &str); 4] = [(40, "T"), (30, "G"), (20, "M"), (10, "K")];
        for (shift, unit) in UNITS {
            if self.0 != 0 && self.0.is_multiple_of(1 << shift) {
                return write!(f, "{}{unit}", self.0 >> shift);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bytes(b) => Ok(ByteSize(b)),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// What the guest kernel is and how it starts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PayloadConfig {
    /// arm64 `Image` (raw or gzip) or x86 `bzImage`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initramfs: Option<PathBuf>,
    pub cmdline: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CpusConfig {
    pub boot: u32,
}

impl Default for CpusConfig {
    fn default() -> Self {
        CpusConfig { boot: 1 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryConfig {
    pub size: ByteSize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            size: ByteSize(512 * ByteSize::MIB),
        }
    }
}

/// Where the guest's serial console goes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case", tag = "mode")]
pub enum SerialConfig {
    /// The VMM's standard input and output.
    #[default]
    Stdio,
    /// Output appended to a file; no input.
    File { path: PathBuf },
    /// No serial port in the guest.
    None,
}

impl FromStr for SerialConfig {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stdio" => Ok(SerialConfig::Stdio),
            "none" | "off" => Ok(SerialConfig::None),
            _ => match s.strip_prefix("file=") {
                Some(path) if !path.is_empty() => Ok(SerialConfig::File { path: path.into() }),
                _ => Err(format!("'{s}' is not stdio, none or file=PATH")),
            },
        }
    }
}

/// How an aarch64 guest learns its hardware.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum BootMode {
    /// Device tree.
    Dt,
    /// ACPI tables (no firmware runs: microvmm writes an EFI system table and memory map itself).
    Acpi,
}

/// What a guest reboot does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum RebootAction {
    /// microvmm exits (status 0, with a log line saying the guest rebooted).
    #[default]
    Exit,
    /// The guest starts again from the same kernel and initramfs.
    Restart,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    Off,
    Error,
    #[default]
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn filter(self) -> log::LevelFilter {
        match self {
            LogLevel::Off => log::LevelFilter::Off,
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
        }
    }
}

/// A host PCI device passed through to the guest (bound to vfio-pci on the host).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// Host PCI address (`DDDD:BB:DD.F`, or `BB:DD.F` in domain 0) or sysfs path of the device.
    pub vfio: DeviceRef,
    /// The guest PCI host bridge (segment) it sits on.
    #[serde(default)]
    pub bridge: u16,
}

impl FromStr for DeviceConfig {
    type Err = String;

    /// `vfio=<BDF or sysfs path>[,bridge=<n>]`
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut vfio = None;
        let mut bridge = 0;
        for part in s.split(',') {
            match part.split_once('=') {
                Some(("vfio", v)) if !v.is_empty() => {
                    vfio = Some(v.parse().map_err(|e: BdfError| e.to_string())?)
                }
                Some(("bridge", v)) => {
                    bridge = v
                        .parse()
                        .map_err(|_| format!("bridge '{v}' is not a bridge number"))?
                }
                _ => return Err(format!("'{part}' is not vfio=<BDF|path> or bridge=<n>")),
            }
        }
        let vfio = vfio.ok_or_else(|| format!("'{s}' names no device (vfio=<BDF|path>)"))?;
        Ok(DeviceConfig { vfio, bridge })
    }
}

/// A PCI host bridge declared explicitly, to size its windows. Bridges that devices name are
/// created with default windows when not declared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    pub id: u16,
    /// Size of its 64-bit prefetchable window (GPU BARs go here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mmio64_size: Option<ByteSize>,
}

impl FromStr for BridgeConfig {
    type Err = String;

    /// `id=<n>[,mmio64=<size>]`
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut id = None;
        let mut mmio64_size = None;
        for part in s.split(',') {
            match part.split_once('=') {
                Some(("id", v)) => {
                    id = Some(
                        v.parse()
                            .map_err(|_| format!("id '{v}' is not a bridge number"))?,
                    )
                }
                Some(("mmio64", v)) => mmio64_size = Some(v.parse()?),
                _ => return Err(format!("'{part}' is not id=<n> or mmio64=<size>")),
            }
        }
        let id = id.ok_or_else(|| format!("'{s}' has no id=<n>"))?;
        Ok(BridgeConfig { id, mmio64_size })
    }
}

/// The virtual IOMMU the guest gets in front of its passed-through devices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum IommuMode {
    /// None: the host maps all guest RAM once and devices DMA to guest physical addresses.
    #[default]
    Off,
    /// One virtual SMMUv3 per host SMMU, each in front of its own PCI host bridge, translation
    /// nested in hardware (guest stage 1 over host stage 2, through iommufd). aarch64 only.
    NestedSmmuv3,
}

/// The whole configuration of one VM.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VmConfig {
    pub payload: PayloadConfig,
    pub cpus: CpusConfig,
    pub memory: MemoryConfig,
    pub serial: SerialConfig,
    /// aarch64 only; defaults to `dt` there. x86 guests always get ACPI.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot: Option<BootMode>,
    pub on_reboot: RebootAction,
    pub log_level: LogLevel,
    /// Host devices passed through, in guest slot order per bridge.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceConfig>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pci_bridges: Vec<BridgeConfig>,
    pub iommu: IommuMode,
    /// Print device counters (vSMMU commands, CMD_SYNCs, host invalidation ioctls, events) at
    /// exit; they are logged at info level either way.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stats: bool,
}

/// A configuration [`VmConfig::validate`] accepted: what the payload, the plan and the build
/// take, so none of them re-checks or unwraps what validation settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidConfig {
    config: VmConfig,
    kernel: PathBuf,
}

impl ValidConfig {
    pub fn kernel(&self) -> &Path {
        &self.kernel
    }
}

impl std::ops::Deref for ValidConfig {
    type Target = VmConfig;

    fn deref(&self) -> &VmConfig {
        &self.config
    }
}

/// One problem with a configuration, naming the field it is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}")]
    File {
        path: PathBuf,
        #[source]
        source: ConfigFileError,
    },
    #[error("invalid configuration:\n{}", list(.0))]
    Invalid(Vec<ConfigProblem>),
}

/// Why a config file could not be read into the tree.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("reading it")]
    Read(#[source] std::io::Error),
    #[error(transparent)]
    Parse(#[from] serde_json::Error),
}

fn list(problems: &[ConfigProblem]) -> String {
    problems
        .iter()
        .map(|p| format!("  {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Smallest guest RAM microvmm accepts; Linux with an initramfs needs more than this anyway.
pub const MIN_MEMORY: u64 = 64 * ByteSize::MIB;
/// Guest RAM is mapped in 2 MiB units (huge-page friendly, and the arm64 Image placement unit).
pub const MEMORY_ALIGN: u64 = 2 * ByteSize::MIB;

impl VmConfig {
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let err = |source| ConfigError::File {
            path: path.to_path_buf(),
            source,
        };
        let text = fs::read_to_string(path).map_err(|e| err(ConfigFileError::Read(e)))?;
        VmConfig::from_json(&text).map_err(|e| err(e.into()))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("the config tree always serializes")
    }

    /// The boot mode this guest gets once defaults are applied.
    pub fn boot_mode(&self, arch: HostArch) -> BootMode {
        match arch {
            HostArch::Aarch64 => self.boot.unwrap_or(BootMode::Dt),
            HostArch::X86_64 => BootMode::Acpi,
        }
    }

    /// Checks the whole tree and reports every problem, each naming its field.
    pub fn validate(&self, arch: HostArch) -> Result<ValidConfig, ConfigError> {
        let mut problems = Vec::new();
        let mut problem = |field: &str, message: String| {
            problems.push(ConfigProblem {
                field: field.to_string(),
                message,
            })
        };

        match &self.payload.kernel {
            None => problem("payload.kernel", "no kernel given (--kernel PATH)".into()),
            Some(path) => {
                if let Err(m) = readable_file(path) {
                    problem("payload.kernel", m);
                }
            }
        }
        if let Some(path) = &self.payload.initramfs
            && let Err(m) = readable_file(path)
        {
            problem("payload.initramfs", m);
        }
        let cmdline = &self.payload.cmdline;
        if cmdline.len() > arch.max_cmdline() {
            problem(
                "payload.cmdline",
                format!(
                    "{} bytes, more than the {} the guest accepts",
                    cmdline.len(),
                    arch.max_cmdline()
                ),
            );
        }
        if cmdline.contains('\0') {
            problem("payload.cmdline", "contains a NUL byte".into());
        }

        let cpus = self.cpus.boot;
        if cpus == 0 || cpus > arch.max_vcpus() {
            problem(
                "cpus.boot",
                format!("{cpus} is outside 1..={}", arch.max_vcpus()),
            );
        }

        let size = self.memory.size.0;
        if size < MIN_MEMORY {
            problem(
                "memory.size",
                format!(
                    "{} is below the minimum of {}",
                    self.memory.size,
                    ByteSize(MIN_MEMORY)
                ),
            );
        } else if !size.is_multiple_of(MEMORY_ALIGN) {
            problem(
                "memory.size",
                format!(
                    "{} is not a multiple of {}",
                    self.memory.size,
                    ByteSize(MEMORY_ALIGN)
                ),
            );
        } else if let Some(max) = max_memory(arch)
            && size > max
        {
            problem(
                "memory.size",
                format!(
                    "{} is more than the {} the guest address map holds",
                    self.memory.size,
                    ByteSize(max)
                ),
            );
        }

        if let SerialConfig::File { path } = &self.serial {
            let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
            if path.is_dir() {
                problem("serial.path", format!("{} is a directory", path.display()));
            } else if let Some(dir) = parent.filter(|d| !d.is_dir()) {
                problem(
                    "serial.path",
                    format!("directory {} does not exist", dir.display()),
                );
            }
        }

        if arch == HostArch::X86_64 && self.boot == Some(BootMode::Dt) {
            problem(
                "boot",
                "device-tree boot exists only for aarch64 guests".into(),
            );
        }

        if self.iommu == IommuMode::NestedSmmuv3 {
            if arch != HostArch::Aarch64 {
                problem(
                    "iommu",
                    "nested-smmuv3 exists only for aarch64 guests".into(),
                );
            }
            for (i, device) in self.devices.iter().enumerate() {
                if device.bridge != 0 {
                    problem(
                        &format!("devices[{i}].bridge"),
                        "with iommu nested-smmuv3 bridges follow the host SMMUs; leave it out"
                            .into(),
                    );
                }
            }
            if !self.pci_bridges.is_empty() {
                problem(
                    "pci_bridges",
                    "with iommu nested-smmuv3 bridges follow the host SMMUs; declare none".into(),
                );
            }
        }

        let max_bridges = arch.max_pci_bridges();
        let mut declared = std::collections::BTreeSet::new();
        for (i, bridge) in self.pci_bridges.iter().enumerate() {
            let field = format!("pci_bridges[{i}]");
            if u32::from(bridge.id) >= max_bridges {
                problem(
                    &format!("{field}.id"),
                    format!("{} is outside 0..{max_bridges}", bridge.id),
                );
            }
            if !declared.insert(bridge.id) {
                problem(
                    &format!("{field}.id"),
                    format!("bridge {} declared twice", bridge.id),
                );
            }
            if let Some(size) = bridge.mmio64_size {
                let max = arch.pci_mmio64_region_size() / u64::from(max_bridges);
                if size.0 == 0 || !size.0.is_multiple_of(1 << 30) || size.0 > max {
                    problem(
                        &format!("{field}.mmio64_size"),
                        format!(
                            "{size} is not a multiple of 1G between 1G and {}",
                            ByteSize(max)
                        ),
                    );
                }
            }
        }
        // How many devices fit a bridge is the plan's to say: it decides which bridge each gets.
        let mut seen: Vec<(String, usize)> = Vec::new();
        for (i, device) in self.devices.iter().enumerate() {
            let field = format!("devices[{i}]");
            let key = device
                .vfio
                .bdf()
                .map_or_else(|| device.vfio.to_string(), |b| b.to_string());
            if let Some((_, first)) = seen.iter().find(|(k, _)| *k == key) {
                problem(
                    &format!("{field}.vfio"),
                    format!(
                        "{} is already passed through as devices[{first}]",
                        device.vfio
                    ),
                );
            } else {
                seen.push((key, i));
            }
            if u32::from(device.bridge) >= max_bridges {
                problem(
                    &format!("{field}.bridge"),
                    format!("{} is outside 0..{max_bridges}", device.bridge),
                );
            }
        }

        match (&self.payload.kernel, problems.is_empty()) {
            (Some(kernel), true) => Ok(ValidConfig {
                kernel: kernel.clone(),
                config: self.clone(),
            }),
            _ => Err(ConfigError::Invalid(problems)),
        }
    }
}

fn readable_file(path: &Path) -> Result<(), String> {
    match fs::metadata(path) {
        Err(e) => Err(format!("{}: {e}", path.display())),
        Ok(m) if !m.is_file() => Err(format!("{} is not a regular file", path.display())),
        Ok(_) => fs::File::open(path)
            .map(drop)
            .map_err(|e| format!("{}: {e}", path.display())),
    }
}

/// Largest guest RAM the address map holds: RAM ends below the PCI 64-bit windows.
fn max_memory(arch: HostArch) -> Option<u64> {
    use arch::{aarch64::layout as a, x86_64::layout as x};
    match arch {
        HostArch::Aarch64 => Some(a::RAM_LIMIT - a::RAM_BASE),
        // Below the MMIO hole, then from 4 GiB up to the 64-bit windows.
        HostArch::X86_64 => {
            Some(x::MMIO_HOLE.base + (x::PCI_MMIO64_REGION.base - x::HIGH_RAM_START))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_print() {
        for (text, bytes) in [
            ("512M", 512 << 20),
            ("2G", 2 << 30),
            ("2GiB", 2 << 30),
            ("4096", 4096),
            ("64 MiB", 64 << 20),
            ("1T", 1 << 40),
        ] {
            assert_eq!(text.parse::<ByteSize>(), Ok(ByteSize(bytes)), "{text}");
        }
        for bad in ["", "M", "12X", "-1G", "1.5G", "99999999999999999999T"] {
            assert!(bad.parse::<ByteSize>().is_err(), "{bad}");
        }
        assert_eq!(ByteSize(256 << 20).to_string(), "256M");
        assert_eq!(ByteSize(3 << 30).to_string(), "3G");
        assert_eq!(ByteSize(1000).to_string(), "1000");
    }

    #[test]
    fn serial_parses() {
        assert_eq!("stdio".parse(), Ok(SerialConfig::Stdio));
        assert_eq!("none".parse(), Ok(SerialConfig::None));
        assert_eq!(
            "file=/tmp/x".parse(),
            Ok(SerialConfig::File {
                path: "/tmp/x".into()
            })
        );
        assert!("file=".parse::<SerialConfig>().is_err());
        assert!("tty".parse::<SerialConfig>().is_err());
    }

    #[test]
    fn json_round_trips() {
        let json = r#"{
            "payload": {"kernel": "/k", "initramfs": "/i", "cmdline": "console=ttyS0"},
            "cpus": {"boot": 2},
            "memory": {"size": "256M"},
            "serial": {"mode": "file", "path": "/tmp/console"},
            "boot": "acpi",
            "on_reboot": "restart",
            "log_level": "debug"
        }"#;
        let config = VmConfig::from_json(json).unwrap();
        assert_eq!(config.memory.size, ByteSize(256 << 20));
        assert_eq!(config.boot, Some(BootMode::Acpi));
        assert_eq!(VmConfig::from_json(&config.to_json()).unwrap(), config);
    }

    #[test]
    fn defaults_fill_what_is_missing() {
        let config = VmConfig::from_json(r#"{"payload": {"kernel": "/k"}}"#).unwrap();
        assert_eq!(config.cpus.boot, 1);
        assert_eq!(config.memory.size, ByteSize(512 << 20));
        assert_eq!(config.serial, SerialConfig::Stdio);
        assert_eq!(config.boot_mode(HostArch::Aarch64), BootMode::Dt);
        assert_eq!(config.boot_mode(HostArch::X86_64), BootMode::Acpi);
    }

    #[test]
    fn validation_reports_every_problem() {
        let config = VmConfig {
            cpus: CpusConfig { boot: 0 },
            memory: MemoryConfig {
                size: ByteSize(3 << 20),
            },
            boot: Some(BootMode::Dt),
            ..Default::default()
        };
        let Err(ConfigError::Invalid(problems)) = config.validate(HostArch::X86_64) else {
            panic!("invalid config accepted");
        };
        let fields: Vec<_> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            ["payload.kernel", "cpus.boot", "memory.size", "boot"]
        );
    }

    #[test]
    fn device_and_bridge_flags_parse() {
        assert_eq!(
            "vfio=0000:02:00.0,bridge=3".parse(),
            Ok(DeviceConfig {
                vfio: DeviceRef::Bdf("0000:02:00.0".parse().unwrap()),
                bridge: 3
            })
        );
        assert!("bridge=1".parse::<DeviceConfig>().is_err());
        assert!("vfio=02:00.0,slot=2".parse::<DeviceConfig>().is_err());
        assert_eq!(
            "vfio=02:00".parse::<DeviceConfig>(),
            Err("'02:00' is not a PCI address [DDDD:]BB:DD.F (no .F)".into())
        );
        assert_eq!(
            "id=2,mmio64=64G".parse(),
            Ok(BridgeConfig {
                id: 2,
                mmio64_size: Some(ByteSize(64 << 30))
            })
        );
    }

    #[test]
    fn device_lists_are_checked_whole() {
        let mut config = VmConfig {
            devices: vec![
                "vfio=02:00.0".parse().unwrap(),
                "vfio=/sys/bus/pci/devices/0000:02:00.0".parse().unwrap(),
                "vfio=03:00.0,bridge=99".parse().unwrap(),
            ],
            pci_bridges: vec!["id=1".parse().unwrap(), "id=1,mmio64=3M".parse().unwrap()],
            ..Default::default()
        };
        config.devices.extend((0..32).map(|i| DeviceConfig {
            vfio: format!("0000:10:{i:02x}.0").parse().unwrap(),
            bridge: 5,
        }));
        let Err(ConfigError::Invalid(problems)) = config.validate(HostArch::Aarch64) else {
            panic!("accepted");
        };
        let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        let has = |s: &str| text.iter().any(|t| t.contains(s));
        for want in [
            "devices[1].vfio: /sys/bus/pci/devices/0000:02:00.0 is already passed through as devices[0]",
            "devices[2].bridge: 99 is outside 0..16",
            "pci_bridges[1].id: bridge 1 declared twice",
            "pci_bridges[1].mmio64_size: 3M is not a multiple of 1G",
        ] {
            assert!(has(want), "missing '{want}' in {text:?}");
        }
        // 32 devices on bridge 5 are the plan's to refuse (plan::tests), not the config's.
        assert!(!has("devices[34]"), "{text:?}");
    }
}
