//! Webhooks: FicMart hears about every change of its payments.
//!
//! Every row of a payment's history becomes an event in the transaction
//! that writes the row (a trigger, `migrations/0007_webhooks.sql`), with a
//! delivery for each of the merchant's endpoints that wants it. Workers in
//! every replica send them, signed the Standard Webhooks way, retried on a
//! schedule of about three days.
//!
//! - [`signature`]: `webhook-signature`, signing and verifying.
//! - [`secret`]: endpoint secrets, derived from the gateway's webhook key.
//! - [`url`]: which URLs an endpoint may have and which addresses are called.
//! - [`delivery`]: the workers.
//! - [`view`]: events, endpoints and attempts as the API shows them.

pub mod delivery;
pub mod secret;
pub mod signature;
pub mod url;
pub mod view;

use std::time::Duration;

use secret::WebhookKey;

/// About three days: the first retry after 5 s, the last ~72 h after the
/// event, as a receiver down for a long weekend still gets everything.
/// The longest wait before a retry a schedule may hold (a week), and the
/// most retries: a wait past what the database's timestamps can add fails
/// every attempt's record, so the delivery went out again each lease,
/// forever.
pub const MAX_RETRY_WAIT_MS: u64 = 7 * 24 * 3_600_000;
pub const MAX_RETRIES: usize = 1_000;

pub const DEFAULT_SCHEDULE_MS: [u64; 9] = [
    5_000,      // 5 s
    300_000,    // 5 min
    1_800_000,  // 30 min
    7_200_000,  // 2 h
    18_000_000, // 5 h
    36_000_000, // 10 h
    50_400_000, // 14 h
    72_000_000, // 20 h
    72_000_000, // 20 h
];

#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// Without it, endpoints cannot be registered and nothing is sent
    /// (secrets derive from it); events are still recorded.
    pub key: Option<WebhookKey>,
    /// Plain http and private or loopback addresses, for tests and local use.
    pub allow_private_urls: bool,
    /// One attempt, connection to last byte read.
    pub timeout: Duration,
    /// The wait before each retry; after the last, the delivery has failed.
    pub schedule: Vec<Duration>,
    pub max_in_flight: usize,
    pub max_in_flight_per_endpoint: usize,
    pub max_in_flight_per_merchant: usize,
    /// How often an idle worker looks for due deliveries.
    pub poll_interval: Duration,
    /// While payments' writes queue for the database, the longest a worker
    /// waits between claims; zero never waits.
    pub max_yield: Duration,
}
