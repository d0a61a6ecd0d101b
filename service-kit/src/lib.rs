//! What the gateway and the mock bank have in common as services. They are
//! separate services that share no state; this is only code that would
//! otherwise be written twice. The simulator uses [`luhn`] too, to make
//! card numbers.
//!
//! Module map:
//! - [`logging`]: JSON log lines on stdout, filtered by `RUST_LOG`.
//! - [`shutdown`]: a graceful stop on SIGTERM or SIGINT.
//! - [`json`]: canonical JSON, for recognising a re-sent request.
//! - [`luhn`]: the card-number check: validation and the check digit.

pub mod json;
pub mod logging;
pub mod luhn;
pub mod shutdown;
