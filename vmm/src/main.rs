use std::process::ExitCode;

use clap::Parser;
use vmm::cli::Cli;
use vmm::config::{ConfigError, HostArch};

/// Configuration problems end the process with this status before anything touches KVM.
const CONFIG_ERROR: u8 = 2;

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
    match vmm::vm::run(&config) {
        Ok(exit) => {
            log::info!("guest ended: {exit:?}");
            ExitCode::from(exit.status() as u8)
        }
        Err(e) => {
            // Devices the host cannot pass through are bad input, like a bad config.
            let status = match e {
                vmm::vm::VmError::Host(_) => ExitCode::from(CONFIG_ERROR),
                _ => ExitCode::FAILURE,
            };
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                text.push_str(": ");
                text.push_str(&cause.to_string());
                source = cause.source();
            }
            eprintln!("microvmm: {text}");
            status
        }
    }
}
