use std::process::ExitCode;

use clap::Parser;
use vmm::cli::Cli;
use vmm::config::{ConfigError, HostArch};

/// Configuration problems end the process with this status before anything touches KVM.
const CONFIG_ERROR: u8 = 2;

use vmm::error_chain as chain;

/// `--dry-run` / `--dump-platform`: plan for this host (or a described one), print and/or dump.
fn plan_only(cli: &Cli, config: &vmm::config::VmConfig, arch: HostArch) -> Result<(), String> {
    let host = match &cli.host_description {
        Some(path) => vmm::host::HostDescription::from_file(path, config),
        None => vmm::host::Host::default().describe(config),
    }
    .map_err(|e| chain(&e))?;
    let platform = vmm::plan::platform(config, arch, &host).map_err(|e| chain(&e))?;
    let report = vmm::dump::PlanReport {
        host: &host,
        platform: &platform,
    };
    if let Some(dir) = &cli.dump_platform {
        let files = vmm::dump::write(dir, &report).map_err(|e| chain(&e))?;
        log::info!("wrote {} files to {}", files.len(), dir.display());
    }
    if cli.dry_run {
        println!("{}", report.to_json());
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match cli.merged_config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("microvmm: {e}");
            return ExitCode::from(CONFIG_ERROR);
        }
    };
    let arch = HostArch::current();
    let valid = config.validate(arch);
    if cli.print_config {
        println!("{}", config.to_json());
    }
    if let Err(e @ ConfigError::Invalid(_)) | Err(e @ ConfigError::File { .. }) = valid {
        eprintln!("microvmm: {e}");
        return ExitCode::from(CONFIG_ERROR);
    }
    if cli.print_config {
        return ExitCode::SUCCESS;
    }
    env_logger::Builder::new()
        .filter_level(config.log_level.filter())
        .format_target(false)
        .init();
    if cli.host_description.is_some() && !cli.dry_run {
        eprintln!("microvmm: --host-description plans for another host; it needs --dry-run");
        return ExitCode::from(CONFIG_ERROR);
    }
    if cli.dry_run || cli.dump_platform.is_some() {
        match plan_only(&cli, &config, arch) {
            Ok(()) if cli.dry_run => return ExitCode::SUCCESS,
            Ok(()) => {}
            Err(text) => {
                eprintln!("microvmm: {text}");
                return ExitCode::from(CONFIG_ERROR);
            }
        }
    }

    match vmm::vm::run(&config) {
        Ok(exit) => {
            log::info!("guest ended: {exit:?}");
            ExitCode::from(exit.status() as u8)
        }
        Err(e) => {
            // Devices the host cannot pass through are bad input, like a bad config.
            let status = match e {
                vmm::vm::VmError::Host(_) | vmm::vm::VmError::Plan(_) => {
                    ExitCode::from(CONFIG_ERROR)
                }
                _ => ExitCode::FAILURE,
            };
            eprintln!("microvmm: {}", chain(&e));
            status
        }
    }
}
