//! [`Faults`] with the `fault-points` feature: a registry of armed points
//! shared by every clone, one per gateway (so tests in one process do not
//! arm each other's gateways).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::sync::watch;

use super::spec::{Action, FaultSpec, SpecError};
use super::{FaultSettings, Injected, Mutant, Point};

#[derive(Clone)]
pub struct Faults {
    inner: Arc<Inner>,
}

struct Inner {
    /// Added to the system clock wherever the gateway reads it.
    skew: chrono::TimeDelta,
    /// The known bug this process runs with, if any.
    mutant: Option<Mutant>,
    /// Whether any point is armed: the one load an unarmed hit costs.
    armed: AtomicBool,
    state: Mutex<State>,
    /// Bumped whenever the armed set changes, which releases paused hits.
    generation: watch::Sender<u64>,
}

struct State {
    specs: HashMap<Point, FaultSpec>,
    hits: HashMap<Point, u64>,
    fired: HashMap<Point, u64>,
    rng: StdRng,
}

impl std::fmt::Debug for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Faults")
            .field("armed", &self.inner.armed.load(Ordering::Relaxed))
            .finish()
    }
}

impl Default for Faults {
    fn default() -> Self {
        Self::new(0, chrono::TimeDelta::zero(), None)
    }
}

impl Faults {
    pub fn new(seed: u64, skew: chrono::TimeDelta, mutant: Option<Mutant>) -> Self {
        Self {
            inner: Arc::new(Inner {
                skew,
                mutant,
                armed: AtomicBool::new(false),
                state: Mutex::new(State {
                    specs: HashMap::new(),
                    hits: HashMap::new(),
                    fired: HashMap::new(),
                    rng: StdRng::seed_from_u64(seed),
                }),
                generation: watch::Sender::new(0),
            }),
        }
    }

    /// A registry armed as `settings` say.
    pub fn from_settings(settings: &FaultSettings) -> Result<Self, SpecError> {
        let faults = Self::new(settings.seed, settings.skew, settings.mutant);
        faults.arm(&settings.spec)?;
        if let Some(mutant) = settings.mutant {
            tracing::warn!(
                mutant = mutant.as_str(),
                "running with a known bug reintroduced"
            );
        }
        Ok(faults)
    }

    /// Whether this process runs with `mutant` reintroduced.
    pub fn mutant(&self, mutant: Mutant) -> bool {
        self.inner.mutant == Some(mutant)
    }

    /// This process's wall clock, skewed as configured.
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now() + self.inner.skew
    }

    /// Replaces the armed points of the spec's points (others stay), and
    /// releases every paused hit.
    pub fn arm(&self, spec: &str) -> Result<(), SpecError> {
        let specs = FaultSpec::parse_all(spec)?;
        let mut state = self.state();
        for spec in specs {
            state.specs.insert(spec.point, spec);
        }
        self.changed(&state);
        Ok(())
    }

    /// Disarms one point, releasing whatever it paused.
    pub fn disarm(&self, point: Point) {
        let mut state = self.state();
        state.specs.remove(&point);
        self.changed(&state);
    }

    /// How many times the point was reached, armed or not (counted only
    /// while some point is armed).
    pub fn hits(&self, point: Point) -> u64 {
        self.state().hits.get(&point).copied().unwrap_or(0)
    }

    /// How many times the point fired.
    pub fn fired(&self, point: Point) -> u64 {
        self.state().fired.get(&point).copied().unwrap_or(0)
    }

    /// Reached `point`: do what it is armed with, if it fires.
    pub async fn hit(&self, point: Point) -> Result<(), Injected> {
        if !self.inner.armed.load(Ordering::Acquire) {
            return Ok(());
        }
        // Subscribed under the lock, so a release after it is not missed.
        let (action, mut released) = {
            let mut state = self.state();
            *state.hits.entry(point).or_default() += 1;
            let Some(action) = Self::fire(&mut state, point) else {
                return Ok(());
            };
            *state.fired.entry(point).or_default() += 1;
            (action, self.inner.generation.subscribe())
        };
        tracing::warn!(point = point.as_str(), action = ?action, "fault point fired");
        metrics::counter!("gateway_faults_fired_total", "point" => point.as_str()).increment(1);
        match action {
            Action::Pause => {
                // Resolves on the next change; an error means the registry is
                // gone, which also ends the pause.
                let _ = released.changed().await;
                Ok(())
            }
            Action::Sleep(duration) => {
                tokio::time::sleep(duration).await;
                Ok(())
            }
            Action::Error => Err(Injected(point)),
            Action::Abort => std::process::abort(),
        }
    }

    /// Whether an armed point fires on this hit, counting it down if so.
    fn fire(state: &mut State, point: Point) -> Option<Action> {
        let State { specs, rng, .. } = state;
        let spec = specs.get_mut(&point)?;
        if spec.times == Some(0) {
            return None;
        }
        if spec.probability < 1.0 && !rng.random_bool(spec.probability) {
            return None;
        }
        if let Some(times) = spec.times.as_mut() {
            *times -= 1;
        }
        Some(spec.action)
    }

    fn changed(&self, state: &State) {
        self.inner
            .armed
            .store(!state.specs.is_empty(), Ordering::Release);
        self.inner
            .generation
            .send_modify(|generation| *generation += 1);
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves counters that are still usable.
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn spec(spec: &str, seed: u64) -> FaultSettings {
        FaultSettings {
            spec: spec.to_owned(),
            seed,
            ..FaultSettings::default()
        }
    }

    #[tokio::test]
    async fn an_unarmed_point_does_nothing_and_an_error_fires_as_often_as_asked() {
        let faults = Faults::new(7, chrono::TimeDelta::zero(), None);
        assert!(faults.hit(Point::BankAnswered).await.is_ok());
        faults.arm("bank_answered=2*error").unwrap();
        assert!(faults.hit(Point::BankAnswered).await.is_err());
        assert!(faults.hit(Point::IntentCommitted).await.is_ok());
        assert!(faults.hit(Point::BankAnswered).await.is_err());
        assert!(faults.hit(Point::BankAnswered).await.is_ok());
        assert_eq!(faults.fired(Point::BankAnswered), 2);
        assert_eq!(faults.hits(Point::BankAnswered), 3);
    }

    #[tokio::test]
    async fn a_pause_lasts_until_the_point_is_disarmed() {
        let faults = Faults::from_settings(&spec("intent_committed=pause", 1)).unwrap();
        let paused = tokio::spawn({
            let faults = faults.clone();
            async move { faults.hit(Point::IntentCommitted).await }
        });
        while faults.fired(Point::IntentCommitted) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(!paused.is_finished());
        faults.disarm(Point::IntentCommitted);
        assert!(paused.await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn the_seed_decides_which_hits_fire() {
        let fired = |seed| async move {
            let faults = Faults::from_settings(&spec("recovery_claimed=50%error", seed)).unwrap();
            let mut pattern = Vec::new();
            for _ in 0..32 {
                pattern.push(faults.hit(Point::RecoveryClaimed).await.is_err());
            }
            pattern
        };
        assert_eq!(fired(3).await, fired(3).await);
        assert_ne!(fired(3).await, fired(4).await);
    }
}
