-- no-transaction
-- A receiver may answer any three-digit status: HTTP allows 100-999, and
-- some servers do answer 999. An attempt whose status the table refused was
-- never recorded, so its delivery was sent again every lease, for ever,
-- without counting an attempt or backing off. The new CHECK is added NOT
-- VALID and validated apart (validating does not block writes, where adding
-- a validated one would scan the table under an exclusive lock), outside a
-- transaction, and written so that a run cut short can be run again.
ALTER TABLE webhook_attempts DROP CONSTRAINT IF EXISTS webhook_attempts_response_status_check;
DO $$
BEGIN
    ALTER TABLE webhook_attempts ADD CONSTRAINT webhook_attempts_response_status_three_digits
        CHECK (response_status BETWEEN 100 AND 999) NOT VALID;
EXCEPTION WHEN duplicate_object THEN
    NULL;
END
$$;
ALTER TABLE webhook_attempts VALIDATE CONSTRAINT webhook_attempts_response_status_three_digits;
