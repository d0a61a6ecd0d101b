-- Crash safety: who holds a lease, so a stopping process can hand its work
-- back at once instead of making others wait for the lease to run out; and
-- the expiry sweeper's query.

ALTER TABLE operations ADD COLUMN leased_by uuid;
ALTER TABLE idempotency_keys ADD COLUMN leased_by uuid;

-- The sweeper: authorized payments by expiry.
CREATE INDEX payments_authorized_expiry_idx
    ON payments (authorization_expires_at) WHERE status = 'authorized';

-- Operations held by a process, for the release at shutdown.
CREATE INDEX operations_leased_by_idx ON operations (leased_by) WHERE status = 'pending';
