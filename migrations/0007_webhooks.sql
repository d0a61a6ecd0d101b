-- Webhooks: every change of a payment becomes an event in the transaction
-- that makes the change (a transactional outbox: no event is lost, and none
-- exists for a change that rolled back), and each event is delivered to
-- the merchant's endpoints by workers in every replica.

-- A UUID version 7 (time-ordered, like the ids the gateway makes in Rust):
-- events are made here, in a trigger, and list newest first by id.
CREATE FUNCTION gateway_uuid_v7() RETURNS uuid
LANGUAGE sql VOLATILE AS $$
    SELECT encode(
        set_bit(set_bit(
            overlay(uuid_send(gen_random_uuid())
                placing substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
                FROM 1 FOR 6),
            52, 1), 53, 1),
        'hex')::uuid
$$;

-- What each transition is called on the wire: exactly `EventType::of` in
-- Rust (a test compares them on a live database).
ALTER TABLE payment_transitions ADD COLUMN event_type text;
UPDATE payment_transitions t SET event_type = v.event_type
FROM (VALUES
    ('pending', 'authorized', 'payment.authorized'),
    ('pending', 'declined', 'payment.declined'),
    ('pending', 'failed', 'payment.failed'),
    ('authorized', 'expired', 'payment.expired'),
    ('authorized', 'capturing', 'payment.capture_requested'),
    ('authorized', 'voiding', 'payment.void_requested'),
    ('capturing', 'authorized', 'payment.capture_failed'),
    ('capturing', 'expired', 'payment.expired'),
    ('capturing', 'captured', 'payment.captured'),
    ('captured', 'refunding', 'payment.refund_requested'),
    ('voiding', 'authorized', 'payment.void_failed'),
    ('voiding', 'expired', 'payment.expired'),
    ('voiding', 'voided', 'payment.voided'),
    ('refunding', 'captured', 'payment.refund_failed'),
    ('refunding', 'refunded', 'payment.refunded')
) AS v(from_status, to_status, event_type)
WHERE t.from_status::text = v.from_status AND t.to_status::text = v.to_status;
ALTER TABLE payment_transitions ALTER COLUMN event_type SET NOT NULL;

-- A merchant's receivers. The signing secret is not stored: it is derived
-- from the gateway's webhook key and `secret_salt` (see
-- gateway/src/webhooks/secret.rs), so a copy of this table cannot sign.
CREATE TABLE webhook_endpoints (
    id uuid PRIMARY KEY,
    merchant_id uuid NOT NULL REFERENCES merchants (id),
    url text NOT NULL CHECK (length(url) BETWEEN 1 AND 2048),
    -- NULL: every event type.
    event_types text[] CHECK (event_types IS NULL OR cardinality(event_types) BETWEEN 1 AND 32),
    status text NOT NULL DEFAULT 'enabled' CHECK (status IN ('enabled', 'disabled', 'deleted')),
    -- Who disabled it: the merchant, or the gateway after a delivery failed
    -- for its whole retry schedule.
    disabled_reason text CHECK (disabled_reason IN ('merchant', 'failing')),
    secret_salt bytea NOT NULL CHECK (length(secret_salt) = 16),
    -- After a rotation, the old secret keeps signing beside the new one
    -- until this time.
    previous_secret_salt bytea CHECK (length(previous_secret_salt) = 16),
    previous_secret_expires_at timestamptz,
    last_success_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT webhook_endpoints_reason_iff_disabled CHECK (
        (status = 'disabled') = (disabled_reason IS NOT NULL)
    ),
    CONSTRAINT webhook_endpoints_previous_secret_whole CHECK (
        (previous_secret_salt IS NULL) = (previous_secret_expires_at IS NULL)
    )
);

CREATE INDEX webhook_endpoints_merchant_idx ON webhook_endpoints (merchant_id, id)
    WHERE status <> 'deleted';

-- The outbox, and the feed behind `GET /v1/events`. One row per history row
-- of a payment (and one per operation flagged for a person), with the
-- payment's changing columns as they stood right after: the snapshot.
CREATE TABLE events (
    id uuid PRIMARY KEY,
    merchant_id uuid NOT NULL REFERENCES merchants (id),
    payment_id uuid NOT NULL REFERENCES payments (id),
    -- 1, 2, 3, ... per payment, in the order its changes committed.
    sequence integer NOT NULL CHECK (sequence > 0),
    type text NOT NULL,
    -- The last history row the snapshot includes: for a transition, its own.
    history_id bigint NOT NULL REFERENCES payment_events (id),
    -- For `payment.flagged`: the operation a person must look at.
    operation_id uuid REFERENCES operations (id),
    status payment_status NOT NULL,
    bank_authorization_id text,
    bank_capture_id text,
    bank_void_id text,
    bank_refund_id text,
    authorization_expires_at timestamptz,
    failure_code text,
    payment_updated_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL,
    UNIQUE (payment_id, sequence),
    CONSTRAINT events_flagged_names_operation CHECK (
        (type = 'payment.flagged') = (operation_id IS NOT NULL)
    )
);

CREATE UNIQUE INDEX events_one_per_transition_idx ON events (history_id)
    WHERE operation_id IS NULL;
CREATE UNIQUE INDEX events_one_flag_per_operation_idx ON events (operation_id);
CREATE INDEX events_merchant_idx ON events (merchant_id, id DESC);
CREATE INDEX events_merchant_type_idx ON events (merchant_id, type, id DESC);

-- One row per event and endpoint: written with the event, so an endpoint
-- hears of every change made while it is enabled.
CREATE TABLE webhook_deliveries (
    id uuid PRIMARY KEY,
    event_id uuid NOT NULL REFERENCES events (id),
    endpoint_id uuid NOT NULL REFERENCES webhook_endpoints (id),
    status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    -- Attempts made, ever; the next one is numbered attempts + 1.
    attempts integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    -- Failed attempts since the last (re)send: the position in the retry
    -- schedule. A resend starts it again.
    schedule_step integer NOT NULL DEFAULT 0 CHECK (schedule_step >= 0),
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    -- Who is attempting it until when; a new token per claim fences off a
    -- worker whose lease ran out.
    lease_until timestamptz NOT NULL DEFAULT '-infinity',
    lease_token uuid,
    created_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    UNIQUE (event_id, endpoint_id),
    CONSTRAINT webhook_deliveries_finished_iff_done CHECK (
        (status = 'pending') = (finished_at IS NULL)
    )
);

-- The workers' queue, per endpoint so that each gets its share.
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (endpoint_id, next_attempt_at)
    WHERE status = 'pending';

-- Every attempt, kept: what the receiver answered, or why there was no answer.
CREATE TABLE webhook_attempts (
    delivery_id uuid NOT NULL REFERENCES webhook_deliveries (id),
    attempt integer NOT NULL CHECK (attempt > 0),
    started_at timestamptz NOT NULL,
    latency_ms integer NOT NULL CHECK (latency_ms >= 0),
    response_status smallint CHECK (response_status BETWEEN 100 AND 599),
    -- The start of the receiver's answer, at most 1 KiB.
    response_body text CHECK (length(response_body) <= 1024),
    error text CHECK (length(error) <= 1024),
    PRIMARY KEY (delivery_id, attempt),
    CONSTRAINT webhook_attempts_answer_or_error CHECK (
        (response_status IS NULL) <> (error IS NULL)
    )
);

-- Every history row is published, in its transaction, with the payment as
-- the statement that wrote the row left it. A statement that moved the
-- payment twice would publish the second state twice: refused, here.
CREATE FUNCTION payment_events_publish() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    p payments;
    event_id uuid := gateway_uuid_v7();
    event_type text;
BEGIN
    SELECT * INTO STRICT p FROM payments WHERE id = NEW.payment_id;
    IF p.status <> NEW.to_status THEN
        RAISE EXCEPTION 'payment % is %, but its history row says %', p.id, p.status, NEW.to_status
            USING ERRCODE = 'integrity_constraint_violation', CONSTRAINT = 'events_snapshot';
    END IF;
    IF NEW.from_status IS NULL THEN
        event_type := 'payment.created';
    ELSE
        SELECT t.event_type INTO STRICT event_type FROM payment_transitions t
        WHERE t.from_status = NEW.from_status AND t.to_status = NEW.to_status;
    END IF;
    INSERT INTO events (id, merchant_id, payment_id, sequence, type, history_id, status,
        bank_authorization_id, bank_capture_id, bank_void_id, bank_refund_id,
        authorization_expires_at, failure_code, payment_updated_at, created_at)
    SELECT event_id, p.merchant_id, p.id,
        coalesce((SELECT max(e.sequence) FROM events e WHERE e.payment_id = p.id), 0) + 1,
        event_type, NEW.id, p.status, p.bank_authorization_id, p.bank_capture_id,
        p.bank_void_id, p.bank_refund_id, p.authorization_expires_at, p.failure_code,
        p.updated_at, NEW.at;
    PERFORM webhook_fan_out(event_id, p.merchant_id, event_type);
    RETURN NULL;
END
$$;

-- One delivery per enabled endpoint of the merchant that wants the type.
CREATE FUNCTION webhook_fan_out(event uuid, merchant uuid, kind text) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO webhook_deliveries (id, event_id, endpoint_id)
    SELECT gateway_uuid_v7(), event, w.id FROM webhook_endpoints w
    WHERE w.merchant_id = merchant AND w.status = 'enabled'
      AND (w.event_types IS NULL OR kind = ANY (w.event_types))
$$;

CREATE TRIGGER payment_events_publish
    AFTER INSERT ON payment_events
    FOR EACH ROW EXECUTE FUNCTION payment_events_publish();

-- Events are evidence, like the history they publish.
CREATE TRIGGER events_no_update_or_delete
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION payment_events_append_only();

CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION payment_events_append_only();

-- Payments made before this migration: their history, published once, so
-- that `GET /v1/events` covers every payment. Nothing is delivered for
-- them (no endpoint exists yet).
INSERT INTO events (id, merchant_id, payment_id, sequence, type, history_id, status,
    bank_authorization_id, bank_capture_id, bank_void_id, bank_refund_id,
    authorization_expires_at, failure_code, payment_updated_at, created_at)
SELECT gateway_uuid_v7(), p.merchant_id, p.id,
    row_number() OVER (PARTITION BY e.payment_id ORDER BY e.id),
    CASE WHEN e.from_status IS NULL THEN 'payment.created' ELSE t.event_type END,
    e.id, e.to_status,
    -- Only the last row's snapshot is known; earlier ones keep the ids the
    -- payment had then, which the history does not record: left NULL.
    CASE WHEN e.id = last.id THEN p.bank_authorization_id END,
    CASE WHEN e.id = last.id THEN p.bank_capture_id END,
    CASE WHEN e.id = last.id THEN p.bank_void_id END,
    CASE WHEN e.id = last.id THEN p.bank_refund_id END,
    CASE WHEN e.id = last.id THEN p.authorization_expires_at END,
    CASE WHEN e.id = last.id THEN p.failure_code END,
    e.at, e.at
FROM payment_events e
JOIN payments p ON p.id = e.payment_id
LEFT JOIN payment_transitions t ON t.from_status = e.from_status AND t.to_status = e.to_status
JOIN LATERAL (SELECT max(id) AS id FROM payment_events l WHERE l.payment_id = e.payment_id) last ON true;
