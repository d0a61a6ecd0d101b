-- A receiver may answer any three-digit status: HTTP allows 100-999, and
-- some servers do answer 999. An attempt whose status the table refused was
-- never recorded, so its delivery was sent again every lease, for ever,
-- without counting an attempt or backing off.
ALTER TABLE webhook_attempts
    DROP CONSTRAINT webhook_attempts_response_status_check,
    ADD CONSTRAINT webhook_attempts_response_status_check
        CHECK (response_status BETWEEN 100 AND 999);
