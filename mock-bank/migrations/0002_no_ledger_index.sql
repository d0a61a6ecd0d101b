-- The index on journal_legs (ledger) served no query: the ledger check
-- (`GET /admin/ledger/verify`) reads every card leg, which is a scan of
-- the table, and nothing looks one ledger up. It cost two index entries on
-- a long text key for every movement, on the bank's hottest path.
DROP INDEX journal_legs_ledger;
