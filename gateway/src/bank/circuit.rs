//! The circuit breaker in front of the bank: after `failure_threshold`
//! consecutive transient failures (5xx, timeouts, connection errors) the
//! gateway stops calling the bank for `open_for`, then lets exactly one
//! call through as a probe.
//!
//! ```text
//!            threshold consecutive transient failures
//!   Closed ─────────────────────────────────────────▶ Open{until}
//!     ▲                                                 │   ▲
//!     │ the probe got a definitive answer  open_for has │   │ the probe failed
//!     │ (2xx or 4xx)                       passed: the  │   │ (or was abandoned)
//!     │                                    next call is │   │
//!     └──────────────────── HalfOpen{probe} ◀───────────┘   │
//!                                   └───────────────────────┘
//! ```
//!
//! Why: when the bank is down every call would spend its whole deadline on
//! retries, hold an in-flight slot, and leave a pending payment for the
//! recovery worker. With the circuit open the API answers 503 with
//! `Retry-After` before it writes anything, the client keeps its
//! idempotency key, and the bank gets room to come back.
//!
//! Every call asks [`CircuitBreaker::admit`] before each attempt and records
//! the attempt's verdict on the returned [`Admission`]. An admission that is
//! dropped without a verdict (the caller's future was cancelled) still
//! resolves: a probe dropped that way counts as a failure (no answer is a
//! transient failure, like a timeout), so the circuit can never stay stuck
//! with a probe "in flight" that nobody will finish.
//!
//! Results of attempts admitted in an earlier period (a straggler that was
//! let in while the circuit was closed and finishes after it opened) are
//! ignored: each opening starts a new generation.
//!
//! Metrics: `gateway_bank_circuit_state` (gauge: 0 closed, 1 half-open,
//! 2 open) and `gateway_bank_circuit_opened_total` (counter).

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// What callers are told to wait while a probe is in flight: its answer
/// comes within one attempt timeout, and then the circuit is closed or
/// open again.
const PROBE_IN_FLIGHT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// How the breaker is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitSettings {
    /// Consecutive transient attempt failures that open the circuit (0 is
    /// treated as 1).
    pub failure_threshold: u32,
    /// How long the circuit stays open before one probe may try the bank.
    pub open_for: Duration,
}

impl Default for CircuitSettings {
    fn default() -> Self {
        CircuitSettings {
            failure_threshold: 5,
            open_for: Duration::from_secs(5),
        }
    }
}

/// The circuit as operators see it (`/ready`, the gauge).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    /// Open, and the open period has passed or a probe is in flight.
    HalfOpen,
    Open,
}

impl CircuitState {
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::HalfOpen => "half_open",
            CircuitState::Open => "open",
        }
    }

    /// The value of `gateway_bank_circuit_state`.
    pub fn gauge_value(self) -> f64 {
        match self {
            CircuitState::Closed => 0.0,
            CircuitState::HalfOpen => 1.0,
            CircuitState::Open => 2.0,
        }
    }
}

impl fmt::Display for CircuitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The circuit refused a call: nothing may be sent to the bank now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Open {
    /// When it is worth asking again: the rest of the open period, or a
    /// short while if a probe is in flight.
    pub retry_after: Duration,
}

impl fmt::Display for Open {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the bank's circuit is open; retry after {} ms",
            self.retry_after.as_millis()
        )
    }
}

impl std::error::Error for Open {}

/// Where "now" comes from; injectable so that tests need no sleeps.
pub type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// A thread-safe circuit breaker: a mutex around a few words, held only to
/// read or flip the state, never across an await.
pub struct CircuitBreaker {
    failure_threshold: u32,
    open_for: Duration,
    clock: Clock,
    inner: Mutex<Inner>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probe_in_flight: bool },
}

#[derive(Debug)]
struct Inner {
    phase: Phase,
    /// Bumped each time the circuit opens; an admission's verdict counts
    /// only in the generation it was admitted in.
    generation: u64,
}

/// What an attempt came to, as far as the breaker cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// The bank answered definitively (2xx or 4xx).
    Success,
    /// 5xx, timeout, connection error, or no answer at all.
    TransientFailure,
    /// The attempt was never sent (no in-flight slot came free in time).
    NotSent,
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("failure_threshold", &self.failure_threshold)
            .field("open_for", &self.open_for)
            .field("phase", &self.lock().phase)
            .finish()
    }
}

impl CircuitBreaker {
    pub fn new(failure_threshold: u32, open_for: Duration) -> Self {
        Self::with_clock(failure_threshold, open_for, Arc::new(Instant::now))
    }

    pub fn from_settings(settings: CircuitSettings) -> Self {
        Self::new(settings.failure_threshold, settings.open_for)
    }

    /// A breaker that reads the time from `clock` (for tests).
    pub fn with_clock(failure_threshold: u32, open_for: Duration, clock: Clock) -> Self {
        let breaker = CircuitBreaker {
            failure_threshold: failure_threshold.max(1),
            open_for,
            clock,
            inner: Mutex::new(Inner {
                phase: Phase::Closed { failures: 0 },
                generation: 0,
            }),
        };
        publish(CircuitState::Closed);
        breaker
    }

    /// Asks to send one attempt. `Ok` carries the [`Admission`] to record
    /// the attempt's verdict on; `Err` means send nothing.
    pub fn admit(&self) -> Result<Admission<'_>, Open> {
        let now = self.now();
        let mut inner = self.lock();
        refresh(&mut inner, now);
        let generation = inner.generation;
        match inner.phase {
            Phase::Closed { .. } => Ok(Admission::new(self, generation, false)),
            Phase::Open { until } => Err(Open {
                retry_after: until.saturating_duration_since(now),
            }),
            Phase::HalfOpen {
                probe_in_flight: true,
            } => Err(Open {
                retry_after: PROBE_IN_FLIGHT_RETRY_AFTER,
            }),
            Phase::HalfOpen {
                probe_in_flight: false,
            } => {
                inner.phase = Phase::HalfOpen {
                    probe_in_flight: true,
                };
                drop(inner);
                tracing::info!("bank circuit half-open: sending one probe");
                Ok(Admission::new(self, generation, true))
            }
        }
    }

    /// Whether a call started now would be admitted, without taking the
    /// probe: for the API, which refuses work up front when the circuit is
    /// open. (A call that passes this may still be refused by `admit`, if
    /// another took the probe meanwhile.)
    pub fn check(&self) -> Result<(), Open> {
        let now = self.now();
        let mut inner = self.lock();
        refresh(&mut inner, now);
        match inner.phase {
            Phase::Closed { .. }
            | Phase::HalfOpen {
                probe_in_flight: false,
            } => Ok(()),
            Phase::Open { until } => Err(Open {
                retry_after: until.saturating_duration_since(now),
            }),
            Phase::HalfOpen {
                probe_in_flight: true,
            } => Err(Open {
                retry_after: PROBE_IN_FLIGHT_RETRY_AFTER,
            }),
        }
    }

    /// The state now. An open circuit whose open period has passed is
    /// half-open: the next call will be the probe.
    pub fn state(&self) -> CircuitState {
        let now = self.now();
        let mut inner = self.lock();
        refresh(&mut inner, now);
        state_of(inner.phase)
    }

    pub fn failure_threshold(&self) -> u32 {
        self.failure_threshold
    }

    pub fn open_for(&self) -> Duration {
        self.open_for
    }

    fn now(&self) -> Instant {
        (self.clock)()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every write is a whole assignment of a small Copy value, so a
        // panic elsewhere cannot leave the state half-written.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, generation: u64, probe: bool, verdict: Verdict) {
        let now = self.now();
        let mut inner = self.lock();
        if inner.generation != generation {
            return;
        }
        let before = state_of(inner.phase);
        match (inner.phase, probe, verdict) {
            (Phase::Closed { .. }, false, Verdict::Success) => {
                inner.phase = Phase::Closed { failures: 0 };
            }
            (Phase::Closed { failures }, false, Verdict::TransientFailure) => {
                let failures = failures.saturating_add(1);
                if failures >= self.failure_threshold {
                    self.open(&mut inner, now);
                    tracing::warn!(
                        failures,
                        open_for_ms = millis(self.open_for),
                        "bank circuit opened: consecutive transient failures"
                    );
                } else {
                    inner.phase = Phase::Closed { failures };
                }
            }
            (
                Phase::HalfOpen {
                    probe_in_flight: true,
                },
                true,
                Verdict::Success,
            ) => {
                inner.phase = Phase::Closed { failures: 0 };
                tracing::info!("bank circuit closed: the probe got an answer");
            }
            (
                Phase::HalfOpen {
                    probe_in_flight: true,
                },
                true,
                Verdict::TransientFailure,
            ) => {
                self.open(&mut inner, now);
                tracing::warn!(
                    open_for_ms = millis(self.open_for),
                    "bank circuit re-opened: the probe failed"
                );
            }
            (
                Phase::HalfOpen {
                    probe_in_flight: true,
                },
                true,
                Verdict::NotSent,
            ) => {
                inner.phase = Phase::HalfOpen {
                    probe_in_flight: false,
                };
            }
            // Nothing to do: an unsent attempt in a closed circuit, or a
            // verdict that does not match the phase (cannot happen within a
            // generation, but is harmless to ignore).
            (Phase::Closed { .. }, false, Verdict::NotSent)
            | (Phase::Closed { .. } | Phase::Open { .. } | Phase::HalfOpen { .. }, _, _) => {}
        }
        let after = state_of(inner.phase);
        if after != before {
            publish(after);
        }
    }

    fn open(&self, inner: &mut Inner, now: Instant) {
        let until = now
            .checked_add(self.open_for)
            .or_else(|| now.checked_add(Duration::from_secs(365 * 24 * 3600)))
            .unwrap_or(now);
        inner.phase = Phase::Open { until };
        inner.generation = inner.generation.wrapping_add(1);
        metrics::counter!("gateway_bank_circuit_opened_total").increment(1);
    }
}

/// An open circuit whose time is up becomes half-open (no probe yet).
fn refresh(inner: &mut Inner, now: Instant) {
    if let Phase::Open { until } = inner.phase
        && now >= until
    {
        inner.phase = Phase::HalfOpen {
            probe_in_flight: false,
        };
        publish(CircuitState::HalfOpen);
    }
}

fn state_of(phase: Phase) -> CircuitState {
    match phase {
        Phase::Closed { .. } => CircuitState::Closed,
        Phase::Open { .. } => CircuitState::Open,
        Phase::HalfOpen { .. } => CircuitState::HalfOpen,
    }
}

fn publish(state: CircuitState) {
    metrics::gauge!("gateway_bank_circuit_state").set(state.gauge_value());
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Permission to send one attempt; record what came of it with
/// [`success`](Admission::success), [`transient_failure`](Admission::transient_failure)
/// or [`not_sent`](Admission::not_sent). Dropped without a verdict, a probe
/// counts as a transient failure and any other admission as nothing.
#[must_use = "record the attempt's verdict on the admission"]
#[derive(Debug)]
pub struct Admission<'a> {
    breaker: &'a CircuitBreaker,
    generation: u64,
    probe: bool,
    resolved: bool,
}

impl<'a> Admission<'a> {
    fn new(breaker: &'a CircuitBreaker, generation: u64, probe: bool) -> Self {
        Admission {
            breaker,
            generation,
            probe,
            resolved: false,
        }
    }

    /// Whether this attempt is the half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// The bank answered definitively (2xx or 4xx).
    pub fn success(mut self) {
        self.resolve(Verdict::Success);
    }

    /// 5xx, timeout, connection error: no answer.
    pub fn transient_failure(mut self) {
        self.resolve(Verdict::TransientFailure);
    }

    /// Nothing was sent after all (no in-flight slot in time): a probe
    /// goes back for the next call to take.
    pub fn not_sent(mut self) {
        self.resolve(Verdict::NotSent);
    }

    fn resolve(&mut self, verdict: Verdict) {
        if !self.resolved {
            self.resolved = true;
            self.breaker.record(self.generation, self.probe, verdict);
        }
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        // The caller was cancelled mid-attempt: the bank may or may not
        // have seen it. For a probe that is "no answer", i.e. a failure;
        // for an ordinary attempt it says nothing about the bank.
        if self.probe {
            self.resolve(Verdict::TransientFailure);
        } else {
            self.resolve(Verdict::NotSent);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clock that moves only when told to.
    #[derive(Clone)]
    struct ManualClock(Arc<Mutex<Instant>>);

    impl ManualClock {
        fn new() -> Self {
            ManualClock(Arc::new(Mutex::new(Instant::now())))
        }

        fn advance(&self, by: Duration) {
            let mut now = self.0.lock().unwrap();
            *now += by;
        }

        fn clock(&self) -> Clock {
            let cell = Arc::clone(&self.0);
            Arc::new(move || *cell.lock().unwrap())
        }
    }

    const OPEN_FOR: Duration = Duration::from_secs(10);

    fn breaker(threshold: u32) -> (CircuitBreaker, ManualClock) {
        let clock = ManualClock::new();
        (
            CircuitBreaker::with_clock(threshold, OPEN_FOR, clock.clock()),
            clock,
        )
    }

    fn fail(breaker: &CircuitBreaker, times: u32) {
        for _ in 0..times {
            breaker.admit().expect("admitted").transient_failure();
        }
    }

    /// Opens the circuit of a fresh breaker with threshold `threshold`.
    fn opened(threshold: u32) -> (CircuitBreaker, ManualClock) {
        let (b, clock) = breaker(threshold);
        fail(&b, threshold);
        assert_eq!(b.state(), CircuitState::Open);
        (b, clock)
    }

    #[test]
    fn starts_closed_and_admits() {
        let (b, _) = breaker(3);
        assert_eq!(b.state(), CircuitState::Closed);
        assert_eq!(b.check(), Ok(()));
        let admission = b.admit().expect("admitted");
        assert!(!admission.is_probe());
        admission.success();
        assert_eq!(b.state(), CircuitState::Closed);
    }

    #[test]
    fn threshold_consecutive_failures_open_it() {
        let (b, _) = breaker(3);
        fail(&b, 2);
        assert_eq!(b.state(), CircuitState::Closed);
        fail(&b, 1);
        assert_eq!(b.state(), CircuitState::Open);
        let refused = b.admit().expect_err("open");
        assert_eq!(refused.retry_after, OPEN_FOR);
        assert_eq!(b.check(), Err(refused));
    }

    #[test]
    fn a_definitive_answer_resets_the_count() {
        let (b, _) = breaker(3);
        fail(&b, 2);
        // A 2xx or a 4xx: the bank is there.
        b.admit().expect("admitted").success();
        fail(&b, 2);
        assert_eq!(b.state(), CircuitState::Closed);
        fail(&b, 1);
        assert_eq!(b.state(), CircuitState::Open);
    }

    #[test]
    fn unsent_and_dropped_ordinary_attempts_change_nothing() {
        let (b, _) = breaker(2);
        fail(&b, 1);
        b.admit().expect("admitted").not_sent();
        drop(b.admit().expect("admitted"));
        assert_eq!(b.state(), CircuitState::Closed);
        // Still one failure counted: the next one opens it.
        fail(&b, 1);
        assert_eq!(b.state(), CircuitState::Open);
    }

    #[test]
    fn zero_threshold_behaves_like_one() {
        let (b, _) = breaker(0);
        fail(&b, 1);
        assert_eq!(b.state(), CircuitState::Open);
    }

    #[test]
    fn retry_after_counts_down_then_one_probe_is_let_through() {
        let (b, clock) = opened(2);
        clock.advance(Duration::from_secs(4));
        assert_eq!(
            b.admit().expect_err("still open").retry_after,
            Duration::from_secs(6)
        );
        clock.advance(Duration::from_secs(6));
        assert_eq!(b.state(), CircuitState::HalfOpen);
        assert_eq!(b.check(), Ok(()), "check does not take the probe");
        let probe = b.admit().expect("the probe");
        assert!(probe.is_probe());
        // Everyone else waits for the probe.
        let refused = b.admit().expect_err("probe in flight");
        assert_eq!(refused.retry_after, PROBE_IN_FLIGHT_RETRY_AFTER);
        assert!(b.check().is_err());
        assert_eq!(b.state(), CircuitState::HalfOpen);
        probe.success();
    }

    #[test]
    fn a_successful_probe_closes_it() {
        let (b, clock) = opened(2);
        clock.advance(OPEN_FOR);
        b.admit().expect("the probe").success();
        assert_eq!(b.state(), CircuitState::Closed);
        // Closed with a fresh count.
        fail(&b, 1);
        assert_eq!(b.state(), CircuitState::Closed);
        assert!(!b.admit().expect("admitted").is_probe());
    }

    #[test]
    fn a_failed_probe_reopens_it_for_the_whole_period() {
        let (b, clock) = opened(2);
        clock.advance(OPEN_FOR + Duration::from_secs(3));
        b.admit().expect("the probe").transient_failure();
        assert_eq!(b.state(), CircuitState::Open);
        assert_eq!(b.admit().expect_err("open").retry_after, OPEN_FOR);
        clock.advance(OPEN_FOR);
        assert!(b.admit().expect("the next probe").is_probe());
    }

    #[test]
    fn a_cancelled_probe_counts_as_a_failure() {
        let (b, clock) = opened(2);
        clock.advance(OPEN_FOR);
        let probe = b.admit().expect("the probe");
        drop(probe);
        assert_eq!(b.state(), CircuitState::Open);
        assert_eq!(b.admit().expect_err("open").retry_after, OPEN_FOR);
    }

    #[test]
    fn an_unsent_probe_is_handed_to_the_next_call() {
        let (b, clock) = opened(2);
        clock.advance(OPEN_FOR);
        b.admit().expect("the probe").not_sent();
        assert_eq!(b.state(), CircuitState::HalfOpen);
        let probe = b.admit().expect("the probe again");
        assert!(probe.is_probe());
        probe.success();
        assert_eq!(b.state(), CircuitState::Closed);
    }

    #[test]
    fn stragglers_from_before_the_opening_are_ignored() {
        let (b, clock) = breaker(2);
        let slow_failure = b.admit().expect("admitted");
        let slow_success = b.admit().expect("admitted");
        fail(&b, 2);
        assert_eq!(b.state(), CircuitState::Open);
        // Admitted while closed, finished while open: neither closes nor
        // re-opens anything.
        slow_success.success();
        assert_eq!(b.state(), CircuitState::Open);
        clock.advance(OPEN_FOR);
        let probe = b.admit().expect("the probe");
        slow_failure.transient_failure();
        assert_eq!(b.state(), CircuitState::HalfOpen);
        assert!(b.admit().is_err(), "the probe is still the only one");
        probe.success();
        assert_eq!(b.state(), CircuitState::Closed);
    }

    #[test]
    fn shared_across_threads() {
        let b = Arc::new(CircuitBreaker::new(1_000, OPEN_FOR));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let b = Arc::clone(&b);
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        b.admit().expect("admitted").transient_failure();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("thread");
        }
        // 800 failures, threshold 1,000: still closed; 200 more open it.
        assert_eq!(b.state(), CircuitState::Closed);
        fail(&b, 200);
        assert_eq!(b.state(), CircuitState::Open);
    }

    #[test]
    fn metrics_follow_the_state() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let gauge = |text: &str| -> Option<String> {
            text.lines()
                .find(|l| l.starts_with("gateway_bank_circuit_state "))
                .map(|l| {
                    l.trim_start_matches("gateway_bank_circuit_state ")
                        .to_owned()
                })
        };
        let opened_total = |text: &str| -> Option<String> {
            text.lines()
                .find(|l| l.starts_with("gateway_bank_circuit_opened_total "))
                .map(|l| {
                    l.trim_start_matches("gateway_bank_circuit_opened_total ")
                        .to_owned()
                })
        };
        metrics::with_local_recorder(&recorder, || {
            let (b, clock) = breaker(1);
            assert_eq!(gauge(&handle.render()).as_deref(), Some("0"));
            fail(&b, 1);
            let text = handle.render();
            assert_eq!(gauge(&text).as_deref(), Some("2"));
            assert_eq!(opened_total(&text).as_deref(), Some("1"));
            clock.advance(OPEN_FOR);
            let probe = b.admit().expect("the probe");
            assert_eq!(gauge(&handle.render()).as_deref(), Some("1"));
            probe.transient_failure();
            let text = handle.render();
            assert_eq!(gauge(&text).as_deref(), Some("2"));
            assert_eq!(opened_total(&text).as_deref(), Some("2"));
            clock.advance(OPEN_FOR);
            assert_eq!(b.state(), CircuitState::HalfOpen);
            assert_eq!(gauge(&handle.render()).as_deref(), Some("1"));
            b.admit().expect("the probe").success();
            assert_eq!(gauge(&handle.render()).as_deref(), Some("0"));
        });
    }
}
