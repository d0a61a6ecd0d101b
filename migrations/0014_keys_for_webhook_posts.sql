-- The webhook-endpoint and event POSTs take an Idempotency-Key, as every
-- POST does. Their keys are answered in the transaction of the change and
-- name no payment. The answers of create and rotate_secret show the
-- endpoint's signing secret; they are stored without it, and the salt the
-- secret is made from (with WEBHOOK_SECRET_KEY, which the database never
-- sees) is kept beside them, so that a replay shows the same secret and a
-- dump of this table shows none.
ALTER TABLE idempotency_keys
    ADD COLUMN secret_salt bytea CHECK (length(secret_salt) = 16),
    ADD CONSTRAINT idempotency_keys_salt_only_answered
        CHECK (secret_salt IS NULL OR state = 'done');
