//! The run over time: per bucket (a second, wider for long runs) the
//! requests sent, the final answers received, the attempts left without an
//! answer and the latency percentiles; and the run's events as markers on
//! the same buckets. Computed once from what the clients recorded, so the
//! report (text, JSON, HTML) is a function of the data alone.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::{Event, seconds};
use crate::driver::{Answer, Exchange, FlowRecord, Read};
use crate::stats::{micros, percentile};

/// At most this many buckets: a longer run gets wider ones, in whole
/// seconds, so the JSON and the charts stay small whatever the run's length.
pub const MAX_BUCKETS: u64 = 600;
/// A marker keeps the details of its first few events (the rest counted).
pub const MARKER_DETAILS: usize = 5;

/// The run over time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Series {
    /// The width of a bucket: 1000, or a multiple of it when the run is
    /// longer than [`MAX_BUCKETS`] seconds.
    pub bucket_ms: u64,
    /// From the start of the traffic to the last thing recorded (request,
    /// answer or event), in order; empty when nothing was.
    pub buckets: Vec<TimeBucket>,
    /// The run's events, one marker per kind and bucket, in time order.
    pub markers: Vec<Marker>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TimeBucket {
    /// Its start, in ms since the traffic started.
    pub start_ms: u64,
    /// HTTP attempts sent in it: keyed requests and reads.
    pub sent: u64,
    /// Final answers (`Exchange::is_final`) that arrived in it: the
    /// throughput a client sees (a 202 or a 503 is not done yet).
    pub final_answers: u64,
    /// Attempts sent in it that got no answer (refused, reset, timed out).
    pub no_answer: u64,
    /// Latency of the keyed requests sent in it that were answered
    /// (nearest rank); `None` when there were none.
    pub p50_us: Option<u64>,
    pub p99_us: Option<u64>,
}

/// Events of one kind within one bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Marker {
    /// The first of them.
    pub at_ms: u64,
    pub kind: String,
    pub count: u64,
    /// The first [`MARKER_DETAILS`] of them, described.
    pub details: Vec<String>,
}

impl Series {
    /// The bucket `ms` falls in (the last one for anything later).
    pub fn bucket_of(&self, ms: u64) -> usize {
        bucket_index(ms, self.bucket_ms, self.buckets.len())
    }

    /// Where the buckets end, in ms.
    pub fn end_ms(&self) -> u64 {
        self.bucket_ms * u64::try_from(self.buckets.len()).unwrap_or(u64::MAX)
    }
}

fn bucket_index(ms: u64, bucket_ms: u64, buckets: usize) -> usize {
    let i = usize::try_from(ms / bucket_ms.max(1)).unwrap_or(usize::MAX);
    i.min(buckets.saturating_sub(1))
}

/// The width of a bucket for a run whose last moment is `end_ms`: whole
/// seconds, as few as keep the buckets within [`MAX_BUCKETS`].
pub fn bucket_width(end_ms: u64) -> u64 {
    let seconds = end_ms / 1000 + 1;
    seconds.div_ceil(MAX_BUCKETS).max(1) * 1000
}

/// The series of `flows` and `events`; `traffic_ms` stretches it to the
/// end of the traffic even when the last second was quiet.
pub fn series(flows: &[FlowRecord], events: &[Event], traffic_ms: u64) -> Series {
    series_of(
        flows.iter().flat_map(|f| &f.exchanges),
        flows.iter().flat_map(|f| &f.reads),
        events,
        traffic_ms,
    )
}

/// The series of every keyed request, read and event.
pub fn series_of<'a>(
    exchanges: impl Iterator<Item = &'a Exchange> + Clone,
    reads: impl Iterator<Item = &'a Read> + Clone,
    events: &[Event],
    traffic_ms: u64,
) -> Series {
    let answered_at = |at_ms: u64, latency_us: u64| at_ms.saturating_add(latency_us / 1000);
    let last = exchanges
        .clone()
        .map(|e| answered_at(e.at_ms, e.latency_us))
        .chain(reads.clone().map(|r| r.at_ms))
        .chain(events.iter().map(|e| e.at_ms))
        .max();
    let end_ms = match last {
        Some(last) => last.max(traffic_ms),
        // Nothing at all: the chart would be a blank axis.
        None if traffic_ms == 0 => return Series::default(),
        None => traffic_ms,
    };
    let bucket_ms = bucket_width(end_ms);
    let n = usize::try_from(end_ms / bucket_ms + 1).unwrap_or(usize::MAX);
    let at = |ms: u64| bucket_index(ms, bucket_ms, n);
    let mut buckets: Vec<TimeBucket> = (0..n)
        .map(|i| TimeBucket {
            start_ms: u64::try_from(i).unwrap_or(u64::MAX) * bucket_ms,
            ..TimeBucket::default()
        })
        .collect();
    let mut latencies: Vec<Vec<Duration>> = vec![Vec::new(); n];
    for exchange in exchanges {
        let bucket = at(exchange.at_ms);
        buckets[bucket].sent += 1;
        match exchange.answer {
            Answer::Http { .. } => {
                latencies[bucket].push(Duration::from_micros(exchange.latency_us));
            }
            Answer::Transport { .. } => buckets[bucket].no_answer += 1,
        }
        if exchange.is_final() {
            buckets[at(answered_at(exchange.at_ms, exchange.latency_us))].final_answers += 1;
        }
    }
    for read in reads {
        let bucket = at(read.at_ms);
        buckets[bucket].sent += 1;
        match read.answer {
            Answer::Http { .. } => {}
            Answer::Transport { .. } => buckets[bucket].no_answer += 1,
        }
    }
    for (bucket, mut samples) in buckets.iter_mut().zip(latencies) {
        samples.sort_unstable();
        bucket.p50_us = percentile(&samples, 50).map(micros);
        bucket.p99_us = percentile(&samples, 99).map(micros);
    }
    let mut markers: BTreeMap<(usize, &str), Marker> = BTreeMap::new();
    for event in events {
        let marker = markers
            .entry((at(event.at_ms), event.kind.as_str()))
            .or_insert_with(|| Marker {
                at_ms: event.at_ms,
                kind: event.kind.clone(),
                count: 0,
                details: Vec::new(),
            });
        marker.at_ms = marker.at_ms.min(event.at_ms);
        marker.count += 1;
        if marker.details.len() < MARKER_DETAILS {
            marker
                .details
                .push(format!("+{} {}", seconds(event.at_ms), event.describe()));
        }
    }
    let mut markers: Vec<Marker> = markers.into_values().collect();
    // By time; the map's order (bucket, kind) breaks ties, so it is stable.
    markers.sort_by_key(|m| m.at_ms);
    Series {
        bucket_ms,
        buckets,
        markers,
    }
}
