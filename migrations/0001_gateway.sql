-- The gateway's schema.
--
-- No column holds a card number or a CVV: the gateway keeps only the brand,
-- the last four digits and the expiry, and passes the rest straight to the
-- bank. The state machine is enforced here as well as in Rust
-- (gateway/src/domain/status.rs), so that a bug or a hand-written UPDATE
-- cannot put a payment where the code says it cannot go; a unit test reads
-- this file and checks that the enum and `payment_transitions` below equal
-- the Rust table.

-- Exactly the variants of `PaymentStatus`, in its declaration order.
CREATE TYPE payment_status AS ENUM (
    'pending',
    'authorized',
    'declined',
    'expired',
    'capturing',
    'captured',
    'voiding',
    'voided',
    'refunding',
    'refunded'
);

CREATE TABLE merchants (
    id uuid PRIMARY KEY,
    name text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 200),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id uuid PRIMARY KEY,
    merchant_id uuid NOT NULL REFERENCES merchants (id),
    -- SHA-256 of the key: a leaked table must not be a list of working keys.
    -- The length check refuses a plaintext key stored here by mistake.
    key_hash bytea NOT NULL UNIQUE CHECK (length(key_hash) = 32),
    -- The key's first characters, kept so an operator can tell keys apart
    -- in a list without holding the key.
    prefix text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);

CREATE INDEX api_keys_merchant_id_idx ON api_keys (merchant_id);

CREATE TABLE payments (
    -- The bare UUID v7 of `pay_<uuid>`; the prefix exists only on the wire.
    id uuid PRIMARY KEY,
    merchant_id uuid NOT NULL REFERENCES merchants (id),
    order_id text NOT NULL CHECK (order_id ~ '^[A-Za-z0-9_-]{1,64}$'),
    customer_id text NOT NULL CHECK (customer_id ~ '^[A-Za-z0-9_-]{1,64}$'),
    -- Integer cents, with the same ceiling as `MAX_AMOUNT_CENTS`.
    amount bigint NOT NULL CHECK (amount > 0 AND amount <= 100000000),
    currency text NOT NULL CHECK (currency = 'USD'),
    status payment_status NOT NULL,
    card_brand text NOT NULL
        CHECK (card_brand IN ('visa', 'mastercard', 'amex', 'discover', 'unknown')),
    card_last4 text NOT NULL CHECK (card_last4 ~ '^[0-9]{4}$'),
    card_exp_month smallint NOT NULL CHECK (card_exp_month BETWEEN 1 AND 12),
    card_exp_year smallint NOT NULL CHECK (card_exp_year BETWEEN 2000 AND 2099),
    -- The bank's ids, as the bank writes them (`auth_…`, `cap_…`, …).
    bank_authorization_id text,
    bank_capture_id text,
    bank_void_id text,
    bank_refund_id text,
    authorization_expires_at timestamptz,
    failure_code text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    -- A status that says the bank did something must name what it did, or
    -- a later capture, void or refund would have nothing to send the bank.
    CONSTRAINT payments_authorized_has_bank_id CHECK (
        status IN ('pending', 'declined') OR bank_authorization_id IS NOT NULL
    ),
    CONSTRAINT payments_captured_has_bank_id CHECK (
        status NOT IN ('captured', 'refunding', 'refunded') OR bank_capture_id IS NOT NULL
    ),
    CONSTRAINT payments_voided_has_bank_id CHECK (
        status <> 'voided' OR bank_void_id IS NOT NULL
    ),
    CONSTRAINT payments_refunded_has_bank_id CHECK (
        status <> 'refunded' OR bank_refund_id IS NOT NULL
    )
);

-- Each serves one listing, newest first, with `(created_at, id)` as the
-- keyset cursor behind `starting_after`.
CREATE INDEX payments_merchant_order_idx
    ON payments (merchant_id, order_id, created_at DESC, id DESC);
CREATE INDEX payments_merchant_customer_idx
    ON payments (merchant_id, customer_id, created_at DESC, id DESC);
CREATE INDEX payments_merchant_created_idx
    ON payments (merchant_id, created_at DESC, id DESC);

-- The allowed `(from, to)` pairs: exactly `allowed_transitions()` in Rust,
-- in its order.
CREATE TABLE payment_transitions (
    from_status payment_status NOT NULL,
    to_status payment_status NOT NULL,
    PRIMARY KEY (from_status, to_status)
);

INSERT INTO payment_transitions (from_status, to_status) VALUES
    ('pending', 'authorized'),
    ('pending', 'declined'),
    ('authorized', 'expired'),
    ('authorized', 'capturing'),
    ('authorized', 'voiding'),
    ('capturing', 'authorized'),
    ('capturing', 'expired'),
    ('capturing', 'captured'),
    ('captured', 'refunding'),
    ('voiding', 'authorized'),
    ('voiding', 'expired'),
    ('voiding', 'voided'),
    ('refunding', 'captured'),
    ('refunding', 'refunded');

-- A payment is born pending (the intent is recorded before the bank is
-- called) and then only moves along `payment_transitions`. Rewriting the
-- same status is allowed so that an UPDATE of other columns that also sets
-- `status` need not special-case it. The error names the constraint
-- `payment_transitions`, which the application can match on.
CREATE FUNCTION payments_check_status() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.status <> 'pending' THEN
            RAISE EXCEPTION 'a payment must be created pending, not %', NEW.status
                USING ERRCODE = 'check_violation', CONSTRAINT = 'payment_transitions';
        END IF;
    ELSIF NEW.status <> OLD.status AND NOT EXISTS (
        SELECT 1 FROM payment_transitions
        WHERE from_status = OLD.status AND to_status = NEW.status
    ) THEN
        RAISE EXCEPTION 'payment status cannot move from % to %', OLD.status, NEW.status
            USING ERRCODE = 'check_violation', CONSTRAINT = 'payment_transitions';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER payments_status_on_insert
    BEFORE INSERT ON payments
    FOR EACH ROW EXECUTE FUNCTION payments_check_status();

CREATE TRIGGER payments_status_on_update
    BEFORE UPDATE OF status ON payments
    FOR EACH ROW EXECUTE FUNCTION payments_check_status();

-- The receipt's `history`: one row per status a payment entered.
CREATE TABLE payment_events (
    id bigserial PRIMARY KEY,
    payment_id uuid NOT NULL REFERENCES payments (id),
    -- NULL only for the first row, the creation, which enters `pending`;
    -- nothing else enters `pending`, so the two go together.
    from_status payment_status,
    to_status payment_status NOT NULL,
    at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT payment_events_first_is_pending CHECK (
        (from_status IS NULL) = (to_status = 'pending')
    )
);

CREATE INDEX payment_events_payment_idx ON payment_events (payment_id, id);
CREATE UNIQUE INDEX payment_events_one_creation_idx
    ON payment_events (payment_id) WHERE from_status IS NULL;

CREATE FUNCTION payment_events_check_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.from_status IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM payment_transitions
        WHERE from_status = NEW.from_status AND to_status = NEW.to_status
    ) THEN
        RAISE EXCEPTION 'payment history cannot record % to %', NEW.from_status, NEW.to_status
            USING ERRCODE = 'check_violation', CONSTRAINT = 'payment_transitions';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER payment_events_check_insert
    BEFORE INSERT ON payment_events
    FOR EACH ROW EXECUTE FUNCTION payment_events_check_insert();

-- History is evidence: once written it is never changed or removed.
CREATE FUNCTION payment_events_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'payment_events is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER payment_events_no_update_or_delete
    BEFORE UPDATE OR DELETE ON payment_events
    FOR EACH ROW EXECUTE FUNCTION payment_events_append_only();

CREATE TRIGGER payment_events_no_truncate
    BEFORE TRUNCATE ON payment_events
    FOR EACH STATEMENT EXECUTE FUNCTION payment_events_append_only();

-- One row per call the gateway makes (or will make) to the bank. The row is
-- written before the call, with the bank idempotency key the call will use
-- on every retry and after every crash, so a lost answer is resumed and
-- never becomes a second charge.
CREATE TABLE operations (
    id uuid PRIMARY KEY,
    payment_id uuid NOT NULL REFERENCES payments (id),
    kind text NOT NULL CHECK (kind IN ('authorize', 'capture', 'void', 'refund')),
    bank_idempotency_key text NOT NULL UNIQUE,
    status text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'succeeded', 'failed')),
    attempts integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    -- Who works on it until when; no default, so that a writer must decide.
    lease_until timestamptz NOT NULL,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    CONSTRAINT operations_finished_iff_settled CHECK (
        (status = 'pending') = (finished_at IS NULL)
    )
);

-- At most one operation in flight per payment: of a capture and a void sent
-- at once, the second INSERT fails here, whatever the two requests saw.
CREATE UNIQUE INDEX operations_one_pending_per_payment
    ON operations (payment_id) WHERE status = 'pending';

-- A payment is authorized once; captures, voids and refunds may be retried
-- as new operations after a definitive failure.
CREATE UNIQUE INDEX operations_one_authorize_per_payment
    ON operations (payment_id) WHERE kind = 'authorize';

-- The recovery worker's queue.
CREATE INDEX operations_due_idx
    ON operations (next_attempt_at) WHERE status = 'pending';

-- The client's Idempotency-Key, scoped to the merchant, with the response
-- stored byte for byte so that a replay is identical.
CREATE TABLE idempotency_keys (
    merchant_id uuid NOT NULL REFERENCES merchants (id),
    key text NOT NULL CHECK (key ~ '^[ -~]{1,255}$'),
    -- Hash of method, path and body: the same key with another request is
    -- refused (422) rather than answered with the first request's response.
    request_hash bytea NOT NULL,
    state text NOT NULL CHECK (state IN ('in_progress', 'done')),
    lease_until timestamptz,
    response_status smallint CHECK (response_status BETWEEN 100 AND 599),
    response_body bytea,
    payment_id uuid REFERENCES payments (id),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (merchant_id, key),
    CONSTRAINT idempotency_keys_done_has_response CHECK (
        state <> 'done' OR (response_status IS NOT NULL AND response_body IS NOT NULL)
    )
);

-- The purge of keys older than the retention period.
CREATE INDEX idempotency_keys_created_at_idx ON idempotency_keys (created_at);
