//! `--dry-run` with `--host-description`: plans for hosts this machine is not, checked through the
//! binary's JSON output and the tables `--dump-platform` writes.

mod common;

use std::process::Command;

use common::{microvmm, repo};
use serde_json::Value;

fn host(name: &str) -> String {
    repo()
        .join("vmm/tests/hosts")
        .join(name)
        .to_str()
        .unwrap()
        .to_string()
}

/// The nested-smmuv3 plan for a described host, or None where this binary plans x86 guests.
fn nested_plan(host_file: &str, devices: &[&str]) -> Option<Value> {
    if !cfg!(target_arch = "aarch64") {
        return None;
    }
    let kernel = common::kernel();
    let mut args = vec![
        "--kernel".to_string(),
        kernel.to_str().unwrap().to_string(),
        "--iommu".into(),
        "nested-smmuv3".into(),
        "--dry-run".into(),
        "--host-description".into(),
        host(host_file),
    ];
    for d in devices {
        args.push("--device".into());
        args.push(format!("vfio={d}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = microvmm(&args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

fn smmus(plan: &Value) -> Vec<(u64, String)> {
    plan["platform"]["smmus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["segment"].as_u64().unwrap(),
                s["host_smmu"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn bridges(plan: &Value) -> Vec<(u64, Vec<String>)> {
    plan["platform"]["pci_bridges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            let labels = b["functions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["label"].as_str().unwrap().to_string())
                .collect();
            (b["segment"].as_u64().unwrap(), labels)
        })
        .collect()
}

#[test]
fn one_host_smmu_with_two_devices_gets_one_vsmmu() {
    let Some(plan) = nested_plan(
        "one-smmu-two-devices.json",
        &["0000:02:00.0", "0000:03:00.0"],
    ) else {
        return;
    };
    assert_eq!(smmus(&plan), [(0, "smmu3.0x000000000c000000".to_string())]);
    assert_eq!(
        bridges(&plan),
        [(
            0,
            vec!["0000:02:00.0".to_string(), "0000:03:00.0".to_string()]
        )]
    );
    assert_eq!(plan["platform"]["smmus"][0]["mode"], "nested");
    let features = &plan["platform"]["smmus"][0]["features"];
    assert_eq!(features["oas_bits"], 44);
    assert_eq!(features["two_level_stream_table"], true);
    assert_eq!(features["range_invalidation"], true);
}

#[test]
fn three_host_smmus_get_three_vsmmus_on_three_bridges() {
    let Some(plan) = nested_plan(
        "three-smmus.json",
        &["0000:02:00.0", "0000:09:00.0", "0000:11:00.0"],
    ) else {
        return;
    };
    let s = smmus(&plan);
    assert_eq!(s.len(), 3);
    assert_eq!(s.iter().map(|(seg, _)| *seg).collect::<Vec<_>>(), [0, 1, 2]);
    let regs: Vec<u64> = plan["platform"]["smmus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["registers"]["base"].as_u64().unwrap())
        .collect();
    assert!(
        regs.windows(2).all(|w| w[1] >= w[0] + 0x2_0000),
        "{regs:x?}"
    );
    assert_eq!(bridges(&plan).len(), 3);
}

#[test]
fn devices_behind_no_smmu_get_a_bridge_without_vsmmu() {
    let Some(plan) = nested_plan(
        "mixed.json",
        &["0000:02:00.0", "0000:05:00.0", "0000:09:00.0"],
    ) else {
        return;
    };
    assert_eq!(smmus(&plan).len(), 2);
    assert_eq!(
        bridges(&plan),
        [
            (0, vec!["0000:02:00.0".to_string()]),
            (1, vec!["0000:09:00.0".to_string()]),
            (2, vec!["0000:05:00.0".to_string()]),
        ]
    );
}

#[test]
fn an_incompatible_host_smmu_is_refused_by_name() {
    if !cfg!(target_arch = "aarch64") {
        return;
    }
    let devices = ["0000:02:00.0".to_string()];
    let (status, err, _) = dump_nested("big-endian-smmu.json", &devices, "acpi");
    assert_eq!(status, Some(2));
    assert!(
        err.contains("host SMMU smmu3.0x000000000c000000 (behind 0000:02:00.0) cannot back a nested vSMMUv3: it walks big-endian tables only"),
        "{err}"
    );
}

#[test]
fn host_description_must_match_the_devices_and_needs_dry_run() {
    let kernel = common::kernel();
    let k = kernel.to_str().unwrap();
    let h = host("one-smmu-two-devices.json");
    let out = microvmm(&[
        "--kernel",
        k,
        "--host-description",
        &h,
        "--device",
        "vfio=0000:02:00.0",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("it needs --dry-run"));
    let out = microvmm(&[
        "--kernel",
        k,
        "--dry-run",
        "--host-description",
        &h,
        "--device",
        "vfio=0000:02:00.0",
        "--device",
        "vfio=0000:07:00.0",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("devices[1] is 0000:03:00.0, but the configuration names 0000:07:00.0"),
        "{err}"
    );
}

/// The dump is what the guest gets: the plan places the initramfs, and the tables tell the guest
/// where (the device tree's `/chosen`, or for ACPI boots its stub).
#[test]
fn dump_platform_writes_the_plan_and_every_table() {
    let dir = std::env::temp_dir().join(format!("microvmm-dump-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let kernel = common::kernel();
    let initramfs = repo().join("Cargo.toml");
    let mut args = vec![
        "--kernel",
        kernel.to_str().unwrap(),
        "--initramfs",
        initramfs.to_str().unwrap(),
        "--dump-platform",
        dir.to_str().unwrap(),
        "--dry-run",
    ];
    if cfg!(target_arch = "aarch64") {
        args.extend(["--boot", "acpi"]);
    }
    let out = microvmm(&args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for want in [
        "plan.json",
        "APIC.aml",
        "DSDT.aml",
        "FACP.aml",
        "RSDP.aml",
        "XSDT.aml",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    let plan: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("plan.json")).unwrap()).unwrap();
    assert!(plan["platform"]["vcpus"].as_u64().is_some());
    let size = std::fs::metadata(&initramfs).unwrap().len();
    let initrd = &plan["boot"]["initrd"];
    assert_eq!(initrd["size"].as_u64(), Some(size), "{plan}");
    assert_eq!(plan["platform"]["initrd"], *initrd);
    assert_eq!(plan, serde_json::from_slice::<Value>(&out.stdout).unwrap());
    if cfg!(target_arch = "aarch64") {
        let start = initrd["base"].as_u64().unwrap();
        let dts = dts(&dir);
        let number = |name: &str| -> u64 {
            let cells = dts
                .lines()
                .find_map(|l| l.trim().strip_prefix(&format!("{name} = <")))
                .unwrap_or_else(|| panic!("no {name} in {dts}"));
            cells
                .trim_end_matches(">;")
                .split_whitespace()
                .map(|c| u64::from_str_radix(c.trim_start_matches("0x"), 16).unwrap())
                .fold(0, |n, cell| n << 32 | cell)
        };
        assert_eq!(number("linux,initrd-start"), start);
        assert_eq!(number("linux,initrd-end"), start + size);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The guest tables of a three-SMMU plan, decoded by the standard tools: the IORT has three
/// SMMUv3 nodes and the ACPI guest's RMRs, the device tree three `arm,smmu-v3` nodes each named by
/// one PCIe node's `iommu-map`.
#[test]
fn three_vsmmus_in_the_iort_and_the_device_tree() {
    if !cfg!(target_arch = "aarch64") {
        return;
    }
    let devices = ["0000:02:00.0", "0000:09:00.0", "0000:11:00.0"].map(String::from);
    for boot in ["acpi", "dt"] {
        let (status, err, dir) = dump_nested("three-smmus.json", &devices, boot);
        assert_eq!(status, Some(0), "{err}");
        if boot == "acpi" {
            // SMMUv3, root complex and RMR nodes: one each per vSMMU and its bridge.
            assert_eq!(iort_nodes(&dir), [3, 3, 3]);
        } else {
            let dts = dts(&dir);
            assert_eq!(dts.matches("\"arm,smmu-v3\"").count(), 3, "{dts}");
            assert_eq!(dts.matches("iommu-map = ").count(), 3, "{dts}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// `--dry-run --dump-platform` of `host_file` with `devices`, booting through `boot`: the exit
/// status, the stderr and the dump directory.
fn dump_nested(
    host_file: &str,
    devices: &[String],
    boot: &str,
) -> (Option<i32>, String, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "microvmm-{}-{boot}-{}",
        host_file.trim_end_matches(".json"),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let kernel = common::kernel();
    let mut args = vec![
        "--kernel".to_string(),
        kernel.to_str().unwrap().to_string(),
        "--boot".into(),
        boot.into(),
        "--iommu".into(),
        "nested-smmuv3".into(),
        "--dry-run".into(),
        "--dump-platform".into(),
        dir.to_str().unwrap().to_string(),
        "--host-description".into(),
        host(host_file),
    ];
    for d in devices {
        args.extend(["--device".to_string(), format!("vfio={d}")]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = microvmm(&args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code(), err, dir)
}

/// The dumped IORT's SMMUv3, root complex and RMR nodes, counted in iasl's decoding.
fn iort_nodes(dir: &std::path::Path) -> [usize; 3] {
    let decoded = Command::new("iasl")
        .args(["-d", "IORT.aml"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(decoded.status.success());
    let dsl = std::fs::read_to_string(dir.join("IORT.dsl")).unwrap();
    ["04", "02", "06"].map(|kind| dsl.matches(&format!("Type : {kind}")).count())
}

/// dtc's decoding of the dumped device tree.
fn dts(dir: &std::path::Path) -> String {
    let dts = Command::new("dtc")
        .args(["-I", "dtb", "-O", "dts", "guest.dtb"])
        .current_dir(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&dts.stdout).into_owned()
}

/// The StreamIDs each IORT RMR node names, read from the table's bytes (the installed iasl
/// cannot decode RMR nodes): IORT E.d node header and 20-byte ID mappings.
fn rmr_stream_ids(iort: &[u8]) -> Vec<Vec<u32>> {
    let u32_at = |at: usize| u32::from_le_bytes(iort[at..at + 4].try_into().unwrap());
    let mut offset = u32_at(40) as usize;
    let mut rmrs = Vec::new();
    for _ in 0..u32_at(36) {
        let len = usize::from(u16::from_le_bytes([iort[offset + 1], iort[offset + 2]]));
        if iort[offset] == 6 {
            let array = offset + u32_at(offset + 12) as usize;
            let ids = (0..u32_at(offset + 8) as usize).flat_map(|i| {
                let (base, count) = (u32_at(array + 20 * i + 8), u32_at(array + 20 * i + 4));
                base..=base + count
            });
            rmrs.push(ids.collect());
        }
        offset += len;
    }
    rmrs
}

/// More functions in all than one bridge holds, behind two host SMMUs: the plan gives each SMMU
/// its own bridge and vSMMU, and the IORT and the device tree carry all 40 functions.
#[test]
fn forty_functions_behind_two_host_smmus_reach_the_iort_and_the_device_tree() {
    if !cfg!(target_arch = "aarch64") {
        return;
    }
    let devices: Vec<String> = (0..40)
        .map(|i| format!("0000:{:02x}:00.0", 0x10 + i))
        .collect();
    for boot in ["acpi", "dt"] {
        let (status, err, dir) = dump_nested("two-smmus-40.json", &devices, boot);
        assert_eq!(status, Some(0), "{err}");
        let plan: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("plan.json")).unwrap()).unwrap();
        let bridges = bridges(&plan);
        assert_eq!(bridges.len(), 2, "{bridges:?}");
        // Even devices are behind the first host SMMU, odd ones behind the second.
        for (segment, labels) in &bridges {
            let want: Vec<&String> = devices.iter().skip(*segment as usize).step_by(2).collect();
            assert_eq!(labels.iter().collect::<Vec<_>>(), want);
        }
        let rids: Vec<Vec<u32>> = plan["platform"]["pci_bridges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                let functions = b["functions"].as_array().unwrap();
                functions
                    .iter()
                    .map(|f| f["rid"].as_u64().unwrap() as u32)
                    .collect()
            })
            .collect();
        if boot == "acpi" {
            assert_eq!(iort_nodes(&dir), [2, 2, 2]);
            // Each vSMMU's RMR names exactly its bridge's functions' StreamIDs (= RIDs).
            let iort = std::fs::read(dir.join("IORT.aml")).unwrap();
            assert_eq!(rmr_stream_ids(&iort), rids);
        } else {
            let dts = dts(&dir);
            assert_eq!(dts.matches("\"arm,smmu-v3\"").count(), 2, "{dts}");
            assert_eq!(dts.matches("iommu-map = ").count(), 2, "{dts}");
            // A node per function behind a vSMMU, each named by the MSI window's
            // iommu-addresses (six cells an entry).
            assert_eq!(dts.matches("dev@").count(), 40, "{dts}");
            let addresses = dts
                .lines()
                .find_map(|l| l.trim().strip_prefix("iommu-addresses = <"))
                .expect("the MSI window names the functions");
            assert_eq!(addresses.split_whitespace().count(), 40 * 6, "{addresses}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn a_device_behind_an_unlisted_iommu_is_refused_by_name() {
    if !cfg!(target_arch = "aarch64") {
        return;
    }
    let devices = ["0000:02:00.0", "0000:05:00.0"].map(String::from);
    let (status, err, _) = dump_nested("unlisted-iommu.json", &devices, "acpi");
    assert_eq!(status, Some(2), "{err}");
    assert!(
        err.contains(
            "0000:05:00.0 is behind host IOMMU smmu.0x000000000d000000, which is no SMMUv3"
        ),
        "{err}"
    );
}
