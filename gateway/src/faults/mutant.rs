//! Known bugs, each reintroducible on demand, to prove that the simulator
//! finds them: a mutation table in the spirit of mutation testing, with
//! realistic mutants instead of random ones. Each is a bug this gateway
//! had (the money bugs found by reading it) or one a payments engineer
//! would fear, written as a branch next to the correct code, and compiled
//! only with the `fault-points` feature: a production build has none.
//!
//! `simulator mutants` runs each against seeded chaos and says which
//! invariant caught it.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mutant {
    /// A retried key resumes whatever operation its payment has in flight
    /// (and an authorization's retry sends the card under that operation's
    /// bank key).
    ResumeAnyOperation,
    /// A request whose operation someone else settled answers what it
    /// computed itself (its own settlement's reply, or the payment as it
    /// finds it), not the answer stored.
    LateAnswerWins,
    /// A replay is recomputed from the payment's current state instead of
    /// the stored bytes.
    ReplayRecomputed,
    /// No grace period, and an authorization the bank never saw is a card
    /// decline (402).
    AbandonedIsDeclined,
    /// Any 4xx from the bank is definitive, and for an authorization a
    /// decline.
    Any4xxIsDecline,
    /// The request fingerprint is a plain SHA-256 of the body.
    PlainFingerprint,
    /// Leases are judged by the process's clock.
    ProcessClockLeases,
    /// Retention counts from a key's creation, not from its answer.
    PurgeFromCreation,
    /// A read takes the payment and its history in two statements.
    TwoSnapshotReads,
    /// Starting an operation does not hold the payment still: the locked
    /// path takes no row lock, and the batched statement moves the payment
    /// without comparing it with what was read.
    NoRowLockOnStart,
    /// An unknown bank outcome is taken as a failure.
    UnknownIsFailure,
    /// A 5xx from the bank on an authorization is taken as a decline.
    ServerErrorIsDecline,
    /// Every attempt sends a fresh bank idempotency key.
    FreshBankKeyPerRetry,
    /// The same key with a different request replays the first answer.
    RequestHashIgnored,
    /// The recovery worker claims operations whose lease still runs.
    WorkerIgnoresLeases,
    /// The outcome is recorded and answered in one transaction, and the
    /// payment moved in another.
    StatusNotMovedWithOutcome,
    /// Reconciliation judges payments whose operation is in flight by the
    /// bank's view and "repairs" them, racing the request and the recovery
    /// worker that own them.
    ReconcileRepairsInFlight,
    /// An operation's start refuses the request (no such payment, not its
    /// amount) without looking at its key first: a used key, sent again
    /// with another body, gets that refusal instead of its 422.
    RefusalBeforeStoredAnswer,
    /// A key that authenticated is remembered for good: a revoked key
    /// goes on working.
    KeyCacheNeverLapses,
    /// The request fingerprint leaves the path out: a capture's key sent
    /// again as a void of the same payment, with the same body, replays
    /// the capture's answer instead of refusing it.
    FingerprintWithoutPath,
    /// An authorization holds a cent more than it was asked for: stored,
    /// sent to the bank and answered so, all agreeing with each other.
    AuthorizedAmountOffByOne,
    /// An operation acts on the payment its path names, whoever owns it:
    /// another merchant's key captures, voids or refunds it.
    ForeignPaymentOperable,
    /// A webhook announces a failed capture, void or refund as its success.
    FailureAnnouncedAsSuccess,
    /// An operation's start judges the payment as it stood one change
    /// before (a lagging read): a capture right after its authorization is
    /// refused as `invalid_state`, changing nothing and telling no lie a
    /// receipt could contradict.
    StaleStatusJudged,
    /// The bank's 422 `idempotency_key_reused` to a capture, void or
    /// refund is the gateway's fault: the operation fails, while the bank
    /// (which stores only what it did) has moved the money.
    KeyReusedIsGatewayFault,
    /// A resolve's 404 `not_found` says the key created nothing, with or
    /// without the bank's mark: a 404 from whatever answers in front of
    /// the bank abandons an authorization the bank may hold.
    UnmarkedNotFoundIsNothing,
    /// The webhook endpoints' and events' POSTs ask for an
    /// `Idempotency-Key` and ignore it: a registration sent again after a
    /// lost answer makes a second endpoint, with its own secret.
    WebhookPostsUnkeyed,
}

impl Mutant {
    pub const ALL: [Mutant; 27] = [
        Mutant::ResumeAnyOperation,
        Mutant::LateAnswerWins,
        Mutant::ReplayRecomputed,
        Mutant::AbandonedIsDeclined,
        Mutant::Any4xxIsDecline,
        Mutant::PlainFingerprint,
        Mutant::ProcessClockLeases,
        Mutant::PurgeFromCreation,
        Mutant::TwoSnapshotReads,
        Mutant::NoRowLockOnStart,
        Mutant::UnknownIsFailure,
        Mutant::ServerErrorIsDecline,
        Mutant::FreshBankKeyPerRetry,
        Mutant::RequestHashIgnored,
        Mutant::WorkerIgnoresLeases,
        Mutant::StatusNotMovedWithOutcome,
        Mutant::ReconcileRepairsInFlight,
        Mutant::RefusalBeforeStoredAnswer,
        Mutant::KeyCacheNeverLapses,
        Mutant::FingerprintWithoutPath,
        Mutant::AuthorizedAmountOffByOne,
        Mutant::ForeignPaymentOperable,
        Mutant::FailureAnnouncedAsSuccess,
        Mutant::StaleStatusJudged,
        Mutant::KeyReusedIsGatewayFault,
        Mutant::UnmarkedNotFoundIsNothing,
        Mutant::WebhookPostsUnkeyed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Mutant::ResumeAnyOperation => "resume_any_operation",
            Mutant::LateAnswerWins => "late_answer_wins",
            Mutant::ReplayRecomputed => "replay_recomputed",
            Mutant::AbandonedIsDeclined => "abandoned_is_declined",
            Mutant::Any4xxIsDecline => "any_4xx_is_decline",
            Mutant::PlainFingerprint => "plain_fingerprint",
            Mutant::ProcessClockLeases => "process_clock_leases",
            Mutant::PurgeFromCreation => "purge_from_creation",
            Mutant::TwoSnapshotReads => "two_snapshot_reads",
            Mutant::NoRowLockOnStart => "no_row_lock_on_start",
            Mutant::UnknownIsFailure => "unknown_is_failure",
            Mutant::ServerErrorIsDecline => "server_error_is_decline",
            Mutant::FreshBankKeyPerRetry => "fresh_bank_key_per_retry",
            Mutant::RequestHashIgnored => "request_hash_ignored",
            Mutant::WorkerIgnoresLeases => "worker_ignores_leases",
            Mutant::StatusNotMovedWithOutcome => "status_not_moved_with_outcome",
            Mutant::ReconcileRepairsInFlight => "reconcile_repairs_in_flight",
            Mutant::RefusalBeforeStoredAnswer => "refusal_before_stored_answer",
            Mutant::KeyCacheNeverLapses => "key_cache_never_lapses",
            Mutant::FingerprintWithoutPath => "fingerprint_without_path",
            Mutant::AuthorizedAmountOffByOne => "authorized_amount_off_by_one",
            Mutant::ForeignPaymentOperable => "foreign_payment_operable",
            Mutant::FailureAnnouncedAsSuccess => "failure_announced_as_success",
            Mutant::StaleStatusJudged => "stale_status_judged",
            Mutant::KeyReusedIsGatewayFault => "key_reused_is_gateway_fault",
            Mutant::UnmarkedNotFoundIsNothing => "unmarked_not_found_is_nothing",
            Mutant::WebhookPostsUnkeyed => "webhook_posts_unkeyed",
        }
    }

    /// Whether the bug shows only where the bank moves payments behind the
    /// gateway (its console) and the background reconciliation runs, which
    /// a run must turn on (it is off by default, see `simulator run
    /// --reconcile-every` and `--console-waves`): a reconciliation bug, or
    /// one in what follows a capture, void or refund the bank refused.
    pub fn needs_reconciliation(self) -> bool {
        match self {
            Mutant::ReconcileRepairsInFlight | Mutant::FailureAnnouncedAsSuccess => true,
            Mutant::ResumeAnyOperation
            | Mutant::LateAnswerWins
            | Mutant::ReplayRecomputed
            | Mutant::AbandonedIsDeclined
            | Mutant::Any4xxIsDecline
            | Mutant::PlainFingerprint
            | Mutant::ProcessClockLeases
            | Mutant::PurgeFromCreation
            | Mutant::TwoSnapshotReads
            | Mutant::NoRowLockOnStart
            | Mutant::UnknownIsFailure
            | Mutant::ServerErrorIsDecline
            | Mutant::FreshBankKeyPerRetry
            | Mutant::RequestHashIgnored
            | Mutant::WorkerIgnoresLeases
            | Mutant::StatusNotMovedWithOutcome
            | Mutant::RefusalBeforeStoredAnswer
            | Mutant::KeyCacheNeverLapses
            | Mutant::FingerprintWithoutPath
            | Mutant::AuthorizedAmountOffByOne
            | Mutant::ForeignPaymentOperable
            | Mutant::StaleStatusJudged
            | Mutant::KeyReusedIsGatewayFault
            | Mutant::UnmarkedNotFoundIsNothing
            | Mutant::WebhookPostsUnkeyed => false,
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == raw)
    }

    /// What the bug is, in a sentence, for the mutation table.
    pub fn describe(self) -> &'static str {
        match self {
            Mutant::ResumeAnyOperation => {
                "a retried key resumes another key's operation (and the worker leaves keys unanswered)"
            }
            Mutant::LateAnswerWins => {
                "a late request answers what it computed, not what was stored"
            }
            Mutant::ReplayRecomputed => "a replay is recomputed from the payment's current state",
            Mutant::AbandonedIsDeclined => "an authorization the bank never saw is declined (402)",
            Mutant::Any4xxIsDecline => "any 4xx from the bank is definitive (a decline)",
            Mutant::PlainFingerprint => "the request fingerprint is a plain SHA-256",
            Mutant::ProcessClockLeases => "leases judged by the process clock",
            Mutant::PurgeFromCreation => "keys purged by creation time, not answer time",
            Mutant::TwoSnapshotReads => "a read takes the payment and its history apart",
            Mutant::NoRowLockOnStart => "no row lock when starting an operation",
            Mutant::UnknownIsFailure => "an unknown bank outcome taken as a failure",
            Mutant::ServerErrorIsDecline => "a 5xx from the bank taken as a decline",
            Mutant::FreshBankKeyPerRetry => "a fresh bank key per retry",
            Mutant::RequestHashIgnored => "a request-hash mismatch ignored",
            Mutant::WorkerIgnoresLeases => "a recovery worker that ignores live leases",
            Mutant::StatusNotMovedWithOutcome => {
                "the payment not moved in the outcome's transaction"
            }
            Mutant::ReconcileRepairsInFlight => {
                "reconciliation repairs a payment whose operation is in flight"
            }
            Mutant::RefusalBeforeStoredAnswer => {
                "a used key sent again gets the request's refusal, not its 422"
            }
            Mutant::KeyCacheNeverLapses => "a key that authenticated is remembered for good",
            Mutant::FingerprintWithoutPath => {
                "the request fingerprint leaves the path out (a capture's key replays as a void)"
            }
            Mutant::AuthorizedAmountOffByOne => {
                "an authorization holds a cent more than asked (receipt, bank and answer agree)"
            }
            Mutant::ForeignPaymentOperable => {
                "an operation acts on the payment in its path, whichever merchant asks"
            }
            Mutant::FailureAnnouncedAsSuccess => {
                "a webhook announces a failed capture, void or refund as its success"
            }
            Mutant::StaleStatusJudged => {
                "an operation's start judges the payment one change behind (a good capture refused)"
            }
            Mutant::KeyReusedIsGatewayFault => {
                "the bank's 422 key-reused to a capture, void or refund is a failure (money moved)"
            }
            Mutant::UnmarkedNotFoundIsNothing => {
                "any 404 to a resolve says the key created nothing (an unmarked one too)"
            }
            Mutant::WebhookPostsUnkeyed => {
                "a webhook registration's Idempotency-Key is ignored (a retry makes a second endpoint)"
            }
        }
    }
}

impl fmt::Display for Mutant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for mutant in Mutant::ALL {
            assert_eq!(Mutant::parse(mutant.as_str()), Some(mutant));
        }
        assert_eq!(Mutant::parse("nothing"), None);
    }
}
