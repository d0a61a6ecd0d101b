//! The report's charts as inline SVG (no script, no external resource):
//! line charts over the run's time axis with its events as vertical
//! markers, the events as rows of ticks by kind on the same axis,
//! horizontal bars, and the latency histogram. Every text put into them is
//! escaped; every size is bounded (buckets, rows, one tick per pixel).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::series::Series;
use super::{Bucket, Event, escape, kind_label, seconds};

/// Width of every chart.
const WIDTH: f64 = 900.0;
/// Left margin of the charts on the run's time axis: the same for all, so
/// that a moment is at the same x in each (and row labels fit).
const LEFT: f64 = 190.0;
const RIGHT: f64 = 20.0;
const PLOT_HEIGHT: f64 = 180.0;
/// A marker's or a tick's title lists this many events at most.
const TITLE_EVENTS: usize = 5;
/// Rows of the events-by-kind chart, at most (kinds and fault points are
/// few; this only bounds a log full of surprises).
const MAX_ROWS: usize = 30;
const ROW_HEIGHT: f64 = 22.0;
/// A label left of a chart is cut to this many characters: the margin is
/// [`LEFT`] wide (the whole text is in its title).
const LABEL_CHARS: usize = 30;

/// One line of a line chart: a value per bucket, `None` where there is
/// nothing to show (the line breaks there).
pub struct Line<'a> {
    pub name: &'a str,
    pub colour: &'a str,
    pub values: Vec<Option<u64>>,
}

/// How a line chart's values are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// Counts, from 0, linear.
    Count,
    /// Microseconds, by decades: a p99 of seconds must not flatten a p50
    /// of milliseconds.
    LatencyUs,
}

/// The run's time axis: ms to x.
#[derive(Debug, Clone, Copy)]
struct Axis {
    end_ms: u64,
}

impl Axis {
    fn x(self, ms: u64) -> f64 {
        let end = self.end_ms.max(1);
        LEFT + ms.min(end) as f64 / end as f64 * (WIDTH - LEFT - RIGHT)
    }

    /// Vertical grid lines and their labels, every round number of seconds
    /// (ten at most), and a dashed line where the traffic ended.
    fn grid(self, svg: &mut String, top: f64, bottom: f64, traffic_ms: u64) {
        const STEPS_S: [u64; 12] = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600];
        let end_s = self.end_ms / 1000;
        let step = STEPS_S
            .iter()
            .copied()
            .find(|s| end_s / s <= 10)
            .unwrap_or_else(|| 3600 * (end_s / 36_000 + 1));
        let mut t = 0;
        while t * 1000 <= self.end_ms {
            let x = self.x(t * 1000);
            let _ = write!(
                svg,
                "<line x1=\"{x:.1}\" y1=\"{top:.1}\" x2=\"{x:.1}\" y2=\"{bottom:.1}\" stroke=\"#eee\"/>\
                 <text x=\"{x:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\">{t} s</text>",
                bottom + 14.0
            );
            t += step;
        }
        if traffic_ms > 0 && traffic_ms < self.end_ms {
            let x = self.x(traffic_ms);
            let _ = write!(
                svg,
                "<line x1=\"{x:.1}\" y1=\"{top:.1}\" x2=\"{x:.1}\" y2=\"{bottom:.1}\" stroke=\"#888\" \
                 stroke-dasharray=\"4 3\"><title>traffic ends at {}</title></line>",
                seconds(traffic_ms)
            );
        }
    }
}

/// Where a value is between the bottom (0) and the top (1) of a plot.
#[derive(Debug, Clone, Copy)]
enum YMap {
    Linear {
        top: u64,
    },
    /// From one power of ten to another.
    Log {
        lo: u64,
        hi: u64,
    },
}

impl YMap {
    fn of(scale: Scale, values: impl Iterator<Item = u64> + Clone) -> Self {
        match scale {
            Scale::Count => {
                let max = values.max().unwrap_or(0);
                let step = nice_step(max);
                Self::Linear {
                    top: step.saturating_mul(max.div_ceil(step).max(1)),
                }
            }
            Scale::LatencyUs => {
                let min = values.clone().min().unwrap_or(1);
                let max = values.max().unwrap_or(1);
                let (lo, hi) = decades(min, max);
                Self::Log { lo, hi }
            }
        }
    }

    fn fraction(self, value: u64) -> f64 {
        match self {
            Self::Linear { top } => value as f64 / top.max(1) as f64,
            Self::Log { lo, hi } => {
                let log = |v: u64| (v.max(1) as f64).log10();
                (log(value) - log(lo)) / (log(hi) - log(lo)).max(1e-9)
            }
        }
    }

    /// The grid's values and their labels.
    fn ticks(self) -> Vec<(u64, String)> {
        match self {
            Self::Linear { top } => {
                let step = nice_step(top);
                (0..=top / step)
                    .map(|k| (k * step, (k * step).to_string()))
                    .collect()
            }
            Self::Log { lo, hi } => {
                let mut ticks = Vec::new();
                let mut decade = lo;
                while decade <= hi {
                    ticks.push((decade, latency_label(decade)));
                    match decade.checked_mul(10) {
                        Some(next) => decade = next,
                        None => break,
                    }
                }
                ticks
            }
        }
    }
}

/// The smallest of 1, 2, 5 × 10ⁿ that cuts `max` into at most four steps.
pub fn nice_step(max: u64) -> u64 {
    let raw = max.div_ceil(4).max(1);
    let mut power: u64 = 1;
    loop {
        for m in [1, 2, 5] {
            if let Some(step) = power.checked_mul(m)
                && step >= raw
            {
                return step;
            }
        }
        match power.checked_mul(10) {
            Some(next) => power = next,
            None => return raw,
        }
    }
}

/// The powers of ten just below `min` and just above `max` (apart by at
/// least one decade).
pub fn decades(min: u64, max: u64) -> (u64, u64) {
    let mut lo: u64 = 1;
    while lo <= u64::MAX / 10 && lo * 10 <= min {
        lo *= 10;
    }
    let mut hi = lo.saturating_mul(10);
    while hi < max && hi <= u64::MAX / 10 {
        hi *= 10;
    }
    (lo, hi)
}

fn latency_label(us: u64) -> String {
    if us >= 1_000_000 {
        format!("{} s", us / 1_000_000)
    } else if us >= 1000 {
        format!("{} ms", us / 1000)
    } else {
        format!("{us} µs")
    }
}

/// A line chart over the series' buckets, with its markers.
pub fn line_chart(
    series: &Series,
    traffic_ms: u64,
    title: &str,
    lines: &[Line<'_>],
    scale: Scale,
) -> String {
    let axis = Axis {
        end_ms: series.end_ms(),
    };
    let (top, bottom) = (40.0, 40.0 + PLOT_HEIGHT);
    let values = lines
        .iter()
        .flat_map(|l| l.values.iter().flatten().copied());
    let y_map = YMap::of(scale, values);
    let y = |v: u64| bottom - y_map.fraction(v) * PLOT_HEIGHT;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{:.0}\">",
        bottom + 24.0
    );
    for (value, label) in y_map.ticks() {
        let _ = write!(
            svg,
            "<line x1=\"{LEFT}\" y1=\"{0:.1}\" x2=\"{1}\" y2=\"{0:.1}\" stroke=\"#eee\"/>\
             <text x=\"{2}\" y=\"{3:.1}\" font-size=\"11\" text-anchor=\"end\">{4}</text>",
            y(value),
            WIDTH - RIGHT,
            LEFT - 6.0,
            y(value) + 4.0,
            escape(&label)
        );
    }
    axis.grid(&mut svg, top, bottom, traffic_ms);
    markers(&mut svg, series, axis, top, bottom);
    for line in lines {
        let mut segment: Vec<(f64, f64)> = Vec::new();
        for (bucket, value) in series.buckets.iter().zip(&line.values) {
            match value {
                Some(v) => segment.push((axis.x(bucket.start_ms + series.bucket_ms / 2), y(*v))),
                None => draw_segment(&mut svg, &std::mem::take(&mut segment), line.colour),
            }
        }
        draw_segment(&mut svg, &segment, line.colour);
    }
    let _ = write!(
        svg,
        "<line x1=\"{LEFT}\" y1=\"{bottom}\" x2=\"{}\" y2=\"{bottom}\" stroke=\"#888\"/>\
         <text x=\"10\" y=\"14\" font-size=\"12\" font-weight=\"bold\">{}</text><text x=\"{LEFT}\" y=\"14\" font-size=\"12\">",
        WIDTH - RIGHT,
        escape(title)
    );
    for line in lines {
        let _ = write!(
            svg,
            "<tspan fill=\"{}\">━ {}</tspan>   ",
            line.colour,
            escape(line.name)
        );
    }
    svg.push_str("</text>");
    legend(
        &mut svg,
        series.markers.iter().map(|m| m.kind.as_str()),
        30.0,
    );
    svg.push_str("</svg>");
    svg
}

fn draw_segment(svg: &mut String, points: &[(f64, f64)], colour: &str) {
    match points {
        [] => {}
        [(x, y)] => {
            let _ = write!(
                svg,
                "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"2\" fill=\"{colour}\"/>"
            );
        }
        [..] => {
            let points: Vec<String> = points
                .iter()
                .map(|(x, y)| format!("{x:.1},{y:.1}"))
                .collect();
            let _ = write!(
                svg,
                "<polyline points=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\"/>",
                points.join(" ")
            );
        }
    }
}

/// The series' markers: a vertical line per kind and bucket, its title the
/// events it stands for.
fn markers(svg: &mut String, series: &Series, axis: Axis, top: f64, bottom: f64) {
    for marker in &series.markers {
        let x = axis.x(marker.at_ms);
        let mut title = format!("{} ×{}", kind_label(&marker.kind), marker.count);
        for detail in &marker.details {
            let _ = write!(title, "\n{detail}");
        }
        let listed = u64::try_from(marker.details.len()).unwrap_or(u64::MAX);
        if marker.count > listed {
            let _ = write!(title, "\n… and {} more", marker.count - listed);
        }
        let _ = write!(
            svg,
            "<line x1=\"{x:.1}\" y1=\"{top:.1}\" x2=\"{x:.1}\" y2=\"{bottom:.1}\" stroke=\"{}\" \
             stroke-width=\"2\" opacity=\"0.6\"><title>{}</title></line>",
            kind_colour(&marker.kind),
            escape(&title)
        );
    }
}

/// The colours of the event kinds present, on one line at `y`.
fn legend<'k>(svg: &mut String, kinds: impl Iterator<Item = &'k str>, y: f64) {
    let mut kinds: Vec<&str> = kinds.collect();
    kinds.sort_by_key(|k| (kind_rank(k), *k));
    kinds.dedup();
    if kinds.is_empty() {
        return;
    }
    let _ = write!(svg, "<text x=\"{LEFT}\" y=\"{y}\" font-size=\"11\">");
    for kind in kinds {
        let _ = write!(
            svg,
            "<tspan fill=\"{}\">│ {}</tspan>  ",
            kind_colour(kind),
            escape(kind_label(kind))
        );
    }
    svg.push_str("</text>");
}

/// The row an event is drawn on: its kind, and for a fault point, which.
pub fn row_of(event: &Event) -> (u8, String) {
    let rank = kind_rank(&event.kind);
    match event.kind.as_str() {
        "fault_point" => {
            let point = event.detail.split_whitespace().next().unwrap_or("?");
            (rank, format!("{} {point}", kind_label(&event.kind)))
        }
        kind => (rank, kind_label(kind).to_owned()),
    }
}

/// The events by kind, a row each, a tick per event (one per pixel: the
/// title lists the events it stands for); `None` without events.
pub fn event_rows(series: &Series, events: &[Event], traffic_ms: u64) -> Option<String> {
    if events.is_empty() {
        return None;
    }
    let axis = Axis {
        end_ms: series.end_ms(),
    };
    let mut rows: BTreeMap<(u8, String), Vec<&Event>> = BTreeMap::new();
    for event in events {
        rows.entry(row_of(event)).or_default().push(event);
    }
    let hidden = rows.len().saturating_sub(MAX_ROWS);
    let shown = rows.len().min(MAX_ROWS);
    let top = 10.0;
    let bottom = top + ROW_HEIGHT * shown as f64;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{:.0}\">",
        bottom + if hidden > 0 { 40.0 } else { 24.0 }
    );
    axis.grid(&mut svg, top, bottom, traffic_ms);
    for (r, ((_, label), events)) in rows.into_iter().take(MAX_ROWS).enumerate() {
        let y0 = top + ROW_HEIGHT * r as f64;
        let _ = write!(
            svg,
            "<line x1=\"{LEFT}\" y1=\"{0:.1}\" x2=\"{1}\" y2=\"{0:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{2}\" y=\"{3:.1}\" font-size=\"11\" text-anchor=\"end\">{4}</text>",
            y0 + ROW_HEIGHT / 2.0,
            WIDTH - RIGHT,
            LEFT - 6.0,
            y0 + ROW_HEIGHT / 2.0 + 4.0,
            label_text(&label)
        );
        let mut ticks: BTreeMap<u64, Vec<&Event>> = BTreeMap::new();
        for event in events {
            // Whole pixels: the x is never negative, and a tick per pixel
            // bounds the chart however many events there were.
            let pixel = axis.x(event.at_ms).round() as u64;
            ticks.entry(pixel).or_default().push(event);
        }
        for (pixel, events) in ticks {
            let mut title = String::new();
            for event in events.iter().take(TITLE_EVENTS) {
                let _ = writeln!(title, "+{} {}", seconds(event.at_ms), event.describe());
            }
            if events.len() > TITLE_EVENTS {
                let _ = write!(title, "… and {} more", events.len() - TITLE_EVENTS);
            }
            let _ = write!(
                svg,
                "<line x1=\"{pixel}\" y1=\"{:.1}\" x2=\"{pixel}\" y2=\"{:.1}\" stroke=\"{}\" \
                 stroke-width=\"3\"><title>{}</title></line>",
                y0 + 3.0,
                y0 + ROW_HEIGHT - 3.0,
                kind_colour(&events[0].kind),
                escape(title.trim_end())
            );
        }
    }
    if hidden > 0 {
        let _ = write!(
            svg,
            "<text x=\"{LEFT}\" y=\"{:.1}\" font-size=\"11\">… and {hidden} more row(s), not drawn</text>",
            bottom + 34.0
        );
    }
    svg.push_str("</svg>");
    Some(svg)
}

/// A label, cut to [`LABEL_CHARS`], escaped, whole in its title.
fn label_text(label: &str) -> String {
    if label.chars().count() <= LABEL_CHARS {
        return escape(label);
    }
    let cut: String = label.chars().take(LABEL_CHARS - 1).collect();
    format!("<title>{}</title>{}…", escape(label), escape(&cut))
}

/// Horizontal bars, one per (label, count), in the order given.
pub fn bars(rows: &[(String, u64)]) -> String {
    let max = rows.iter().map(|r| r.1).max().unwrap_or(0).max(1);
    let room = WIDTH - LEFT - RIGHT - 60.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{:.0}\">",
        ROW_HEIGHT * rows.len() as f64 + 10.0
    );
    for (r, (label, count)) in rows.iter().enumerate() {
        let y0 = 5.0 + ROW_HEIGHT * r as f64;
        let width = *count as f64 / max as f64 * room;
        let _ = write!(
            svg,
            "<text x=\"{0}\" y=\"{1:.1}\" font-size=\"12\" text-anchor=\"end\">{2}</text>\
             <rect x=\"{LEFT}\" y=\"{3:.1}\" width=\"{width:.1}\" height=\"{4:.1}\" fill=\"{5}\"/>\
             <text x=\"{6:.1}\" y=\"{1:.1}\" font-size=\"12\">{count}</text>",
            LEFT - 6.0,
            y0 + 15.0,
            label_text(label),
            y0 + 3.0,
            ROW_HEIGHT - 6.0,
            status_colour(label),
            LEFT + width + 6.0,
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The latency histogram: a bar per bucket, its count above it.
pub fn histogram(buckets: &[Bucket]) -> String {
    let (height, bar) = (220u64, 60u64);
    let max = buckets.iter().map(|b| b.count).max().unwrap_or(0).max(1);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{}\">",
        height + 40
    );
    for (i, bucket) in buckets.iter().enumerate() {
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

/// Where an event kind's row goes: the replicas' lives first, then the
/// bank, the database, the fault points, and what the plan could not do.
pub fn kind_rank(kind: &str) -> u8 {
    // Kinds are strings (the log's fault points among them): one not
    // known here goes last, under its own name.
    match kind {
        "kill" => 0,
        "crash" => 1,
        "sigterm" => 2,
        "restart" => 3,
        "outage" => 4,
        "expiry_wave" => 5,
        "db_restart" => 6,
        "backend_kill" => 7,
        "statement_timeout" => 8,
        "fault_point" => 9,
        "fault_error" => 10,
        _ => 11,
    }
}

pub fn kind_colour(kind: &str) -> &'static str {
    // As for the rank: an unknown kind is drawn, in grey.
    match kind {
        "kill" | "crash" => "#cf222e",
        "sigterm" => "#e16f24",
        "restart" => "#1a7f37",
        "outage" | "expiry_wave" => "#bf8700",
        "db_restart" | "backend_kill" | "statement_timeout" => "#8250df",
        "fault_point" => "#0969da",
        "fault_error" => "#6e7781",
        _ => "#57606a",
    }
}

fn status_colour(status: &str) -> &'static str {
    // Statuses are the receipts' strings; the gateway's list may grow.
    match status {
        "captured" | "refunded" => "#1a7f37",
        "authorized" | "voided" => "#4c72b0",
        "failed" | "expired" | "abandoned" => "#bf8700",
        _ if status.starts_with("no payment") => "#8c959f",
        _ => "#57606a",
    }
}
