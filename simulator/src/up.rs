//! `simulator up`: start the stack, say where everything is, run until Ctrl-C.
//!
//! Its files live in one run directory, `$TMPDIR/ficmart-up-<pid>/`: the
//! gateway's log, and [`running::STATE_FILE`], the record through which
//! `simulator gateway …` finds the stack. The directory is announced at
//! start and removed on a clean stop (Ctrl-C, SIGTERM) unless `--keep-logs`;
//! when a service fails it is kept, and the error says where.

use std::net::TcpListener;

use anyhow::bail;
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::cli::UpArgs;
use crate::process::{GatewayOptions, GatewayOutput};
use crate::run_dir::RunDir;
use crate::running::{self, UpRecord};
use crate::stack::{BankChaos, Durability, MERCHANT, Stack, StackOptions};

/// How the stack came to stop.
enum Ending {
    /// Ctrl-C or SIGTERM: the user's wish.
    Stopped,
    /// A service stopped by itself, as said.
    Failed(String),
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    // Before anything starts: a taken port is the likeliest failure (another
    // `up` still running), and its cause would otherwise be in a log.
    ports_are_free(&args)?;
    if args.verbose {
        mock_bank::telemetry::init_logging();
    }
    let signals = ShutdownSignals::listen()?;
    let run_dir = RunDir::create("up")?;
    let removed = if args.keep_logs {
        "kept on exit (--keep-logs)"
    } else {
        "removed on a clean exit, kept if a service fails; --keep-logs keeps it"
    };
    println!("run directory {} ({removed})", run_dir.path().display());
    let ended = serve(&args, &run_dir, signals).await;
    running::forget(&run_dir);
    finish(ended, run_dir, args.keep_logs)
}

/// Fails, naming the port, when one that `up` is asked to bind is taken.
fn ports_are_free(args: &UpArgs) -> anyhow::Result<()> {
    let ports = [
        (args.gateway_port, "--gateway-port"),
        (args.operator_port, "--operator-port"),
        (args.bank_port, "--bank-port"),
    ];
    for (port, flag) in ports.into_iter().filter(|(port, _)| *port != 0) {
        match TcpListener::bind(("127.0.0.1", port)) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => bail!(
                "port {port} is already in use (is another `simulator up` running?); \
                 {flag} chooses another, {flag} 0 a free one"
            ),
            Err(e) => bail!("port {port} ({flag}) cannot be listened on: {e}"),
        }
    }
    Ok(())
}

/// Starts the stack, records where it is, and runs it until a signal or a
/// service's end; stops it either way.
async fn serve(
    args: &UpArgs,
    run_dir: &RunDir,
    mut signals: ShutdownSignals,
) -> anyhow::Result<Ending> {
    let options = stack_options(args, run_dir);
    let mut stack = Stack::start(&options).await?;
    println!("{}", stack.database());
    if let Err(e) = record(&stack, run_dir) {
        eprintln!("warning: `simulator gateway` will not find this stack: {e:#}");
    }
    println!("{}", describe(&stack, options.bank_chaos, run_dir));

    let ending = tokio::select! {
        signal = signals.recv() => {
            println!("\n{signal} received: stopping");
            Ending::Stopped
        }
        why = stack.exited() => {
            eprintln!("{why}: stopping the rest");
            Ending::Failed(why)
        }
    };
    stack.shutdown().await;
    Ok(ending)
}

fn stack_options(args: &UpArgs, run_dir: &RunDir) -> StackOptions {
    let output = if args.verbose {
        GatewayOutput::Inherit
    } else {
        GatewayOutput::LogFile(run_dir.file("gateway.log"))
    };
    StackOptions {
        bank_port: args.bank_port,
        bank_chaos: if args.calm {
            BankChaos::Calm
        } else {
            BankChaos::Default
        },
        gateway: Some(GatewayOptions {
            operator_port: args.operator_port,
            // A checkout developer's receiver runs on this machine.
            args: vec!["--webhook-allow-private-urls".into(), "true".into()],
            ..GatewayOptions::new(args.gateway_port, output)
        }),
        durability: Durability::Fast,
    }
}

/// Writes where the stack is, for `simulator gateway`.
fn record(stack: &Stack, run_dir: &RunDir) -> anyhow::Result<()> {
    let urls = stack.urls();
    let (Some(gateway_database), Some(gateway)) = (&urls.gateway_database, &urls.gateway) else {
        bail!("the stack runs no gateway");
    };
    UpRecord::of_this_process(
        gateway_database.clone(),
        urls.bank_database.clone(),
        gateway.clone(),
        urls.bank.clone(),
    )?
    .write(run_dir)
}

/// Removes the run directory after a clean stop (unless asked to keep it);
/// keeps it, and says so, after a failure.
fn finish(ended: anyhow::Result<Ending>, run_dir: RunDir, keep: bool) -> anyhow::Result<()> {
    let dir = run_dir.path().display().to_string();
    match ended {
        Ok(Ending::Stopped) if keep => println!("stopped; its logs are kept in {dir}"),
        Ok(Ending::Stopped) => {
            run_dir.remove()?;
            println!("stopped");
        }
        Ok(Ending::Failed(why)) => bail!("{why}; its logs are kept in {dir}"),
        Err(e) => bail!("{e:#}\n(the logs are kept in {dir})"),
    }
    Ok(())
}

/// What is running where, and requests to try.
fn describe(stack: &Stack, chaos: BankChaos, run_dir: &RunDir) -> String {
    let bank = describe_bank(stack, chaos);
    let Some(gateway) = stack.gateway() else {
        return format!("{bank}\n\nCtrl-C stops the stack.");
    };
    let url = gateway.process.url();
    let operator = gateway.process.operator_url();
    let key = &gateway.api_key;
    let pid = gateway.process.pid();
    let database = stack.urls().gateway_database.as_deref().unwrap_or("");
    let logs = match gateway.process.log_file() {
        Some(path) => format!("\n  logs     {}", path.display()),
        None => String::new(),
    };
    format!(
        "\
gateway is up (pid {pid})
  URL      {url}
  API      {url}/v1/payments
  docs     {url}/docs/
  health   {url}/health
  operator {operator}
  metrics  {operator}/metrics
  ready    {operator}/ready
  database {database}{logs}
  API key  {key}   (merchant {MERCHANT})

{bank}

{commands}

{curls}

Ctrl-C stops the stack.",
        commands = describe_gateway_commands(stack, run_dir),
        curls = describe_curls(stack, url, key),
    )
}

fn describe_bank(stack: &Stack, chaos: BankChaos) -> String {
    let urls = stack.urls();
    let bank = &urls.bank;
    let chaos = match chaos {
        BankChaos::Default => {
            "5% of API requests fail with 500, 100–2000 ms added latency (--calm for none)"
        }
        BankChaos::Calm => "none (started with --calm)",
    };
    format!(
        "\
mock bank is up
  API      {bank}/api/v1
  docs     {bank}/docs/
  metrics  {bank}/metrics
  health   {bank}/health
  chaos    {bank}/admin/chaos   ({chaos})
  database {database}",
        database = urls.bank_database,
    )
}

/// How to run `gateway` subcommands on this stack's databases.
fn describe_gateway_commands(stack: &Stack, run_dir: &RunDir) -> String {
    let urls = stack.urls();
    let database = urls.gateway_database.as_deref().unwrap_or("");
    let bank = &urls.bank;
    let record = run_dir.file(running::STATE_FILE);
    format!(
        "\
Any `gateway` command on this stack (`simulator gateway` finds it through {record}):
  cargo run -p simulator -- gateway api-key list
  cargo run -p simulator -- gateway reconcile --since 1h
or with the gateway's own binary (cargo build -p gateway):
  DATABASE_URL='{database}' BANK_URL={bank} target/debug/gateway api-key list",
        record = record.display(),
    )
}

fn describe_curls(stack: &Stack, url: &str, key: &str) -> String {
    let bank = &stack.urls().bank;
    format!(
        "\
Authorize $49.99 on the test card through the gateway:
  KEY={key}
  curl -sS -X POST {url}/v1/payments \\
    -H \"Authorization: Bearer $KEY\" \\
    -H \"Idempotency-Key: demo-$(date +%s)-$RANDOM\" \\
    -H 'Content-Type: application/json' \\
    -d '{{\"order_id\":\"ord_1001\",\"customer_id\":\"cus_77\",\"amount\":4999,\"currency\":\"USD\",\"card\":{{\"number\":\"4111111111111111\",\"cvv\":\"123\",\"expiry_month\":12,\"expiry_year\":2030}}}}'

Or straight at the bank:
  curl -s -X POST {bank}/api/v1/authorizations \\
    -H 'Content-Type: application/json' \\
    -H \"Idempotency-Key: demo-$(date +%s)-$RANDOM\" \\
    -d '{{\"card_number\":\"4111111111111111\",\"cvv\":\"123\",\"expiry_month\":12,\"expiry_year\":2030,\"amount\":4999}}'"
    )
}

/// SIGINT (Ctrl-C) and SIGTERM, listened for from creation on: one that
/// arrives while the stack starts is not lost, and does not kill the process
/// before it can stop what it started.
struct ShutdownSignals {
    interrupt: Signal,
    terminate: Signal,
}

impl ShutdownSignals {
    fn listen() -> anyhow::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// Waits for either and names it.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}
