//! `simulator up`: start the stack, say where everything is, run until Ctrl-C.

use crate::cli::UpArgs;
use crate::stack::{BankChaos, Stack, StackOptions};

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    if args.verbose {
        mock_bank::telemetry::init_logging();
    }
    let options = StackOptions {
        bank_port: args.bank_port,
        bank_chaos: if args.calm {
            BankChaos::Calm
        } else {
            BankChaos::Default
        },
    };
    let mut stack = Stack::start(&options).await?;
    println!("{}", stack.database());
    println!("{}", describe(&stack, options.bank_chaos));

    tokio::select! {
        signal = shutdown_signal() => println!("\n{signal} received: stopping"),
        why = stack.exited() => eprintln!("{why}: stopping the rest"),
    }
    stack.shutdown().await;
    println!("stopped");
    Ok(())
}

/// What is running where, and a request to try.
fn describe(stack: &Stack, chaos: BankChaos) -> String {
    let bank = &stack.urls().bank;
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

Authorize $49.99 on the test card:
  curl -s -X POST {bank}/api/v1/authorizations \\
    -H 'Content-Type: application/json' \\
    -H \"Idempotency-Key: demo-$(date +%s)-$RANDOM\" \\
    -d '{{\"card_number\":\"4111111111111111\",\"cvv\":\"123\",\"expiry_month\":12,\"expiry_year\":2030,\"amount\":4999}}'

Ctrl-C stops the stack."
    )
}

/// Waits for Ctrl-C (SIGINT) or SIGTERM and names it.
async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return "SIGINT";
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}
