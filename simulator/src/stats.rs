//! Latency statistics: exact nearest-rank percentiles over every sample.

use std::time::Duration;

use serde::Serialize;

/// The `p`th percentile (0–100) of `sorted` by the nearest-rank method: the
/// smallest sample such that at least `p`% of the samples are less than or
/// equal to it. `None` for no samples. `sorted` must be in ascending order.
pub fn percentile(sorted: &[Duration], p: u32) -> Option<Duration> {
    debug_assert!(p <= 100, "a percentile is between 0 and 100");
    debug_assert!(sorted.is_sorted(), "samples must be sorted");
    if sorted.is_empty() {
        return None;
    }
    // rank = ceil(p/100 * n), at least 1; in integers, so exact.
    let rank = (usize::try_from(p).unwrap_or(100) * sorted.len())
        .div_ceil(100)
        .clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// Latency percentiles in whole microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Latency {
    pub p50_us: u64,
    pub p95_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

impl Latency {
    /// Sorts the samples and summarises them; `None` when there are none.
    pub fn summarise(mut samples: Vec<Duration>) -> Option<Self> {
        samples.sort_unstable();
        let us = |p| percentile(&samples, p).map(micros);
        Some(Self {
            p50_us: us(50)?,
            p95_us: us(95)?,
            p99_us: us(99)?,
            max_us: micros(*samples.last()?),
        })
    }
}

/// Whole microseconds, saturating (no request lasts 584,000 years).
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Whole milliseconds, saturating.
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Microseconds as milliseconds with three decimals, without floats.
pub fn format_ms(us: u64) -> String {
    format!("{}.{:03}", us / 1000, us % 1000)
}

/// Microseconds as seconds with three decimals, without floats.
pub fn format_seconds(us: u64) -> String {
    format!("{}.{:03}", us / 1_000_000, us % 1_000_000 / 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(values: &[u64]) -> Vec<Duration> {
        values.iter().copied().map(Duration::from_millis).collect()
    }

    #[test]
    fn nearest_rank_on_known_data() {
        // The textbook example: 15, 20, 35, 40, 50.
        let data = ms(&[15, 20, 35, 40, 50]);
        let p = |q| percentile(&data, q).unwrap().as_millis();
        assert_eq!(p(5), 15);
        assert_eq!(p(30), 20);
        assert_eq!(p(40), 20);
        assert_eq!(p(50), 35);
        assert_eq!(p(100), 50);
        assert_eq!(p(0), 15, "p0 is the minimum");
    }

    #[test]
    fn nearest_rank_on_one_to_a_hundred() {
        let data: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        for q in 1..=100 {
            assert_eq!(percentile(&data, q), Some(Duration::from_millis(q.into())));
        }
        let data: Vec<Duration> = (1..=1000).map(Duration::from_micros).collect();
        assert_eq!(percentile(&data, 99), Some(Duration::from_micros(990)));
        assert_eq!(percentile(&data, 95), Some(Duration::from_micros(950)));
    }

    #[test]
    fn one_sample_is_every_percentile() {
        let data = ms(&[7]);
        for q in [0, 1, 50, 99, 100] {
            assert_eq!(percentile(&data, q), Some(Duration::from_millis(7)));
        }
    }

    #[test]
    fn empty_input_has_no_percentiles() {
        assert_eq!(percentile(&[], 50), None);
        assert_eq!(Latency::summarise(Vec::new()), None);
    }

    #[test]
    fn summary_sorts_its_samples() {
        let summary = Latency::summarise(ms(&[50, 15, 40, 20, 35])).unwrap();
        assert_eq!(
            summary,
            Latency {
                p50_us: 35_000,
                p95_us: 50_000,
                p99_us: 50_000,
                max_us: 50_000
            }
        );
    }

    #[test]
    fn milliseconds_are_formatted_exactly() {
        assert_eq!(format_ms(0), "0.000");
        assert_eq!(format_ms(1_234), "1.234");
        assert_eq!(format_ms(20_005), "20.005");
        assert_eq!(format_seconds(4_123_999), "4.123");
    }
}
