//! Injected faults: what the original bank does (random 500s, latency) and
//! the extensions (lost responses, held responses, resets, outages, and
//! what a network and its proxies do: proxy error pages, bodies cut short,
//! bodies trickled).
//!
//! Every decision comes from one seed, drawn a fixed number of times per
//! request, so a seed and a sequence of requests give the same faults every
//! time. The generators sit behind a mutex held only for the draw; latency
//! is an async sleep and never blocks a worker thread.
//!
//! The seed drives two streams. The first draws the faults that existed
//! before the network faults, exactly as it always did; the network faults
//! draw from a second stream derived from the same seed. Had they been
//! appended to the first stream, every request after the first would have
//! consumed more draws, and a seed recorded before they existed would no
//! longer replay its faults.

mod body;
mod middleware;
mod proxy;
mod reset;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use body::FaultyBody;
pub use middleware::inject_faults;
pub use proxy::ProxyAnswer;
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
    /// Share of requests answered by a "proxy" before doing anything: 408,
    /// 429 (JSON, `Retry-After`), 502, 503 or 504 (HTML pages).
    pub proxy_error_rate: f64,
    /// Share of requests done and committed, then answered with a body cut
    /// short: the full `Content-Length`, half the bytes, the connection closed.
    pub truncate_rate: f64,
    /// Share of requests done and committed, then answered with the whole
    /// body sent a few bytes at a time over `trickle_ms`.
    pub trickle_rate: f64,
    pub trickle_ms: u64,
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
            proxy_error_rate: 0.0,
            truncate_rate: 0.0,
            trickle_rate: 0.0,
            trickle_ms: 5_000,
        }
    }

    fn validate(&self) -> Result<(), BankError> {
        let rates = [
            ("failure_rate", self.failure_rate),
            ("error_after_commit_rate", self.error_after_commit_rate),
            ("timeout_rate", self.timeout_rate),
            ("reset_rate", self.reset_rate),
            ("proxy_error_rate", self.proxy_error_rate),
            ("truncate_rate", self.truncate_rate),
            ("trickle_rate", self.trickle_rate),
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
        if self.outage_seconds > MAX_OUTAGE_SECONDS {
            return Err(BankError::InvalidRequest(format!(
                "outage_seconds must be at most {MAX_OUTAGE_SECONDS} (a day)"
            )));
        }
        Ok(())
    }
}

/// The longest outage that can be asked for: a day (a longer one is a bank
/// that is gone; an unbounded one overflowed the clock and panicked).
pub const MAX_OUTAGE_SECONDS: u64 = 86_400;

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
    pub proxy_error_rate: Option<f64>,
    pub truncate_rate: Option<f64>,
    pub trickle_rate: Option<f64>,
    pub trickle_ms: Option<u64>,
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
    /// What a proxy answers instead of the bank, when it does.
    pub proxy_answer: Option<ProxyAnswer>,
    /// Whether the committed response's body is cut short.
    pub truncate: bool,
    /// How long the committed response's body takes, when it is trickled.
    pub trickle: Option<Duration>,
}

struct State {
    config: ChaosConfig,
    /// Draws the faults that predate the network faults, as it always did.
    rng: StdRng,
    /// Draws the network faults (proxy answers, cut and trickled bodies).
    network_rng: StdRng,
    outage_until: Option<Instant>,
}

/// The network faults' generator for a seed: its own stream, so that
/// drawing from it leaves the first stream's sequence untouched.
fn network_rng(seed: u64) -> StdRng {
    let digest = Sha256::new()
        .chain_update(b"mock-bank chaos: network faults")
        .chain_update(seed.to_le_bytes())
        .finalize();
    StdRng::from_seed(digest.into())
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
                network_rng: network_rng(config.seed),
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
                proxy_error_rate,
                truncate_rate,
                trickle_rate,
                trickle_ms,
            } = update;
            next.failure_rate = failure_rate.unwrap_or(next.failure_rate);
            next.min_latency_ms = min_latency_ms.unwrap_or(next.min_latency_ms);
            next.max_latency_ms = max_latency_ms.unwrap_or(next.max_latency_ms);
            next.error_after_commit_rate =
                error_after_commit_rate.unwrap_or(next.error_after_commit_rate);
            next.timeout_rate = timeout_rate.unwrap_or(next.timeout_rate);
            next.timeout_ms = timeout_ms.unwrap_or(next.timeout_ms);
            next.reset_rate = reset_rate.unwrap_or(next.reset_rate);
            next.proxy_error_rate = proxy_error_rate.unwrap_or(next.proxy_error_rate);
            next.truncate_rate = truncate_rate.unwrap_or(next.truncate_rate);
            next.trickle_rate = trickle_rate.unwrap_or(next.trickle_rate);
            next.trickle_ms = trickle_ms.unwrap_or(next.trickle_ms);
            next.outage_seconds = outage_seconds.unwrap_or(0);
            next.validate()?;
            next.outage_seconds = 0;
            if let Some(seed) = seed {
                next.seed = seed;
                state.rng = StdRng::seed_from_u64(seed);
                state.network_rng = network_rng(seed);
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
        let State {
            config,
            rng,
            network_rng,
            ..
        } = &mut *state;
        let latency_ms = rng.random_range(config.min_latency_ms..=config.max_latency_ms);
        let fail_before = rng.random::<f64>() < config.failure_rate;
        let reset = rng.random::<f64>() < config.reset_rate;
        let reset_before = rng.random::<bool>();
        let error_after_commit = rng.random::<f64>() < config.error_after_commit_rate;
        let hold = rng.random::<f64>() < config.timeout_rate;
        // The network faults: four draws, whatever the rates, in this order.
        let proxy_error = network_rng.random::<f64>() < config.proxy_error_rate;
        let proxy_answer = ProxyAnswer::ALL[network_rng.random_range(0..ProxyAnswer::ALL.len())];
        let truncate = network_rng.random::<f64>() < config.truncate_rate;
        let trickle = network_rng.random::<f64>() < config.trickle_rate;
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
            proxy_answer: proxy_error.then_some(proxy_answer),
            truncate,
            trickle: trickle.then_some(Duration::from_millis(config.trickle_ms)),
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

    /// The draws of the faults that predate the network faults, in their
    /// original order, on a bare generator: what a seed gave before the
    /// network faults existed.
    fn original_draws(seed: u64, config: &ChaosConfig, requests: usize) -> Vec<Faults> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..requests)
            .map(|_| {
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
                    proxy_answer: None,
                    truncate: false,
                    trickle: None,
                }
            })
            .collect()
    }

    #[test]
    fn a_seed_replays_the_original_faults_whatever_the_network_faults() {
        let mut config = ChaosConfig::calm(11);
        config.failure_rate = 0.3;
        config.reset_rate = 0.2;
        config.error_after_commit_rate = 0.1;
        config.timeout_rate = 0.1;
        config.max_latency_ms = 50;
        let expected = original_draws(11, &config, 300);
        config.proxy_error_rate = 0.5;
        config.truncate_rate = 0.5;
        config.trickle_rate = 0.5;
        let chaos = Chaos::new(config).unwrap();
        let drawn: Vec<Faults> = (0..300)
            .map(|_| {
                let f = chaos.draw();
                Faults {
                    proxy_answer: None,
                    truncate: false,
                    trickle: None,
                    ..f
                }
            })
            .collect();
        assert_eq!(drawn, expected);
    }

    #[test]
    fn network_faults_follow_their_rates_and_the_seed() {
        let mut config = ChaosConfig::calm(5);
        config.proxy_error_rate = 1.0;
        config.truncate_rate = 1.0;
        config.trickle_rate = 1.0;
        config.trickle_ms = 70;
        let answers = |config: &ChaosConfig| {
            let chaos = Chaos::new(config.clone()).unwrap();
            (0..100)
                .map(|_| {
                    let f = chaos.draw();
                    assert!(f.truncate);
                    assert_eq!(f.trickle, Some(Duration::from_millis(70)));
                    f.proxy_answer.expect("a proxy answer at rate 1")
                })
                .collect::<Vec<_>>()
        };
        let first = answers(&config);
        assert_eq!(first, answers(&config), "one seed, one sequence");
        for answer in ProxyAnswer::ALL {
            assert!(first.contains(&answer), "{answer:?} is drawn");
        }
        config.seed = 6;
        assert_ne!(first, answers(&config));

        let calm = Chaos::new(ChaosConfig::calm(5)).unwrap();
        assert!((0..100).all(|_| {
            let f = calm.draw();
            f.proxy_answer.is_none() && !f.truncate && f.trickle.is_none()
        }));
    }

    #[test]
    fn a_new_seed_restarts_the_network_faults_too() {
        let mut config = ChaosConfig::calm(3);
        config.proxy_error_rate = 0.5;
        let chaos = Chaos::new(config).unwrap();
        let first: Vec<Faults> = (0..50).map(|_| chaos.draw()).collect();
        chaos
            .update(ChaosUpdate {
                seed: Some(3),
                ..ChaosUpdate::default()
            })
            .unwrap();
        let again: Vec<Faults> = (0..50).map(|_| chaos.draw()).collect();
        assert_eq!(first, again);
    }

    #[test]
    fn network_rates_are_validated() {
        let chaos = Chaos::new(ChaosConfig::calm(1)).unwrap();
        for update in [
            ChaosUpdate {
                proxy_error_rate: Some(1.01),
                ..ChaosUpdate::default()
            },
            ChaosUpdate {
                truncate_rate: Some(-0.5),
                ..ChaosUpdate::default()
            },
            ChaosUpdate {
                trickle_rate: Some(f64::NAN),
                ..ChaosUpdate::default()
            },
        ] {
            assert!(chaos.update(update).is_err());
        }
        assert_eq!(chaos.config(), ChaosConfig::calm(1));
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
