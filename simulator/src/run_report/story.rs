//! Each failure example as a timeline: the payment's story lines that
//! carry a moment (its requests, its reads, what the gateway sent the bank
//! for it) in time order, with the run's events from its first request to
//! its last answer (give or take [`MARGIN_MS`]) between them, so that a
//! kill or a fault point shows up where it struck.

use std::borrow::Cow;

use serde::Serialize;

use super::Event;
use crate::driver::FlowRecord;
use crate::invariants::InvariantResult;

/// The run's events this long before a payment's first request and after
/// its last answer belong to its story: a fault a little earlier (a replica
/// still down, the database coming back) still shapes its answers.
pub const MARGIN_MS: u64 = 2_000;
/// At most this many of the run's events in one story (the rest counted):
/// a fault point firing at every request would drown the payment's lines.
pub const MAX_EVENTS: usize = 50;

/// One failure example's timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailureStory {
    /// The invariant's number.
    pub invariant: u8,
    /// Which of its examples (the index in `examples`).
    pub example: usize,
    /// From the payment's first request to its last answer, in ms since
    /// the traffic started; `None` when its story names no moment.
    pub span_ms: Option<(u64, u64)>,
    /// The story's lines without a moment that come before the first one
    /// with it (the plan), then the timed lines and the events by time,
    /// then the rest in the story's order (receipts, the bank, operations).
    pub lines: Vec<StoryLine>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoryLine {
    /// `None` for a line without a moment.
    pub at_ms: Option<u64>,
    pub source: Source,
    pub text: String,
}

/// Whose line it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The payment's own story.
    Payment,
    /// One of the run's events (a fault, a restart).
    Event,
}

/// The timelines of every failure example that has a story.
pub fn stories(
    invariants: &[InvariantResult],
    flows: &[FlowRecord],
    events: &[Event],
) -> Vec<FailureStory> {
    let mut stories = Vec::new();
    for invariant in invariants {
        for (example, violation) in invariant.examples.iter().enumerate() {
            if violation.history.is_empty() {
                // Not about a payment (a card, the ledger): no timeline.
                continue;
            }
            let span = flow_of(&violation.subject, flows).and_then(flow_span);
            stories.push(FailureStory {
                invariant: invariant.number,
                example,
                ..timeline(&violation.history, span, events)
            });
        }
    }
    stories
}

/// The flow a violation's subject (`#<index> <order id> <payment id>`)
/// names.
fn flow_of<'f>(subject: &str, flows: &'f [FlowRecord]) -> Option<&'f FlowRecord> {
    let mut words = subject.strip_prefix('#')?.split_whitespace();
    let index: usize = words.next()?.parse().ok()?;
    let order = words.next()?;
    let named = |f: &&FlowRecord| f.index == index && f.order_id == order;
    // Flows are usually in index order; else look through them all.
    flows
        .get(index)
        .filter(named)
        .or_else(|| flows.iter().find(named))
}

/// From the flow's first request to its last answer.
fn flow_span(flow: &FlowRecord) -> Option<(u64, u64)> {
    let first = flow.exchanges.iter().map(|e| e.at_ms).min()?;
    let last = flow
        .exchanges
        .iter()
        .map(|e| e.at_ms.saturating_add(e.latency_us / 1000))
        .max()?;
    Some((first, last))
}

/// `history` as a timeline, with the events of `events` within `span`
/// (or, without one, within the span of the history's own moments).
/// `invariant` and `example` are left for the caller.
pub fn timeline(history: &[String], span: Option<(u64, u64)>, events: &[Event]) -> FailureStory {
    let mut head = Vec::new();
    let mut timed: Vec<(u64, Source, usize, String)> = Vec::new();
    let mut tail = Vec::new();
    let mut operation: Option<&str> = None;
    for (i, line) in history.iter().enumerate() {
        let text = line.trim();
        if let Some(rest) = text.strip_prefix("operation ") {
            // "operation capture succeeded under bank key …": its bank
            // calls follow it, indented, and move into the timeline.
            operation = rest.split(" under ").next();
        }
        let bank_call = text.strip_prefix("to the bank ");
        match bank_call.or(Some(text)).and_then(moment) {
            Some(at) => {
                let text = match (bank_call, operation) {
                    (Some(_), Some(operation)) => format!("{text} (operation {operation})"),
                    (Some(_) | None, _) => text.to_owned(),
                };
                timed.push((at, Source::Payment, i, text));
            }
            None if timed.is_empty() => head.push(text.to_owned()),
            None => tail.push(text.to_owned()),
        }
    }
    let span = span.or_else(|| {
        let first = timed.iter().map(|t| t.0).min()?;
        let last = timed.iter().map(|t| t.0).max()?;
        Some((first, last))
    });
    let mut during: Vec<&Event> = match span {
        Some((first, last)) => {
            let (from, to) = (
                first.saturating_sub(MARGIN_MS),
                last.saturating_add(MARGIN_MS),
            );
            events
                .iter()
                .filter(|e| (from..=to).contains(&e.at_ms))
                .collect()
        }
        None => Vec::new(),
    };
    during.sort_by_key(|e| e.at_ms);
    let left_out = during.len().saturating_sub(MAX_EVENTS);
    for (i, event) in during.into_iter().take(MAX_EVENTS).enumerate() {
        timed.push((event.at_ms, Source::Event, i, event.describe()));
    }
    // By moment; at the same millisecond the payment's line first, then
    // each side in its own order: the same data, the same timeline.
    timed.sort_by_key(|(at, source, i, _)| (*at, *source == Source::Event, *i));
    let untimed = |text: String| StoryLine {
        at_ms: None,
        source: Source::Payment,
        text,
    };
    let mut lines: Vec<StoryLine> = head.into_iter().map(untimed).collect();
    lines.extend(timed.into_iter().map(|(at, source, _, text)| StoryLine {
        at_ms: Some(at),
        source,
        text,
    }));
    if left_out > 0 {
        lines.push(StoryLine {
            at_ms: None,
            source: Source::Event,
            text: format!("… and {left_out} more of the run's events in this span"),
        });
    }
    lines.extend(tail.into_iter().map(untimed));
    FailureStory {
        invariant: 0,
        example: 0,
        span_ms: span,
        lines,
    }
}

/// The moment a story line starts with: `+1234ms …`.
fn moment(text: &str) -> Option<u64> {
    let rest = text.strip_prefix('+')?;
    let digits = rest.find(|c: char| !c.is_ascii_digit())?;
    if digits == 0 || !rest[digits..].starts_with("ms") {
        return None;
    }
    rest[..digits].parse().ok()
}

/// `text` without the moment it names first (`+1234ms `, also after `to
/// the bank `), for a table whose first column shows it.
pub fn without_moment(text: &str) -> Cow<'_, str> {
    let (prefix, rest) = match text.strip_prefix("to the bank ") {
        Some(rest) => ("to the bank ", rest),
        None => ("", text),
    };
    match (moment(rest), rest.split_once("ms")) {
        (Some(_), Some((_, after))) => Cow::Owned(format!("{prefix}{}", after.trim_start())),
        (Some(_) | None, _) => Cow::Borrowed(text),
    }
}
