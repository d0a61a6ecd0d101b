//! Issue 16: what a black-box probe got through, each through the real
//! `gateway` binary (its own process, its own metrics and logs).

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::Value;
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::crash::harness::{GatewayProcess, Launch};
use crate::helpers::*;

/// A gateway process on a fresh database, its bank in this process.
struct Served {
    gateway: GatewayProcess,
    /// FicMart's key.
    api_key: String,
    /// The gateway's database.
    pool: PgPool,
}

async fn served(configure: impl FnOnce(Launch) -> Launch) -> Served {
    let (bank_address, _) = spawn_bank(None).await;
    let database_url = throwaway_pg::shared()
        .fresh_database("gateway")
        .await
        .expect("a gateway database");
    let gateway = configure(Launch::new(&database_url, &bank_address))
        .start()
        .await;
    let pool = PgPool::connect(&database_url)
        .await
        .expect("a gateway pool");
    let api_key = create_key(&pool, "ficmart").await;
    Served {
        gateway,
        api_key,
        pool,
    }
}

async fn count(pool: &PgPool, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn metrics_and_ready_are_served_on_the_operator_port_only() {
    let Served { gateway, .. } = served(|launch| launch).await;
    let client = test_client();
    for path in ["/metrics", "/ready"] {
        let public = client
            .get(format!("{}{path}", gateway.base()))
            .send()
            .await
            .unwrap();
        assert_error(
            public,
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "resource_missing",
        )
        .await;
    }
    let health = client
        .get(format!("{}/health", gateway.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK, "/health stays public");

    assert_ne!(gateway.operator_port, 0, "the listening line names it");
    assert_ne!(gateway.operator_port, gateway.port);
    let operator = gateway.operator_base();
    let metrics = client
        .get(format!("{operator}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), StatusCode::OK);
    assert!(
        metrics
            .text()
            .await
            .unwrap()
            .contains("gateway_http_requests_total")
    );
    let ready = client
        .get(format!("{operator}/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    assert_eq!(ready.json::<Value>().await.unwrap()["status"], "ready");
    let health = client
        .get(format!("{operator}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    // The API is not served to operators' port.
    let api = client
        .get(format!("{operator}/v1/payments"))
        .send()
        .await
        .unwrap();
    assert_error(
        api,
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "resource_missing",
    )
    .await;
}

/// The gateway's request series on a scrape: each sample's name and labels
/// (its value left off).
fn request_series(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter(|line| line.starts_with("gateway_http_"))
        .filter_map(|line| line.rsplit_once(' ').map(|(series, _)| series.to_owned()))
        .collect()
}

async fn scrape(client: &reqwest::Client, gateway: &GatewayProcess) -> String {
    let response = client
        .get(format!("{}/metrics", gateway.operator_base()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.text().await.unwrap()
}

/// Requests `from..to` of a probe: each with a method of its own (made up,
/// of varied length) on a path of its own, of five kinds.
async fn probe(client: &reqwest::Client, base: &str, from: usize, to: usize) {
    for i in from..to {
        let method = if i % 5 == 4 {
            Method::GET
        } else {
            let name = format!("PROBE{i}{}", "X".repeat(i % 97));
            Method::from_bytes(name.as_bytes()).unwrap()
        };
        let path = match i % 5 {
            0 => format!("/nowhere/{i}"),
            1 => format!("/v1/payments/pay_{i}"),
            2 => format!("/v1/payments/pay_{i}/settle{i}"),
            3 => format!("/docs/{i}"),
            _ => format!("/made-up-{i}"),
        };
        let response = client
            .request(method, format!("{base}{path}"))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_client_error(), "{path}");
    }
}

#[tokio::test]
async fn made_up_methods_and_paths_add_no_metric_series() {
    let Served { gateway, .. } = served(|launch| launch).await;
    let client = test_client();
    // Every kind of request the probe sends, a few times; then two scrapes
    // (a scrape's own series show from the next one on).
    probe(&client, &gateway.base(), 0, 50).await;
    scrape(&client, &gateway).await;
    let before = request_series(&scrape(&client, &gateway).await);
    assert!(!before.is_empty());

    probe(&client, &gateway.base(), 50, 2_050).await;
    let after = request_series(&scrape(&client, &gateway).await);
    let new: Vec<&String> = after.difference(&before).collect();
    assert!(
        new.is_empty(),
        "2,000 made-up methods and paths added {} series, e.g. {:?}",
        new.len(),
        new.iter().take(3).collect::<Vec<_>>()
    );
}

/// Waits (bounded) until the process has logged `count` lines from
/// `target`, and returns them.
async fn logged_from(gateway: &GatewayProcess, target: &str, count: usize) -> Vec<Value> {
    for _ in 0..100 {
        let lines: Vec<Value> = gateway
            .logs()
            .into_iter()
            .filter(|line| line["target"] == target)
            .collect();
        if lines.len() >= count {
            return lines;
        }
        tokio::time::sleep(crate::crash::harness::POLL).await;
    }
    panic!("fewer than {count} lines from {target} in 10 s");
}

#[tokio::test]
async fn heads_the_http_layer_cannot_parse_get_400_and_no_error_line() {
    let Served { gateway, .. } = served(|launch| launch).await;
    let malformed: [&[u8]; 3] = [
        // A control byte in a header value.
        b"GET /health HTTP/1.1\r\nHost: x\r\nX-Probe: a\x01b\r\n\r\n",
        // Both framings: a smuggling attempt.
        b"POST /v1/payments HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\
          Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        // A header name that is not a token.
        b"GET /health HTTP/1.1\r\nHost: x\r\nX Probe: 1\r\n\r\n",
    ];
    for request in malformed {
        let answer = raw_exchange(&gateway.base(), request).await;
        assert_eq!(status_of(&answer), Some(400), "{answer}");
    }
    // actix-http says so once per connection; a client did it, so it must
    // not page anyone.
    let lines = logged_from(&gateway, "actix_http::h1::dispatcher", malformed.len()).await;
    for line in &lines {
        assert_eq!(line["level"], "WARN", "{line}");
    }
    assert!(
        !gateway.logs().iter().any(|line| line["level"] == "ERROR"),
        "no ERROR line at all"
    );
    // The server is unharmed.
    let health = test_client()
        .get(format!("{}/health", gateway.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
}

#[tokio::test]
async fn bare_error_answers_from_below_the_handlers_carry_the_error_object() {
    let Served { gateway, .. } = served(|launch| launch).await;
    // The docs' file server answers an unknown file with an empty 404.
    let response = test_client()
        .get(format!("{}/docs/no-such-file.js", gateway.base()))
        .send()
        .await
        .unwrap();
    assert_error(
        response,
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "resource_missing",
    )
    .await;
    let docs = test_client()
        .get(format!("{}/docs/", gateway.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        docs.status(),
        StatusCode::OK,
        "answers that are not errors are untouched"
    );
    assert!(docs.text().await.unwrap().contains("swagger"));
}

/// The head of a `POST /v1/payments` with FicMart's key, as raw bytes.
fn payment_head(api_key: &str, content_length: u64) -> String {
    format!(
        "POST /v1/payments HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {api_key}\r\n\
         Idempotency-Key: {}\r\nContent-Type: application/json\r\n\
         Content-Length: {content_length}\r\nConnection: close\r\n\r\n",
        new_key()
    )
}

#[tokio::test]
async fn a_declared_length_over_the_limit_is_413_before_any_body() {
    let served = served(|launch| launch).await;
    // Ten gigabytes announced, nothing sent.
    let head = payment_head(&served.api_key, 10_000_000_000);
    let answer = raw_exchange(&served.gateway.base(), head.as_bytes()).await;
    assert_eq!(status_of(&answer), Some(413), "{answer:?}");
    let error = body_of(&answer);
    assert_eq!(error["error"]["code"], "payload_too_large", "{answer}");
    assert_eq!(count(&served.pool, "idempotency_keys").await, 0);
}

#[tokio::test]
async fn a_body_sent_too_slowly_is_408() {
    let served = served(|launch| launch.set("BODY_READ_TIMEOUT_MS", 500)).await;
    let stream = TcpStream::connect(served.gateway.base().trim_start_matches("http://"))
        .await
        .unwrap();
    let (mut reader, mut writer) = stream.into_split();
    // A hundred bytes, one every 100 ms: ten seconds, well past the deadline,
    // though never idle for long.
    let head = payment_head(&served.api_key, 100);
    let trickle = tokio::spawn(async move {
        writer.write_all(head.as_bytes()).await?;
        for _ in 0..100 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            writer.write_all(b" ").await?;
        }
        std::io::Result::Ok(())
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        reader.read_to_end(&mut answer),
    )
    .await;
    assert!(read.is_ok(), "the server closed the connection");
    trickle.abort();
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(status_of(&answer), Some(408), "{answer}");
    let error = body_of(&answer);
    assert_eq!(error["error"]["type"], "invalid_request_error", "{answer}");
    assert_eq!(error["error"]["code"], "request_timeout", "{answer}");
    assert_eq!(count(&served.pool, "idempotency_keys").await, 0);
}

/// Asserts an `invalid_request_error` with `code`, naming `param`.
async fn assert_refused(response: reqwest::Response, status: StatusCode, code: &str, param: &str) {
    let error = assert_error(response, status, "invalid_request_error", code).await;
    assert_eq!(error["error"]["param"], param, "{error}");
}

/// A payment's JSON text with `amount` and `card` as given (raw JSON).
fn payment_text(amount: &str, card: &str) -> String {
    format!(
        r#"{{"order_id":"ord_amb","customer_id":"cus_amb",{amount},"currency":"USD","card":{card}}}"#
    )
}

const CARD: &str =
    r#"{"number":"4111111111111111","cvv":"123","expiry_month":12,"expiry_year":2030}"#;

#[tokio::test]
async fn ambiguous_requests_are_refused_and_store_nothing() {
    let served = served(|launch| launch).await;
    let client = test_client();
    let url = format!("{}/v1/payments", served.gateway.base());
    let post = |body: String| {
        client
            .post(&url)
            .bearer_auth(&served.api_key)
            .header("Idempotency-Key", new_key())
            .header("Content-Type", "application/json")
            .body(body)
    };

    // The same key twice, at the top, inside the card, and spelt with an
    // escape: another parser on the way could read the other value.
    let duplicated = [
        (
            payment_text(r#""amount":1,"amount":999999"#, CARD),
            "amount",
        ),
        (
            payment_text(
                r#""amount":100"#,
                r#"{"number":"4111111111111111","cvv":"123","expiry_month":12,"expiry_year":2030,"number":"5555555555554444"}"#,
            ),
            "card.number",
        ),
        (
            payment_text(r#""amount":100,"\u0061mount":999999"#, CARD),
            "amount",
        ),
    ];
    for (body, param) in duplicated {
        let response = post(body).send().await.unwrap();
        assert_refused(
            response,
            StatusCode::BAD_REQUEST,
            "duplicate_parameter",
            param,
        )
        .await;
    }

    let valid = payment_text(r#""amount":100"#, CARD);
    // Two Authorization headers: the same key twice is still two.
    let two_keys = post(valid.clone())
        .header("Authorization", format!("Bearer {}", served.api_key))
        .send()
        .await
        .unwrap();
    let code = "duplicate_parameter";
    assert_refused(two_keys, StatusCode::BAD_REQUEST, code, "Authorization").await;

    // A body that is not declared JSON, or is encoded.
    let not_json = client
        .post(&url)
        .bearer_auth(&served.api_key)
        .header("Idempotency-Key", new_key())
        .header("Content-Type", "text/plain")
        .body(valid.clone())
        .send()
        .await
        .unwrap();
    let unsupported = (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
    assert_refused(not_json, unsupported.0, unsupported.1, "Content-Type").await;
    let encoded = post(valid.clone())
        .header("Content-Encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_refused(encoded, unsupported.0, unsupported.1, "Content-Encoding").await;
    assert_eq!(count(&served.pool, "idempotency_keys").await, 0);
    assert_eq!(count(&served.pool, "payments").await, 0);

    // Unambiguous, the same request goes through; a capture with no body
    // needs no Content-Type.
    let created = post(valid).send().await.unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let id = created.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let captured = client
        .post(format!(
            "{}/v1/payments/{id}/capture",
            served.gateway.base()
        ))
        .bearer_auth(&served.api_key)
        .header("Idempotency-Key", new_key())
        .send()
        .await
        .unwrap();
    assert_eq!(captured.status(), StatusCode::OK);
}

/// Waits (bounded) until a statement of this database waits for a lock.
async fn until_a_lookup_waits_for_the_lock(pool: &PgPool) {
    for _ in 0..100 {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        if waiting > 0 {
            return;
        }
        tokio::time::sleep(crate::crash::harness::POLL).await;
    }
    panic!("no statement waited for the lock in 10 s");
}

#[tokio::test]
async fn a_key_of_the_wrong_shape_is_refused_without_a_database_query() {
    let served = served(|launch| launch).await;
    let url = format!("{}/v1/payments", served.gateway.base());
    // Every key lookup waits for this lock while it is held.
    let mut lock = served.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .unwrap();
    let hex = "0123456789abcdef".repeat(3);
    for malformed in [
        "sk_test_nope".to_owned(),
        format!("sk_live_{hex}"),
        format!("sk_test_{}", &hex[1..]),
        format!("sk_test_{hex}0"),
        format!("sk_test_{}", hex.to_uppercase()),
        format!("sk_test_{}g", &hex[1..]),
        "k".repeat(4096),
    ] {
        let response = client
            .get(&url)
            .bearer_auth(&malformed)
            .send()
            .await
            .expect("answered at once, though the key table is locked");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{malformed}");
    }
    // A key of the right shape is looked up: it waits for the lock, then
    // is refused as unknown.
    let well_shaped = client
        .get(&url)
        .bearer_auth(format!("sk_test_{hex}"))
        .send();
    let pending = tokio::spawn(well_shaped);
    until_a_lookup_waits_for_the_lock(&served.pool).await;
    lock.rollback().await.unwrap();
    let response = pending.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    // FicMart's own key, made by `api-key create`, has that shape.
    let ours = client
        .get(&url)
        .bearer_auth(&served.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(ours.status(), StatusCode::OK);
}

/// The `request` line of the request sent with `X-Request-Id: id`, waited
/// for (bounded).
async fn request_line(gateway: &GatewayProcess, id: &str) -> Value {
    for _ in 0..100 {
        let found = gateway
            .messages("request")
            .into_iter()
            .find(|line| line["span"]["request_id"] == id);
        if let Some(line) = found {
            return line;
        }
        tokio::time::sleep(crate::crash::harness::POLL).await;
    }
    panic!("no request line for {id} in 10 s");
}

/// Sends `GET /v1/payments` with `key`, `X-Request-Id: id` and, if given,
/// `X-Forwarded-For`.
async fn list_as(
    gateway: &GatewayProcess,
    key: &str,
    id: &str,
    forwarded_for: Option<&str>,
) -> reqwest::Response {
    let mut request = test_client()
        .get(format!("{}/v1/payments", gateway.base()))
        .bearer_auth(key)
        .header("X-Request-Id", id);
    if let Some(forwarded_for) = forwarded_for {
        request = request.header("X-Forwarded-For", forwarded_for);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn the_request_line_names_the_client_address() {
    // Trusting no proxy, the gateway ignores X-Forwarded-For: anyone can
    // write one.
    let direct = served(|launch| launch).await;
    let response = list_as(
        &direct.gateway,
        "sk_test_nope",
        "req-direct",
        Some("203.0.113.9"),
    )
    .await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let line = request_line(&direct.gateway, "req-direct").await;
    assert_eq!(line["span"]["client_addr"], "127.0.0.1", "{line}");

    // Behind proxies it trusts (the test's own address is one), the client
    // is the last address, from the right, that is not a trusted proxy.
    let proxied = served(|launch| launch.set("TRUSTED_PROXIES", "127.0.0.1,10.0.0.2")).await;
    for (id, forwarded_for, client) in [
        ("req-one", Some("203.0.113.7"), "203.0.113.7"),
        (
            "req-chain",
            Some("198.51.100.1, 203.0.113.7, 10.0.0.2"),
            "203.0.113.7",
        ),
        ("req-v6", Some("2001:db8::1"), "2001:db8::1"),
        ("req-none", None, "127.0.0.1"),
    ] {
        let response = list_as(&proxied.gateway, &proxied.api_key, id, forwarded_for).await;
        assert_eq!(response.status(), StatusCode::OK, "{id}");
        let line = request_line(&proxied.gateway, id).await;
        assert_eq!(line["span"]["client_addr"], client, "{line}");
    }
}

/// A wave of guesses sent at once: each must take its failure's token
/// before its key is looked up, or every one of them passes the budget's
/// check before the first is counted, and the database answers them all.
/// A guesser then gets the burst, and one more a second, not the wave.
#[tokio::test]
async fn concurrent_guesses_cannot_all_pass_the_failure_budget() {
    let served = served(|launch| {
        launch
            .set("AUTH_FAILURE_LIMIT_BURST", 2)
            .set("AUTH_FAILURE_LIMIT_PER_SECOND", 1)
            .set("TRUSTED_PROXIES", "127.0.0.1")
    })
    .await;
    // First a valid key's burst on a cold cache, from one address: its
    // lookups hold tokens while they run, and must not be refused for it.
    let checkout = Some("198.51.100.30");
    let burst = (0..32).map(|i| {
        let gateway = &served.gateway;
        let key = &served.api_key;
        async move {
            list_as(gateway, key, &format!("req-burst-{i}"), checkout)
                .await
                .status()
        }
    });
    let answers = futures_util::future::join_all(burst).await;
    assert!(answers.iter().all(|s| *s == StatusCode::OK), "{answers:?}");

    let guesser = Some("203.0.113.77");
    let started = std::time::Instant::now();
    let guesses = (0..32).map(|i| {
        let key = format!("sk_test_{i:048x}");
        let gateway = &served.gateway;
        async move {
            list_as(gateway, &key, &format!("req-wave-{i}"), guesser)
                .await
                .status()
        }
    });
    let answers = futures_util::future::join_all(guesses).await;
    let earned = started.elapsed().as_secs_f64().ceil() as usize;
    let looked_up = answers
        .iter()
        .filter(|s| **s == StatusCode::UNAUTHORIZED)
        .count();
    assert!(
        answers
            .iter()
            .all(|s| [StatusCode::UNAUTHORIZED, StatusCode::TOO_MANY_REQUESTS].contains(s)),
        "{answers:?}"
    );
    assert!(
        looked_up <= 2 + earned,
        "{looked_up} guesses looked up in {earned} s: {answers:?}"
    );
    // The budget is the guesser's alone: the right key from elsewhere works.
    let other = list_as(
        &served.gateway,
        &served.api_key,
        "req-w-other",
        Some("198.51.100.21"),
    )
    .await;
    assert_eq!(other.status(), StatusCode::OK);
}

#[tokio::test]
async fn failed_authentications_are_limited_per_client_address() {
    let served = served(|launch| {
        launch
            .set("AUTH_FAILURE_LIMIT_BURST", 5)
            .set("AUTH_FAILURE_LIMIT_PER_SECOND", 1)
            .set("TRUSTED_PROXIES", "127.0.0.1")
    })
    .await;
    let gateway = &served.gateway;
    let guesser = Some("203.0.113.66");
    let unknown = format!("sk_test_{}", "0123456789abcdef".repeat(3));
    for (i, key) in ["sk_test_nope", "", &unknown, "sk_test_nope", &unknown]
        .into_iter()
        .enumerate()
    {
        let response = list_as(gateway, key, &format!("req-guess-{i}"), guesser).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "guess {i}");
    }
    // The sixth is refused before any lookup, and so is the right key from
    // that address until its budget refills.
    let refused = list_as(gateway, &unknown, "req-refused", guesser).await;
    let retry_after = retry_after_seconds(&refused);
    assert!(retry_after >= 1);
    assert_error(
        refused,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limit_error",
        "rate_limited",
    )
    .await;
    let blocked = list_as(gateway, &served.api_key, "req-blocked", guesser).await;
    assert_eq!(blocked.status(), StatusCode::TOO_MANY_REQUESTS);
    // Another client is not held back.
    let other = list_as(gateway, &served.api_key, "req-other", Some("198.51.100.20")).await;
    assert_eq!(other.status(), StatusCode::OK);
    // Nor is the guesser, once the budget has refilled by one.
    tokio::time::sleep(std::time::Duration::from_secs(retry_after)).await;
    let later = list_as(gateway, &served.api_key, "req-later", guesser).await;
    assert_eq!(later.status(), StatusCode::OK);

    let metrics = scrape(&test_client(), gateway).await;
    for (reason, at_least) in [
        ("missing", 1),
        ("malformed", 2),
        ("unknown", 2),
        ("limited", 2),
    ] {
        let series = format!("gateway_auth_failures_total{{reason=\"{reason}\"}} ");
        let count: u64 = metrics
            .lines()
            .find_map(|line| line.strip_prefix(&series))
            .unwrap_or_else(|| panic!("no {series} in /metrics"))
            .parse()
            .unwrap();
        assert!(count >= at_least, "{reason}: {count}");
    }
}
