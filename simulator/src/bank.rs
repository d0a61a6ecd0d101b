//! A small client for the mock bank's health and admin endpoints.

use anyhow::{Context, bail};
use mock_bank::telemetry::Counters;
use rand::RngExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::cards::random_card_number;

/// How long the console waits for the bank to answer one request.
const CONSOLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The bank's chaos settings we change and restore (`GET|PUT /admin/chaos`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Chaos {
    pub failure_rate: f64,
    pub min_latency_ms: u64,
    pub max_latency_ms: u64,
    pub error_after_commit_rate: f64,
    pub timeout_rate: f64,
    pub reset_rate: f64,
}

impl Chaos {
    /// No faults; every API request delayed by exactly `latency_ms`.
    pub fn calm(latency_ms: u64) -> Self {
        Self {
            failure_rate: 0.0,
            min_latency_ms: latency_ms,
            max_latency_ms: latency_ms,
            error_after_commit_rate: 0.0,
            timeout_rate: 0.0,
            reset_rate: 0.0,
        }
    }
}

/// A test card as `POST /admin/accounts` takes it.
#[derive(Debug, Clone, Serialize)]
pub struct NewCard {
    pub card_number: String,
    pub cvv: String,
    pub expiry_month: u32,
    pub expiry_year: u32,
    pub balance: i64,
}

/// What `POST /admin/accounts` made of a card.
pub enum Created {
    Yes,
    /// The number is taken (409).
    AlreadyExists,
}

#[derive(Debug, Clone)]
pub struct BankAdmin {
    client: reqwest::Client,
    base: String,
}

impl BankAdmin {
    /// `base` is the bank's root URL, e.g. `http://127.0.0.1:8787`.
    pub fn new(client: reqwest::Client, base: &str) -> Self {
        Self {
            client,
            base: base.trim_end_matches('/').to_owned(),
        }
    }

    pub async fn health(&self) -> anyhow::Result<()> {
        let url = format!("{}/health", self.base);
        let response = self
            .client
            .get(&url)
            .send()
            .await
            .with_context(|| format!("the bank is not reachable at {url}"))?;
        if !response.status().is_success() {
            bail!("GET {url} answered {}", response.status());
        }
        Ok(())
    }

    pub async fn chaos(&self) -> anyhow::Result<Chaos> {
        let url = format!("{}/admin/chaos", self.base);
        expect_json(self.client.get(&url).send().await, "GET", &url).await
    }

    /// `GET /admin/chaos` as it is (every field, to be put back later).
    pub async fn chaos_settings(&self) -> anyhow::Result<Value> {
        let url = format!("{}/admin/chaos", self.base);
        expect_json(self.client.get(&url).send().await, "GET", &url).await
    }

    /// Changes the fields of `chaos` (and ends any outage); answers the
    /// bank's whole new configuration.
    pub async fn set_chaos(&self, chaos: &Chaos) -> anyhow::Result<Value> {
        let url = format!("{}/admin/chaos", self.base);
        let mut body = serde_json::to_value(chaos)?;
        body["outage_seconds"] = json!(0);
        expect_json(self.client.put(&url).json(&body).send().await, "PUT", &url).await
    }

    pub async fn create_card(&self, card: &NewCard) -> anyhow::Result<Created> {
        let url = format!("{}/admin/accounts", self.base);
        let response = self
            .client
            .post(&url)
            .json(card)
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        match response.status().as_u16() {
            200..=299 => Ok(Created::Yes),
            409 => Ok(Created::AlreadyExists),
            status => {
                let body = response.text().await.unwrap_or_default();
                bail!("POST {url} answered {status}: {body}")
            }
        }
    }

    /// Opens a card with a random unused number, a random CVV, expiry
    /// 12/2099 and `balance` cents.
    pub async fn open_random_card(&self, balance: i64) -> anyhow::Result<NewCard> {
        for _ in 0..10 {
            let card = NewCard {
                card_number: random_card_number(&mut rand::rng()),
                cvv: format!("{:03}", rand::rng().random_range(0..1000)),
                expiry_month: 12,
                expiry_year: 2099,
                balance,
            };
            if let Created::Yes = self.create_card(&card).await? {
                return Ok(card);
            }
        }
        bail!("ten random card numbers in a row were taken")
    }

    /// `PUT /admin/chaos` with `body` as it is (any subset of the fields).
    pub async fn put_chaos(&self, body: &Value) -> anyhow::Result<Value> {
        let url = format!("{}/admin/chaos", self.base);
        expect_json(self.client.put(&url).json(body).send().await, "PUT", &url).await
    }

    /// `GET /admin/accounts/{card}`: (balance, available balance).
    pub async fn account(&self, card_number: &str) -> anyhow::Result<(i64, i64)> {
        let url = format!("{}/admin/accounts/{card_number}", self.base);
        let account: Value = expect_json(self.client.get(&url).send().await, "GET", &url).await?;
        match (
            account["balance"].as_i64(),
            account["available_balance"].as_i64(),
        ) {
            (Some(balance), Some(available)) => Ok((balance, available)),
            (_, _) => bail!("GET {url}: no balances in {account}"),
        }
    }

    /// `GET /admin/counters`: faults injected and the bank's own errors.
    pub async fn counters(&self) -> anyhow::Result<Counters> {
        let url = format!("{}/admin/counters", self.base);
        expect_json(self.client.get(&url).send().await, "GET", &url).await
    }

    /// `POST /admin/authorizations/{id}/expire`: the authorization's week
    /// is over now (the bank releases its hold).
    pub async fn expire_authorization(&self, id: &str) -> anyhow::Result<Value> {
        let url = format!("{}/admin/authorizations/{id}/expire", self.base);
        expect_json(self.client.post(&url).send().await, "POST", &url).await
    }

    /// `POST /api/v1/{path}` with `body` under a fresh key of its own, as
    /// the bank's console (not the gateway) would: whether the bank said it
    /// was done. An answer lost to the bank's chaos counts as not done.
    pub async fn console(&self, path: &str, body: &Value) -> bool {
        let url = format!("{}/api/v1/{path}", self.base);
        let sent = self
            .client
            .post(&url)
            .header(
                "Idempotency-Key",
                format!("console_{}", uuid::Uuid::new_v4()),
            )
            .timeout(CONSOLE_TIMEOUT)
            .json(body)
            .send()
            .await;
        sent.is_ok_and(|answer| answer.status().is_success())
    }

    /// `GET /admin/ledger/verify`, as the bank answers it.
    pub async fn verify_ledger(&self) -> anyhow::Result<Value> {
        let url = format!("{}/admin/ledger/verify", self.base);
        expect_json(self.client.get(&url).send().await, "GET", &url).await
    }
}

async fn expect_json<T: for<'de> Deserialize<'de>>(
    sent: reqwest::Result<reqwest::Response>,
    method: &str,
    url: &str,
) -> anyhow::Result<T> {
    let response = sent.with_context(|| format!("{method} {url}"))?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        bail!("{method} {url} answered {status}: {body}");
    }
    response
        .json()
        .await
        .with_context(|| format!("{method} {url}: unexpected body"))
}
