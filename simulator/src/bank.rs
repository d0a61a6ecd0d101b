//! A small client for the mock bank's health and admin endpoints.

use anyhow::{Context, bail};
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

    /// What the bank counted in `GET /metrics`: faults injected and its own
    /// errors.
    pub async fn counters(&self) -> anyhow::Result<BankCounters> {
        let url = format!("{}/metrics", self.base);
        let text = self
            .client
            .get(&url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?
            .text()
            .await?;
        Ok(BankCounters::parse(&text))
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

/// `bank_chaos_faults_total{kind="reset_after_commit"} 3` lines, summed by kind.
/// The bank's counters the simulator reads; a counter it has not
/// exported yet (or a bank without it) reads zero.
#[derive(Debug, Clone, Default)]
pub struct BankCounters {
    /// `bank_chaos_faults_total`, by kind.
    pub faults: std::collections::BTreeMap<String, u64>,
    /// `bank_internal_errors_total`: 500s that were not injected.
    pub internal_errors: u64,
}

impl BankCounters {
    pub fn parse(metrics: &str) -> Self {
        let mut counters = Self::default();
        for line in metrics.lines() {
            if let Some(value) = line.strip_prefix("bank_internal_errors_total ") {
                counters.internal_errors += whole(value);
            }
            let Some(rest) = line.strip_prefix("bank_chaos_faults_total{") else {
                continue;
            };
            let Some((labels, value)) = rest.split_once("} ") else {
                continue;
            };
            let kind = labels
                .split(',')
                .find_map(|l| l.strip_prefix("kind=\""))
                .map(|k| k.trim_end_matches('"'))
                .unwrap_or("unknown");
            *counters.faults.entry(kind.to_owned()).or_default() += whole(value);
        }
        counters
    }
}

/// A counter's value in Prometheus text (printed as a float).
fn whole(value: &str) -> u64 {
    let value = value.trim().parse::<f64>().unwrap_or(0.0);
    // Counters are whole numbers.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let value = value as u64;
    value
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_read_from_prometheus_text() {
        let text = "# TYPE bank_chaos_faults_total counter\n\
bank_chaos_faults_total{kind=\"failure\"} 7\n\
bank_chaos_faults_total{kind=\"reset_after_commit\"} 2\n\
bank_internal_errors_total 3\n\
bank_http_requests_total{route=\"x\"} 9\n";
        let counters = BankCounters::parse(text);
        assert_eq!(counters.faults.get("failure"), Some(&7));
        assert_eq!(counters.faults.get("reset_after_commit"), Some(&2));
        assert_eq!(counters.faults.len(), 2);
        assert_eq!(counters.internal_errors, 3);
        assert_eq!(BankCounters::parse("").internal_errors, 0);
    }
}
