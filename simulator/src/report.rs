//! The benchmark's report, as text for people or JSON for scripts.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use serde_json::Value;

use crate::cpu::CpuPerAuthorization;
use crate::stats::{Latency, format_ms, format_seconds};

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub target: &'static str,
    pub url: String,
    /// Whether the simulator started the stack itself.
    pub own_stack: bool,
    pub cards: u32,
    pub concurrency: u32,
    /// Latency the bank was told to add to every API request.
    pub added_latency_ms: u64,
    /// The `--db-pool-size` of a gateway the bench started; `null` otherwise.
    pub gateway_db_pool_size: Option<u32>,
    pub total: u64,
    pub ok: u64,
    /// Failed requests by HTTP status, or by kind of transport error.
    pub errors: BTreeMap<String, u64>,
    pub elapsed_us: u64,
    /// Successful authorizations per second of the run.
    pub authorizations_per_second: f64,
    /// The most any system could reach in this setup (see [`ceiling`]);
    /// `null` when the bank adds no latency.
    pub ceiling_per_second: Option<f64>,
    /// Latency of the successful authorizations; `null` when none succeeded.
    pub latency_us: Option<Latency>,
    /// `GET /admin/ledger/verify` after the run, as the bank answered it.
    pub ledger: Value,
    /// CPU per successful authorization during the load, by process (see
    /// [`crate::cpu`]); `null` unless the bench started a gateway itself.
    pub cpu_ms_per_authorization: Option<CpuPerAuthorization>,
    /// What the Postgres under the stack does with a commit, as it says
    /// itself (`fsync on, synchronous_commit on`); `null` for a running
    /// stack, whose database the bench was not given.
    pub postgres_durability: Option<String>,
    /// With `--webhook`: the receiver's kind and the deliveries it got
    /// while the load ran.
    pub webhook: Option<WebhookLoad>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WebhookLoad {
    /// `calm` or `chaotic`.
    pub receiver: &'static str,
    /// Delivery requests the receiver got before the load ended.
    pub deliveries_received: u64,
}

impl Report {
    pub fn ledger_ok(&self) -> bool {
        self.ledger["ok"] == Value::Bool(true)
    }
}

/// Successes per second.
pub fn rate(ok: u64, elapsed_us: u64) -> f64 {
    if elapsed_us == 0 {
        return 0.0;
    }
    ok as f64 * 1_000_000.0 / elapsed_us as f64
}

/// Requests per second that `concurrency` clients can send at most when
/// each request waits at least `added_latency_ms` at the bank: a client
/// sends its next request only once the last is answered (Little's law).
pub fn ceiling(concurrency: u32, added_latency_ms: u64) -> Option<f64> {
    (added_latency_ms > 0).then(|| f64::from(concurrency) * 1_000.0 / added_latency_ms as f64)
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stack = if self.own_stack {
            "own stack"
        } else {
            "running stack"
        };
        writeln!(f, "bench: {} at {} ({stack})", self.target, self.url)?;
        write!(
            f,
            "  setup       {} cards, concurrency {}, calm bank with {} ms added latency",
            self.cards, self.concurrency, self.added_latency_ms
        )?;
        match self.gateway_db_pool_size {
            Some(pool) => writeln!(f, ", gateway pool of {pool} connections")?,
            None => writeln!(f)?,
        }
        if let Some(durability) = &self.postgres_durability {
            writeln!(f, "  postgres    {durability}")?;
        }
        if let Some(webhook) = &self.webhook {
            writeln!(
                f,
                "  webhooks    an endpoint registered, {} receiver: {} deliveries during the load",
                webhook.receiver, webhook.deliveries_received
            )?;
        }
        writeln!(f, "  requests    {}", self.total)?;
        writeln!(f, "  ok          {}", self.ok)?;
        let errors = if self.errors.is_empty() {
            "none".to_owned()
        } else {
            self.errors
                .iter()
                .map(|(kind, n)| format!("{kind}: {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        writeln!(f, "  errors      {errors}")?;
        writeln!(f, "  elapsed     {} s", format_seconds(self.elapsed_us))?;
        write!(
            f,
            "  rate        {:.1} authorizations/s",
            self.authorizations_per_second
        )?;
        match self.ceiling_per_second {
            Some(ceiling) => writeln!(
                f,
                " (ceiling {ceiling:.1}: {} clients, each waiting {} ms at the bank per request)",
                self.concurrency, self.added_latency_ms
            )?,
            None => writeln!(f)?,
        }
        match &self.latency_us {
            Some(l) => writeln!(
                f,
                "  latency     p50 {} ms, p95 {} ms, p99 {} ms, max {} ms",
                format_ms(l.p50_us),
                format_ms(l.p95_us),
                format_ms(l.p99_us),
                format_ms(l.max_us)
            )?,
            None => writeln!(f, "  latency     no successful requests")?,
        }
        if let Some(cpu) = &self.cpu_ms_per_authorization {
            let parts: Vec<String> = cpu
                .ms
                .iter()
                .map(|(party, ms)| format!("{party} {ms:.3}"))
                .collect();
            writeln!(
                f,
                "  cpu         ms per authorization: {}",
                parts.join(", ")
            )?;
        }
        let ledger = &self.ledger;
        if self.ledger_ok() {
            write!(
                f,
                "  ledger      ok: true ({} accounts, {} entries checked)",
                ledger["accounts_checked"], ledger["entries_checked"]
            )
        } else {
            write!(f, "  ledger      NOT OK: {ledger}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_is_successes_per_second() {
        assert_eq!(rate(500, 250_000), 2000.0);
        assert_eq!(rate(0, 1_000_000), 0.0);
        assert_eq!(rate(10, 0), 0.0);
    }

    #[test]
    fn the_ceiling_is_clients_over_the_bank_latency() {
        assert_eq!(ceiling(1_000, 1_000), Some(1_000.0));
        assert_eq!(ceiling(64, 250), Some(256.0));
        assert_eq!(ceiling(64, 0), None);
    }
}
