//! The benchmark's report, as text for people or JSON for scripts.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use serde_json::Value;

use crate::bench::Operation;
use crate::cpu::CpuPerAuthorization;
use crate::floor::Floor;
use crate::mix::Proportions;
use crate::stats::{Latency, format_ms, format_seconds};
use crate::time_split::TimeSplit;

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
    /// Over how long the clients' first requests were spread.
    pub ramp_ms: u64,
    /// The `--db-pool-size` of a gateway the bench started; `null` otherwise.
    pub gateway_db_pool_size: Option<u32>,
    /// Authorizations sent, or with `--mix` flows.
    pub total: u64,
    /// Authorizations, or flows, that got every answer expected.
    pub ok: u64,
    /// Failed requests by HTTP status, or by kind of transport error; with
    /// `--mix` prefixed by the operation (`capture: 409 invalid_state`).
    pub errors: BTreeMap<String, u64>,
    pub elapsed_us: u64,
    /// Successful authorizations per second of the run.
    pub authorizations_per_second: f64,
    /// The most any system could reach in this setup (see [`ceiling`]);
    /// with `--mix` in flows per second (see [`crate::mix::ceiling`]);
    /// `null` when the bank adds no latency.
    pub ceiling_per_second: Option<f64>,
    /// Latency of the successful authorizations (with `--mix`, of whole
    /// flows, first request sent to last answered); `null` when none
    /// succeeded.
    pub latency_us: Option<Latency>,
    /// The run apart from its ramp-up and drain (see [`crate::steady`]);
    /// `null` when no stretch had every client busy.
    pub steady_state: Option<SteadyState>,
    /// With `--mix`: its plan, rates and latencies by operation.
    pub mix: Option<MixReport>,
    /// `GET /admin/ledger/verify` after the run, as the bank answered it.
    pub ledger: Value,
    /// CPU per successful authorization during the load, by process (see
    /// [`crate::cpu`]); `null` unless the bench started a gateway itself,
    /// and with `--mix` (see `cpu_ms_per_flow`).
    pub cpu_ms_per_authorization: Option<CpuPerAuthorization>,
    /// With `--mix`: the same per successful flow.
    pub cpu_ms_per_flow: Option<CpuPerAuthorization>,
    /// The machine's floor, pgbench's single-row insert on the same
    /// cluster, and the gateway's CPU in inserts' worth; `null` unless the
    /// bench started its own stack (and `--floor-seconds` is not 0).
    pub floor: Option<Floor>,
    /// Where an authorization's time went, from the bank's and the
    /// gateway's latency histograms (see [`crate::time_split`]); `null`
    /// unless the bench started the gateway, and with `--mix`.
    pub time_split: Option<TimeSplit>,
    /// What the Postgres under the stack does with a commit, and how often
    /// autovacuum looks, as it says itself (`fsync on, synchronous_commit
    /// on, autovacuum_naptime 1min`); `null` for a running stack, whose
    /// database the bench was not given.
    pub postgres_durability: Option<String>,
    /// With `--webhook`: the receiver's kind and the deliveries it got
    /// while the load ran.
    pub webhook: Option<WebhookLoad>,
}

/// The steady window's rate and latencies.
#[derive(Debug, Clone, Serialize)]
pub struct SteadyState {
    /// How the window is chosen.
    pub window: &'static str,
    /// The window, from the load's start.
    pub start_us: u64,
    pub end_us: u64,
    /// Successful authorizations (with `--mix`, flows) answered in it.
    pub ok: u64,
    /// Those per second of the window.
    pub per_second: f64,
    /// With `--mix`: successful requests of every kind per second.
    pub operations_per_second: Option<f64>,
    /// `per_second` over `ceiling_per_second` (1.0 is the ceiling).
    pub share_of_ceiling: Option<f64>,
    /// Latency of what `ok` counts.
    pub latency_us: Option<Latency>,
}

/// `--mix`: the plan and what each kind of request got.
#[derive(Debug, Clone, Serialize)]
pub struct MixReport {
    /// The plan's seed: `--seed` repeats it.
    pub seed: u64,
    pub proportions: Proportions,
    /// Successful flows per second of the run.
    pub flows_per_second: f64,
    /// Requests answered, of every kind.
    pub operations: u64,
    /// Successful requests per second of the run.
    pub operations_per_second: f64,
    pub by_operation: BTreeMap<Operation, OperationReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OperationReport {
    pub ok: u64,
    /// By HTTP status and code, or kind of failure.
    pub errors: BTreeMap<String, u64>,
    /// Of the successful ones, over the whole run.
    pub latency_us: Option<Latency>,
    /// Of the successful ones answered in the steady window.
    pub steady_latency_us: Option<Latency>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WebhookLoad {
    /// `calm` or `chaotic`.
    pub receiver: &'static str,
    /// Delivery requests the receiver got before the load ended.
    pub deliveries_received: u64,
    /// And after it, until none was due.
    pub deliveries_after_load: u64,
    /// How long after the load (and the CPU sample) no delivery was due;
    /// `None` if some still were after the bench's bound.
    pub drained_after_ms: Option<u64>,
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
        if self.ramp_ms > 0 {
            write!(f, ", first requests spread over {} ms", self.ramp_ms)?;
        }
        match self.gateway_db_pool_size {
            Some(pool) => writeln!(f, ", gateway pool of {pool} connections")?,
            None => writeln!(f)?,
        }
        if let Some(durability) = &self.postgres_durability {
            writeln!(f, "  postgres    {durability}")?;
        }
        if let Some(webhook) = &self.webhook {
            write!(
                f,
                "  webhooks    an endpoint registered, {} receiver: {} deliveries during the load, {} after it",
                webhook.receiver, webhook.deliveries_received, webhook.deliveries_after_load
            )?;
            match webhook.drained_after_ms {
                Some(ms) => writeln!(f, "; none due {:.1} s after the load", ms as f64 / 1000.0)?,
                None => writeln!(f, "; some still due when the bench stopped looking")?,
            }
        }
        let unit = if self.mix.is_some() {
            "flows"
        } else {
            "authorizations"
        };
        if let Some(mix) = &self.mix {
            let p = &mix.proportions;
            writeln!(
                f,
                "  mix         seed {}: {}% captured, {}% voided, {}% of captures refunded \
                 (in full), every payment read by id, {}% listed by order, {}% by customer",
                mix.seed,
                p.capture_percent,
                p.void_percent,
                p.refund_percent_of_captured,
                p.list_by_order_percent,
                p.list_by_customer_percent
            )?;
            writeln!(
                f,
                "  requests    {} flows ({} requests)",
                self.total, mix.operations
            )?;
        } else {
            writeln!(f, "  requests    {}", self.total)?;
        }
        writeln!(f, "  ok          {}", self.ok)?;
        let errors = if self.errors.is_empty() {
            "none".to_owned()
        } else {
            error_list(&self.errors)
        };
        writeln!(f, "  errors      {errors}")?;
        writeln!(f, "  elapsed     {} s", format_seconds(self.elapsed_us))?;
        match &self.mix {
            Some(mix) => write!(
                f,
                "  rate        {:.1} flows/s, {:.1} operations/s, {:.1} authorizations/s",
                mix.flows_per_second, mix.operations_per_second, self.authorizations_per_second
            )?,
            None => write!(
                f,
                "  rate        {:.1} authorizations/s",
                self.authorizations_per_second
            )?,
        }
        match self.ceiling_per_second {
            Some(ceiling) => writeln!(
                f,
                " (ceiling {ceiling:.1} {unit}/s: {} clients, each waiting {} ms at the bank per \
                 request{})",
                self.concurrency,
                self.added_latency_ms,
                if self.mix.is_some() {
                    ", reads aside"
                } else {
                    ""
                }
            )?,
            None => writeln!(f)?,
        }
        let latency_label = if self.mix.is_some() {
            "  latency     whole flows: "
        } else {
            "  latency     "
        };
        match &self.latency_us {
            Some(l) => writeln!(f, "{latency_label}{}", percentiles(l, true))?,
            None => writeln!(f, "  latency     no successful requests")?,
        }
        if let Some(mix) = &self.mix {
            for (operation, report) in &mix.by_operation {
                let errors = if report.errors.is_empty() {
                    "no errors".to_owned()
                } else {
                    format!("errors {}", error_list(&report.errors))
                };
                let whole = report
                    .latency_us
                    .as_ref()
                    .map_or("no successes".to_owned(), |l| percentiles(l, false));
                let steady = report
                    .steady_latency_us
                    .as_ref()
                    .map_or("none in the window".to_owned(), |l| percentiles(l, false));
                writeln!(
                    f,
                    "  {:<17} {} ok, {errors}; {whole}; steady {steady}",
                    operation.name(),
                    report.ok
                )?;
            }
        }
        match &self.steady_state {
            Some(steady) => {
                write!(
                    f,
                    "  steady      {} s of {} s, {}: {:.1} {unit}/s",
                    format_seconds(steady.end_us.saturating_sub(steady.start_us)),
                    format_seconds(self.elapsed_us),
                    steady.window,
                    steady.per_second
                )?;
                if let Some(ops) = steady.operations_per_second {
                    write!(f, ", {ops:.1} operations/s")?;
                }
                match steady.share_of_ceiling {
                    Some(share) => writeln!(f, ", {:.1}% of the ceiling", share * 100.0)?,
                    None => writeln!(f)?,
                }
                match &steady.latency_us {
                    Some(l) => writeln!(f, "              latency {}", percentiles(l, true))?,
                    None => writeln!(f, "              no successful requests in the window")?,
                }
            }
            None => writeln!(
                f,
                "  steady      none: no stretch of the run had every client busy"
            )?,
        }
        for (label, cpu) in [
            ("authorization", &self.cpu_ms_per_authorization),
            ("flow", &self.cpu_ms_per_flow),
        ] {
            if let Some(cpu) = cpu {
                let parts: Vec<String> = cpu
                    .ms
                    .iter()
                    .map(|(party, ms)| format!("{party} {ms:.3}"))
                    .collect();
                writeln!(f, "  cpu         ms per {label}: {}", parts.join(", "))?;
            }
        }
        if let Some(split) = &self.time_split {
            write_time_split(f, split)?;
        }
        if let Some(floor) = &self.floor {
            write_floor(f, floor)?;
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

/// `kind: n, kind: n`.
fn error_list(errors: &BTreeMap<String, u64>) -> String {
    errors
        .iter()
        .map(|(kind, n)| format!("{kind}: {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `p50 1.000 ms, p95 …, p99 …` and, with `max`, `, max …`.
fn percentiles(l: &Latency, max: bool) -> String {
    let mut text = format!(
        "p50 {} ms, p95 {} ms, p99 {} ms",
        format_ms(l.p50_us),
        format_ms(l.p95_us),
        format_ms(l.p99_us)
    );
    if max {
        text.push_str(&format!(", max {} ms", format_ms(l.max_us)));
    }
    text
}

fn write_time_split(f: &mut fmt::Formatter<'_>, split: &TimeSplit) -> fmt::Result {
    writeln!(
        f,
        "  time        ms per authorization, means over the run: the clients waited {:.1}; \
         the bank {:.1} beyond its added {:.0}, the hop to it {:.1}, the gateway's own work {:.1}, \
         outside the gateway's handler {:.1}",
        split.client_ms,
        split.bank_own_ms(),
        split.added_latency_ms,
        split.hop_ms(),
        split.gateway_own_ms(),
        split.outside_ms()
    )
}

fn write_floor(f: &mut fmt::Formatter<'_>, floor: &Floor) -> fmt::Result {
    let Some(insert) = &floor.insert else {
        return writeln!(
            f,
            "  floor       not measured: {}",
            floor.skipped.as_deref().unwrap_or("no reason given")
        );
    };
    writeln!(
        f,
        "  floor       pgbench, single-row INSERTs on this cluster ({} clients, {} threads): \
         {:.1}/s over {} s, {:.4} ms CPU per insert (Postgres {:.4}, pgbench {:.4})",
        insert.clients,
        insert.threads,
        insert.inserts_per_second,
        format_seconds(insert.window_us),
        insert.cpu_ms_per_insert,
        insert.postgres_cpu_ms_per_insert,
        insert.pgbench_cpu_ms_per_insert
    )?;
    for (unit, ms, ratio) in [
        (
            "authorization",
            floor.gateway_cpu_ms_per_authorization,
            floor.authorization_in_inserts,
        ),
        ("flow", floor.gateway_cpu_ms_per_flow, floor.flow_in_inserts),
    ] {
        if let (Some(ms), Some(ratio)) = (ms, ratio) {
            writeln!(
                f,
                "              gateway CPU per {unit} {ms:.3} ms (its process and its \
                 Postgres): {unit} = {ratio:.2} inserts' worth of CPU"
            )?;
        }
    }
    Ok(())
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
