//! The steady state of a bench's load: the part of the run in which every
//! client was busy, apart from the ramp-up (clients not all started yet)
//! and the drain (some clients already done, the others finishing).
//!
//! The window runs from the moment the last client sent its first request
//! to the moment the first client got the answer to its last one. Within
//! it every client always has a request in flight or is about to send the
//! next, so its rate is what the system sustains at this concurrency, and
//! the whole-run rate is that less the idle edges. (The other common
//! choice, the middle 80 % of the run by time, still holds part of the
//! edges when they are long, as with 1,000 clients and a bank that takes a
//! second.)
//!
//! Pure: times are offsets from the load's start.

use std::collections::BTreeMap;
use std::time::Duration;

/// How the report names the window.
pub const DEFINITION: &str =
    "from the last client's first request to the first client's last answer (every client busy)";

/// When one client was at work: its first request sent, its last answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub first_sent: Duration,
    pub last_done: Duration,
}

/// A stretch of the run, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: Duration,
    pub end: Duration,
}

impl Window {
    pub fn contains(&self, at: Duration) -> bool {
        self.start <= at && at <= self.end
    }

    pub fn length(&self) -> Duration {
        self.end.saturating_sub(self.start)
    }
}

/// The window in which every client of `spans` (those that sent at least
/// one request) was busy; `None` when there is no such stretch (no
/// clients, or the first client finished before the last one started).
pub fn all_busy(spans: &[Span]) -> Option<Window> {
    let start = spans.iter().map(|s| s.first_sent).max()?;
    let end = spans.iter().map(|s| s.last_done).min()?;
    (end > start).then_some(Window { start, end })
}

/// Events per second over `window`, counting those whose time is in it.
pub fn rate_within(window: Window, times: impl IntoIterator<Item = Duration>) -> f64 {
    let n = times.into_iter().filter(|t| window.contains(*t)).count();
    let seconds = window.length().as_secs_f64();
    if seconds == 0.0 {
        return 0.0;
    }
    n as f64 / seconds
}

/// One answered request of the load, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answered<K> {
    pub kind: K,
    pub sent: Duration,
    pub done: Duration,
    /// Whether the answer was the one expected.
    pub ok: bool,
}

impl<K> Answered<K> {
    pub fn latency(&self) -> Duration {
        self.done.saturating_sub(self.sent)
    }
}

/// The latencies of the successful requests by kind: all of them, or
/// with a window only those answered in it. Kinds with no success are
/// absent.
pub fn latencies_by_kind<K: Ord + Copy>(
    answered: &[Answered<K>],
    window: Option<Window>,
) -> BTreeMap<K, Vec<Duration>> {
    let mut by_kind: BTreeMap<K, Vec<Duration>> = BTreeMap::new();
    for a in answered {
        if a.ok && window.is_none_or(|w| w.contains(a.done)) {
            by_kind.entry(a.kind).or_default().push(a.latency());
        }
    }
    by_kind
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn span(first_sent: u64, last_done: u64) -> Span {
        Span {
            first_sent: ms(first_sent),
            last_done: ms(last_done),
        }
    }

    #[test]
    fn the_window_is_while_every_client_is_busy() {
        // Three clients: started at 0, 5 and 20 ms; done at 1000, 980, 1010.
        let window = all_busy(&[span(0, 1000), span(5, 980), span(20, 1010)]).unwrap();
        assert_eq!(
            window,
            Window {
                start: ms(20),
                end: ms(980)
            }
        );
        assert_eq!(window.length(), ms(960));
    }

    #[test]
    fn no_window_without_clients_or_overlap() {
        assert_eq!(all_busy(&[]), None);
        // The first client was done before the second sent anything.
        assert_eq!(all_busy(&[span(0, 10), span(20, 30)]), None);
        assert_eq!(all_busy(&[span(0, 10), span(10, 30)]), None);
    }

    #[test]
    fn the_rate_counts_only_what_ended_inside() {
        let window = Window {
            start: ms(1000),
            end: ms(3000),
        };
        // 500 and 3500 are outside; both ends count.
        let times = [500, 1000, 1500, 2000, 2500, 3000, 3500].map(ms);
        assert_eq!(rate_within(window, times), 5.0 / 2.0);
        let empty = Window {
            start: ms(5),
            end: ms(5),
        };
        assert_eq!(rate_within(empty, [ms(5)]), 0.0);
    }

    #[test]
    fn latencies_are_grouped_by_kind_and_window() {
        let answered = |kind, sent, done, ok| Answered {
            kind,
            sent: ms(sent),
            done: ms(done),
            ok,
        };
        let all = [
            answered('a', 0, 10, true),
            answered('b', 0, 30, true),
            answered('a', 10, 25, true),
            answered('a', 25, 100, false),
            answered('c', 30, 40, false),
            answered('b', 40, 200, true),
        ];
        let whole = latencies_by_kind(&all, None);
        assert_eq!(whole[&'a'], [ms(10), ms(15)], "the failure is left out");
        assert_eq!(whole[&'b'], [ms(30), ms(160)]);
        assert!(!whole.contains_key(&'c'), "no success, no entry");
        let window = Window {
            start: ms(20),
            end: ms(100),
        };
        let steady = latencies_by_kind(&all, Some(window));
        assert_eq!(steady[&'a'], [ms(15)]);
        assert_eq!(steady[&'b'], [ms(30)]);
    }
}
