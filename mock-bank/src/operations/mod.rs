//! The bank's operations, each run inside a transaction its caller owns.
//!
//! Checks happen under a row lock (the account for an authorization, the
//! authorization for a capture or void, the capture for a refund), so
//! concurrent operations on one object serialise and exactly one wins.

mod accounts;
mod authorizations;
mod captures;
mod refunds;

pub use accounts::{Account, NewAccount, TEST_CARDS, get_account, open_account, seed_test_cards};
pub use authorizations::{
    Authorization, AuthorizationState, AuthorizeRequest, NewHold, authorize, expire_due,
    expire_now, get_authorization, void,
};
pub use captures::{Capture, Void, capture, get_capture, get_void};
pub use refunds::{Refund, get_refund, refund};
