//! The real `gateway` binary, as an operator runs it: `api-key create`,
//! `serve` (through the crash tests' harness), SIGTERM. Its logs are
//! captured and searched for card data.

use std::process::Command;

use reqwest::StatusCode;
use serde_json::Value;

use crate::crash::harness::Launch;
use crate::helpers::*;

const GATEWAY: &str = env!("CARGO_BIN_EXE_gateway");

#[tokio::test]
async fn the_binary_serves_and_its_logs_hold_no_card_data() {
    let (bank_address, _) = spawn_bank(None).await;
    let database_url = throwaway_pg::shared()
        .fresh_database("gateway")
        .await
        .unwrap();

    let created = Command::new(GATEWAY)
        .args([
            "api-key",
            "create",
            "--merchant",
            "ficmart",
            "--database-url",
            &database_url,
        ])
        .output()
        .unwrap();
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let stdout = String::from_utf8(created.stdout).unwrap();
    let api_key = stdout.trim_end().to_owned();
    assert_eq!(stdout, format!("{api_key}\n"), "only the key on stdout");
    assert!(api_key.starts_with("sk_test_"));

    let gateway = Launch::new(&database_url, &bank_address)
        .set("RUST_LOG", "debug")
        .start()
        .await;
    let base = gateway.base();
    let client = crate::helpers::test_client();
    let pay = |card: Card| {
        client
            .post(format!("{base}/v1/payments"))
            .bearer_auth(&api_key)
            .header("Idempotency-Key", new_key())
            .json(&payment_body(card, 1000, "ord_p", "cus_p"))
            .send()
    };
    let approved: Value = pay(HAPPY_CARD).await.unwrap().json().await.unwrap();
    assert_eq!(approved["status"], "authorized");
    for card in [
        LIMITED_CARD,
        EMPTY_CARD,
        EXPIRED_CARD,
        ("4111111111111112", "123", 12, 2030),
    ] {
        assert!(pay(card).await.unwrap().status().is_client_error() || card == LIMITED_CARD);
    }
    let capture = client
        .post(format!(
            "{base}/v1/payments/{}/capture",
            approved["id"].as_str().unwrap()
        ))
        .bearer_auth(&api_key)
        .header("Idempotency-Key", new_key())
        .send()
        .await
        .unwrap();
    assert_eq!(capture.status(), StatusCode::OK);

    let logs = gateway.stop().await.join("\n");
    assert!(
        logs.contains("\"request_id\""),
        "JSON logs with a request id"
    );
    assert!(logs.contains("gateway stopped"));
    for (number, cvv, ..) in ALL_CARDS
        .into_iter()
        .chain([("4111111111111112", "123", 12, 2030)])
    {
        assert!(!logs.contains(number), "a card number reached the logs");
        assert!(
            !logs.contains(&format!("\"{cvv}\"")),
            "a CVV reached the logs"
        );
    }
}

/// Runs the binary with `args` and `env` to its exit (at most 30 s):
/// its status, stdout, stderr and how long it took.
fn run_to_exit(
    args: &[&str],
    env: &[(&str, &str)],
) -> (
    std::process::ExitStatus,
    String,
    String,
    std::time::Duration,
) {
    use std::process::Stdio;
    let started = std::time::Instant::now();
    let mut command = Command::new(GATEWAY);
    command
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("the gateway binary starts");
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > std::time::Duration::from_secs(30) {
            let _ = child.kill();
            panic!("the gateway did not exit within 30 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let took = started.elapsed();
    let output = child.wait_with_output().unwrap();
    (
        output.status,
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
        took,
    )
}

#[test]
fn an_unreachable_database_is_named_with_its_cause_and_the_password_never_shown() {
    // A port nobody listens on: bound, then let go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let password = "s3cret-Passw0rd";
    let url = format!("postgres://ficmart:{password}@127.0.0.1:{port}/payments");
    let secret = gateway::idempotency::Secret::random().expose().to_owned();
    let (status, stdout, stderr, took) = run_to_exit(
        &["serve", "--port", "0", "--operator-port", "0"],
        &[
            ("DATABASE_URL", &url),
            ("FINGERPRINT_SECRET", &secret),
            ("DB_CONNECT_TIMEOUT_MS", "1500"),
        ],
    );
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("127.0.0.1:{port}")),
        "the host and port: {stderr}"
    );
    assert!(
        stderr.to_lowercase().contains("connection refused"),
        "the cause: {stderr}"
    );
    assert!(!stderr.contains("pool timed out"), "{stderr}");
    assert!(took < std::time::Duration::from_secs(10), "took {took:?}");
    assert!(
        took >= std::time::Duration::from_millis(1_000),
        "tried again: {took:?}"
    );
    for text in [&stdout, &stderr] {
        assert!(!text.contains(password), "the password was shown: {text}");
    }

    // The one-shot commands say the same.
    let (status, stdout, stderr, _) = run_to_exit(&["migrate", "--database-url", &url], &[]);
    assert!(!status.success());
    assert!(
        stderr.contains(&format!("127.0.0.1:{port}"))
            && stderr.to_lowercase().contains("connection refused"),
        "{stderr}"
    );
    assert!(!stderr.contains(password) && !stdout.contains(password));
}

#[tokio::test]
async fn the_log_opens_with_the_gateways_own_migration_line_not_sqlx_notices() {
    let database_url = throwaway_pg::shared()
        .fresh_database("gateway")
        .await
        .unwrap();
    let total = gateway::store::MIGRATOR.iter().count();
    let latest = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter_map(|name| name.strip_suffix(".sql").map(str::to_owned))
        .max()
        .expect("migrations");

    // A first start applies them all; every start after finds the table,
    // which is when Postgres says so in a notice.
    let (status, _, stderr, _) = run_to_exit(&["migrate", "--database-url", &database_url], &[]);
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "migrations applied: {total} (latest {latest}; {total} new)"
        )),
        "{stderr}"
    );

    let (bank_address, _) = spawn_bank(None).await;
    let gateway = Launch::new(&database_url, &bank_address).start().await;
    let lines = gateway.lines();
    let logs = gateway.stop().await;
    for line in lines.iter().chain(&logs) {
        assert!(!line.contains("_sqlx_migrations"), "{line}");
    }
    let first: Value = serde_json::from_str(&lines[0]).expect("a JSON line");
    assert_eq!(first["level"], "INFO", "{first}");
    assert_eq!(
        first["fields"]["message"],
        format!("migrations applied: {total} (latest {latest}; 0 new)"),
        "{first}"
    );
}

/// A secret refused for being too short is still a secret (or most of
/// one): the refusal names the setting and the rule, never the value,
/// which would otherwise land in the container's logs.
#[test]
fn a_secret_refused_as_too_short_is_not_printed() {
    let short = "Tw0-Thirds-Of-A-Real-Secret-xyz";
    for name in [
        "FINGERPRINT_SECRET",
        "FINGERPRINT_PREVIOUS_SECRET",
        "WEBHOOK_SECRET_KEY",
    ] {
        let valid = gateway::idempotency::Secret::random().expose().to_owned();
        let mut env = vec![
            ("DATABASE_URL", "postgres://127.0.0.1:1/none"),
            ("FINGERPRINT_SECRET", valid.as_str()),
        ];
        env.retain(|(key, _)| *key != name);
        env.push((name, short));
        let (status, stdout, stderr, _) = run_to_exit(&["serve"], &env);
        assert!(!status.success(), "{name}: {stderr}");
        assert!(stderr.contains("32 bytes"), "{name}: the rule: {stderr}");
        for text in [&stdout, &stderr] {
            assert!(!text.contains(short), "{name} was printed: {text}");
        }
    }
}
