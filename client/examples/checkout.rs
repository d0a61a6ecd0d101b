//! A checkout through the gateway: authorize with a fresh key, capture,
//! print the receipt; a decline, an answer still pending and an abandoned
//! authorization are handled as a checkout would.
//!
//! Start the stack in one terminal (Postgres, the mock bank, the gateway):
//!
//! ```sh
//! cargo run -p simulator -- up          # add --calm for a bank without chaos
//! ```
//!
//! It prints the gateway's URL (`http://127.0.0.1:8080` unless
//! `--gateway-port` says otherwise) and an API key. In another:
//!
//! ```sh
//! API_KEY=<the key it printed> cargo run -p ficmart-client --example checkout
//! ```
//!
//! | variable | default | |
//! |---|---|---|
//! | `GATEWAY_URL` | `http://127.0.0.1:8080` | one or more base URLs, comma-separated (replicas) |
//! | `API_KEY` | (required) | the key `up` printed |
//! | `CARD` | `happy` | `happy` (4111…, $10,000), `limited` (4242…, $500) or `empty` (5555…, $0: declined) |
//! | `AMOUNT` | `4999` | integer cents |
//!
//! `up` starts the bank with the original's chaos (5 % failures, 100–2000 ms
//! of latency), so some attempts fail or wait: each attempt is printed to
//! stderr as the client's observer sees it, retries included.
//!
//! Exit status: 0 when captured, 1 when declined or not finished, 2 on a
//! usage error.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use client::{
    AttemptOutcome, AttemptRecord, AuthorizeRequest, Card, Client, Error, IdempotencyKey, Payment,
    RetryPolicy,
};

const DEFAULT_GATEWAY_URL: &str = "http://127.0.0.1:8080";

/// How often a checkout resumes an operation still pending before it tells
/// the customer "we'll let you know": each resume is a whole call, with its
/// own deadline.
const RESUMES: u32 = 3;

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(problem) => {
            eprintln!("{problem}\n(see the module doc of examples/checkout.rs)");
            return ExitCode::from(2);
        }
    };
    let client = match Client::new(&config.gateway_urls, &config.api_key) {
        Ok(client) => client
            .with_retry_policy(RetryPolicy::default())
            .with_observer(Arc::new(print_attempt)),
        Err(problem) => {
            eprintln!("cannot build the client: {problem}");
            return ExitCode::from(2);
        }
    };
    let order = format!("ord_{}", std::process::id());
    let request = AuthorizeRequest::usd(&order, "cus_example", config.amount, config.card);
    println!("checkout of order {order}: {} cents", config.amount);

    // A fresh key for this authorization; a real checkout stores it with
    // the order before calling, so that a crash here resumes it.
    let authorize_key = IdempotencyKey::random();
    let authorized = resume(|| client.authorize(&authorize_key, &request)).await;
    let payment = match authorized {
        Ok(payment) => payment,
        Err(error) => return report(&error),
    };
    println!("authorized {} ({})", payment.id, payment.status);

    let capture_key = IdempotencyKey::random();
    match resume(|| client.capture(&capture_key, &payment.id)).await {
        Ok(captured) => {
            print_receipt(&captured);
            ExitCode::SUCCESS
        }
        Err(error) => report(&error),
    }
}

/// Calls `operation` again (with the same key, which the closure holds)
/// while its outcome is still unknown, a few times; then gives up with
/// the last error.
async fn resume<F, Fut>(mut operation: F) -> Result<Payment, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Payment, Error>>,
{
    let mut resumes = 0;
    loop {
        match operation().await {
            Err(error) if error.resumable() && resumes < RESUMES => {
                resumes += 1;
                eprintln!("  not final yet ({error}); resuming with the same key");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            outcome => return outcome,
        }
    }
}

/// What the customer is told.
fn report(error: &Error) -> ExitCode {
    match error {
        Error::Declined(declined) => {
            println!(
                "declined by the bank ({}): ask for another card; payment {}",
                declined.code,
                error
                    .payment_id()
                    .map_or_else(|| "?".to_owned(), ToString::to_string)
            );
        }
        Error::StillPending { payment, key } => {
            println!(
                "payment {} is still {}: the gateway finishes it in the background; \
                 resume later with Idempotency-Key {key}",
                payment.id, payment.status
            );
        }
        Error::AuthorizationAbandoned(_) => {
            println!("the authorization was given up; nothing is held. Start again with a new key");
        }
        Error::InvalidRequest(_)
        | Error::InvalidState(_)
        | Error::AuthorizationExpired(_)
        | Error::KeyReused(_)
        | Error::NotFound(_)
        | Error::Unauthenticated(_)
        | Error::BankError(_)
        | Error::Unavailable { .. }
        | Error::Transport { .. }
        | Error::Decode { .. }
        | Error::Other(_) => println!("checkout failed: {error}"),
    }
    ExitCode::FAILURE
}

fn print_receipt(payment: &Payment) {
    println!("receipt");
    println!("  payment   {}", payment.id);
    println!("  order     {}", payment.order_id);
    println!(
        "  amount    {}.{:02} {}",
        payment.amount / 100,
        payment.amount % 100,
        payment.currency
    );
    println!(
        "  card      {} ending {}, expires {:02}/{}",
        payment.card.brand, payment.card.last4, payment.card.expiry_month, payment.card.expiry_year
    );
    println!("  status    {}", payment.status);
    if let Some(capture) = &payment.bank.capture_id {
        println!("  capture   {capture}");
    }
    for step in &payment.history {
        println!(
            "  history   {:<10} {}",
            step.status.as_str(),
            step.at.to_rfc3339()
        );
    }
}

fn print_attempt(record: &AttemptRecord) {
    let what = match &record.outcome {
        AttemptOutcome::Response {
            status, replayed, ..
        } => format!("{status}{}", if *replayed { " (replayed)" } else { "" }),
        AttemptOutcome::Transport { error } => format!("no answer: {error}"),
        AttemptOutcome::Cancelled => "cancelled".to_owned(),
    };
    eprintln!(
        "  [call {} attempt {}] {} {} via {} -> {what} in {} ms",
        record.call,
        record.attempt,
        record.method,
        record.path,
        record.base_url,
        record.latency.as_millis()
    );
}

struct Config {
    gateway_urls: Vec<String>,
    api_key: String,
    card: Card,
    amount: i64,
}

impl Config {
    fn from_env() -> Result<Self, String> {
        let gateway_urls = std::env::var("GATEWAY_URL")
            .unwrap_or_else(|_| DEFAULT_GATEWAY_URL.to_owned())
            .split(',')
            .map(|url| url.trim().to_owned())
            .collect();
        let api_key = std::env::var("API_KEY")
            .ok()
            .filter(|key| !key.is_empty())
            .ok_or("API_KEY is required: the key `cargo run -p simulator -- up` printed")?;
        let card = match std::env::var("CARD").as_deref().unwrap_or("happy") {
            "happy" => Card::new("4111111111111111", "123", 12, 2030),
            "limited" => Card::new("4242424242424242", "456", 6, 2030),
            "empty" => Card::new("5555555555554444", "789", 9, 2030),
            other => return Err(format!("CARD={other}: use happy, limited or empty")),
        };
        let amount = match std::env::var("AMOUNT") {
            Ok(raw) => raw
                .parse()
                .map_err(|_| format!("AMOUNT={raw}: an integer number of cents"))?,
            Err(_) => 4999,
        };
        Ok(Self {
            gateway_urls,
            api_key,
            card,
            amount,
        })
    }
}
