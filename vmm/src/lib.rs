//! microvmm: configuration, the platform plan, the VM build and its run loop.
//!
//! Data flows one way: configuration (CLI + JSON) -> plan -> build (arch encoders, devices) -> run.

pub mod bdf;
pub mod cli;
pub mod config;
pub mod dump;
pub mod host;
pub mod nested;
pub mod payload;
pub mod plan;
pub mod vfio;
pub mod vm;

/// An error and its causes on one line, `outer: cause: root cause`.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
