-- The mock bank's schema: card accounts, the operations on them, a
-- double-entry journal that the balances project, and the idempotency
-- records stored in the same transaction as the money they describe.

CREATE TABLE accounts (
    card_number       TEXT PRIMARY KEY CHECK (card_number ~ '^[0-9]{13,19}$'),
    cvv               TEXT NOT NULL CHECK (cvv ~ '^[0-9]{3,4}$'),
    expiry_month      SMALLINT NOT NULL CHECK (expiry_month BETWEEN 1 AND 12),
    expiry_year       SMALLINT NOT NULL CHECK (expiry_year BETWEEN 1900 AND 9999),
    -- Projections of the journal, kept in step in the same transaction.
    balance           BIGINT NOT NULL,
    available_balance BIGINT NOT NULL CHECK (available_balance >= 0),
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (available_balance <= balance)
);

CREATE TYPE authorization_state AS ENUM ('active', 'captured', 'voided', 'expired');

CREATE TABLE authorizations (
    id          UUID PRIMARY KEY,
    card_number TEXT NOT NULL REFERENCES accounts (card_number),
    amount      BIGINT NOT NULL CHECK (amount > 0),
    state       authorization_state NOT NULL DEFAULT 'active',
    expires_at  TIMESTAMPTZ NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- The sweeper's query: active authorizations by expiry.
CREATE INDEX authorizations_active_expiry ON authorizations (expires_at) WHERE state = 'active';

CREATE TABLE captures (
    id               UUID PRIMARY KEY,
    authorization_id UUID NOT NULL UNIQUE REFERENCES authorizations (id),
    amount           BIGINT NOT NULL CHECK (amount > 0),
    captured_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE voids (
    id               UUID PRIMARY KEY,
    authorization_id UUID NOT NULL UNIQUE REFERENCES authorizations (id),
    voided_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE refunds (
    id          UUID PRIMARY KEY,
    capture_id  UUID NOT NULL UNIQUE REFERENCES captures (id),
    amount      BIGINT NOT NULL CHECK (amount > 0),
    refunded_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Double-entry journal. Each card has two ledger accounts, `available` and
-- `held` (balance = available + held); money leaves the bank through
-- `settlement` and enters it through `funding`. Every entry's legs sum to
-- zero, so the whole journal does too.
CREATE TABLE journal_entries (
    id          BIGSERIAL PRIMARY KEY,
    kind        TEXT NOT NULL CHECK (kind IN ('open', 'authorize', 'capture', 'void', 'expire', 'refund')),
    reference   UUID,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE journal_legs (
    entry_id    BIGINT NOT NULL REFERENCES journal_entries (id),
    -- 'card:<number>:available', 'card:<number>:held', 'bank:settlement', 'bank:funding'
    ledger      TEXT NOT NULL,
    amount      BIGINT NOT NULL CHECK (amount <> 0),
    PRIMARY KEY (entry_id, ledger)
);
CREATE INDEX journal_legs_ledger ON journal_legs (ledger);

CREATE FUNCTION journal_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the journal is append-only: % on % refused', TG_OP, TG_TABLE_NAME;
END;
$$;

CREATE TRIGGER journal_entries_append_only BEFORE UPDATE OR DELETE ON journal_entries
    FOR EACH ROW EXECUTE FUNCTION journal_is_append_only();
CREATE TRIGGER journal_entries_no_truncate BEFORE TRUNCATE ON journal_entries
    FOR EACH STATEMENT EXECUTE FUNCTION journal_is_append_only();
CREATE TRIGGER journal_legs_append_only BEFORE UPDATE OR DELETE ON journal_legs
    FOR EACH ROW EXECUTE FUNCTION journal_is_append_only();
CREATE TRIGGER journal_legs_no_truncate BEFORE TRUNCATE ON journal_legs
    FOR EACH STATEMENT EXECUTE FUNCTION journal_is_append_only();

-- An entry whose legs do not sum to zero is refused when its transaction
-- commits (deferred, so the legs can be inserted one by one).
CREATE FUNCTION journal_entry_balances() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT coalesce(sum(amount), 0) FROM journal_legs WHERE entry_id = NEW.entry_id) <> 0 THEN
        RAISE EXCEPTION 'journal entry % does not balance', NEW.entry_id;
    END IF;
    RETURN NULL;
END;
$$;

CREATE CONSTRAINT TRIGGER journal_legs_balance AFTER INSERT ON journal_legs
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION journal_entry_balances();

-- Stored responses: the idempotency key is scoped to the request path.
CREATE TABLE idempotency_records (
    path            TEXT NOT NULL,
    key             TEXT NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    request_hash    BYTEA NOT NULL,
    response_status SMALLINT NOT NULL,
    response_body   BYTEA NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (path, key)
);
