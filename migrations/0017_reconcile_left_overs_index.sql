-- no-transaction
-- The index that finds the few receipts 0015 marks without reading the many
-- that matched, built CONCURRENTLY (alone: Postgres runs the statements of
-- one query in one transaction, where CONCURRENTLY is refused).
CREATE INDEX CONCURRENTLY IF NOT EXISTS reconciled_payments_left_over_idx
    ON reconciled_payments (payment_id) WHERE left_over IS NOT NULL;
