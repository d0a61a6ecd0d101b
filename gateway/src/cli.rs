//! The `gateway` command line: `serve` (the default), `migrate`,
//! `api-key create|list|revoke`, `reconcile`, `webhooks resend`,
//! `state-diagram`.

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::Settings;
use crate::domain::mermaid_state_diagram;
use crate::{Application, store, telemetry};

#[derive(Debug, Parser)]
#[command(
    name = "gateway",
    version,
    about = "FicMart's payment gateway: authorize, capture, void and refund against the bank.",
    after_help = "`gateway [OPTIONS]` with no command serves: it means `gateway serve [OPTIONS]`."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// `gateway` alone, or followed by options, means `gateway serve …`. Done on
/// the arguments rather than with a flattened optional `Settings`, whose
/// environment variables would make clap demand its required flags even
/// when a subcommand is given.
fn with_default_command(args: Vec<OsString>) -> Vec<OsString> {
    let first = args.get(1).map(|arg| arg.to_string_lossy().into_owned());
    let serve = match first.as_deref() {
        None => true,
        Some("-h" | "--help" | "-V" | "--version") => false,
        Some(flag) => flag.starts_with('-'),
    };
    if !serve {
        return args;
    }
    let mut args = args;
    args.insert(args.len().min(1), OsString::from("serve"));
    args
}

// Parsed once per process: the size of `Serve`'s settings costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API (the default). Applies migrations first.
    Serve(Settings),
    /// Apply the database migrations and exit.
    Migrate(DatabaseArgs),
    /// Manage merchants' API keys.
    ApiKey {
        #[command(subcommand)]
        command: ApiKeyCommand,
    },
    /// Print the payment state machine as a Mermaid stateDiagram-v2,
    /// generated from the code's transition table.
    StateDiagram,
    /// Compare recent payments with the bank; move receipts that are behind
    /// it forward, report mismatches. Exits 1 if any is left over.
    Reconcile(crate::reconcile::cli::ReconcileArgs),
    /// Webhook deliveries.
    Webhooks {
        #[command(subcommand)]
        command: WebhooksCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// Send an event again (same webhook-id): to one endpoint, or to every
    /// enabled endpoint of its merchant that wants its type. A running
    /// gateway's workers deliver it at once. Prints one line per delivery
    /// queued: the endpoint and its URL.
    Resend {
        /// The event's id (`evt_…`), from `GET /v1/events` or a delivery.
        #[arg(value_name = "EVENT_ID")]
        event: String,
        /// Only to this endpoint (`we_…`).
        #[arg(long, value_name = "ENDPOINT_ID")]
        endpoint: Option<String>,
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// The gateway's Postgres database, e.g.
    /// postgres://gateway:PASSWORD@db:5432/gateway (its password is never
    /// shown).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
}

#[derive(Debug, Subcommand)]
pub enum ApiKeyCommand {
    /// Create an API key for a merchant (created if new) and print it on
    /// stdout. Only its hash is stored: it cannot be shown again.
    Create {
        /// The merchant's name.
        #[arg(long, value_name = "NAME")]
        merchant: String,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// List API keys, oldest first, one per line, tab-separated: key id,
    /// merchant, key prefix (never the key), created at, and `active` or
    /// `revoked <at>`.
    List {
        /// Only this merchant's keys.
        #[arg(long, value_name = "NAME")]
        merchant: Option<String>,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Revoke a key: requests with it get 401 from the next one on. Prints
    /// the key revoked; refuses a prefix that matches several keys.
    Revoke {
        /// The key's id (from `list`), its prefix (or the start of it), or
        /// the whole key.
        #[arg(value_name = "PREFIX_OR_ID")]
        key: String,
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

/// The binary's entry point.
pub fn main() -> ExitCode {
    main_from(std::env::args_os())
}

/// Runs the command line given as `args` (the first is the program name),
/// so that another binary (the simulator) can run a gateway process.
pub fn main_from<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let cli = Cli::parse_from(with_default_command(args));
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("gateway: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("gateway: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Reconcile(args) => crate::reconcile::cli::run(args).await,
        Command::StateDiagram => {
            print!("{}", mermaid_state_diagram());
            Ok(())
        }
        Command::Serve(settings) => serve(settings).await,
        Command::Migrate(database) => {
            let pool = store::connect(
                &database.database_url,
                1,
                std::time::Duration::from_secs(10),
            )
            .await?;
            let migrated = store::migrate(&pool).await?;
            eprintln!("gateway: {migrated}");
            Ok(())
        }
        Command::ApiKey {
            command: ApiKeyCommand::Create { merchant, database },
        } => {
            let pool = store::connect(
                &database.database_url,
                1,
                std::time::Duration::from_secs(10),
            )
            .await?;
            store::MIGRATOR.run(&pool).await?;
            let mut tx = pool.begin().await?;
            if let Some(existing) = store::merchants::similar_merchant(&mut tx, &merchant).await? {
                anyhow::bail!(
                    "a merchant named {existing:?} exists; names are exact, and a key for \
                     {merchant:?} would belong to a new merchant with none of its payments \
                     or keys. Nothing was created."
                );
            }
            let (_, key) = store::merchants::create_api_key(&mut tx, &merchant).await?;
            tx.commit().await?;
            // Only the key on stdout, so that `KEY=$(gateway api-key create …)` works.
            println!("{key}");
            Ok(())
        }
        Command::ApiKey {
            command: ApiKeyCommand::List { merchant, database },
        } => api_key_list(&database, merchant.as_deref()).await,
        Command::ApiKey {
            command: ApiKeyCommand::Revoke { key, database },
        } => api_key_revoke(&database, &key).await,
        Command::Webhooks {
            command:
                WebhooksCommand::Resend {
                    event,
                    endpoint,
                    database,
                },
        } => webhooks_resend(&database, &event, endpoint.as_deref()).await,
    }
}

async fn webhooks_resend(
    database: &DatabaseArgs,
    event: &str,
    endpoint: Option<&str>,
) -> anyhow::Result<()> {
    use crate::domain::{EndpointId, EventId};
    let event = EventId::parse(event).map_err(|e| anyhow::anyhow!("{e}"))?;
    let endpoint = endpoint
        .map(|raw| EndpointId::parse(raw).map_err(|e| anyhow::anyhow!("{e}")))
        .transpose()?;
    let pool = store::connect(
        &database.database_url,
        1,
        std::time::Duration::from_secs(10),
    )
    .await?;
    let mut conn = pool.acquire().await?;
    let Some(merchant) = store::events::merchant_of(&mut conn, event).await? else {
        anyhow::bail!("no event {event}");
    };
    let queued = store::webhooks::resend(&mut conn, merchant, event, endpoint).await?;
    if queued.is_empty() {
        anyhow::bail!("no enabled endpoint to send {event} to; nothing was queued");
    }
    for delivery in store::webhooks::deliveries_of(&mut conn, event).await? {
        if queued.contains(&delivery.id) {
            let endpoint = store::webhooks::endpoint_url(&mut conn, delivery.endpoint_id).await?;
            println!(
                "{}\t{endpoint}",
                EndpointId::from_uuid(delivery.endpoint_id)?
            );
        }
    }
    eprintln!("gateway: {event} queued for {} endpoint(s)", queued.len());
    Ok(())
}

async fn api_key_list(database: &DatabaseArgs, merchant: Option<&str>) -> anyhow::Result<()> {
    let pool = store::connect(
        &database.database_url,
        1,
        std::time::Duration::from_secs(10),
    )
    .await?;
    let mut conn = pool.acquire().await?;
    for key in store::merchants::list_keys(&mut conn, merchant).await? {
        println!("{}", key.line());
    }
    Ok(())
}

async fn api_key_revoke(database: &DatabaseArgs, selector: &str) -> anyhow::Result<()> {
    use store::merchants::Revocation;
    let pool = store::connect(
        &database.database_url,
        1,
        std::time::Duration::from_secs(10),
    )
    .await?;
    let mut tx = pool.begin().await?;
    let revocation = store::merchants::revoke_key(&mut tx, selector).await?;
    tx.commit().await?;
    match revocation {
        Revocation::Revoked(key) => {
            println!("{}", key.line());
            eprintln!("gateway: revoked {} ({})", key.prefix, key.merchant);
            Ok(())
        }
        Revocation::AlreadyRevoked(key) => {
            println!("{}", key.line());
            eprintln!("gateway: {} was already revoked", key.prefix);
            Ok(())
        }
        // A whole key is a secret: only its shown prefix goes to the error
        // (a terminal's scrollback, a CI log).
        Revocation::NotFound => anyhow::bail!("no API key matches {:?}", shown(selector)),
        Revocation::Ambiguous(keys) => {
            let lines: Vec<String> = keys.iter().map(|k| format!("  {}", k.line())).collect();
            anyhow::bail!(
                "{:?} matches {} keys; nothing was revoked. Name one by its id:\n{}",
                shown(selector),
                keys.len(),
                lines.join("\n")
            )
        }
    }
}

/// Serves until SIGTERM or SIGINT, then lets in-flight requests finish.
async fn serve(settings: Settings) -> anyhow::Result<()> {
    telemetry::init_logging();
    let application = Application::build(settings).await?;
    let instance = application.instance();
    tracing::info!(
        port = application.port(),
        operator_port = application.operator_port(),
        %instance,
        "gateway listening"
    );
    service_kit::shutdown::on_signal(application.handle())?;
    application.run_until_stopped().await?;
    tracing::info!(%instance, "gateway stopped");
    Ok(())
}

/// A key selector as it may be printed: an id as given, anything else cut
/// to the length of the prefix `api-key list` shows. Not only a selector
/// that starts as a key does: a whole key pasted with something before it
/// (`Bearer sk_test_…`) is a secret too.
fn shown(selector: &str) -> String {
    let prefix = store::merchants::shown_prefix(selector);
    if prefix.len() < selector.len() && uuid::Uuid::parse_str(selector.trim()).is_err() {
        format!("{prefix}…")
    } else {
        selector.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_flag_of_every_command_has_help() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in command.get_arguments() {
                if !arg.is_hide_set() && arg.get_help().is_none() {
                    missing.push(format!("{path} --{}", arg.get_id()));
                }
            }
            for sub in command.get_subcommands() {
                if sub.get_about().is_none() {
                    missing.push(format!("{path} {}", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "gateway", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:?}");
    }

    #[test]
    fn every_command_is_in_the_help() {
        let help = Cli::command().render_long_help().to_string();
        for command in ["serve", "migrate", "api-key", "reconcile", "state-diagram"] {
            assert!(help.contains(command), "{command} missing from\n{help}");
        }
    }

    #[test]
    fn api_key_create_requires_a_merchant() {
        let parsed = Cli::try_parse_from([
            "gateway",
            "api-key",
            "create",
            "--database-url",
            "postgres://x",
        ]);
        assert!(parsed.is_err());
    }

    #[test]
    fn api_key_list_and_revoke_parse() {
        let list = Cli::try_parse_from([
            "gateway",
            "api-key",
            "list",
            "--merchant",
            "ficmart",
            "--database-url",
            "postgres://x",
        ]);
        assert!(list.is_ok());
        let revoke = |args: &[&str]| {
            Cli::try_parse_from(
                ["gateway", "api-key", "revoke"]
                    .iter()
                    .chain(args)
                    .chain(&["--database-url", "postgres://x"]),
            )
        };
        assert!(revoke(&["sk_test_ab12"]).is_ok());
        assert!(revoke(&[]).is_err(), "a key must be named");
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(with_default_command(
            args.iter().map(OsString::from).collect(),
        ))
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn serve_is_the_default() {
        let cli = parse(&[
            "gateway",
            "--database-url",
            "postgres://x",
            "--fingerprint-secret",
            SECRET,
            "--port",
            "9",
        ])
        .unwrap();
        let Command::Serve(settings) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(settings.port, 9);
        assert!(
            parse(&["gateway", "--help"]).is_err(),
            "help is help, not serve"
        );
        assert!(matches!(
            parse(&["gateway", "state-diagram"]).unwrap().command,
            Command::StateDiagram
        ));
    }

    #[test]
    fn serving_needs_a_long_enough_fingerprint_secret_and_never_shows_it() {
        let serve = |secret: Option<&str>| {
            let mut args = vec!["gateway", "serve", "--database-url", "postgres://x"];
            args.extend(
                secret
                    .map(|s| ["--fingerprint-secret", s])
                    .into_iter()
                    .flatten(),
            );
            parse(&args)
        };
        let missing = serve(None).expect_err("no secret");
        assert!(
            missing.to_string().contains("--fingerprint-secret"),
            "{missing}"
        );
        let short = serve(Some("short")).expect_err("a short secret");
        assert!(short.to_string().contains("at least 32 bytes"), "{short}");
        let Command::Serve(settings) = serve(Some(SECRET)).unwrap().command else {
            panic!("not serve")
        };
        assert!(!format!("{settings:?}").contains(SECRET));
    }
}
