//! The merchants' webhook receiver for a run, with chaos of its own: it
//! fails with 500s, answers too late, hangs up without answering, takes its
//! time, and sometimes answers 200 and processes the delivery twice (as a
//! receiver whose own write raced its retry would). It records every
//! request it gets, for the webhook invariants.
//!
//! Raw HTTP/1.1 over TCP rather than a framework: a hang-up must be a real
//! one, at any moment the chaos picks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The request head and body the receiver reads at most.
const MAX_HEAD_BYTES: usize = 16 * 1024;
const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Longer than the simulation's webhook timeout: the gateway gives up.
pub const TOO_SLOW: Duration = Duration::from_millis(1_500);
const SLOW: Duration = Duration::from_millis(200);

/// What the receiver did with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reaction {
    /// 200.
    Ok,
    /// 200, and the delivery processed twice.
    OkTwice,
    /// 200 after a while, within the gateway's timeout.
    SlowOk,
    /// 500.
    Failed,
    /// Hung up without an answer.
    HungUp,
    /// 200 after the gateway's timeout: it has given up by then.
    TooSlow,
}

impl Reaction {
    /// Whether the gateway could have seen a 2xx.
    pub fn delivered(self) -> bool {
        match self {
            Reaction::Ok | Reaction::OkTwice | Reaction::SlowOk => true,
            Reaction::Failed | Reaction::HungUp | Reaction::TooSlow => false,
        }
    }
}

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    /// Which endpoint: the URL's path.
    pub path: String,
    pub id: String,
    pub timestamp: String,
    pub signature: String,
    pub body: Vec<u8>,
    pub arrived: Instant,
    pub arrived_at: chrono::DateTime<chrono::Utc>,
    /// When the receiver answered or hung up.
    pub ended: Instant,
    pub reaction: Reaction,
}

struct State {
    log: Mutex<Vec<Received>>,
    chaos: AtomicBool,
    rng: Mutex<StdRng>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

pub struct Receiver {
    url: String,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Listens on a free loopback port, chaos on, seeded.
    pub async fn start(seed: u64) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let state = Arc::new(State {
            log: Mutex::new(Vec::new()),
            chaos: AtomicBool::new(true),
            rng: Mutex::new(StdRng::seed_from_u64(seed ^ 0x5eb_4008)),
        });
        let serving = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, serving.clone()));
            }
        });
        Ok(Self { url, state, task })
    }

    /// The URL of an endpoint at `path` (`/m0`, `/m1`: one per merchant).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// From now on every request is answered 200 at once.
    pub fn calm(&self) {
        self.state.chaos.store(false, Ordering::Relaxed);
    }

    pub fn received(&self) -> Vec<Received> {
        lock(&self.state.log).clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn react(state: &State) -> Reaction {
    if !state.chaos.load(Ordering::Relaxed) {
        return Reaction::Ok;
    }
    let roll: u32 = lock(&state.rng).random_range(0..100);
    match roll {
        0..8 => Reaction::Failed,
        8..11 => Reaction::HungUp,
        11..14 => Reaction::TooSlow,
        14..19 => Reaction::SlowOk,
        19..22 => Reaction::OkTwice,
        _ => Reaction::Ok,
    }
}

/// One connection, one request (the answer closes it).
async fn serve(mut stream: TcpStream, state: Arc<State>) {
    let arrived = Instant::now();
    let arrived_at = chrono::Utc::now();
    let Some((path, headers, body)) = read_request(&mut stream).await else {
        return;
    };
    let reaction = react(&state);
    let answer: Option<&[u8]> = match reaction {
        Reaction::Ok | Reaction::OkTwice => Some(OK),
        Reaction::SlowOk => answer_after(&mut stream, SLOW).await,
        Reaction::TooSlow => answer_after(&mut stream, TOO_SLOW).await,
        Reaction::Failed => Some(
            b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 17\r\nconnection: close\r\n\r\nprocessing failed",
        ),
        Reaction::HungUp => None,
    };
    if let Some(answer) = answer {
        let _ = stream.write_all(answer).await;
        let _ = stream.shutdown().await;
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let received = Received {
        path,
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        body,
        arrived,
        arrived_at,
        ended: Instant::now(),
        reaction,
    };
    let mut log = lock(&state.log);
    if reaction == Reaction::OkTwice {
        log.push(received.clone());
    }
    log.push(received);
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";

/// 200 after `delay`, unless the gateway hangs up first: then nothing, and
/// the request ends there, as it does for a real server whose client went
/// away. (Measured from when the connection was accepted, which can be
/// well after the gateway started its timeout on a loaded machine, the
/// request would otherwise look open after the gateway had given up on it
/// and sent the delivery again.)
async fn answer_after(stream: &mut TcpStream, delay: Duration) -> Option<&'static [u8]> {
    let hung_up = async {
        let mut byte = [0u8; 1];
        while let Ok(1..) = stream.read(&mut byte).await {}
    };
    tokio::select! {
        () = tokio::time::sleep(delay) => Some(OK),
        () = hung_up => None,
    }
}

type Request = (String, Vec<(String, String)>, Vec<u8>);

async fn read_request(stream: &mut TcpStream) -> Option<Request> {
    let mut buffer = Vec::with_capacity(4096);
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        if buffer.len() > MAX_HEAD_BYTES {
            return None;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let path = lines.next()?.split(' ').nth(1)?.to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
        .min(MAX_BODY_BYTES);
    let mut body = buffer[head_end + 4..].to_vec();
    while body.len() < length {
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    Some((path, headers, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_calm_receiver_records_what_it_got_and_answers_200() {
        let receiver = Receiver::start(1).await.unwrap();
        receiver.calm();
        let response = reqwest::Client::new()
            .post(receiver.url("/m0"))
            .header("webhook-id", "evt_1")
            .header("webhook-timestamp", "123")
            .header("webhook-signature", "v1,abc")
            .body("{\"a\":1}")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let got = receiver.received();
        assert_eq!(got.len(), 1);
        assert_eq!(
            (
                got[0].path.as_str(),
                got[0].id.as_str(),
                got[0].timestamp.as_str()
            ),
            ("/m0", "evt_1", "123")
        );
        assert_eq!(got[0].signature, "v1,abc");
        assert_eq!(got[0].body, b"{\"a\":1}");
        assert_eq!(got[0].reaction, Reaction::Ok);
    }

    #[tokio::test]
    async fn chaos_gives_every_reaction_from_its_seed() {
        let state = State {
            log: Mutex::new(Vec::new()),
            chaos: AtomicBool::new(true),
            rng: Mutex::new(StdRng::seed_from_u64(7)),
        };
        let reactions: std::collections::BTreeSet<String> =
            (0..500).map(|_| format!("{:?}", react(&state))).collect();
        assert_eq!(reactions.len(), 6, "{reactions:?}");
    }
}
