-- `pending -> failed` (the event `authorize_failed`), as in the Rust table;
-- a failed payment, like a declined one, names no bank authorization.
INSERT INTO payment_transitions (from_status, to_status) VALUES ('pending', 'failed');

ALTER TABLE payments
    DROP CONSTRAINT payments_authorized_has_bank_id,
    ADD CONSTRAINT payments_authorized_has_bank_id CHECK (
        status IN ('pending', 'declined', 'failed') OR bank_authorization_id IS NOT NULL
    );
