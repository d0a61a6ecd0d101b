-- Reconciliation asked the bank about every payment of the last 24 h, every
-- five minutes, in every replica: at 5 million payments a day that is more
-- bank lookups than the bank serves. Two changes make a pass proportional
-- to what can have changed:
--
-- 1. A receipt found matching the bank is remembered by the `updated_at` it
--    had when it matched. A later pass asks the bank again only when the
--    payment moved since (the two differ), when it never matched (a new
--    payment, a mismatch, an unverified one), or, in a periodic sweep, when
--    the bank can still move it without the gateway (authorized, captured).
--    Equality, not order: `updated_at` is written from more than one clock,
--    so "later than" could miss a move; "not the one that matched" cannot.
--    A table of its own rather than a column of `payments`: remembering
--    must not add row versions, dead tuples and index entries to the
--    payment path's table, nor take a payment's row lock. No foreign key,
--    for the same reason (its check would lock the payment's row); payments
--    are never deleted. Room on each page, so that remembering again is an
--    update in place (HOT: the one index is on the id, which never changes).
CREATE TABLE reconciled_payments (
    payment_id uuid PRIMARY KEY,
    matched_updated_at timestamptz NOT NULL
) WITH (fillfactor = 70);

-- So every change to what reconciliation compares must move `updated_at`.
-- The gateway's own writes always do; an UPDATE by hand (a fix in psql)
-- that forgets it would leave a receipt that says something new under the
-- version that matched, never asked about again. Such an UPDATE gets a new
-- `updated_at` here. The trigger already ran on every move (they all set
-- `status`); it now also runs when only a bank id or the amount is set.
CREATE OR REPLACE FUNCTION payments_check_status() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.status <> 'pending' THEN
            RAISE EXCEPTION 'a payment must be created pending, not %', NEW.status
                USING ERRCODE = 'check_violation', CONSTRAINT = 'payment_transitions';
        END IF;
        RETURN NEW;
    END IF;
    IF NEW.status <> OLD.status AND NOT EXISTS (
        SELECT 1 FROM payment_transitions
        WHERE from_status = OLD.status AND to_status = NEW.status
    ) THEN
        RAISE EXCEPTION 'payment status cannot move from % to %', OLD.status, NEW.status
            USING ERRCODE = 'check_violation', CONSTRAINT = 'payment_transitions';
    END IF;
    IF NEW.updated_at = OLD.updated_at
        AND (NEW.status, NEW.amount, NEW.bank_authorization_id, NEW.bank_capture_id,
             NEW.bank_void_id, NEW.bank_refund_id, NEW.authorization_expires_at)
        IS DISTINCT FROM
            (OLD.status, OLD.amount, OLD.bank_authorization_id, OLD.bank_capture_id,
             OLD.bank_void_id, OLD.bank_refund_id, OLD.authorization_expires_at)
    THEN
        NEW.updated_at := greatest(clock_timestamp(), OLD.updated_at + interval '1 microsecond');
    END IF;
    RETURN NEW;
END
$$;

DROP TRIGGER payments_status_on_update ON payments;
CREATE TRIGGER payments_status_on_update
    BEFORE UPDATE OF status, amount, bank_authorization_id, bank_capture_id, bank_void_id,
        bank_refund_id, authorization_expires_at ON payments
    FOR EACH ROW EXECUTE FUNCTION payments_check_status();

-- 2. One replica reconciles at a time. This one row is the turn: a replica
--    takes it when the next pass is due and nobody holds it, renews it as
--    it goes, and on finishing sets when the next pass is due. A holder
--    that dies lets it lapse. Two passes at once would be wasteful, never
--    wrong: every repair locks the payment and compares it again.
CREATE TABLE reconcile_turn (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    held_by uuid,
    held_until timestamptz NOT NULL DEFAULT '-infinity',
    next_pass_at timestamptz NOT NULL DEFAULT '-infinity',
    -- When the last sweep (of every payment the bank can still move) began.
    swept_at timestamptz NOT NULL DEFAULT '-infinity',
    -- The last whole pass, whichever replica ran it: every replica reports
    -- these as its metrics, so an alert does not depend on which one ran.
    passed_at timestamptz,
    mismatches bigint NOT NULL DEFAULT 0 CHECK (mismatches >= 0)
);
INSERT INTO reconcile_turn DEFAULT VALUES;
