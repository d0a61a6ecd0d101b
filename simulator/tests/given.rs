//! `simulator run --gateway-url …`: a run on a system someone else started.
//! Here that system is a stack started with the library (Postgres, the bank,
//! one gateway); the built binary is pointed at it and must start nothing,
//! pass every check, and leave the bank's chaos settings as it found them.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::{Value, json};
use simulator::process::{GatewayOptions, GatewayOutput};
use simulator::run::{GATEWAY_SETTINGS, OPTIONAL_GATEWAY_SETTINGS};
use simulator::stack::{BankChaos, Durability, Stack, StackOptions};

async fn simulator(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_simulator"))
            .args(args)
            .output()
            .expect("the simulator binary runs")
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn run_on_given_urls_starts_nothing_passes_and_restores_the_chaos() {
    let mut gateway = GatewayOptions::new(0, GatewayOutput::Discard);
    gateway.program = Some(PathBuf::from(env!("CARGO_BIN_EXE_simulator")));
    gateway.args = GATEWAY_SETTINGS
        .iter()
        .chain(&OPTIONAL_GATEWAY_SETTINGS)
        .flat_map(|(k, v)| [(*k).to_owned(), (*v).to_owned()])
        .collect();
    let stack = Stack::start(&StackOptions {
        bank_port: 0,
        bank_chaos: BankChaos::Calm,
        gateway: Some(gateway),
        durability: Durability::Fast,
    })
    .await
    .expect("the stack starts");
    let urls = stack.urls().clone();
    let api_key = stack.gateway().expect("a gateway").api_key.clone();
    let outcome = async {
        let http = reqwest::Client::new();
        let chaos_url = format!("{}/admin/chaos", urls.bank);
        // Someone's own settings, which the run must put back.
        http.put(&chaos_url)
            .json(&json!({"min_latency_ms": 1, "max_latency_ms": 3, "timeout_ms": 1234}))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap();
        let before: Value = http
            .get(&chaos_url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();

        let given = vec![
            "run".to_owned(),
            "--gateway-url".to_owned(),
            urls.gateway.clone().expect("the gateway's URL"),
            "--api-key".to_owned(),
            api_key,
            "--bank-url".to_owned(),
            urls.bank.clone(),
            "--gateway-database-url".to_owned(),
            urls.gateway_database
                .clone()
                .expect("the gateway's database"),
            "--bank-database-url".to_owned(),
            urls.bank_database.clone(),
            "--quiet".to_owned(),
            "--no-shrink".to_owned(),
        ];
        let with = |extra: &[&str]| {
            let mut args = given.clone();
            args.extend(extra.iter().map(|s| (*s).to_owned()));
            args
        };

        // A profile that kills gateways is refused, before anything is touched.
        let refused = simulator(with(&["--chaos", "crashy", "--payments", "3"])).await;
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success(), "{stderr}");
        assert!(stderr.contains("kills gateway replicas"), "{stderr}");

        let output = simulator(with(&[
            "--chaos",
            "calm",
            "--seed",
            "5",
            "--payments",
            "10",
            "--cards",
            "3",
            "--concurrency",
            "4",
        ]))
        .await;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stdout}\n{stderr}");
        assert!(
            stdout.starts_with("simulator run: PASS (seed 5)"),
            "{stdout}"
        );
        assert!(
            stdout.contains("mode       given URLs: 1 gateway(s)"),
            "{stdout}"
        );
        assert!(stdout.contains("10 of 10 payments"), "{stdout}");
        assert_eq!(
            stdout.matches("  PASS  ").count(),
            simulator::invariants::INVARIANTS.len(),
            "{stdout}"
        );
        assert!(!stdout.contains("FAIL"), "{stdout}");
        assert!(!stdout.contains("--replicas"), "{stdout}");

        let after: Value = http
            .get(&chaos_url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(after, before);
        // The stack's own gateway is still the one serving (nothing was
        // started in its place or killed).
        assert!(stack.gateway().is_some());
    };
    let outcome =
        futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(outcome)).await;
    stack.shutdown().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
