//! `/openapi.json`, `/docs`, `/health`, `/ready`, and the README's diagram.

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::*;

/// The OpenAPI document the running gateway serves.
async fn openapi(app: &TestApp) -> Value {
    app.client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn openapi_and_docs_are_served_from_the_code() {
    let app = spawn_app().await;
    let openapi = openapi(&app).await;
    for path in [
        "/v1/payments",
        "/v1/payments/{id}",
        "/v1/payments/{id}/capture",
        "/v1/payments/{id}/void",
        "/v1/payments/{id}/refund",
        "/health",
    ] {
        assert!(openapi["paths"].get(path).is_some(), "{path}");
    }
    // Served on the operator listener, not to the API's clients.
    for path in ["/ready", "/metrics"] {
        assert!(openapi["paths"].get(path).is_none(), "{path}");
    }
    assert!(
        openapi["components"]["schemas"]
            .get("PaymentView")
            .is_some()
    );
    let docs = app.client.get(app.url("/docs/")).send().await.unwrap();
    assert_eq!(docs.status(), StatusCode::OK);
    let bundle = app
        .client
        .get(app.url("/docs/swagger-ui-bundle.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(bundle.status(), StatusCode::OK, "served offline");
}

#[tokio::test]
async fn health_and_ready() {
    let app = spawn_app().await;
    let health = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let ready = app
        .client
        .get(app.operator_url("/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(
        (body["database"].as_str(), body["migrations"].as_str()),
        (Some("ok"), Some("ok"))
    );
}

#[test]
fn the_readme_embeds_the_generated_state_diagram() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let diagram = gateway::domain::mermaid_state_diagram();
    let embedded = readme
        .split("```mermaid\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a ```mermaid block in the README");
    assert_eq!(
        embedded, diagram,
        "regenerate it with `cargo run -p gateway -- state-diagram`"
    );
}

/// The options and arguments in a `--help` text that have no description
/// (clap then prints only `[env: …]` and `[default: …]`, or nothing).
fn undescribed(help: &str) -> Vec<String> {
    let lines: Vec<&str> = help.lines().collect();
    let mut missing = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let entry = line.trim_start();
        if !line.starts_with(' ') || !(entry.starts_with('-') || entry.starts_with('<')) {
            continue;
        }
        let description = match entry.split_once("  ") {
            Some((_, rest)) if !rest.trim().is_empty() => rest.trim(),
            // The long layout: the description on the next line.
            _ => lines.get(i + 1).map_or("", |next| next.trim()),
        };
        if description.is_empty()
            || description.starts_with('[')
            || description.starts_with('-')
            || description.starts_with('<')
        {
            missing.push(entry.to_owned());
        }
    }
    missing
}

#[test]
fn every_flag_of_every_command_has_a_description_in_help() {
    let password = "hunter2-Passw0rd";
    for command in [
        &[][..],
        &["serve"],
        &["migrate"],
        &["api-key", "create"],
        &["api-key", "list"],
        &["api-key", "revoke"],
        &["reconcile"],
        &["webhooks", "resend"],
        &["state-diagram"],
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
            .args(command)
            .arg("--help")
            .env(
                "DATABASE_URL",
                format!("postgres://gateway:{password}@db/gateway"),
            )
            .output()
            .unwrap();
        assert!(output.status.success(), "{command:?}");
        let help = String::from_utf8(output.stdout).unwrap();
        assert!(help.contains("--help"), "{command:?}: {help}");
        let missing = undescribed(&help);
        assert!(
            missing.is_empty(),
            "gateway {} --help: no description for {missing:?}\n{help}",
            command.join(" ")
        );
        assert!(
            !help.contains(password),
            "the database password is shown:\n{help}"
        );
    }
    assert_eq!(
        undescribed(
            "Options:\n      --host <HOST>\n          [env: HOST=]\n  -h, --help  Print help\n"
        ),
        ["--host <HOST>"],
        "the check finds a flag without help"
    );
}

#[tokio::test]
async fn every_operation_has_a_summary_and_statuses_are_an_enum() {
    let app = spawn_app().await;
    let openapi = openapi(&app).await;
    let mut operations = 0;
    for (path, item) in openapi["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            operations += 1;
            let summary = operation["summary"].as_str().unwrap_or_default();
            assert!(!summary.is_empty(), "{method} {path} has no summary");
            assert!(summary.len() <= 80, "{method} {path}: a summary is a line");
            assert!(
                operation["description"]
                    .as_str()
                    .is_some_and(|d| !d.is_empty()),
                "{method} {path} has no description"
            );
        }
    }
    assert!(operations >= 18, "{operations} operations");

    let schemas = &openapi["components"]["schemas"];
    let statuses: Vec<&str> = schemas["PaymentStatus"]["enum"]
        .as_array()
        .expect("PaymentStatus is an enum")
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let expected: Vec<&str> = gateway::domain::PaymentStatus::ALL
        .iter()
        .map(|s| s.as_str())
        .collect();
    assert_eq!(statuses, expected);
    let payment = &schemas["PaymentView"]["properties"];
    assert_eq!(
        payment["status"]["$ref"], "#/components/schemas/PaymentStatus",
        "{payment}"
    );
    // Examples a developer can paste: a real amount, a test card, a status.
    let create = &schemas["CreatePayment"]["properties"];
    assert_eq!(create["amount"]["example"], 4999);
    assert_eq!(create["card"]["$ref"], "#/components/schemas/CardInput");
    // The mock bank's card that approves, with its expiry.
    let card = &schemas["CardInput"]["properties"];
    assert_eq!(card["number"]["example"], "4111111111111111");
    assert_eq!(
        (
            &card["expiry_month"]["example"],
            &card["expiry_year"]["example"]
        ),
        (&serde_json::json!(12), &serde_json::json!(2030))
    );
    assert_eq!(payment["amount"]["example"], 4999, "{payment}");
    assert_eq!(payment["currency"]["example"], "USD");
    let events: Vec<&str> = schemas["EventType"]["enum"]
        .as_array()
        .expect("EventType is an enum")
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert!(events.contains(&"payment.captured"), "{events:?}");
}
