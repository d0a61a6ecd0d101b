-- `failed`: an authorization that did not happen, and not because of the
-- card (a decline is `declined`): the gateway gave up on it after its grace
-- period with the bank holding nothing, or the bank refused the gateway's
-- request as malformed. Alone in its migration: a new enum value cannot be
-- used in the transaction that adds it.
ALTER TYPE payment_status ADD VALUE 'failed' AFTER 'declined';
