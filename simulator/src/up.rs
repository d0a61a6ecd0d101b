//! `simulator up`: start the stack, say where everything is, run until Ctrl-C.

use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::cli::UpArgs;
use crate::process::{GatewayOptions, GatewayOutput};
use crate::stack::{BankChaos, Durability, MERCHANT, Stack, StackOptions};

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    if args.verbose {
        mock_bank::telemetry::init_logging();
    }
    let output = if args.verbose {
        GatewayOutput::Inherit
    } else {
        GatewayOutput::temp_log_file("gateway")
    };
    let options = StackOptions {
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
    };
    let mut signals = ShutdownSignals::listen()?;
    let mut stack = Stack::start(&options).await?;
    println!("{}", stack.database());
    println!("{}", describe(&stack, options.bank_chaos));

    tokio::select! {
        signal = signals.recv() => println!("\n{signal} received: stopping"),
        why = stack.exited() => eprintln!("{why}: stopping the rest"),
    }
    stack.shutdown().await;
    println!("stopped");
    Ok(())
}

/// What is running where, and requests to try.
fn describe(stack: &Stack, chaos: BankChaos) -> String {
    let bank = &stack.urls().bank;
    let chaos = match chaos {
        BankChaos::Default => {
            "5% of API requests fail with 500, 100–2000 ms added latency (--calm for none)"
        }
        BankChaos::Calm => "none (started with --calm)",
    };
    let bank_part = format!(
        "\
mock bank is up
  API      {bank}/api/v1
  docs     {bank}/docs/
  metrics  {bank}/metrics
  health   {bank}/health
  chaos    {bank}/admin/chaos   ({chaos})"
    );
    let Some(gateway) = stack.gateway() else {
        return format!("{bank_part}\n\nCtrl-C stops the stack.");
    };
    let url = gateway.process.url();
    let operator = gateway.process.operator_url();
    let key = &gateway.api_key;
    let pid = gateway.process.pid();
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
  ready    {operator}/ready{logs}
  API key  {key}   (merchant {MERCHANT})

{bank_part}

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
    -d '{{\"card_number\":\"4111111111111111\",\"cvv\":\"123\",\"expiry_month\":12,\"expiry_year\":2030,\"amount\":4999}}'

Ctrl-C stops the stack."
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
