-- no-transaction
-- An operation's bank idempotency key is `gw_<kind>_<id>`
-- (`operations::new_identity`, and the loader), so it is unique because the
-- id is. Its own unique index cost an entry of ~60 bytes on every insert and
-- on every update of an operation (none of them is HOT), and after sustained
-- traffic it was the most bloated index of all: 441 bytes per payment, 2.9x
-- its compact size (docs/scaling.md). A CHECK that the key is made of the
-- operation's kind and id keeps the guarantee (no two operations can share a
-- key, since they cannot share an id) and states more: the key can be
-- nothing else. Added NOT VALID and validated apart, because validating
-- does not block writes where adding would, and written so that a run cut
-- short can be run again.
DO $$
BEGIN
    ALTER TABLE operations ADD CONSTRAINT operations_bank_key_from_id
        CHECK (bank_idempotency_key = 'gw_' || kind || '_' || id::text) NOT VALID;
EXCEPTION WHEN duplicate_object THEN
    NULL;
END
$$;
ALTER TABLE operations VALIDATE CONSTRAINT operations_bank_key_from_id;
ALTER TABLE operations DROP CONSTRAINT IF EXISTS operations_bank_idempotency_key_key;
