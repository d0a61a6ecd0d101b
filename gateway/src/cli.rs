//! The `gateway` command line.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::domain::mermaid_state_diagram;

/// The status of a command that exists but does nothing yet; distinct from
/// 1 (failure) so a script can tell "missing" from "broken".
pub const NOT_IMPLEMENTED_EXIT: u8 = 2;

const NOT_IMPLEMENTED: &str = "not implemented yet: see issue 3";

#[derive(Debug, Parser)]
#[command(
    name = "gateway",
    version,
    about = "FicMart's payment gateway: authorize, capture, void and refund against the bank."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the payment state machine as a Mermaid stateDiagram-v2,
    /// generated from the code's transition table.
    StateDiagram,
    /// Serve the HTTP API. NOT IMPLEMENTED YET (issue 3): prints a notice and
    /// exits with status 2.
    Serve,
    /// Apply the database migrations. NOT IMPLEMENTED YET (issue 3): prints a
    /// notice and exits with status 2.
    Migrate,
    /// Manage merchants' API keys.
    ApiKey {
        #[command(subcommand)]
        command: ApiKeyCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum ApiKeyCommand {
    /// Create an API key for a merchant. NOT IMPLEMENTED YET (issue 3):
    /// prints a notice and exits with status 2.
    Create {
        /// The merchant's name.
        #[arg(long, value_name = "NAME")]
        merchant: String,
    },
}

/// The binary's entry point: parses the arguments (clap exits on `--help`
/// or a usage error) and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = run(
        cli,
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    );
    match result {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("gateway: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `cli`, writing to `out` and `err` rather than the process's streams
/// so tests can read what a command prints. Returns the exit status.
pub fn run(cli: Cli, out: &mut dyn Write, err: &mut dyn Write) -> anyhow::Result<u8> {
    match cli.command {
        Command::StateDiagram => {
            out.write_all(mermaid_state_diagram().as_bytes())
                .and_then(|()| out.flush())
                .context("writing the diagram to stdout")?;
            Ok(0)
        }
        Command::Serve
        | Command::Migrate
        | Command::ApiKey {
            command: ApiKeyCommand::Create { .. },
        } => {
            writeln!(err, "{NOT_IMPLEMENTED}").context("writing to stderr")?;
            Ok(NOT_IMPLEMENTED_EXIT)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn run_args(args: &[&str]) -> (u8, String, String) {
        let cli = Cli::try_parse_from(args).expect("valid arguments");
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run(cli, &mut out, &mut err).expect("writes to a Vec succeed");
        (
            code,
            String::from_utf8(out).expect("utf-8"),
            String::from_utf8(err).expect("utf-8"),
        )
    }

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn state_diagram_prints_the_generated_diagram() {
        let (code, out, err) = run_args(&["gateway", "state-diagram"]);
        assert_eq!(code, 0);
        assert_eq!(out, mermaid_state_diagram());
        assert!(err.is_empty());
    }

    #[test]
    fn unfinished_commands_say_so_and_exit_2() {
        for args in [
            &["gateway", "serve"][..],
            &["gateway", "migrate"],
            &["gateway", "api-key", "create", "--merchant", "FicMart"],
        ] {
            let (code, out, err) = run_args(args);
            assert_eq!(code, NOT_IMPLEMENTED_EXIT, "{args:?}");
            assert!(out.is_empty(), "{args:?}");
            assert_eq!(err, "not implemented yet: see issue 3\n", "{args:?}");
        }
    }

    #[test]
    fn api_key_create_requires_a_merchant() {
        assert!(Cli::try_parse_from(["gateway", "api-key", "create"]).is_err());
    }

    #[test]
    fn help_admits_what_is_unfinished() {
        let help = Cli::command().render_long_help().to_string();
        for command in ["state-diagram", "serve", "migrate", "api-key"] {
            assert!(help.contains(command), "{command} missing from\n{help}");
        }
        assert_eq!(help.matches("NOT IMPLEMENTED YET").count(), 2, "{help}");
    }
}
