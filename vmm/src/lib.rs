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

/// Start-up milestones, logged at info level with the time since the process started, so where
/// start-up goes is visible on any host (`--log-level info`).
pub mod startup {
    use std::sync::OnceLock;
    use std::time::Instant;

    static START: OnceLock<Instant> = OnceLock::new();

    /// Call first thing in `main`; later calls change nothing.
    pub fn begin() {
        START.get_or_init(Instant::now);
    }

    /// Milliseconds since [`begin`].
    pub fn elapsed_ms() -> f64 {
        START.get_or_init(Instant::now).elapsed().as_secs_f64() * 1e3
    }

    pub fn mark(milestone: &str) {
        log::info!("start-up: {milestone} at {:.1} ms", elapsed_ms());
    }
}

/// An error and its causes on one line, `outer: cause: root cause`.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        // Some crates' errors print their cause too; say each text once.
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Middle);

    /// Prints its cause as part of its own text, as some crates' errors do.
    #[derive(Debug, thiserror::Error)]
    #[error("middle: {0}")]
    struct Middle(#[source] std::io::Error);

    #[test]
    fn each_cause_is_said_once() {
        let err = Outer(Middle(std::io::Error::other("root")));
        assert_eq!(error_chain(&err), "outer: middle: root");
    }
}
