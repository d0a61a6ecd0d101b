//! `examples/checkout.rs` as a developer runs it: its own process, against
//! a running gateway, with the environment its module doc names.

use std::path::PathBuf;
use std::process::Output;

use crate::helpers::{Options, Stack};

/// The example's binary, which `cargo test` builds beside the tests.
fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/stack-… → target/<profile>/examples/checkout
    let profile = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary is in target/<profile>/deps");
    let binary = profile.join("examples").join("checkout");
    assert!(
        binary.exists(),
        "{} is missing: `cargo test -p ficmart-client` builds it (a filter on --test does not)",
        binary.display()
    );
    binary
}

async fn checkout(stack: &Stack, card: &str) -> Output {
    tokio::process::Command::new(example_binary())
        .env("GATEWAY_URL", stack.gateways.join(","))
        .env("API_KEY", &stack.api_key)
        .env("CARD", card)
        .kill_on_drop(true)
        .output()
        .await
        .expect("the example runs")
}

#[tokio::test]
async fn the_checkout_example_captures_and_prints_the_receipt() {
    let stack = Stack::start(Options::default()).await;
    let output = checkout(&stack, "happy").await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("authorized pay_"), "{stdout}");
    assert!(stdout.contains("captured"), "{stdout}");
    // Every attempt is shown as the observer saw it; the card never is.
    assert!(stderr.contains("POST /v1/payments"), "{stderr}");
    for shown in [&stdout, &stderr] {
        assert!(!shown.contains("4111111111111111"), "{shown}");
    }
}

#[tokio::test]
async fn the_checkout_example_tells_a_decline_and_exits_1() {
    let stack = Stack::start(Options::default()).await;
    let output = checkout(&stack, "empty").await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("declined by the bank (insufficient_funds)"),
        "{stdout}"
    );
}
