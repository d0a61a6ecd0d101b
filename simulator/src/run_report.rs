//! The report of `simulator run`: text for people, JSON for scripts, and a
//! self-contained HTML page (inline SVG: a latency histogram and a timeline
//! of kills, restarts and outages).

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::driver::Answer;
use crate::invariants::{InvariantResult, Observations};
use crate::run::RunOptions;
use crate::scenario::Scenario;
use crate::stats::{Latency, format_ms};

/// Scenarios with more payments are reported by their headline only.
pub const PLANS_SHOWN: usize = 30;
/// Upper bounds of the latency histogram's buckets, in ms (the last is open).
const BUCKETS_MS: [u64; 13] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000];

/// A fault or a restart, on the run's clock.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub at_ms: u64,
    /// `kill`, `restart` or `outage`.
    pub kind: String,
    pub replica: Option<usize>,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Bucket {
    /// Upper bound in ms; `null` for the last, open bucket.
    pub le_ms: Option<u64>,
    pub count: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub seed: u64,
    pub run_id: String,
    /// The scenario, compactly (the plans only when there are at most
    /// [`PLANS_SHOWN`]; the seed regenerates them).
    pub scenario: String,
    pub chaos: Value,
    pub payments_planned: usize,
    pub payments_run: usize,
    pub concurrency: usize,
    /// Gateways the traffic went to (replicas started, or URLs given).
    pub replicas: usize,
    /// Which mode the run ran in: on a stack of its own, or on given URLs.
    pub mode: String,
    /// Whether it started its own gateways (else it was given URLs, and
    /// the replay command leaves `--replicas` out).
    pub own_stack: bool,
    pub traffic_ms: u64,
    pub settle_ms: u64,
    /// HTTP attempts sent to the gateways.
    pub requests: u64,
    /// Every attempt by request kind and answer, e.g. `capture 200`,
    /// `authorize 409 idempotency_key_in_use`, `void no answer`.
    pub outcomes: BTreeMap<String, u64>,
    /// The payments' final statuses.
    pub final_statuses: BTreeMap<String, u64>,
    /// Of the attempts that got an answer.
    pub latency_us: Option<Latency>,
    pub latency_histogram: Vec<Bucket>,
    /// `bank_chaos_faults_total` during the run, by kind.
    pub faults_injected: BTreeMap<String, u64>,
    pub restarts: usize,
    /// The scenario's periodic kill interval, for the replay command.
    pub kill_every_ms: Option<u32>,
    /// The scenario's fresh cards, for the replay command.
    pub cards: u16,
    /// `--duration`, for the replay command (it also bounds the moments of
    /// a generated scenario's faults).
    pub duration_ms: Option<u64>,
    /// The file the scenario was read from or written to, when it is not
    /// (only) a seed's: the replay command names it.
    pub scenario_file: Option<String>,
    pub events: Vec<Event>,
    pub invariants: Vec<InvariantResult>,
    pub passed: bool,
    /// The gateways' logs, kept when something failed.
    pub gateway_logs: Vec<String>,
}

impl RunReport {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        scenario: &Scenario,
        options: &RunOptions,
        obs: &Observations,
        invariants: Vec<InvariantResult>,
        faults_injected: BTreeMap<String, u64>,
        events: Vec<Event>,
        requests: u64,
        (traffic_ms, settle_ms): (u64, u64),
    ) -> Self {
        let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
        let mut latencies = Vec::new();
        let mut histogram = vec![0u64; BUCKETS_MS.len() + 1];
        for exchange in obs.flows.iter().flat_map(|f| &f.exchanges) {
            let outcome = match &exchange.answer {
                Answer::Http { status, .. } => {
                    let us = exchange.latency_us;
                    latencies.push(Duration::from_micros(us));
                    let bucket = BUCKETS_MS
                        .iter()
                        .position(|&le| us <= le * 1000)
                        .unwrap_or(BUCKETS_MS.len());
                    histogram[bucket] += 1;
                    match exchange.error_code() {
                        Some(code) => format!("{} {status} {code}", exchange.op),
                        None => format!("{} {status}", exchange.op),
                    }
                }
                Answer::Transport { .. } => format!("{} no answer", exchange.op),
            };
            *outcomes.entry(outcome).or_default() += 1;
        }
        let mut final_statuses: BTreeMap<String, u64> = BTreeMap::new();
        for (flow, receipts) in obs.flows.iter().zip(&obs.receipts) {
            let status = match receipts.first() {
                Some(receipt) => receipt["status"].as_str().unwrap_or("?").to_owned(),
                None if flow.unanswered.is_empty() => "no payment (refused)".to_owned(),
                None => "no payment (unanswered)".to_owned(),
            };
            *final_statuses.entry(status).or_default() += 1;
        }
        let passed = invariants.iter().all(|i| i.passed);
        Self {
            seed: scenario.seed,
            run_id: String::new(),
            scenario: if scenario.payments.len() <= PLANS_SHOWN {
                scenario.to_string()
            } else {
                scenario.headline()
            },
            chaos: scenario.bank_chaos(),
            payments_planned: scenario.payments.len(),
            payments_run: obs.flows.len(),
            concurrency: options.concurrency,
            replicas: options
                .given
                .as_ref()
                .map_or(options.replicas, |g| g.gateway_urls.len()),
            mode: options.given.as_ref().map_or_else(
                || "own stack: Postgres, the bank and the gateways started for this run".to_owned(),
                crate::run::Given::describe,
            ),
            own_stack: options.given.is_none(),
            traffic_ms,
            settle_ms,
            requests,
            outcomes,
            final_statuses,
            latency_us: Latency::summarise(latencies),
            latency_histogram: histogram
                .into_iter()
                .enumerate()
                .map(|(i, count)| Bucket {
                    le_ms: BUCKETS_MS.get(i).copied(),
                    count,
                })
                .collect(),
            faults_injected,
            restarts: events.iter().filter(|e| e.kind == "restart").count(),
            kill_every_ms: scenario.faults.kill_every_ms,
            cards: scenario.cards,
            duration_ms: options.duration.map(crate::stats::millis),
            scenario_file: None,
            events,
            invariants,
            passed,
            gateway_logs: Vec::new(),
        }
    }

    /// The command that replays this run's scenario: from its file when it
    /// has one (a shrunk scenario is not a seed's), else from its seed with
    /// every flag that shapes the generated scenario.
    pub fn replay_command(&self) -> String {
        let mut command = match &self.scenario_file {
            Some(file) => format!("simulator run --scenario {}", shell_word(file)),
            None => format!(
                "simulator run --seed {} --payments {} --cards {}",
                self.seed, self.payments_planned, self.cards
            ),
        };
        let _ = write!(command, " --concurrency {}", self.concurrency);
        if self.own_stack {
            let _ = write!(command, " --replicas {}", self.replicas);
        }
        if self.scenario_file.is_none() {
            let _ = write!(command, " --chaos {}", self.chaos_name());
            if let Some(every) = self.kill_every_ms {
                let _ = write!(command, " --kill-every {every}ms");
            }
        }
        if let Some(ms) = self.duration_ms {
            let _ = write!(command, " --duration {ms}ms");
        }
        command
    }

    fn chaos_name(&self) -> String {
        let name = self
            .scenario
            .split(" · ")
            .nth(1)
            .and_then(|part| part.strip_prefix("chaos "))
            .unwrap_or("calm");
        if name == "custom" {
            let mut bank = self.chaos.clone();
            if let Some(fields) = bank.as_object_mut() {
                fields.remove("seed");
                fields.remove("outage_seconds");
            }
            shell_word(&bank.to_string())
        } else {
            name.to_owned()
        }
    }

    /// A self-contained HTML page: summary, invariants, the latency
    /// histogram and the timeline, as inline SVG.
    pub fn html(&self) -> String {
        let mut page = String::new();
        let verdict = if self.passed { "PASS" } else { "FAIL" };
        let _ = write!(
            page,
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>simulator run {verdict} (seed {})</title>\
             <style>body{{font-family:sans-serif;max-width:960px;margin:2em auto}}\
             .pass{{color:#1a7f37}}.fail{{color:#cf222e}}pre{{background:#f6f8fa;padding:1em;overflow:auto}}\
             td,th{{padding:2px 10px;text-align:left}}</style></head><body>",
            self.seed
        );
        let _ = write!(
            page,
            "<h1>simulator run: <span class=\"{}\">{verdict}</span></h1><pre>{}</pre>",
            verdict.to_lowercase(),
            escape(&self.to_string())
        );
        page.push_str("<h2>Latency (every answered request)</h2>");
        page.push_str(&self.histogram_svg());
        page.push_str("<h2>Timeline: kills, restarts, outages</h2>");
        page.push_str(&self.timeline_svg());
        page.push_str("</body></html>\n");
        page
    }

    fn histogram_svg(&self) -> String {
        let (width, height, bar) = (900u64, 220u64, 60u64);
        let max = self
            .latency_histogram
            .iter()
            .map(|b| b.count)
            .max()
            .unwrap_or(0)
            .max(1);
        let mut svg = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{}\">",
            height + 40
        );
        for (i, bucket) in self.latency_histogram.iter().enumerate() {
            let x = 10 + u64::try_from(i).unwrap_or(0) * (bar + 6);
            let h = bucket.count * height / max;
            let label = match bucket.le_ms {
                Some(le) => format!("≤{le}ms"),
                None => ">10s".to_owned(),
            };
            let _ = write!(
                svg,
                "<rect x=\"{x}\" y=\"{}\" width=\"{bar}\" height=\"{h}\" fill=\"#4c72b0\"/>\
                 <text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"middle\">{}</text>\
                 <text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"middle\">{label}</text>",
                height - h + 10,
                x + bar / 2,
                height - h + 6,
                bucket.count,
                x + bar / 2,
                height + 28
            );
        }
        svg.push_str("</svg>");
        svg
    }

    fn timeline_svg(&self) -> String {
        let width = 900u64;
        let span = self.traffic_ms.max(1);
        let x = |ms: u64| 10 + ms.min(span) * (width - 20) / span;
        let mut svg = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"110\">\
             <line x1=\"10\" y1=\"60\" x2=\"{}\" y2=\"60\" stroke=\"#888\"/>\
             <text x=\"10\" y=\"100\" font-size=\"11\">0 s</text>\
             <text x=\"{}\" y=\"100\" font-size=\"11\" text-anchor=\"end\">{} (traffic ends)</text>",
            width - 10,
            width - 10,
            seconds(self.traffic_ms)
        );
        for event in &self.events {
            let (colour, y) = match event.kind.as_str() {
                "kill" => ("#cf222e", 40),
                "restart" => ("#1a7f37", 50),
                _ => ("#bf8700", 30),
            };
            let _ = write!(
                svg,
                "<line x1=\"{0}\" y1=\"{y}\" x2=\"{0}\" y2=\"70\" stroke=\"{colour}\" stroke-width=\"2\">\
                 <title>{1} {2} at {3}: {4}</title></line>",
                x(event.at_ms),
                event.kind,
                event
                    .replica
                    .map(|r| format!("replica {r}"))
                    .unwrap_or_default(),
                seconds(event.at_ms),
                escape(&event.detail)
            );
        }
        svg.push_str(
            "<text x=\"10\" y=\"15\" font-size=\"11\">\
             <tspan fill=\"#cf222e\">■ kill -9</tspan>  <tspan fill=\"#1a7f37\">■ restart</tspan>  \
             <tspan fill=\"#bf8700\">■ bank outage</tspan></text></svg>",
        );
        svg
    }
}

/// `word` as one shell word: as is when it is plain, else single-quoted.
fn shell_word(word: &str) -> String {
    if !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+,:@%".contains(&b))
    {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

fn seconds(ms: u64) -> String {
    format!("{}.{} s", ms / 1000, ms % 1000 / 100)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

impl fmt::Display for RunReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.passed { "PASS" } else { "FAIL" };
        writeln!(f, "simulator run: {verdict} (seed {})", self.seed)?;
        writeln!(f, "mode       {}", self.mode)?;
        writeln!(f, "scenario   {}", self.scenario)?;
        writeln!(f, "bank chaos {}", self.chaos)?;
        writeln!(
            f,
            "traffic    {} of {} payments, {} requests, concurrency {}, {} replica(s), {} of traffic, {} to settle",
            self.payments_run,
            self.payments_planned,
            self.requests,
            self.concurrency,
            self.replicas,
            seconds(self.traffic_ms),
            seconds(self.settle_ms)
        )?;
        if let Some(l) = &self.latency_us {
            writeln!(
                f,
                "latency    p50 {} ms, p95 {} ms, p99 {} ms, max {} ms",
                format_ms(l.p50_us),
                format_ms(l.p95_us),
                format_ms(l.p99_us),
                format_ms(l.max_us)
            )?;
        }
        let faults: Vec<String> = self
            .faults_injected
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let outages = self.events.iter().filter(|e| e.kind == "outage").count();
        writeln!(
            f,
            "faults     bank: {}; {outages} outage(s); {} kill -9 and restart(s)",
            if faults.is_empty() {
                "none".to_owned()
            } else {
                faults.join(", ")
            },
            self.restarts
        )?;
        writeln!(f, "final statuses")?;
        for (status, n) in &self.final_statuses {
            writeln!(f, "  {n:>6}  {status}")?;
        }
        writeln!(f, "answers (every attempt)")?;
        for (outcome, n) in &self.outcomes {
            writeln!(f, "  {n:>6}  {outcome}")?;
        }
        writeln!(f, "invariants")?;
        for invariant in &self.invariants {
            let verdict = if invariant.passed { "PASS" } else { "FAIL" };
            writeln!(
                f,
                "  {verdict}  {}. {} ({} checked{})",
                invariant.number,
                invariant.name,
                invariant.checked,
                if invariant.passed {
                    String::new()
                } else {
                    format!(", {} violation(s)", invariant.violations)
                }
            )?;
            for violation in &invariant.examples {
                writeln!(f, "        {}: {}", violation.subject, violation.message)?;
                for line in &violation.history {
                    writeln!(f, "          {line}")?;
                }
            }
        }
        if !self.gateway_logs.is_empty() {
            writeln!(f, "gateway logs: {}", self.gateway_logs.join(", "))?;
        }
        write!(f, "replay: {}", self.replay_command())
    }
}
