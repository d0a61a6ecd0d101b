use std::process::ExitCode;

use clap::Parser;
use simulator::cli::Cli;

fn main() -> ExitCode {
    simulator::main(Cli::parse())
}
