-- A client's key points at the operation it created, and its answer, once
-- stored, never changes.
--
-- Before this, a retried key resumed whatever operation its payment had in
-- flight (possibly another key's: an authorization key drove a capture) and
-- was answered from the payment's current status (possibly another key's
-- outcome). Now a key is written in the same transaction as its operation
-- (or as its final answer, for a refusal that calls no bank), a retry
-- resumes only that operation, and the answer is stored once, in the
-- transaction that settles the operation, whoever settles it.

ALTER TABLE idempotency_keys
    ADD COLUMN operation_id uuid REFERENCES operations (id),
    -- When the answer was stored: retention counts from here, not from the
    -- first request (a key answered a day after it was made must still
    -- replay for the whole retention period).
    ADD COLUMN answered_at timestamptz;

-- A key and the operation it created were written in one transaction, so
-- they share its `now()`.
UPDATE idempotency_keys k SET operation_id = o.id
FROM operations o
WHERE o.payment_id = k.payment_id AND o.created_at = k.created_at;

-- The closest known time for keys answered before this column existed.
UPDATE idempotency_keys SET answered_at = created_at WHERE state = 'done';

ALTER TABLE idempotency_keys
    ADD CONSTRAINT idempotency_keys_answered_when_done
        CHECK ((state = 'done') = (answered_at IS NOT NULL)),
    -- A key still in progress is always resuming an operation of its own.
    ADD CONSTRAINT idempotency_keys_in_progress_has_operation
        CHECK (state = 'done' OR (operation_id IS NOT NULL AND payment_id IS NOT NULL));

-- The settlement finds the key to answer by its operation, and a late
-- request finds the answer the same way; one key per operation.
CREATE UNIQUE INDEX idempotency_keys_operation_idx ON idempotency_keys (operation_id);

-- The purge, by when a key was answered.
DROP INDEX idempotency_keys_created_at_idx;
CREATE INDEX idempotency_keys_answered_at_idx
    ON idempotency_keys (answered_at) WHERE state = 'done';

-- What a key was for, and its answer once given, are written once. The
-- condition is checked before the function is called, so the usual update
-- (an in-progress key taking a lease or its answer) costs no PL/pgSQL.
CREATE FUNCTION idempotency_keys_write_once() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'idempotency key %: an answer, once stored, and what a key is for never change', OLD.key
        USING ERRCODE = 'integrity_constraint_violation', CONSTRAINT = 'idempotency_keys_write_once';
END
$$;

CREATE TRIGGER idempotency_keys_write_once
    BEFORE UPDATE ON idempotency_keys
    FOR EACH ROW
    WHEN (OLD.state = 'done'
          OR NEW.request_hash IS DISTINCT FROM OLD.request_hash
          OR NEW.operation_id IS DISTINCT FROM OLD.operation_id
          OR NEW.payment_id IS DISTINCT FROM OLD.payment_id)
    EXECUTE FUNCTION idempotency_keys_write_once();
