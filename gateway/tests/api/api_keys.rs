//! `gateway api-key list|revoke` through the real binary, and a revoked
//! key refused once the replica's memory of it lapses (`API_KEY_CACHE_MS`),
//! or from the very next request without that memory.

use std::process::{Command, Output};

use reqwest::StatusCode;

use crate::helpers::*;

const GATEWAY: &str = env!("CARGO_BIN_EXE_gateway");

fn gateway(args: &[&str], database_url: &str) -> Output {
    Command::new(GATEWAY)
        .args(args)
        .args(["--database-url", database_url])
        .output()
        .expect("the gateway binary runs")
}

fn stdout_of(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// (id, merchant, prefix, created_at, status) of each line.
fn columns(stdout: &str) -> Vec<Vec<String>> {
    stdout
        .lines()
        .map(|line| line.split('\t').map(str::to_owned).collect::<Vec<_>>())
        .inspect(|cols| assert_eq!(cols.len(), 5, "{cols:?}"))
        .collect()
}

#[tokio::test]
async fn keys_are_listed_by_prefix_only_and_revoked_by_prefix_or_id() {
    let app = spawn_app().await;
    let second = create_key(&app.pool, "ficmart").await;
    let other = create_key(&app.pool, "another-shop").await;
    let keys = [app.api_key.as_str(), second.as_str(), other.as_str()];

    let all = stdout_of(&gateway(&["api-key", "list"], &app.database_url));
    for key in keys {
        assert!(!all.contains(key), "a whole key was listed:\n{all}");
    }
    let rows = columns(&all);
    assert_eq!(rows.len(), 3, "{all}");
    for (row, key) in rows.iter().zip(keys) {
        assert!(
            key.starts_with(&row[2]),
            "{} is not the start of the key",
            row[2]
        );
        assert!(row[2].len() < key.len() && row[2].starts_with("sk_test_"));
        assert!(
            chrono::DateTime::parse_from_rfc3339(&row[3]).is_ok(),
            "{}",
            row[3]
        );
        assert_eq!(row[4], "active");
    }
    assert_eq!(
        rows.iter().map(|r| r[1].as_str()).collect::<Vec<_>>(),
        ["ficmart", "ficmart", "another-shop"]
    );
    let ficmart = stdout_of(&gateway(
        &["api-key", "list", "--merchant", "ficmart"],
        &app.database_url,
    ));
    assert_eq!(columns(&ficmart).len(), 2, "{ficmart}");
    let nobody = stdout_of(&gateway(
        &["api-key", "list", "--merchant", "nobody"],
        &app.database_url,
    ));
    assert_eq!(nobody, "");

    // A prefix that every key has names none of them: refused, nothing revoked.
    let ambiguous = gateway(&["api-key", "revoke", "sk_test_"], &app.database_url);
    assert!(!ambiguous.status.success());
    assert!(String::from_utf8_lossy(&ambiguous.stderr).contains("matches 3 keys"));
    let missing = gateway(&["api-key", "revoke", "sk_test_zzzz"], &app.database_url);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no API key matches"));
    // A whole key that matches nothing (this database is not its own) is
    // a secret all the same: only its prefix is printed.
    let elsewhere = format!("sk_test_{}", "ab".repeat(24));
    let unknown = gateway(&["api-key", "revoke", &elsewhere], &app.database_url);
    assert!(!unknown.status.success());
    let said = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        said.contains("no API key matches \"sk_test_abab…\""),
        "{said}"
    );
    assert!(!said.contains(&elsewhere), "{said}");
    // Nor when pasted with what stood before it in a header.
    let pasted = format!("Bearer {elsewhere}");
    let unknown = gateway(&["api-key", "revoke", &pasted], &app.database_url);
    assert!(!unknown.status.success());
    let said = String::from_utf8_lossy(&unknown.stderr);
    assert!(said.contains("no API key matches"), "{said}");
    assert!(!said.contains(&"ab".repeat(24)), "{said}");
    assert!(
        columns(&stdout_of(&gateway(
            &["api-key", "list"],
            &app.database_url
        )))
        .iter()
        .all(|r| r[4] == "active")
    );

    // By its shown prefix.
    let revoked = stdout_of(&gateway(
        &["api-key", "revoke", &rows[1][2]],
        &app.database_url,
    ));
    let revoked = columns(&revoked);
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0][0], rows[1][0], "the key named was revoked");
    assert!(revoked[0][4].starts_with("revoked "), "{:?}", revoked[0]);
    // By its id; again, which changes nothing.
    let by_id = stdout_of(&gateway(
        &["api-key", "revoke", &rows[2][0]],
        &app.database_url,
    ));
    assert_eq!(columns(&by_id)[0][1], "another-shop");
    let again = gateway(&["api-key", "revoke", &rows[2][0]], &app.database_url);
    assert!(String::from_utf8_lossy(&again.stderr).contains("already revoked"));
    let after = columns(&stdout_of(&gateway(
        &["api-key", "list"],
        &app.database_url,
    )));
    assert_eq!(after[0][4], "active");
    assert!(after[1][4].starts_with("revoked "));
    assert!(after[2][4].starts_with("revoked "));

    assert_eq!(app.get("/v1/payments").await.status(), StatusCode::OK);
    for key in [&second, &other] {
        assert_eq!(
            app.get_as(key, "/v1/payments").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
}

/// An app whose replica remembers a key that authenticated for `cache_ms`.
async fn spawn_app_remembering_keys_for(cache_ms: u64) -> TestApp {
    spawn_app_with(Options {
        gateway: Some(Box::new(move |settings| {
            settings.api_key_cache_ms = cache_ms;
        })),
        ..Options::default()
    })
    .await
}

/// Revokes the app's own key with the whole key, as an operator holding a
/// leaked one would.
fn revoke_own_key(app: &TestApp) {
    let revoked = stdout_of(&gateway(
        &["api-key", "revoke", &app.api_key],
        &app.database_url,
    ));
    assert!(!revoked.contains(&app.api_key), "the key is never printed");
}

/// The key's requests are refused, and it did nothing to the payment.
async fn assert_refused_and_harmless(app: &TestApp, id: &str) {
    assert_error(
        app.get(&format!("/v1/payments/{id}")).await,
        StatusCode::UNAUTHORIZED,
        "authentication_error",
        "invalid_api_key",
    )
    .await;
    let capture = app
        .post(
            &format!("/v1/payments/{id}/capture"),
            &new_key(),
            &serde_json::Value::Null,
        )
        .await;
    assert_eq!(capture.status(), StatusCode::UNAUTHORIZED);
    let status: String =
        sqlx::query_scalar("SELECT status::text FROM payments WHERE order_id = 'ord_1'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        status, "authorized",
        "nothing was done with the revoked key"
    );
}

#[tokio::test]
async fn without_the_key_cache_a_revoked_key_gets_401_from_the_next_request_on() {
    let app = spawn_app_remembering_keys_for(0).await;
    let payment = app.authorized(HAPPY_CARD, 500).await;
    let id = payment["id"].as_str().unwrap();
    assert_eq!(
        app.get(&format!("/v1/payments/{id}")).await.status(),
        StatusCode::OK
    );

    revoke_own_key(&app);

    // No waiting: the very next request is refused.
    assert_refused_and_harmless(&app, id).await;
}

#[tokio::test]
async fn a_revoked_key_is_refused_once_the_replicas_memory_of_it_lapses() {
    const CACHE_MS: u64 = 300;
    let app = spawn_app_remembering_keys_for(CACHE_MS).await;
    let payment = app.authorized(HAPPY_CARD, 500).await;
    let id = payment["id"].as_str().unwrap();
    let path = format!("/v1/payments/{id}");
    assert_eq!(app.get(&path).await.status(), StatusCode::OK);

    revoke_own_key(&app);

    // Refused within the cache's lifetime; the deadline is far past it so
    // that a slow machine does not fail the test, and a cache that never
    // lapses does.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let status = app.get(&path).await.status();
        if status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert_eq!(status, StatusCode::OK);
        assert!(
            std::time::Instant::now() < deadline,
            "a revoked key still works long after API_KEY_CACHE_MS ({CACHE_MS} ms)"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // And stays refused: what lapsed is not remembered again.
    assert_refused_and_harmless(&app, id).await;
}

/// A merchant name that differs from an existing one only by case or
/// spaces is a typo, not a new merchant: its key would see none of the
/// merchant's payments, and resuming a payment under it would start
/// another.
#[tokio::test]
async fn a_key_for_a_mistyped_merchant_is_refused() {
    let app = spawn_app().await;
    for typo in ["FicMart", " ficmart"] {
        let made = gateway(
            &["api-key", "create", "--merchant", typo],
            &app.database_url,
        );
        assert!(!made.status.success(), "{typo:?}");
        let said = String::from_utf8_lossy(&made.stderr);
        assert!(
            said.contains("a merchant named \"ficmart\" exists"),
            "{said}"
        );
        assert!(made.stdout.is_empty(), "no key printed");
    }
    let merchants: i64 = sqlx::query_scalar("SELECT count(*) FROM merchants")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(merchants, 1, "no merchant was made for a typo");
    // The exact name, and a new one, still make keys; so does an exact
    // name beside a variant made before this check.
    create_key(&app.pool, "Acme").await;
    create_key(&app.pool, "acme").await;
    for name in ["ficmart", "another-shop", "acme"] {
        let made = gateway(
            &["api-key", "create", "--merchant", name],
            &app.database_url,
        );
        assert!(stdout_of(&made).starts_with("sk_test_"), "{name}");
    }
}
