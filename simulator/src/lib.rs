//! Starts the FicMart stack locally and benchmarks it.
//!
//! Module map:
//! - [`cli`]: the command line (`up`, `bench`, `run`, `mutants`, `gateway`).
//! - [`stack`]: Postgres plus the services running on it (the bank
//!   in-process, the gateway as a child); started together, stopped together.
//! - [`process`]: the gateway child process: spawn, ready, SIGTERM, SIGKILL.
//! - [`children`]: child processes that die with this one, even by SIGKILL.
//! - [`up`]: `simulator up`, the stack until Ctrl-C.
//! - [`run_dir`]: one temp directory per command for its logs, removed when it ends well.
//! - [`running`]: the record of a running `up`, which `simulator gateway` reads.
//! - [`bench`]: `simulator bench`, concurrent authorizations and a ledger check.
//! - [`mix`]: `bench --mix`, whole checkout flows in set proportions, from a seed.
//! - [`steady`]: the steady-state window of a bench (every client busy).
//! - [`floor`]: the machine's floor, pgbench's single-row insert on the same cluster.
//! - [`bank`]: a client for the bank's health and admin endpoints.
//! - [`cards`]: Luhn-valid test card numbers.
//! - [`stats`]: nearest-rank latency percentiles.
//! - [`report`]: the benchmark report, as text or JSON.
//! - [`cpu`]: CPU per authorization by process, from `/proc`, for the report.
//! - [`time_split`]: where an authorization's time went, from the services' metrics.
//! - [`scenario`]: a chaos scenario as data, generated from a seed by proptest.
//! - [`model`]: the legal payment states, from the gateway's transition table.
//! - [`driver`]: the client side: plans carried out (patient clients through
//!   the `ficmart-client` crate), every exchange recorded.
//! - [`run`]: one simulation in phases (start, drive, settle, observe, finish).
//! - [`faults`]: the fault plan carried out beside the traffic.
//! - [`receiver`]: the merchants' webhook receiver, with chaos of its own.
//! - [`invariants`]: the nineteen checks, named in the report.
//! - [`revocation`]: an API key revoked halfway through a run, probed throughout.
//! - [`run_report`]: `simulator run`'s report: text, JSON, HTML.
//! - [`simulate`]: `simulator run` itself (and the shrinking loop).
//! - [`mutants`]: `simulator mutants`, the mutation table.
//! - [`load`]: `simulator load`, a year of payments written set-based.
//! - [`reads`]: `simulator reads`, reads and sizes on a loaded database.

pub mod bank;
pub mod bench;
pub mod cards;
pub mod children;
pub mod cli;
pub mod cpu;
pub mod driver;
pub mod faults;
pub mod floor;
pub mod invariants;
pub mod load;
pub mod mix;
pub mod model;
pub mod mutants;
pub mod process;
pub mod reads;
pub mod receiver;
pub mod report;
pub mod revocation;
pub mod run;
pub mod run_dir;
pub mod run_report;
pub mod running;
pub mod scenario;
pub mod simulate;
pub mod stack;
pub mod stats;
pub mod steady;
pub mod time_split;
pub mod up;

use std::future::Future;
use std::process::ExitCode;

use cli::{Cli, Command};

/// Runs one command; the exit code is the command's verdict.
///
/// `gateway` runs the gateway's own command line, which builds its own
/// runtime; the others run on a runtime built here.
pub fn main(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Gateway(args) => process::gateway_main(args),
        Command::Up(args) => on_runtime(async { up::run(args).await.map(|()| ExitCode::SUCCESS) }),
        Command::Bench(args) => on_runtime(bench::run(args)),
        Command::Run(args) => on_runtime(simulate::run(args)),
        Command::Mutants(args) => on_runtime(mutants::run(args)),
        Command::Load(args) => on_runtime(load::run(args)),
        Command::Reads(args) => on_runtime(reads::run(args)),
    }
}

fn on_runtime(command: impl Future<Output = anyhow::Result<ExitCode>>) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
