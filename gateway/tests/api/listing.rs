//! Listing by order and by customer, newest first, with a cursor.

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::*;

async fn page(app: &TestApp, query: &str) -> (Vec<String>, bool) {
    let response = app.get(&format!("/v1/payments?{query}")).await;
    assert_eq!(response.status(), StatusCode::OK, "{query}");
    let list: Value = response.json().await.unwrap();
    let ids = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_owned())
        .collect();
    (ids, list["has_more"].as_bool().unwrap())
}

#[tokio::test]
async fn list_by_customer_and_by_order_pages_newest_first() {
    let app = spawn_app().await;
    let mut created = Vec::new();
    for i in 0..5 {
        let body = payment_body(HAPPY_CARD, 100 + i, &format!("ord_{}", i % 2), "cus_list");
        let payment: Value = app
            .post("/v1/payments", &new_key(), &body)
            .await
            .json()
            .await
            .unwrap();
        created.push(payment["id"].as_str().unwrap().to_owned());
    }
    app.post(
        "/v1/payments",
        &new_key(),
        &payment_body(HAPPY_CARD, 1, "ord_0", "cus_other"),
    )
    .await;
    let newest_first: Vec<String> = created.iter().rev().cloned().collect();

    let (first, more) = page(&app, "customer_id=cus_list&limit=2").await;
    assert_eq!((first.as_slice(), more), (&newest_first[..2], true));
    let (second, more) = page(
        &app,
        &format!("customer_id=cus_list&limit=2&starting_after={}", first[1]),
    )
    .await;
    assert_eq!((second.as_slice(), more), (&newest_first[2..4], true));
    let (third, more) = page(
        &app,
        &format!("customer_id=cus_list&limit=2&starting_after={}", second[1]),
    )
    .await;
    assert_eq!((third.as_slice(), more), (&newest_first[4..], false));

    let (by_order, more) = page(&app, "order_id=ord_1").await;
    assert_eq!(by_order, vec![created[3].clone(), created[1].clone()]);
    assert!(!more);
    let (all, _) = page(&app, "limit=100").await;
    assert_eq!(all.len(), 6);

    // Every shape of the statement (filter or none, cursor or none).
    let (newest, _) = page(&app, "order_id=ord_0&limit=1").await;
    let (after, more) = page(
        &app,
        &format!("order_id=ord_0&limit=2&starting_after={}", newest[0]),
    )
    .await;
    assert_eq!(
        (after, more),
        (vec![created[4].clone(), created[2].clone()], true)
    );
    let (after, more) = page(&app, &format!("limit=100&starting_after={}", created[3])).await;
    assert_eq!((after.as_slice(), more), (&newest_first[2..], false));
}

#[tokio::test]
async fn list_parameters_are_validated() {
    let app = spawn_app().await;
    let invalid = "parameter_invalid";
    for (path, param, code) in [
        ("/v1/payments?limit=0", "limit", invalid),
        ("/v1/payments?limit=101", "limit", invalid),
        ("/v1/payments?limit=ten", "limit", invalid),
        (
            "/v1/payments?starting_after=nope",
            "starting_after",
            invalid,
        ),
        (
            "/v1/payments?starting_after=pay_0193a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b",
            "starting_after",
            invalid,
        ),
        ("/v1/payments?order_id=has%20space", "order_id", invalid),
        (
            "/v1/payments?order_id=a&customer_id=b",
            "customer_id",
            invalid,
        ),
        // A misspelt filter is refused, not ignored (which would list every
        // payment and look like it worked); a name that is not one is not
        // echoed; a parameter sent twice is not taken at its last.
        ("/v1/payments?orderid=ord_1", "orderid", invalid),
        ("/v1/payments?status=captured", "status", invalid),
        ("/v1/payments?4242424242424242=x", "query", invalid),
        ("/v1/events?kind=payment.created", "kind", invalid),
        (
            "/v1/payments?customer_id=cus_a&customer_id=cus_b",
            "customer_id",
            "duplicate_parameter",
        ),
        ("/v1/events?limit=1&limit=2", "limit", "duplicate_parameter"),
    ] {
        let response = app.get(path).await;
        let body = assert_error(
            response,
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            code,
        )
        .await;
        assert_eq!(body["error"]["param"], param, "{path}");
    }
}
