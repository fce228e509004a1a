//! The configuration interface end to end: the example configs, a corpus of bad configs each with
//! its expected message, and the `microvmm` binary's handling of them (status 2, before any KVM
//! call: these tests pass on machines without /dev/kvm).

mod common;

use std::path::PathBuf;

use common::{microvmm, repo};
use vmm::config::{HostArch, VmConfig};

/// A real, readable file standing in for a kernel.
fn kernel_stand_in() -> PathBuf {
    repo().join("Cargo.toml")
}

fn corpus() -> Vec<(PathBuf, String, String)> {
    let dir = repo().join("vmm/tests/bad-configs");
    let expected = std::fs::read_to_string(dir.join("expected.txt")).unwrap();
    let mut cases = Vec::new();
    for line in expected
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (file, message) = line.split_once(": ").unwrap();
        let text = std::fs::read_to_string(dir.join(file))
            .unwrap()
            .replace("KERNEL", kernel_stand_in().to_str().unwrap());
        cases.push((dir.join(file), text, message.to_string()));
    }
    let listed = cases.len();
    let files = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "json")
        })
        .count();
    assert_eq!(
        listed, files,
        "every bad config needs its line in expected.txt"
    );
    cases
}

#[test]
fn every_bad_config_is_rejected_with_its_message() {
    for (path, text, message) in corpus() {
        let error = match VmConfig::from_json(&text) {
            Err(e) => e.to_string(),
            Ok(config) => match config.validate(HostArch::current()) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("{} was accepted", path.display()),
            },
        };
        assert!(
            error.contains(&message),
            "{}: got '{error}', want '{message}'",
            path.display()
        );
    }
}

#[test]
fn examples_parse_and_name_only_missing_lab_files() {
    let dir = repo().join("resources/examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        seen += 1;
        let config = VmConfig::from_file(&path).unwrap();
        // Outside the lab the example's kernel path does not exist; nothing else may be wrong.
        if let Err(e) = config.validate(HostArch::current()) {
            let text = e.to_string();
            for line in text.lines().skip(1) {
                assert!(
                    line.trim_start().starts_with("payload."),
                    "{}: {line}",
                    path.display()
                );
            }
        }
    }
    assert!(seen >= 3, "examples missing");
}

#[test]
fn binary_exits_2_on_bad_config_and_lists_every_problem() {
    let out = microvmm(&["--cpus", "0", "--memory", "1M"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("payload.kernel: no kernel given"), "{err}");
    assert!(err.contains("cpus.boot: 0 is outside"), "{err}");
    assert!(err.contains("memory.size: 1M is below"), "{err}");

    let bad = repo().join("vmm/tests/bad-configs/unknown-field.json");
    let out = microvmm(&["--config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field `cpu`"));

    let out = microvmm(&["--memory", "lots"]);
    assert_eq!(out.status.code(), Some(2), "clap usage errors also exit 2");
}

#[test]
fn dry_run_refuses_an_empty_or_garbage_payload_by_name() {
    let empty = std::env::temp_dir().join(format!("microvmm-empty-{}", std::process::id()));
    std::fs::write(&empty, b"").unwrap();
    let garbage = kernel_stand_in();
    for path in [&empty, &garbage] {
        let out = microvmm(&["--kernel", path.to_str().unwrap(), "--dry-run"]);
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        let want = format!(
            "payload.kernel: {} is no kernel this guest can boot",
            path.display()
        );
        assert!(err.contains(&want), "{err}");
        assert!(out.stdout.is_empty(), "no plan for a bad kernel");
    }
    let kernel = common::kernel();
    let out = microvmm(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--initramfs",
        empty.to_str().unwrap(),
        "--dry-run",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let want = format!("payload.initramfs: {} is empty", empty.display());
    assert!(err.contains(&want), "{err}");
    let _ = std::fs::remove_file(&empty);
}

#[test]
fn print_config_shows_the_merged_tree() {
    let example = repo().join("resources/examples/lab-x86_64.json");
    let kernel = kernel_stand_in();
    let out = microvmm(&[
        "--config",
        example.to_str().unwrap(),
        "--kernel",
        kernel.to_str().unwrap(),
        "--initramfs",
        kernel.to_str().unwrap(),
        "--cpus",
        "3",
        "--print-config",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    let merged: VmConfig = serde_json::from_str(&text).unwrap();
    assert_eq!(merged.cpus.boot, 3, "the flag wins");
    assert_eq!(merged.memory.size.0, 256 << 20, "the file's value stays");
    assert_eq!(merged.payload.kernel.as_deref(), Some(kernel.as_path()));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn help_documents_every_option() {
    let out = microvmm(&["--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--config",
        "--kernel",
        "--initramfs",
        "--cmdline",
        "--cpus",
        "--memory",
        "--serial",
        "--boot",
        "--on-reboot",
        "--log-level",
        "--print-config",
        "--device",
        "--pci-bridge",
        "Exit status",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}
