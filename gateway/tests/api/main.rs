//! The gateway's integration tests, one binary (one link step) for all.

mod bank_client;
