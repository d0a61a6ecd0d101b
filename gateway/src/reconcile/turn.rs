//! One reconciler across the replicas: the turn.
//!
//! Every replica polls; the one that finds the next pass due and the turn
//! free takes it, renews it while it works, and on finishing writes when the
//! next pass is due, so passes run once per interval across the fleet
//! rather than once per replica. A holder that dies (or pauses past
//! [`TURN_LEASE`]) lets it lapse and another replica takes it over; the
//! paused one finds its renewal refused and stops. Two passes at once
//! would only waste bank lookups: every repair locks the payment and
//! compares it again. Times are the database's clock.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::ReconcileError;
use super::due::Scope;

/// How long a turn is held without a renewal: how long passes stop when
/// the replica holding the turn dies without handing it back (a kill -9).
/// Short, since a renewal is one single-row UPDATE; losing the turn to a
/// stall costs only a pass cut short (the next poll takes it again), and
/// two passes at once only lookups.
pub const TURN_LEASE: Duration = Duration::from_secs(10);

/// How often a pass renews its turn while the bank answers: a third of
/// [`TURN_LEASE`], so that a slow page of lookups, or one renewal that
/// waits, does not lose it.
pub const TURN_RENEWAL: Duration = Duration::from_secs(3);

/// How often a replica looks for a due pass, at most.
pub const POLL_MAX: Duration = Duration::from_secs(30);

/// When passes run: one every `interval`, a sweep at most every
/// `sweep_interval` (0: every pass sweeps).
#[derive(Debug, Clone, Copy)]
pub struct Cadence {
    pub interval: Duration,
    pub sweep_interval: Duration,
}

impl Cadence {
    /// A quarter of the interval, so that a pass starts within that of
    /// being due whichever replica takes it, and never more than
    /// [`POLL_MAX`].
    pub fn poll(&self) -> Duration {
        (self.interval / 4).clamp(Duration::from_millis(1), POLL_MAX)
    }
}

/// This replica's hold on the turn.
#[derive(Debug)]
pub struct Turn {
    holder: Uuid,
    held_until: DateTime<Utc>,
    started_at: DateTime<Utc>,
    /// The pass this turn runs: the due one, or a sweep.
    pub scope: Scope,
}

#[derive(Debug, thiserror::Error)]
#[error("another replica took the reconciliation turn over")]
pub struct TurnLost;

/// Takes the turn for `holder` if a pass is due and nobody holds it.
pub async fn take(
    pool: &PgPool,
    holder: Uuid,
    cadence: Cadence,
) -> Result<Option<Turn>, sqlx::Error> {
    let taken: Option<(DateTime<Utc>, DateTime<Utc>, bool)> = sqlx::query_as(
        "UPDATE reconcile_turn SET held_by = $1, held_until = now() + $2 \
         WHERE next_pass_at <= now() AND held_until <= now() \
         RETURNING held_until, now(), swept_at <= now() - $3",
    )
    .bind(holder)
    .bind(TURN_LEASE)
    .bind(cadence.sweep_interval)
    .fetch_optional(pool)
    .await?;
    Ok(taken.map(|(held_until, started_at, sweep)| Turn {
        holder,
        held_until,
        started_at,
        scope: if sweep { Scope::Sweep } else { Scope::Due },
    }))
}

impl Turn {
    /// Extends the hold, unless someone took the turn over meanwhile.
    pub async fn renew(&mut self, pool: &PgPool) -> Result<(), ReconcileError> {
        let renewed: Option<DateTime<Utc>> = sqlx::query_scalar(
            "UPDATE reconcile_turn SET held_until = now() + $3 \
             WHERE held_by = $1 AND held_until = $2 RETURNING held_until",
        )
        .bind(self.holder)
        .bind(self.held_until)
        .bind(TURN_LEASE)
        .fetch_optional(pool)
        .await?;
        self.held_until = renewed.ok_or(TurnLost)?;
        Ok(())
    }

    /// Hands the turn back after a whole pass that found `mismatches`: the
    /// next pass is due an interval after this one began, and a sweep
    /// records when it swept.
    pub async fn passed(
        self,
        pool: &PgPool,
        cadence: Cadence,
        mismatches: u64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE reconcile_turn SET held_until = now(), next_pass_at = $3 + $4, \
               swept_at = CASE WHEN $5 THEN $3 ELSE swept_at END, \
               passed_at = now(), mismatches = $6 \
             WHERE held_by = $1 AND held_until = $2",
        )
        .bind(self.holder)
        .bind(self.held_until)
        .bind(self.started_at)
        .bind(cadence.interval)
        .bind(self.scope == Scope::Sweep)
        .bind(i64::try_from(mismatches).unwrap_or(i64::MAX))
        .execute(pool)
        .await?;
        Ok(())
    }

    /// Hands the turn back after a pass that failed: due at once, for
    /// whichever replica polls next.
    pub async fn failed(self, pool: &PgPool) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE reconcile_turn SET held_until = now() WHERE held_by = $1 AND held_until = $2",
        )
        .bind(self.holder)
        .bind(self.held_until)
        .execute(pool)
        .await?;
        Ok(())
    }
}

/// Hands back the turn if `holder` holds it (a replica stopping in the
/// middle of a pass): the pass it did not finish is due at once for the
/// next replica that polls, rather than after [`TURN_LEASE`]. Whether it
/// held it.
pub async fn release_held_by(conn: &mut PgConnection, holder: Uuid) -> Result<bool, sqlx::Error> {
    let released = sqlx::query(
        "UPDATE reconcile_turn SET held_until = now() WHERE held_by = $1 AND held_until > now()",
    )
    .bind(holder)
    .execute(conn)
    .await?;
    Ok(released.rows_affected() > 0)
}

/// The last whole pass of any replica: when it finished and the
/// mismatches it found. `None` before the first.
pub async fn last_pass(pool: &PgPool) -> Result<Option<(DateTime<Utc>, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT passed_at, mismatches FROM reconcile_turn WHERE passed_at IS NOT NULL")
        .fetch_optional(pool)
        .await
}
