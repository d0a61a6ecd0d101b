-- The check 0015 added NOT VALID, validated: a scan of reconciled_payments
-- under a lock that lets its writes through (SHARE UPDATE EXCLUSIVE), so
-- a live database goes on reconciling while it runs.
ALTER TABLE reconciled_payments VALIDATE CONSTRAINT reconciled_payments_left_over_check;
