//! JSON log lines on stdout.

use tracing_subscriber::EnvFilter;

/// Which span a log line carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spans {
    /// None: lines carry their own fields only.
    Omitted,
    /// The innermost span (a request's id and what it touched), without
    /// the list of all open spans, which would repeat it when it is the
    /// only one.
    Current,
}

/// JSON lines on stdout, filtered by `RUST_LOG` (default `info`). Does
/// nothing if the process already has a subscriber (a test running two
/// services).
pub fn init(spans: Spans) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(spans == Spans::Current)
        .with_span_list(false)
        .try_init();
}
