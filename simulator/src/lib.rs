//! Starts the FicMart stack locally and benchmarks it.
//!
//! Module map:
//! - [`cli`]: the command line (`up`, `bench`).
//! - [`stack`]: Postgres plus the services running on it, in-process;
//!   started together, stopped together.
//! - [`up`]: `simulator up`, the stack until Ctrl-C.
//! - [`bench`]: `simulator bench`, concurrent authorizations and a ledger check.
//! - [`bank`]: a client for the bank's health and admin endpoints.
//! - [`cards`]: Luhn-valid test card numbers.
//! - [`stats`]: nearest-rank latency percentiles.
//! - [`report`]: the benchmark report, as text or JSON.

pub mod bank;
pub mod bench;
pub mod cards;
pub mod cli;
pub mod report;
pub mod stack;
pub mod stats;
pub mod up;

use std::process::ExitCode;

use cli::{Cli, Command};

/// Runs one command; the exit code is the command's verdict.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Up(args) => up::run(args).await.map(|()| ExitCode::SUCCESS),
        Command::Bench(args) => bench::run(args).await,
    }
}
