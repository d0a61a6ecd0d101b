//! The report of `simulator run`: text for people, JSON for scripts, and a
//! self-contained HTML page (inline SVG, no script): the invariants with
//! each failure's story as a timeline, requests and latency over time with
//! the faults marked, the faults by kind, the final statuses, the latency
//! histogram and the answers.
//!
//! - [`series`]: the run over time, per bucket, and its events as markers.
//! - [`story`]: a failure example's story with the run's events between.
//! - [`charts`]: the SVG.

mod charts;
pub mod series;
pub mod story;

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

pub use series::{Marker, Series, TimeBucket};
pub use story::{FailureStory, Source, StoryLine};

/// Scenarios with more payments are reported by their headline only.
pub const PLANS_SHOWN: usize = 30;
/// Upper bounds of the latency histogram's buckets, in ms (the last is open).
const BUCKETS_MS: [u64; 13] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000];

/// A fault or a restart, on the run's clock.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub at_ms: u64,
    /// `kill`, `crash`, `sigterm`, `restart`, `outage`, `db_restart`,
    /// `backend_kill`, `statement_timeout`, `expiry_wave`, `console_wave`, `fault_point`
    /// (from the gateways' logs) or `fault_error` (a fault not done).
    pub kind: String,
    pub replica: Option<usize>,
    pub detail: String,
}

impl Event {
    /// One line without its moment: `kill -9, replica 1: kill -9 4242`.
    pub fn describe(&self) -> String {
        match self.replica {
            Some(r) => format!("{}, replica {r}: {}", kind_label(&self.kind), self.detail),
            None => format!("{}: {}", kind_label(&self.kind), self.detail),
        }
    }
}

/// An event kind as a tester says it.
pub fn kind_label(kind: &str) -> &str {
    // Kinds are strings (written by the fault plan and read from logs): one
    // not known here is shown as it is.
    match kind {
        "kill" => "kill -9",
        "crash" => "crash",
        "sigterm" => "SIGTERM",
        "restart" => "restart",
        "outage" => "bank outage",
        "db_restart" => "database restart",
        "backend_kill" => "database connections killed",
        "statement_timeout" => "statement timeout",
        "expiry_wave" => "expiry wave",
        "console_wave" => "console wave",
        "fault_point" => "fault point",
        "fault_error" => "fault not done",
        other => other,
    }
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
    /// Of them, those the `ficmart-client` crate sent (patient clients).
    #[serde(default)]
    pub requests_through_client: u64,
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
    /// `--reconcile-every`, for the replay command.
    pub reconcile_every_ms: Option<u64>,
    /// The scenario's console waves (`--console-waves`), for the replay
    /// command.
    pub console_waves: usize,
    /// The scenario's fresh cards, for the replay command.
    pub cards: u16,
    /// `--duration`, for the replay command (it also bounds the moments of
    /// a generated scenario's faults).
    pub duration_ms: Option<u64>,
    /// The file the scenario was read from or written to, when it is not
    /// (only) a seed's: the replay command names it.
    pub scenario_file: Option<String>,
    pub events: Vec<Event>,
    /// Requests, answers and latency per second (wider for long runs),
    /// with the events as markers.
    pub series: Series,
    pub invariants: Vec<InvariantResult>,
    /// Each failure example's story as a timeline, with the run's events
    /// around it (`invariant` and `example` say whose).
    pub failure_stories: Vec<FailureStory>,
    pub passed: bool,
    /// The gateways' logs, kept when something failed.
    pub gateway_logs: Vec<String>,
    /// Events, requests and delivery lag, when the run had a receiver.
    pub webhooks: Option<crate::invariants::webhooks::WebhookSummary>,
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
        (requests, requests_through_client): (u64, u64),
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
        let series = series::series(&obs.flows, &events, traffic_ms);
        let failure_stories = story::stories(&invariants, &obs.flows, &events);
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
            requests_through_client,
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
            reconcile_every_ms: options.reconcile_every.map(crate::stats::millis),
            console_waves: scenario.faults.console_waves.len(),
            cards: scenario.cards,
            duration_ms: options.duration.map(crate::stats::millis),
            scenario_file: None,
            events,
            series,
            invariants,
            failure_stories,
            passed,
            gateway_logs: Vec::new(),
            webhooks: obs
                .webhooks
                .as_ref()
                .map(crate::invariants::webhooks::summary),
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
            if self.console_waves > 0 {
                let _ = write!(command, " --console-waves {}", self.console_waves);
            }
        }
        if let Some(ms) = self.duration_ms {
            let _ = write!(command, " --duration {ms}ms");
        }
        if let Some(ms) = self.reconcile_every_ms {
            let _ = write!(command, " --reconcile-every {ms}ms");
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

    /// A self-contained HTML page: the summary; the invariants, each
    /// failure's story as a timeline with the run's events between its
    /// lines; requests, answers and latency over time with the events
    /// marked; the events by kind; the final statuses; the latency
    /// histogram; the answers; and the text report.
    pub fn html(&self) -> String {
        let mut page = String::new();
        let verdict = if self.passed { "PASS" } else { "FAIL" };
        let _ = write!(
            page,
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>simulator run {verdict} (seed {})</title>\
             <style>body{{font-family:sans-serif;max-width:960px;margin:2em auto}}\
             .pass{{color:#1a7f37}}.fail{{color:#cf222e}}pre{{background:#f6f8fa;padding:1em;overflow:auto}}\
             td,th{{padding:2px 10px;text-align:left;vertical-align:top}}td.n{{text-align:right}}\
             table.story{{font-family:monospace;font-size:13px;border-collapse:collapse}}\
             table.story tr.event{{background:#fff1e5;color:#953800;font-weight:bold}}\
             table.story td{{border-bottom:1px solid #eee}}\
             p.note{{color:#57606a;font-size:13px}}</style></head><body>",
            self.seed
        );
        let _ = write!(
            page,
            "<h1>simulator run: <span class=\"{}\">{verdict}</span></h1>",
            verdict.to_lowercase()
        );
        let failed: Vec<String> = self
            .invariants
            .iter()
            .filter(|i| !i.passed)
            .map(|i| {
                format!(
                    "<a href=\"#invariant-{0}\">{0}. {1}</a>",
                    i.number,
                    escape(i.name)
                )
            })
            .collect();
        if !failed.is_empty() {
            let _ = write!(page, "<p class=\"fail\">Failed: {}</p>", failed.join(", "));
        }
        let mut summary = String::new();
        let _ = self.write_summary(&mut summary);
        let _ = write!(
            page,
            "<pre>{}replay: {}</pre>",
            escape(&summary),
            escape(&self.replay_command())
        );
        self.invariants_html(&mut page);
        self.over_time_html(&mut page);
        page.push_str("<h2 id=\"faults\">Faults by kind</h2>");
        match charts::event_rows(&self.series, &self.events, self.traffic_ms) {
            Some(svg) => page.push_str(&svg),
            None => page.push_str("<p>No faults, kills or restarts in this run.</p>"),
        }
        let bank: Vec<String> = self
            .faults_injected
            .iter()
            .map(|(kind, n)| format!("{} {n}", escape(kind)))
            .collect();
        if !bank.is_empty() {
            // The bank counts its faults; it does not say when: no ticks.
            let _ = write!(
                page,
                "<p class=\"note\">The bank's own faults, counted but not timed: {}.</p>",
                bank.join(", ")
            );
        }
        page.push_str("<h2 id=\"statuses\">Final statuses</h2>");
        let statuses: Vec<(String, u64)> = self
            .final_statuses
            .iter()
            .map(|(status, n)| (status.clone(), *n))
            .collect();
        page.push_str(&charts::bars(&statuses));
        page.push_str("<h2 id=\"histogram\">Latency (every answered request)</h2>");
        page.push_str(&charts::histogram(&self.latency_histogram));
        page.push_str(
            "<h2 id=\"answers\">Answers by request and status (every attempt)</h2>\
             <table><tr><th>request</th><th>answer</th><th>count</th></tr>",
        );
        for (outcome, n) in &self.outcomes {
            let (op, answer) = outcome.split_once(' ').unwrap_or((outcome, ""));
            let _ = write!(
                page,
                "<tr><td>{}</td><td>{}</td><td class=\"n\">{n}</td></tr>",
                escape(op),
                escape(answer)
            );
        }
        let _ = write!(
            page,
            "</table><h2 id=\"text\">The text report</h2><details><summary>as printed</summary><pre>{}</pre></details>",
            escape(&self.to_string())
        );
        page.push_str("</body></html>\n");
        page
    }

    /// The invariants as a table, then each failed one's examples, each
    /// with its story as a timeline.
    fn invariants_html(&self, page: &mut String) {
        page.push_str(
            "<h2 id=\"invariants\">Invariants</h2><table><tr><th>#</th><th>invariant</th>\
             <th>what it checks</th><th>checked</th><th>violations</th><th></th></tr>",
        );
        for invariant in &self.invariants {
            let (class, verdict) = if invariant.passed {
                ("pass", "PASS")
            } else {
                ("fail", "FAIL")
            };
            let _ = write!(
                page,
                "<tr><td class=\"n\">{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td>\
                 <td class=\"n\">{}</td><td class=\"{class}\">{verdict}</td></tr>",
                invariant.number,
                escape(invariant.name),
                escape(invariant.about),
                invariant.checked,
                invariant.violations
            );
        }
        page.push_str("</table>");
        for invariant in self.invariants.iter().filter(|i| !i.passed) {
            let _ = write!(
                page,
                "<h3 id=\"invariant-{0}\" class=\"fail\">{0}. {1}: FAIL ({2} violation(s){3})</h3><p>{4}</p>",
                invariant.number,
                escape(invariant.name),
                invariant.violations,
                if invariant.examples.len()
                    < usize::try_from(invariant.violations).unwrap_or(usize::MAX)
                {
                    format!(", the first {} shown", invariant.examples.len())
                } else {
                    String::new()
                },
                escape(invariant.about)
            );
            for (i, violation) in invariant.examples.iter().enumerate() {
                let _ = write!(
                    page,
                    "<h4>{}</h4><p>{}</p>",
                    escape(&violation.subject),
                    escape(&violation.message)
                );
                let Some(story) = self
                    .failure_stories
                    .iter()
                    .find(|s| s.invariant == invariant.number && s.example == i)
                else {
                    continue;
                };
                if let Some((first, last)) = story.span_ms {
                    let _ = write!(
                        page,
                        "<p class=\"note\">From +{first}ms to +{last}ms; the run's events from {} s before to {} s after are between its lines.</p>",
                        story::MARGIN_MS / 1000,
                        story::MARGIN_MS / 1000
                    );
                }
                page.push_str("<table class=\"story\">");
                for line in &story.lines {
                    let (class, text) = match line.source {
                        Source::Payment => ("payment", story::without_moment(&line.text)),
                        Source::Event => ("event", line.text.as_str().into()),
                    };
                    let at = line.at_ms.map(|ms| format!("+{ms}ms")).unwrap_or_default();
                    let _ = write!(
                        page,
                        "<tr class=\"{class}\"><td class=\"n\">{at}</td><td>{}</td></tr>",
                        escape(&text)
                    );
                }
                page.push_str("</table>");
            }
        }
    }

    /// Requests and answers, then latency, per bucket, with the events as
    /// vertical markers on the same time axis.
    fn over_time_html(&self, page: &mut String) {
        if self.series.buckets.is_empty() {
            page.push_str("<h2 id=\"over-time\">Over time</h2><p>Nothing was sent.</p>");
            return;
        }
        let per = bucket_name(self.series.bucket_ms);
        let column = |value: fn(&TimeBucket) -> Option<u64>| -> Vec<Option<u64>> {
            self.series.buckets.iter().map(value).collect()
        };
        let _ = write!(
            page,
            "<h2 id=\"over-time\">Requests and answers per {per}</h2>"
        );
        page.push_str(&charts::line_chart(
            &self.series,
            self.traffic_ms,
            &format!("per {per}"),
            &[
                charts::Line {
                    name: "requests sent",
                    colour: "#4c72b0",
                    values: column(|b| Some(b.sent)),
                },
                charts::Line {
                    name: "final answers",
                    colour: "#1a7f37",
                    values: column(|b| Some(b.final_answers)),
                },
                charts::Line {
                    name: "no answer",
                    colour: "#cf222e",
                    values: column(|b| Some(b.no_answer)),
                },
            ],
            charts::Scale::Count,
        ));
        page.push_str(
            "<p class=\"note\">A request counts when it was sent, a final answer when it \
             arrived (202, 409 key in use, 429, 503 and no answer are not final). Vertical \
             marks are the run's events; hover for what they were.</p>",
        );
        let _ = write!(page, "<h2 id=\"latency-over-time\">Latency per {per}</h2>");
        page.push_str(&charts::line_chart(
            &self.series,
            self.traffic_ms,
            "log scale",
            &[
                charts::Line {
                    name: "p50",
                    colour: "#4c72b0",
                    values: column(|b| b.p50_us),
                },
                charts::Line {
                    name: "p99",
                    colour: "#cf222e",
                    values: column(|b| b.p99_us),
                },
            ],
            charts::Scale::LatencyUs,
        ));
        page.push_str(
            "<p class=\"note\">Of the keyed requests sent in each bucket that got an answer.</p>",
        );
    }

    /// The lines of the text report between its verdict and its tables.
    fn write_summary(&self, f: &mut impl fmt::Write) -> fmt::Result {
        writeln!(f, "mode       {}", self.mode)?;
        writeln!(f, "scenario   {}", self.scenario)?;
        writeln!(f, "bank chaos {}", self.chaos)?;
        writeln!(
            f,
            "traffic    {} of {} payments, {} requests ({} through ficmart-client), concurrency {}, {} replica(s), {} of traffic, {} to settle",
            self.payments_run,
            self.payments_planned,
            self.requests,
            self.requests_through_client,
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
        if let Some(line) = self.over_time() {
            writeln!(f, "over time  {line}")?;
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
        if let Some(w) = &self.webhooks {
            writeln!(
                f,
                "webhooks   {} events to the receiver in {} requests ({} retries, {} answered 2xx); delivery lag p50 {} ms, p99 {} ms, max {} ms",
                w.events,
                w.requests,
                w.retries,
                w.delivered,
                w.lag_p50_ms,
                w.lag_p99_ms,
                w.lag_max_ms
            )?;
        }
        Ok(())
    }

    /// The series in a line: the busiest bucket, the slowest, and how many
    /// had attempts without an answer.
    fn over_time(&self) -> Option<String> {
        let buckets = &self.series.buckets;
        // The first of the busiest (and of the slowest): the same data, the
        // same line.
        let busiest = buckets.iter().min_by_key(|b| std::cmp::Reverse(b.sent))?;
        let mut line = format!(
            "per {}: at most {} requests (+{})",
            bucket_name(self.series.bucket_ms),
            busiest.sent,
            seconds(busiest.start_ms)
        );
        if let Some(slowest) = buckets
            .iter()
            .filter(|b| b.p99_us.is_some())
            .min_by_key(|b| std::cmp::Reverse(b.p99_us))
            && let Some(p99) = slowest.p99_us
        {
            let _ = write!(
                line,
                ", worst p99 {} ms (+{})",
                format_ms(p99),
                seconds(slowest.start_ms)
            );
        }
        let unanswered = buckets.iter().filter(|b| b.no_answer > 0).count();
        let _ = write!(
            line,
            ", {unanswered} {} with attempts left unanswered",
            if self.series.bucket_ms == 1000 {
                "second(s)"
            } else {
                "bucket(s)"
            }
        );
        Some(line)
    }
}

/// A bucket's width as a unit: `1 s`, `2 s`.
fn bucket_name(bucket_ms: u64) -> String {
    if bucket_ms == 1000 {
        "second".to_owned()
    } else {
        format!("{} s", bucket_ms / 1000)
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

/// `text` safe in HTML and SVG, as content and as a quoted attribute.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

impl fmt::Display for RunReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.passed { "PASS" } else { "FAIL" };
        writeln!(f, "simulator run: {verdict} (seed {})", self.seed)?;
        self.write_summary(f)?;
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
            writeln!(f, "        {}", invariant.about)?;
            for (i, violation) in invariant.examples.iter().enumerate() {
                writeln!(f, "        {}: {}", violation.subject, violation.message)?;
                for line in &violation.history {
                    writeln!(f, "          {line}")?;
                }
                // The story is printed as the checks wrote it; the faults
                // around it follow, by time (the HTML interleaves them).
                let events = self
                    .failure_stories
                    .iter()
                    .filter(|s| s.invariant == invariant.number && s.example == i)
                    .flat_map(|s| &s.lines)
                    .filter(|l| l.source == Source::Event);
                for line in events {
                    match line.at_ms {
                        Some(ms) => writeln!(f, "          during it: +{ms}ms {}", line.text)?,
                        None => writeln!(f, "          during it: {}", line.text)?,
                    }
                }
            }
        }
        if !self.gateway_logs.is_empty() {
            writeln!(f, "gateway logs: {}", self.gateway_logs.join(", "))?;
        }
        write!(f, "replay: {}", self.replay_command())
    }
}

#[cfg(test)]
mod tests {
    use super::charts::{decades, nice_step};
    use super::series::{bucket_width, series_of};
    use super::story::{MAX_EVENTS, timeline, without_moment};
    use super::*;
    use crate::driver::{Exchange, Read, ReadKind};
    use crate::invariants::Violation;
    use crate::model::Op;

    const EVIL: &str = "<script>alert(\"x\")</script>";

    fn exchange(op: Op, at_ms: u64, latency_ms: u64, status: Option<u16>) -> Exchange {
        Exchange {
            op,
            key: format!("k-{at_ms}"),
            variant: 0,
            merchant: 0,
            payment: None,
            at_ms,
            latency_us: latency_ms * 1000,
            answer: match status {
                Some(status) => Answer::Http {
                    status,
                    replayed: false,
                    retry_after: None,
                    body: "{}".into(),
                },
                None => Answer::Transport {
                    error: "connection refused".into(),
                },
            },
        }
    }

    fn read(at_ms: u64, answered: bool) -> Read {
        Read {
            kind: ReadKind::Read,
            after: "end".into(),
            payment_id: None,
            at_ms,
            latency_us: 1000,
            answer: if answered {
                Answer::Http {
                    status: 200,
                    replayed: false,
                    retry_after: None,
                    body: "{}".into(),
                }
            } else {
                Answer::Transport {
                    error: "reset".into(),
                }
            },
        }
    }

    fn event(at_ms: u64, kind: &str, replica: Option<usize>, detail: &str) -> Event {
        Event {
            at_ms,
            kind: kind.into(),
            replica,
            detail: detail.into(),
        }
    }

    fn sample() -> (Vec<Exchange>, Vec<Read>, Vec<Event>) {
        let exchanges = vec![
            exchange(Op::Authorize, 100, 50, Some(201)),
            // Answered in the next second: counted there as final.
            exchange(Op::Capture, 200, 1500, Some(200)),
            // Not final: it counts as sent only.
            exchange(Op::Void, 900, 10, Some(202)),
            exchange(Op::Capture, 1200, 0, None),
            exchange(Op::Refund, 2500, 3, Some(200)),
        ];
        let reads = vec![read(300, true), read(2100, false)];
        let mut events = vec![
            event(1500, "kill", Some(1), "kill -9 4242"),
            event(1800, "restart", Some(1), "ready again"),
        ];
        events
            .extend((0..7).map(|i| event(2000 + i, "fault_point", Some(0), "bank_answered Abort")));
        events.push(event(2600, "outage", None, "bank answers 503 for 2 s"));
        (exchanges, reads, events)
    }

    #[test]
    fn buckets_count_requests_by_sending_and_final_answers_by_arrival() {
        let (exchanges, reads, events) = sample();
        let series = series_of(exchanges.iter(), reads.iter(), &events, 3500);
        assert_eq!(series.bucket_ms, 1000);
        let sent: Vec<u64> = series.buckets.iter().map(|b| b.sent).collect();
        let finals: Vec<u64> = series.buckets.iter().map(|b| b.final_answers).collect();
        let lost: Vec<u64> = series.buckets.iter().map(|b| b.no_answer).collect();
        let starts: Vec<u64> = series.buckets.iter().map(|b| b.start_ms).collect();
        assert_eq!(starts, [0, 1000, 2000, 3000], "to the end of the traffic");
        assert_eq!(sent, [4, 1, 2, 0]);
        assert_eq!(finals, [1, 1, 1, 0]);
        assert_eq!(lost, [0, 1, 1, 0]);
        assert_eq!(sent.iter().sum::<u64>(), 7, "every attempt once");
    }

    #[test]
    fn bucket_percentiles_are_nearest_rank_over_answered_requests() {
        let (exchanges, reads, events) = sample();
        let series = series_of(exchanges.iter(), reads.iter(), &events, 3500);
        let p50: Vec<Option<u64>> = series.buckets.iter().map(|b| b.p50_us).collect();
        let p99: Vec<Option<u64>> = series.buckets.iter().map(|b| b.p99_us).collect();
        // Second 0: 10, 50 and 1500 ms; second 1 only a request unanswered.
        assert_eq!(p50, [Some(50_000), None, Some(3_000), None]);
        assert_eq!(p99, [Some(1_500_000), None, Some(3_000), None]);
    }

    #[test]
    fn markers_are_one_per_kind_and_bucket_in_time_order() {
        let (exchanges, reads, events) = sample();
        let series = series_of(exchanges.iter(), reads.iter(), &events, 3500);
        let markers: Vec<(u64, &str, u64)> = series
            .markers
            .iter()
            .map(|m| (m.at_ms, m.kind.as_str(), m.count))
            .collect();
        assert_eq!(
            markers,
            [
                (1500, "kill", 1),
                (1800, "restart", 1),
                (2000, "fault_point", 7),
                (2600, "outage", 1)
            ]
        );
        let fault_points = &series.markers[2];
        assert_eq!(fault_points.details.len(), series::MARKER_DETAILS);
        assert_eq!(
            fault_points.details[0],
            "+2.0 s fault point, replica 0: bank_answered Abort"
        );
        assert_eq!(
            series.markers[0].details,
            ["+1.5 s kill -9, replica 1: kill -9 4242"]
        );
    }

    #[test]
    fn buckets_widen_to_stay_within_the_bound() {
        assert_eq!(bucket_width(0), 1000);
        assert_eq!(bucket_width(599_999), 1000);
        assert_eq!(bucket_width(600_000), 2000);
        assert_eq!(bucket_width(3_600_000), 7000);
        for end_ms in [
            0,
            999,
            1000,
            599_999,
            600_000,
            1_000_000,
            36_000_000,
            123_456_789,
        ] {
            let late = [event(end_ms, "kill", Some(0), "kill -9 1")];
            let series = series_of([].iter(), [].iter(), &late, 0);
            let n = u64::try_from(series.buckets.len()).unwrap();
            assert!((1..=series::MAX_BUCKETS).contains(&n), "{end_ms}: {n}");
            assert!(series.end_ms() > end_ms, "{end_ms} is in a bucket");
            assert_eq!(series.bucket_of(end_ms), series.buckets.len() - 1);
            assert_eq!(series.bucket_ms % 1000, 0, "whole seconds");
        }
        let long = series_of(
            [].iter(),
            [].iter(),
            &[event(1_000_000, "kill", None, "")],
            0,
        );
        assert_eq!((long.bucket_ms, long.buckets.len()), (2000, 501));
    }

    #[test]
    fn nothing_recorded_is_an_empty_series() {
        assert_eq!(series_of([].iter(), [].iter(), &[], 0), Series::default());
        let quiet = series_of([].iter(), [].iter(), &[], 1500);
        assert_eq!(quiet.buckets.len(), 2);
        assert!(
            quiet
                .buckets
                .iter()
                .all(|b| b.sent == 0 && b.p50_us.is_none())
        );
    }

    #[test]
    fn chart_scales_are_round() {
        assert_eq!(nice_step(0), 1);
        assert_eq!(nice_step(7), 2);
        assert_eq!(nice_step(100), 50);
        assert_eq!(nice_step(u64::MAX), 5_000_000_000_000_000_000);
        assert_eq!(decades(0, 0), (1, 10));
        assert_eq!(decades(1500, 2_000_000), (1000, 10_000_000));
        assert_eq!(decades(1000, 1000), (1000, 10_000));
    }

    fn history() -> Vec<String> {
        [
            "plan: normal, capture (seed 1)",
            "+100ms authorize k-auth → 201 authorized",
            "+2500ms capture k-cap → 503 bank_unavailable",
            "+400ms read after authorize → 200 authorized",
            "receipt pay_1: pending → authorized (bank ids {})",
            "operation capture failed under bank key bk-1",
            "  to the bank +2600ms /captures → +2700ms",
        ]
        .map(str::to_owned)
        .to_vec()
    }

    #[test]
    fn a_story_interleaves_the_runs_events_by_time() {
        let events = [
            event(50, "kill", Some(1), "kill -9 4242"),
            event(2500, "fault_point", Some(0), "bank_answered Abort"),
            event(4600, "restart", Some(1), "ready again"),
            // Past the story's last moment and the margin.
            event(4601, "outage", None, "bank answers 503 for 2 s"),
        ];
        let story = timeline(&history(), None, &events);
        assert_eq!(story.span_ms, Some((100, 2600)));
        let lines: Vec<(Option<u64>, Source, &str)> = story
            .lines
            .iter()
            .map(|l| (l.at_ms, l.source, l.text.as_str()))
            .collect();
        assert_eq!(
            lines,
            [
                (None, Source::Payment, "plan: normal, capture (seed 1)"),
                (Some(50), Source::Event, "kill -9, replica 1: kill -9 4242"),
                (
                    Some(100),
                    Source::Payment,
                    "+100ms authorize k-auth → 201 authorized"
                ),
                (
                    Some(400),
                    Source::Payment,
                    "+400ms read after authorize → 200 authorized"
                ),
                (
                    Some(2500),
                    Source::Payment,
                    "+2500ms capture k-cap → 503 bank_unavailable"
                ),
                (
                    Some(2500),
                    Source::Event,
                    "fault point, replica 0: bank_answered Abort"
                ),
                (
                    Some(2600),
                    Source::Payment,
                    "to the bank +2600ms /captures → +2700ms (operation capture failed)"
                ),
                (Some(4600), Source::Event, "restart, replica 1: ready again"),
                (
                    None,
                    Source::Payment,
                    "receipt pay_1: pending → authorized (bank ids {})"
                ),
                (
                    None,
                    Source::Payment,
                    "operation capture failed under bank key bk-1"
                ),
            ]
        );
        assert_eq!(
            without_moment("+100ms authorize k → 201"),
            "authorize k → 201"
        );
        assert_eq!(
            without_moment("to the bank +1ms /x → +5ms"),
            "to the bank /x → +5ms"
        );
        assert_eq!(without_moment("plan: 4ms"), "plan: 4ms");
    }

    #[test]
    fn a_given_span_decides_which_events_belong_and_they_are_bounded() {
        let many: Vec<Event> = (0..60)
            .map(|i| event(10_000 + i, "fault_point", Some(0), "tx_commit Error"))
            .collect();
        let story = timeline(&history(), Some((9_000, 9_500)), &many);
        let events = story.lines.iter().filter(|l| l.source == Source::Event);
        assert_eq!(
            events.clone().filter(|l| l.at_ms.is_some()).count(),
            MAX_EVENTS
        );
        assert!(
            events
                .clone()
                .any(|l| l.text == "… and 10 more of the run's events in this span")
        );
        let outside = timeline(&history(), Some((20_000, 21_000)), &many);
        assert!(outside.lines.iter().all(|l| l.source == Source::Payment));
        let untimed = timeline(&["only words".to_owned()], None, &many);
        assert_eq!(untimed.span_ms, None);
        assert_eq!(untimed.lines.len(), 1);
    }

    fn report() -> RunReport {
        let (exchanges, reads, mut events) = sample();
        events.push(event(2700, "fault_point", Some(0), EVIL));
        let mut history = history();
        history.push(format!("+2650ms capture k-cap → 500 {EVIL}"));
        let mut story = timeline(&history, None, &events);
        story.invariant = 10;
        let invariants = vec![
            InvariantResult {
                number: 1,
                name: "no double charge",
                about: "per authorization at most one capture",
                passed: true,
                checked: 3,
                violations: 0,
                examples: vec![],
            },
            InvariantResult {
                number: 10,
                name: "no server errors",
                about: "no 5xx but 503 with Retry-After",
                passed: false,
                checked: 5,
                violations: 2,
                examples: vec![
                    Violation {
                        subject: format!("#0 ord_0 pay_1 {EVIL}"),
                        message: format!("500 answered {EVIL}"),
                        history,
                    },
                    Violation {
                        subject: "the ledger".into(),
                        message: "no story".into(),
                        history: vec![],
                    },
                ],
            },
        ];
        RunReport {
            webhooks: None,
            seed: 7,
            run_id: "r1".into(),
            scenario: format!("7 payments · chaos calm {EVIL}"),
            chaos: serde_json::json!({"failure_rate": 0.0, "note": EVIL}),
            payments_planned: 7,
            payments_run: 7,
            concurrency: 2,
            replicas: 2,
            mode: format!("own stack {EVIL}"),
            own_stack: true,
            traffic_ms: 3500,
            settle_ms: 200,
            requests: 7,
            requests_through_client: 3,
            outcomes: BTreeMap::from([
                ("capture 200".to_owned(), 1),
                (format!("capture 500 {EVIL}"), 1),
            ]),
            final_statuses: BTreeMap::from([
                ("captured".to_owned(), 5),
                (format!("refunded {EVIL}"), 2),
            ]),
            latency_us: None,
            latency_histogram: vec![Bucket {
                le_ms: Some(1),
                count: 3,
            }],
            faults_injected: BTreeMap::from([(format!("timeout {EVIL}"), 3)]),
            restarts: 1,
            kill_every_ms: None,
            reconcile_every_ms: None,
            console_waves: 0,
            cards: 2,
            duration_ms: None,
            scenario_file: None,
            series: series_of(exchanges.iter(), reads.iter(), &events, 3500),
            events,
            invariants,
            failure_stories: vec![story],
            passed: false,
            gateway_logs: vec![],
        }
    }

    #[test]
    fn the_page_has_every_section_and_escapes_what_it_shows() {
        let html = report().html();
        for section in [
            "id=\"invariants\"",
            "id=\"invariant-10\"",
            "id=\"over-time\"",
            "id=\"latency-over-time\"",
            "id=\"faults\"",
            "id=\"statuses\"",
            "id=\"histogram\"",
            "id=\"answers\"",
            "id=\"text\"",
        ] {
            assert!(html.contains(section), "{section}");
        }
        assert!(!html.contains("<script"), "nothing given runs");
        assert!(html.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;"));
        assert!(
            html.contains("no 5xx but 503 with Retry-After"),
            "the about line"
        );
        assert!(html.contains("<polyline"), "lines drawn");
        assert!(
            html.contains("bank answers 503 for 2 s"),
            "a marker's title"
        );
        assert!(
            html.contains("fault point bank_answered"),
            "a row per fault point"
        );
        assert!(html.contains("The bank's own faults, counted but not timed"));
        assert!(
            html.contains("<td>capture</td><td>500 &lt;script&gt;"),
            "the answers table"
        );
        assert!(
            html.contains("<td>to the bank /captures → +2700ms (operation capture failed)</td>")
        );
        // The kill is shown between the requests it fell between.
        let at = |needle: &str| html.find(needle).unwrap_or_else(|| panic!("{needle}"));
        let kill = at("<tr class=\"event\"><td class=\"n\">+1500ms</td><td>kill -9, replica 1");
        assert!(at("<td>authorize k-auth → 201 authorized</td>") < kill);
        assert!(kill < at("<td>capture k-cap → 503 bank_unavailable</td>"));
        assert_eq!(html, report().html(), "the same data, the same page");
    }

    #[test]
    fn the_text_names_what_each_invariant_checks_and_the_faults_around_a_failure() {
        let text = report().to_string();
        assert!(text.contains("\n        per authorization at most one capture\n"));
        assert!(text.contains("          during it: +1500ms kill -9, replica 1: kill -9 4242\n"));
        assert!(
            text.contains("over time  per second: at most 4 requests (+0.0 s)"),
            "{text}"
        );
    }
}
