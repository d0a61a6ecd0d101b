-- When a delivery was last sent again on request (`POST /v1/events/{id}/resend`,
-- `gateway webhooks resend`). An attempt in flight at that moment that then
-- fails must not put the delivery back on its old schedule (hours away, or
-- failed and its endpoint disabled): the resend asked for it now.
ALTER TABLE webhook_deliveries ADD COLUMN resent_at timestamptz;
