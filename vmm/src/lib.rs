//! microvmm: configuration, the platform plan, the VM build and its run loop.
//!
//! Data flows one way: configuration (CLI + JSON) -> plan -> build (arch encoders, devices) -> run.

pub mod cli;
pub mod config;
pub mod dump;
pub mod host;
pub mod nested;
pub mod plan;
pub mod vfio;
pub mod vm;
