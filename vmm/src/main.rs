use std::process::ExitCode;

use clap::Parser;
use vmm::cli::Cli;
use vmm::config::{HostArch, ValidConfig};
use vmm::host::ProbedHost;
use vmm::payload::Payload;
use vmm::plan::Plan;

/// Configuration problems end the process with this status before anything touches KVM.
const CONFIG_ERROR: u8 = 2;

use vmm::error_chain as chain;

/// Why microvmm stopped before the guest started: status 2 (bad input) for anything the
/// configuration, the payload, the host's devices or the plan refuse.
fn prepare(
    cli: &Cli,
    config: &ValidConfig,
    arch: HostArch,
) -> Result<(ProbedHost, Payload, Plan), String> {
    let payload = Payload::open(config).map_err(|e| chain(&e))?;
    vmm::startup::mark("payload read");
    let host = match &cli.host_description {
        Some(path) => {
            vmm::host::HostDescription::from_file(path, config).map(ProbedHost::described)
        }
        None => vmm::host::Host::default().describe(config),
    }
    .map_err(|e| chain(&e))?;
    vmm::startup::mark("host devices probed and opened");
    let plan = vmm::plan::platform(config, arch, &host.description, &payload.footprint())
        .map_err(|e| chain(&e))?;
    let report = vmm::dump::PlanReport {
        host: &host.description,
        platform: &plan.platform,
        boot: &plan.boot,
    };
    if let Some(dir) = &cli.dump_platform {
        let files = vmm::dump::write(dir, &report).map_err(|e| chain(&e))?;
        log::info!("wrote {} files to {}", files.len(), dir.display());
    }
    if cli.dry_run {
        println!("{}", report.to_json());
    }
    Ok((host, payload, plan))
}

fn main() -> ExitCode {
    vmm::startup::begin();
    let cli = Cli::parse();
    let config = match cli.merged_config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("microvmm: {}", chain(&e));
            return ExitCode::from(CONFIG_ERROR);
        }
    };
    let arch = HostArch::current();
    if cli.print_config {
        println!("{}", config.to_json());
    }
    let config = match config.validate(arch) {
        Ok(valid) => valid,
        Err(e) => {
            eprintln!("microvmm: {}", chain(&e));
            return ExitCode::from(CONFIG_ERROR);
        }
    };
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
    // Inspected once, probed once, planned once: --dry-run, --dump-platform and the boot all use
    // this plan.
    let (host, payload, plan) = match prepare(&cli, &config, arch) {
        Ok(prepared) => prepared,
        Err(text) => {
            eprintln!("microvmm: {text}");
            return ExitCode::from(CONFIG_ERROR);
        }
    };
    if cli.dry_run {
        return ExitCode::SUCCESS;
    }

    match vmm::vm::run(&config, &plan, &payload, &host) {
        Ok(exit) => {
            log::info!("guest ended: {exit:?}");
            ExitCode::from(exit.status() as u8)
        }
        Err(e) => {
            eprintln!("microvmm: {}", chain(&e));
            ExitCode::FAILURE
        }
    }
}
