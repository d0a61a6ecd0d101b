//! Injected faults: what the original bank does (random 500s, latency) and
//! the extensions (lost responses, held responses, resets, outages).
//!
//! Every decision comes from one seeded generator, drawn a fixed number of
//! times per request, so a seed and a sequence of requests give the same
//! faults every time. The generator sits behind a mutex held only for the
//! draw; latency is an async sleep and never blocks a worker thread.

mod middleware;
mod reset;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

pub use middleware::inject_faults;
pub use reset::{ConnectionFd, remember_connection_fd};

use crate::api::error::BankError;

/// The live configuration, as `GET /admin/chaos` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChaosConfig {
    /// Share of requests answered 500 before doing anything.
    pub failure_rate: f64,
    pub min_latency_ms: u64,
    pub max_latency_ms: u64,
    /// Share of requests done and committed, then answered 500.
    pub error_after_commit_rate: f64,
    /// Share of requests done and committed, then held for `timeout_ms`.
    pub timeout_rate: f64,
    pub timeout_ms: u64,
    /// Share of connections closed without a response (half before, half after the commit).
    pub reset_rate: f64,
    /// Seconds left of the current outage (503 to every API request).
    pub outage_seconds: u64,
    pub seed: u64,
}

impl ChaosConfig {
    /// No faults and no latency: for tests and benchmarks.
    pub fn calm(seed: u64) -> Self {
        Self {
            failure_rate: 0.0,
            min_latency_ms: 0,
            max_latency_ms: 0,
            error_after_commit_rate: 0.0,
            timeout_rate: 0.0,
            timeout_ms: 30_000,
            reset_rate: 0.0,
            outage_seconds: 0,
            seed,
        }
    }

    fn validate(&self) -> Result<(), BankError> {
        let rates = [
            ("failure_rate", self.failure_rate),
            ("error_after_commit_rate", self.error_after_commit_rate),
            ("timeout_rate", self.timeout_rate),
            ("reset_rate", self.reset_rate),
        ];
        for (name, rate) in rates {
            if !(0.0..=1.0).contains(&rate) {
                return Err(BankError::InvalidRequest(format!(
                    "{name} must be between 0 and 1"
                )));
            }
        }
        if self.min_latency_ms > self.max_latency_ms {
            return Err(BankError::InvalidRequest(
                "min_latency_ms must not exceed max_latency_ms".into(),
            ));
        }
        Ok(())
    }
}

/// A partial update: only the fields present change.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChaosUpdate {
    pub failure_rate: Option<f64>,
    pub min_latency_ms: Option<u64>,
    pub max_latency_ms: Option<u64>,
    pub error_after_commit_rate: Option<f64>,
    pub timeout_rate: Option<f64>,
    pub timeout_ms: Option<u64>,
    pub reset_rate: Option<f64>,
    pub outage_seconds: Option<u64>,
    pub seed: Option<u64>,
}

/// Where a reset closes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetPoint {
    BeforeCommit,
    AfterCommit,
}

/// The faults drawn for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Faults {
    pub latency: Duration,
    pub fail_before: bool,
    pub reset: Option<ResetPoint>,
    pub error_after_commit: bool,
    /// How long to hold the response, when it is held.
    pub hold_response: Option<Duration>,
}

struct State {
    config: ChaosConfig,
    rng: StdRng,
    outage_until: Option<Instant>,
}

pub struct Chaos {
    state: Mutex<State>,
}

impl Chaos {
    pub fn new(mut config: ChaosConfig) -> Result<Self, BankError> {
        config.validate()?;
        let outage_until = (config.outage_seconds > 0)
            .then(|| Instant::now() + Duration::from_secs(config.outage_seconds));
        config.outage_seconds = 0;
        Ok(Self {
            state: Mutex::new(State {
                rng: StdRng::seed_from_u64(config.seed),
                config,
                outage_until,
            }),
        })
    }

    pub fn config(&self) -> ChaosConfig {
        let state = self.lock();
        let mut config = state.config.clone();
        let left = outage_left(state.outage_until);
        config.outage_seconds = left.as_secs() + u64::from(left.subsec_nanos() > 0);
        config
    }

    /// Applies a partial update. A new `seed` restarts the fault sequence.
    pub fn update(&self, update: ChaosUpdate) -> Result<ChaosConfig, BankError> {
        {
            let mut state = self.lock();
            let mut next = state.config.clone();
            let ChaosUpdate {
                failure_rate,
                min_latency_ms,
                max_latency_ms,
                error_after_commit_rate,
                timeout_rate,
                timeout_ms,
                reset_rate,
                outage_seconds,
                seed,
            } = update;
            next.failure_rate = failure_rate.unwrap_or(next.failure_rate);
            next.min_latency_ms = min_latency_ms.unwrap_or(next.min_latency_ms);
            next.max_latency_ms = max_latency_ms.unwrap_or(next.max_latency_ms);
            next.error_after_commit_rate =
                error_after_commit_rate.unwrap_or(next.error_after_commit_rate);
            next.timeout_rate = timeout_rate.unwrap_or(next.timeout_rate);
            next.timeout_ms = timeout_ms.unwrap_or(next.timeout_ms);
            next.reset_rate = reset_rate.unwrap_or(next.reset_rate);
            next.validate()?;
            if let Some(seed) = seed {
                next.seed = seed;
                state.rng = StdRng::seed_from_u64(seed);
            }
            if let Some(seconds) = outage_seconds {
                state.outage_until =
                    (seconds > 0).then(|| Instant::now() + Duration::from_secs(seconds));
            }
            state.config = next;
        }
        Ok(self.config())
    }

    /// Whether an outage is in progress right now.
    pub fn in_outage(&self) -> bool {
        !outage_left(self.lock().outage_until).is_zero()
    }

    /// Draws this request's faults: always the same number of draws, so
    /// the sequence depends only on the seed and the order of requests.
    pub fn draw(&self) -> Faults {
        let mut state = self.lock();
        let State { config, rng, .. } = &mut *state;
        let latency_ms = rng.random_range(config.min_latency_ms..=config.max_latency_ms);
        let fail_before = rng.random::<f64>() < config.failure_rate;
        let reset = rng.random::<f64>() < config.reset_rate;
        let reset_before = rng.random::<bool>();
        let error_after_commit = rng.random::<f64>() < config.error_after_commit_rate;
        let hold = rng.random::<f64>() < config.timeout_rate;
        Faults {
            latency: Duration::from_millis(latency_ms),
            fail_before,
            reset: reset.then_some(if reset_before {
                ResetPoint::BeforeCommit
            } else {
                ResetPoint::AfterCommit
            }),
            error_after_commit,
            hold_response: hold.then_some(Duration::from_millis(config.timeout_ms)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state half-written
        // (every write is a whole assignment), so a poisoned lock is usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn outage_left(until: Option<Instant>) -> Duration {
    until.map_or(Duration::ZERO, |until| {
        until.saturating_duration_since(Instant::now())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chaotic(seed: u64) -> Chaos {
        let mut config = ChaosConfig::calm(seed);
        config.failure_rate = 0.3;
        config.reset_rate = 0.2;
        config.max_latency_ms = 50;
        Chaos::new(config).unwrap()
    }

    #[test]
    fn one_seed_gives_one_fault_sequence() {
        let a: Vec<Faults> = (0..200)
            .map({
                let c = chaotic(7);
                move |_| c.draw()
            })
            .collect();
        let b: Vec<Faults> = (0..200)
            .map({
                let c = chaotic(7);
                move |_| c.draw()
            })
            .collect();
        let c: Vec<Faults> = (0..200)
            .map({
                let c = chaotic(8);
                move |_| c.draw()
            })
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn rates_of_zero_and_one_are_never_and_always() {
        let mut config = ChaosConfig::calm(1);
        config.failure_rate = 1.0;
        let chaos = Chaos::new(config).unwrap();
        assert!((0..100).all(|_| {
            let f = chaos.draw();
            f.fail_before && f.reset.is_none()
        }));
    }

    #[test]
    fn updates_are_partial_and_validated() {
        let chaos = Chaos::new(ChaosConfig::calm(1)).unwrap();
        let updated = chaos
            .update(ChaosUpdate {
                timeout_rate: Some(0.5),
                ..ChaosUpdate::default()
            })
            .unwrap();
        assert_eq!(updated.timeout_rate, 0.5);
        assert_eq!(updated.failure_rate, 0.0);
        assert!(
            chaos
                .update(ChaosUpdate {
                    reset_rate: Some(1.5),
                    ..ChaosUpdate::default()
                })
                .is_err()
        );
        assert!(
            chaos
                .update(ChaosUpdate {
                    min_latency_ms: Some(10),
                    ..ChaosUpdate::default()
                })
                .is_err()
        );
        assert_eq!(
            chaos.config().timeout_rate,
            0.5,
            "a refused update changes nothing"
        );
    }

    #[test]
    fn an_outage_lasts_its_seconds() {
        let chaos = Chaos::new(ChaosConfig::calm(1)).unwrap();
        assert!(!chaos.in_outage());
        let config = chaos
            .update(ChaosUpdate {
                outage_seconds: Some(20),
                ..ChaosUpdate::default()
            })
            .unwrap();
        assert!(chaos.in_outage());
        assert!((19..=20).contains(&config.outage_seconds));
        chaos
            .update(ChaosUpdate {
                outage_seconds: Some(0),
                ..ChaosUpdate::default()
            })
            .unwrap();
        assert!(!chaos.in_outage());
    }
}
