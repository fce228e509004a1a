//! Shared by the integration tests that start the `microvmm` binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A kernel for the architecture under test that passes inspection: for aarch64 the 64-byte header
/// of an Image with a 2 MiB footprint; for x86 a protocol 2.15 relocatable 64-bit bzImage, one setup
/// sector and 512 bytes of kernel, with an 8 MiB `init_size` at a 16 MiB `pref_address`.
pub fn kernel() -> PathBuf {
    let name = if cfg!(target_arch = "aarch64") {
        "Image"
    } else {
        "bzImage"
    };
    repo().join("vmm/tests/kernels").join(name)
}

/// Runs the binary with `args`. An aarch64 test run on an x86 host is itself under qemu-user,
/// which does not follow exec, so the binary goes through the same runner there.
pub fn microvmm(args: &[&str]) -> Output {
    let binary = env!("CARGO_BIN_EXE_microvmm");
    let runner: Vec<&str> = option_env!("MICROVMM_AARCH64_TEST_RUNNER")
        .filter(|_| cfg!(target_arch = "aarch64"))
        .map(|r| r.split_whitespace().collect())
        .filter(|r: &Vec<&str>| {
            r.first()
                .is_some_and(|p| Path::new("/usr/bin").join(p).exists())
        })
        .unwrap_or_default();
    let mut command = match runner.split_first() {
        Some((program, runner_args)) => {
            let mut c = Command::new(program);
            c.args(runner_args).arg(binary);
            c
        }
        None => Command::new(binary),
    };
    command.args(args).output().unwrap()
}
