//! The command line: `up` and `bench`.

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "simulator",
    version,
    about = "Starts the FicMart payment stack locally and benchmarks it"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the stack (Postgres and the mock bank) and run until Ctrl-C.
    Up(UpArgs),
    /// Fire authorizations at a target and report throughput and latency.
    Bench(BenchArgs),
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Port of the mock bank; 0 picks a free port.
    #[arg(long, default_value_t = 8787)]
    pub bank_port: u16,
    /// Start the bank with no chaos (no injected failures, no added latency)
    /// instead of the contract's defaults (5% failures, 100–2000 ms latency).
    #[arg(long)]
    pub calm: bool,
    /// Print the bank's JSON logs (RUST_LOG filters them; default info).
    #[arg(long, short)]
    pub verbose: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// The mock bank's `POST /api/v1/authorizations`.
    Bank,
    /// The payment gateway (not there yet).
    Gateway,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// What to benchmark.
    #[arg(long, value_enum)]
    pub target: Target,
    /// Base URL of a running target (e.g. http://127.0.0.1:8787); without
    /// it the simulator starts its own stack on a free port.
    #[arg(long)]
    pub url: Option<String>,
    /// Fresh test cards to spread the load over (round-robin).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub cards: u32,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub concurrency: u32,
    /// Authorizations to send in total.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u32).range(1..))]
    pub requests: u32,
    /// Latency the bank adds to every API request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Print the report as JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Print the in-process bank's JSON logs.
    #[arg(long, short)]
    pub verbose: bool,
}
