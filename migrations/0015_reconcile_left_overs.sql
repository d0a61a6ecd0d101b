-- Reconciliation reads the payments of its window (the last 24 hours), so
-- two kinds of receipt escaped it once a day old:
--
-- 1. One a pass found in disagreement with the bank: it left the window
--    after a day, and the page for it resolved by itself, fixed or not.
-- 2. One the gateway moved after its first day (a capture on day three of
--    a week-long authorization, a refund a week later): never compared
--    with the bank at all.
--
-- Both are now marked here, and every pass asks about the marked ones,
-- however old, until they match (a match clears the mark).
-- `matched_updated_at` is NULL for a receipt that never matched.
--
-- The column is added without scanning the table: its check is validated
-- by 0016, and its index built by 0017, without stopping writes.
ALTER TABLE reconciled_payments
    ALTER COLUMN matched_updated_at DROP NOT NULL,
    ADD COLUMN left_over text,
    ADD CONSTRAINT reconciled_payments_left_over_check
        CHECK (left_over IN ('mismatch', 'moved_late')) NOT VALID;

-- A move of a payment older than the window marks it. The trigger's WHEN
-- is evaluated without calling the function, so the payment path pays
-- nothing for the young payments that make nearly all of its moves. The
-- server's window is a day (`reconcile::DEFAULT_WINDOW`); 23 hours leaves
-- an hour for the passes between a move and the payment leaving it.
CREATE FUNCTION payments_mark_late_move() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO reconciled_payments (payment_id, left_over)
    VALUES (NEW.id, 'moved_late')
    ON CONFLICT (payment_id) DO UPDATE SET left_over = 'moved_late'
    WHERE reconciled_payments.left_over IS NULL;
    RETURN NULL;
END
$$;

CREATE TRIGGER payments_late_move
    AFTER UPDATE OF status ON payments
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status AND OLD.created_at < now() - interval '23 hours')
    EXECUTE FUNCTION payments_mark_late_move();
