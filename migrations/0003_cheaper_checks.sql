-- The same rules as the CHECK constraints of 0001, in a form Postgres
-- evaluates much faster. Its regex engine expands a bounded repetition such
-- as `{1,255}` into that many states: `key ~ '^[ -~]{1,255}$'` cost about
-- 55 µs per row here, on every authorization. A length test plus "no
-- character outside the class" accepts exactly the same strings in ~1 µs.

ALTER TABLE idempotency_keys
    DROP CONSTRAINT idempotency_keys_key_check,
    ADD CONSTRAINT idempotency_keys_key_check
        CHECK (length(key) BETWEEN 1 AND 255 AND key !~ '[^ -~]');

ALTER TABLE payments
    DROP CONSTRAINT payments_order_id_check,
    ADD CONSTRAINT payments_order_id_check
        CHECK (length(order_id) BETWEEN 1 AND 64 AND order_id !~ '[^A-Za-z0-9_-]'),
    DROP CONSTRAINT payments_customer_id_check,
    ADD CONSTRAINT payments_customer_id_check
        CHECK (length(customer_id) BETWEEN 1 AND 64 AND customer_id !~ '[^A-Za-z0-9_-]'),
    DROP CONSTRAINT payments_card_last4_check,
    ADD CONSTRAINT payments_card_last4_check
        CHECK (length(card_last4) = 4 AND card_last4 !~ '[^0-9]');
