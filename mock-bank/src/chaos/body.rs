//! A response body that arrives slowly, or not entirely: what a congested
//! or broken network does to an answer the bank has already committed.
//!
//! The body always announces its full length (`Content-Length`), so the
//! client knows what it should get:
//! - trickled, it sends every byte, a few at a time, with async sleeps in
//!   between (a worker thread is never blocked);
//! - cut short, it sends a prefix and then fails. actix-web answers a body
//!   error by dropping the connection, so the client sees the connection
//!   close before `Content-Length` bytes arrived: an incomplete body, not a
//!   parseable answer.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::{BodySize, MessageBody};
use actix_web::web::Bytes;
use tokio::time::Sleep;

/// Bytes sent per tick when trickling: a few, so that even a short JSON
/// body arrives in many pieces.
pub const TRICKLE_CHUNK_BYTES: usize = 4;

/// Why a cut-short body stopped; actix-web logs it and drops the connection.
#[derive(Debug, thiserror::Error)]
#[error("chaos: response body cut short after {sent_bytes} of {total_bytes} bytes")]
pub struct CutShort {
    sent_bytes: usize,
    total_bytes: usize,
}

/// Where a cut-short body is between its prefix and its error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Every byte is sent, then the body ends normally.
    Complete,
    /// The prefix is sent, then the body fails.
    CutShort { flushed: bool },
}

pub struct FaultyBody {
    bytes: Bytes,
    sent_bytes: usize,
    /// How many bytes are sent in all: the whole body, or a prefix.
    end_bytes: usize,
    /// The sleep before each chunk; `None` sends everything at once.
    tick: Option<Duration>,
    sleep: Option<Pin<Box<Sleep>>>,
    ending: Ending,
}

impl FaultyBody {
    /// `trickle`: spread the whole body over this long. `cut_short`: send
    /// only the first half, then fail.
    pub fn new(bytes: Bytes, trickle: Option<Duration>, cut_short: bool) -> Self {
        let total_bytes = bytes.len();
        // Half, rounded down: at least one byte is missing from any body.
        let end_bytes = if cut_short {
            total_bytes / 2
        } else {
            total_bytes
        };
        let tick = trickle.filter(|t| !t.is_zero()).map(|spread| {
            let ticks = total_bytes.div_ceil(TRICKLE_CHUNK_BYTES).max(1);
            spread / u32::try_from(ticks).unwrap_or(u32::MAX)
        });
        Self {
            bytes,
            sent_bytes: 0,
            end_bytes,
            tick,
            sleep: None,
            ending: if cut_short {
                Ending::CutShort { flushed: false }
            } else {
                Ending::Complete
            },
        }
    }
}

impl MessageBody for FaultyBody {
    type Error = CutShort;

    fn size(&self) -> BodySize {
        // The full length, even when cut short: the client must expect
        // bytes that never come.
        BodySize::Sized(self.bytes.len() as u64)
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = self.get_mut();
        if this.sent_bytes < this.end_bytes {
            let Some(tick) = this.tick else {
                let rest = this.bytes.slice(this.sent_bytes..this.end_bytes);
                this.sent_bytes = this.end_bytes;
                return Poll::Ready(Some(Ok(rest)));
            };
            let sleep = this
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(tick)));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.sleep = None;
            let next = (this.sent_bytes + TRICKLE_CHUNK_BYTES).min(this.end_bytes);
            let chunk = this.bytes.slice(this.sent_bytes..next);
            this.sent_bytes = next;
            return Poll::Ready(Some(Ok(chunk)));
        }
        match this.ending {
            Ending::Complete => Poll::Ready(None),
            Ending::CutShort { flushed: false } => {
                // actix-web writes buffered bytes to the socket only when
                // the body is pending; failing right after the prefix would
                // drop the connection with the prefix (and the head) still
                // in its buffer. So pause once, asking to be polled again.
                this.ending = Ending::CutShort { flushed: true };
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Ending::CutShort { flushed: true } => Poll::Ready(Some(Err(CutShort {
                sent_bytes: this.sent_bytes,
                total_bytes: this.bytes.len(),
            }))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Polls the body to its end: the bytes, and whether it failed.
    async fn drain(body: FaultyBody) -> (Vec<u8>, bool) {
        let mut body = Box::pin(body);
        let mut bytes = Vec::new();
        loop {
            match std::future::poll_fn(|cx| body.as_mut().poll_next(cx)).await {
                Some(Ok(chunk)) => bytes.extend_from_slice(&chunk),
                Some(Err(_)) => return (bytes, true),
                None => return (bytes, false),
            }
        }
    }

    #[tokio::test]
    async fn a_trickled_body_is_whole_and_announces_its_length() {
        let text = Bytes::from_static(br#"{"status":"approved","amount":100}"#);
        let body = FaultyBody::new(text.clone(), Some(Duration::from_millis(20)), false);
        assert_eq!(body.size(), BodySize::Sized(text.len() as u64));
        assert_eq!(drain(body).await, (text.to_vec(), false));
    }

    #[tokio::test]
    async fn a_cut_body_sends_half_announces_all_and_fails() {
        let text = Bytes::from_static(br#"{"status":"approved"}"#);
        let body = FaultyBody::new(text.clone(), None, true);
        assert_eq!(body.size(), BodySize::Sized(text.len() as u64));
        let (sent, failed) = drain(body).await;
        assert!(failed);
        assert_eq!(sent, text[..text.len() / 2]);
    }

    #[tokio::test]
    async fn a_trickled_cut_body_sends_the_same_prefix() {
        let text = Bytes::from_static(br#"{"status":"approved"}"#);
        let body = FaultyBody::new(text.clone(), Some(Duration::from_millis(10)), true);
        let (sent, failed) = drain(body).await;
        assert!(failed);
        assert_eq!(sent, text[..text.len() / 2]);
    }
}
