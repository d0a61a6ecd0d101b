-- A receipt a pass left over (a mismatch, or one whose bank side could not
-- be established) is remembered as such, however old it is: every later
-- pass asks about it again until it matches, and it counts toward the
-- fleet's mismatches all that time. Before, a pass read only the last 24
-- hours, so a mismatched payment left the window after a day, and the
-- page for it resolved by itself, fixed or not.
--
-- `matched_updated_at` is NULL for a receipt that never matched.
ALTER TABLE reconciled_payments
    ALTER COLUMN matched_updated_at DROP NOT NULL,
    ADD COLUMN left_over text CHECK (left_over IN ('mismatch', 'unverified'));

-- The few left over, found without reading the many that matched.
CREATE INDEX reconciled_payments_left_over_idx
    ON reconciled_payments (payment_id) WHERE left_over IS NOT NULL;
