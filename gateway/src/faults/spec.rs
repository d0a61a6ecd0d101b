//! The text form of an armed point, as the simulator and `--faults` write
//! it: `point=action` pairs separated by `;`, where an action is
//! `[N*][P%]kind`, for example
//!
//! ```text
//! bank_answered=1*pause;recovery_claimed=20%sleep(3000);outcome_before_commit=5%abort
//! ```
//!
//! `N*` fires at most N times, `P%` fires with probability P on each hit
//! (drawn from the seeded generator), and `kind` is one of `pause` (wait
//! until the point is disarmed), `sleep(MS)`, `error` (fail the step as a
//! lost database connection would) or `abort` (end the process at once, as
//! `kill -9` would, but at exactly this point).

use std::time::Duration;

use super::Point;

/// The longest `sleep` a spec may ask for: a fault must not outlive a test.
pub const MAX_SLEEP_MS: u64 = 600_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Wait until the point is disarmed (or re-armed).
    Pause,
    Sleep(Duration),
    /// Fail the step with an injected database error.
    Error,
    /// End the process with `abort()`: no destructor, no lease handed back.
    Abort,
}

/// One armed point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaultSpec {
    pub point: Point,
    pub action: Action,
    /// Firings left; `None` for no limit.
    pub times: Option<u64>,
    /// Chance of firing on each hit, 0..=1.
    pub probability: f64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("fault spec {0:?}: expected point=action")]
    Shape(String),
    #[error("unknown fault point {0:?}")]
    UnknownPoint(String),
    #[error("fault action {0:?}: expected [N*][P%]pause|sleep(MS)|error|abort")]
    Action(String),
    #[error("this gateway was built without the fault-points feature")]
    NotCompiledIn,
}

impl FaultSpec {
    /// Every `point=action` of a spec; an empty spec arms nothing.
    pub fn parse_all(spec: &str) -> Result<Vec<FaultSpec>, SpecError> {
        spec.split(';')
            .map(str::trim)
            .filter(|part| !part.is_empty())
            .map(Self::parse)
            .collect()
    }

    pub fn parse(part: &str) -> Result<FaultSpec, SpecError> {
        let (point, action) = part
            .split_once('=')
            .ok_or_else(|| SpecError::Shape(part.to_owned()))?;
        let point = Point::parse(point.trim())
            .ok_or_else(|| SpecError::UnknownPoint(point.trim().to_owned()))?;
        let bad = || SpecError::Action(action.to_owned());
        let mut rest = action.trim();
        let mut times = None;
        if let Some((count, after)) = rest.split_once('*') {
            times = Some(count.trim().parse::<u64>().map_err(|_| bad())?);
            rest = after.trim();
        }
        let mut probability = 1.0;
        if let Some((percent, after)) = rest.split_once('%') {
            let percent: f64 = percent.trim().parse().map_err(|_| bad())?;
            if !(0.0..=100.0).contains(&percent) {
                return Err(bad());
            }
            probability = percent / 100.0;
            rest = after.trim();
        }
        let action = match rest {
            "pause" => Action::Pause,
            "error" => Action::Error,
            "abort" => Action::Abort,
            sleep => {
                let ms = sleep
                    .strip_prefix("sleep(")
                    .and_then(|s| s.strip_suffix(')'))
                    .and_then(|ms| ms.trim().parse::<u64>().ok())
                    .filter(|ms| *ms <= MAX_SLEEP_MS)
                    .ok_or_else(bad)?;
                Action::Sleep(Duration::from_millis(ms))
            }
        };
        Ok(FaultSpec {
            point,
            action,
            times,
            probability,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_with_counts_and_chances() {
        let specs = FaultSpec::parse_all(
            "bank_answered=1*pause; recovery_claimed=20%sleep(3000);outcome_before_commit=2*50%abort;",
        )
        .unwrap();
        assert_eq!(
            specs,
            [
                FaultSpec {
                    point: Point::BankAnswered,
                    action: Action::Pause,
                    times: Some(1),
                    probability: 1.0
                },
                FaultSpec {
                    point: Point::RecoveryClaimed,
                    action: Action::Sleep(Duration::from_millis(3000)),
                    times: None,
                    probability: 0.2
                },
                FaultSpec {
                    point: Point::OutcomeBeforeCommit,
                    action: Action::Abort,
                    times: Some(2),
                    probability: 0.5
                },
            ]
        );
        assert_eq!(FaultSpec::parse_all(" ").unwrap(), []);
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        assert!(matches!(
            FaultSpec::parse("nowhere=pause"),
            Err(SpecError::UnknownPoint(_))
        ));
        assert!(matches!(
            FaultSpec::parse("bank_answered"),
            Err(SpecError::Shape(_))
        ));
        for action in [
            "explode",
            "sleep(x)",
            "150%pause",
            "x*pause",
            "sleep(600001)",
        ] {
            assert!(
                matches!(
                    FaultSpec::parse(&format!("bank_answered={action}")),
                    Err(SpecError::Action(_))
                ),
                "{action}"
            );
        }
    }
}
