-- no-transaction
-- Reconciliation pages through every merchant's payments of the last 24 h in
-- (created_at, id) order, and no index led with created_at: on 5 million
-- payments each page of 200 was a sequential scan of the whole table
-- (322 ms; a day's 13,600 payments took 68 of them, in every replica, every
-- five minutes). Built CONCURRENTLY, outside a transaction, so that adding
-- it to a live database does not stop the payments' writes while it builds.
CREATE INDEX CONCURRENTLY IF NOT EXISTS payments_created_idx ON payments (created_at, id);
