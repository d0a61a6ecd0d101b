//! Group commit: writes of one shape that are waiting at the same moment go
//! to Postgres as one statement.
//!
//! Under load, most of what a small write costs Postgres is per statement,
//! not per row: opening and locking every table and index it touches,
//! building the executor, the commit. Measured here (pgbench), one statement
//! starting sixteen authorizations cost about 40% of sixteen statements
//! starting one each. A batch is whatever is queued when a flusher comes free; there
//! is no timer, so a request on an idle gateway waits for nothing, and
//! batches grow only when there is a queue to drain.
//!
//! A batch's statement is atomic: it writes every row or none. If it
//! fails, for any reason, it is written again in halves, and a half that
//! fails in halves again, down to single rows: a row that cannot be written
//! (or a deadlock between two batches) fails only its own request, with its
//! own error, one bad row among n costs about 2·log2(n) statements rather
//! than n, and the flusher uses one connection at a time throughout. A
//! failure of the database itself (unreachable, shutting down, a reply
//! lost) fails every row at once instead: written again, each would only
//! fail alike after its own wait.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use sqlx::PgPool;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::faults::{Faults, Point};

/// How big batches get and how many run at once.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Rows in one statement, at most.
    pub max_rows: usize,
    /// Statements of this kind in flight at once; each holds one pooled
    /// connection while it runs.
    pub flushers: usize,
    /// Writes waiting for a flusher, at most; past it, callers wait to queue.
    pub queue: usize,
}

/// When writes last queued behind busy flushers (a batch took more than one
/// row): the sign that requests are waiting on the database. The payment
/// batches report it and the webhook workers read it, to yield to payments.
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct Pressure {
    origin: Instant,
    /// Milliseconds from `origin` to the last queued batch, plus one; 0 for never.
    last_queued_ms: Arc<AtomicU64>,
}

impl Default for Pressure {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            last_queued_ms: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl Pressure {
    /// Writes queued just now.
    pub(crate) fn queued(&self) {
        let ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_queued_ms
            .store(ms.saturating_add(1), Ordering::Relaxed);
    }

    /// Whether writes queued within the last `window`.
    pub fn within(&self, window: Duration) -> bool {
        match self.last_queued_ms.load(Ordering::Relaxed) {
            0 => false,
            at => {
                let queued = self.origin + Duration::from_millis(at - 1);
                queued.elapsed() <= window
            }
        }
    }
}

/// Writes `rows` in one statement and returns one output per row, in order.
pub type WriteFn<I, O> = fn(PgPool, Vec<I>) -> BoxFuture<Result<Vec<O>, sqlx::Error>>;

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

struct Job<I, O> {
    input: I,
    reply: oneshot::Sender<Result<O, sqlx::Error>>,
}

/// The sending side; cheap to clone.
pub struct Batcher<I, O> {
    queue: mpsc::Sender<Job<I, O>>,
}

impl<I, O> Clone for Batcher<I, O> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

impl<I, O> Batcher<I, O>
where
    I: Clone + Send + 'static,
    O: Send + 'static,
{
    /// Starts `limits.flushers` tasks that drain the queue through `write`.
    /// `name` labels the batch-size histogram; a batch of more than one row
    /// is reported to `pressure`, if given.
    pub fn spawn(
        name: &'static str,
        pool: PgPool,
        limits: BatchLimits,
        write: WriteFn<I, O>,
        faults: Faults,
        pressure: Option<Pressure>,
    ) -> (Self, Vec<JoinHandle<()>>) {
        assert!(limits.max_rows >= 1 && limits.flushers >= 1 && limits.queue >= 1);
        let (sender, receiver) = mpsc::channel(limits.queue);
        let receiver = Arc::new(Mutex::new(receiver));
        let flushers = (0..limits.flushers)
            .map(|_| {
                let flusher = Flusher {
                    name,
                    pool: pool.clone(),
                    max_rows: limits.max_rows,
                    write,
                    queue: receiver.clone(),
                    faults: faults.clone(),
                    pressure: pressure.clone(),
                };
                tokio::spawn(flusher.run())
            })
            .collect();
        (Self { queue: sender }, flushers)
    }

    /// Writes `input` in the next batch and returns its output. The write
    /// happens even if the caller stops waiting.
    pub async fn submit(&self, input: I) -> Result<O, sqlx::Error> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Job { input, reply })
            .await
            .map_err(|_| sqlx::Error::PoolClosed)?;
        // A flusher that went away (at shutdown) answers nothing.
        answer.await.unwrap_or(Err(sqlx::Error::PoolClosed))
    }
}

struct Flusher<I, O> {
    name: &'static str,
    pool: PgPool,
    max_rows: usize,
    write: WriteFn<I, O>,
    queue: Arc<Mutex<mpsc::Receiver<Job<I, O>>>>,
    faults: Faults,
    pressure: Option<Pressure>,
}

impl<I: Clone + Send + 'static, O: Send + 'static> Flusher<I, O> {
    async fn run(self) {
        while let Some(batch) = self.next_batch().await {
            // A bug that panics fails this batch's requests (their replies
            // are dropped: "pool closed", 503), not every request after it.
            if AssertUnwindSafe(self.flush(batch))
                .catch_unwind()
                .await
                .is_err()
            {
                tracing::error!(
                    write = self.name,
                    "a batch write panicked; its requests failed"
                );
            }
        }
    }

    /// Waits for one job, then takes whatever else is already queued.
    async fn next_batch(&self) -> Option<Vec<Job<I, O>>> {
        let mut queue = self.queue.lock().await;
        let first = queue.recv().await?;
        let mut batch = Vec::with_capacity(self.max_rows);
        batch.push(first);
        while batch.len() < self.max_rows {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        Some(batch)
    }

    async fn flush(&self, batch: Vec<Job<I, O>>) {
        if let (Some(pressure), true) = (&self.pressure, batch.len() > 1) {
            pressure.queued();
        }
        metrics::histogram!("gateway_db_batch_rows", "write" => self.name)
            .record(batch.len() as f64);
        let inputs: Vec<I> = batch.iter().map(|job| job.input.clone()).collect();
        let expected = inputs.len();
        let written = match self.faults.hit(Point::BatchBeforeWrite).await {
            Ok(()) => (self.write)(self.pool.clone(), inputs).await,
            Err(injected) => Err(injected.into()),
        };
        let written = match written {
            Ok(outputs) => match self.faults.hit(Point::BatchAfterWrite).await {
                Ok(()) => Ok(outputs),
                Err(lost) => Err(lost.into()),
            },
            Err(e) => Err(e),
        };
        match written {
            Ok(outputs) if outputs.len() == expected => {
                for (job, output) in batch.into_iter().zip(outputs) {
                    // The caller may have gone; the row is written regardless.
                    let _ = job.reply.send(Ok(output));
                }
            }
            Ok(outputs) => {
                tracing::error!(
                    write = self.name,
                    expected,
                    got = outputs.len(),
                    "a batch write returned the wrong number of rows; writing it in halves"
                );
                self.in_halves(batch).await;
            }
            Err(e) if expected == 1 => {
                let _ = batch.into_iter().next().map(|job| job.reply.send(Err(e)));
            }
            Err(e) if !about_the_rows(&e) => {
                tracing::warn!(write = self.name, rows = expected, error = %e, "batch write failed with the database; every row fails");
                fail_all(batch, &e);
            }
            Err(e) => {
                tracing::warn!(write = self.name, rows = expected, error = %e, "batch write failed; writing it in halves");
                self.in_halves(batch).await;
            }
        }
    }

    /// A batch that failed, written again in halves, each on its own and
    /// one after the other, down to single rows answered with their own
    /// result. (Every row alone, all at once, asked the pool for a
    /// connection per row, where its budget counts one per flusher: one
    /// reused key in a batch of 64 could starve every other request.)
    fn in_halves(
        &self,
        mut batch: Vec<Job<I, O>>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let second = batch.split_off(batch.len() / 2);
            for half in [batch, second] {
                if half.is_empty() {
                    continue;
                }
                let inputs: Vec<I> = half.iter().map(|job| job.input.clone()).collect();
                let expected = half.len();
                match (self.write)(self.pool.clone(), inputs).await {
                    Ok(outputs) if outputs.len() == expected => {
                        for (job, output) in half.into_iter().zip(outputs) {
                            let _ = job.reply.send(Ok(output));
                        }
                    }
                    Err(e) if expected == 1 => {
                        let _ = half.into_iter().next().map(|job| job.reply.send(Err(e)));
                    }
                    Err(e) if !about_the_rows(&e) => fail_all(half, &e),
                    Ok(_) if expected == 1 => {
                        let wrong = sqlx::Error::Protocol(
                            "a one-row batch write returned the wrong number of rows".into(),
                        );
                        let _ = half
                            .into_iter()
                            .next()
                            .map(|job| job.reply.send(Err(wrong)));
                    }
                    Ok(_) | Err(_) => self.in_halves(half).await,
                }
            }
        })
    }
}

/// Whether a failed statement says something about its rows (a
/// constraint, a deadlock, a value refused: written again in halves, the
/// rows that can be written are), or only about the database or the way to
/// it (unreachable, shutting down, out of resources, a reply lost: every
/// row would fail alike, each after its own wait, and the flusher with
/// them).
fn about_the_rows(e: &sqlx::Error) -> bool {
    let connection = matches!(
        e,
        sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
    );
    let database = matches!(e, sqlx::Error::Database(db) if db
        .code()
        .is_some_and(|code| ["08", "53", "57P"].iter().any(|c| code.starts_with(c))));
    !(connection || database)
}

/// Answers every job with the database's failure (a connection error:
/// the requests answer 503, and one whose write may have landed looks for
/// it under its own ids).
fn fail_all<I, O>(batch: Vec<Job<I, O>>, e: &sqlx::Error) {
    for job in batch {
        let same = std::io::Error::new(std::io::ErrorKind::ConnectionAborted, e.to_string());
        let _ = job.reply.send(Err(sqlx::Error::Io(same)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Doubles each number; a batch holding a negative one panics.
    fn double(_pool: PgPool, rows: Vec<i64>) -> BoxFuture<Result<Vec<i64>, sqlx::Error>> {
        Box::pin(async move {
            assert!(rows.iter().all(|n| *n >= 0), "a negative row");
            Ok(rows.into_iter().map(|n| n * 2).collect())
        })
    }

    fn batcher() -> Batcher<i64, i64> {
        batcher_of(double, 4)
    }

    /// One flusher of batches of up to `max_rows` through `write`, on a
    /// pool that connects nowhere (the writes here never use it).
    fn batcher_of(write: WriteFn<i64, i64>, max_rows: usize) -> Batcher<i64, i64> {
        let pool = PgPool::connect_lazy("postgres://nobody@127.0.0.1:1/none").expect("a lazy pool");
        let limits = BatchLimits {
            max_rows,
            flushers: 1,
            queue: 4 * max_rows,
        };
        Batcher::spawn("unit", pool, limits, write, Faults::default(), None).0
    }

    #[tokio::test]
    async fn queued_rows_share_a_batch_and_each_gets_its_own_answer() {
        let batcher = batcher();
        let answers = futures_util::future::join_all((0..10).map(|n| batcher.submit(n))).await;
        let answers: Vec<i64> = answers.into_iter().map(Result::unwrap).collect();
        assert_eq!(answers, (0..10).map(|n| n * 2).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn only_rows_that_queued_together_are_pressure() {
        let pool = PgPool::connect_lazy("postgres://nobody@127.0.0.1:1/none").expect("a lazy pool");
        let limits = BatchLimits {
            max_rows: 4,
            flushers: 1,
            queue: 16,
        };
        let pressure = Pressure::default();
        let (batcher, _) = Batcher::spawn(
            "unit",
            pool,
            limits,
            double,
            Faults::default(),
            Some(pressure.clone()),
        );
        let window = Duration::from_secs(60);
        batcher.submit(1).await.unwrap();
        assert!(
            !pressure.within(window),
            "one row at a time waited for nothing"
        );
        futures_util::future::join_all((0..10).map(|n| batcher.submit(n))).await;
        assert!(pressure.within(window), "ten rows at once queued");
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(
            !pressure.within(Duration::from_millis(10)),
            "pressure passes"
        );
    }

    static HALVING_WRITES: AtomicU64 = AtomicU64::new(0);

    /// Doubles each number, counting its statements; a batch holding a
    /// negative one fails whole, as a statement with one bad row does.
    fn refuse_negatives(_pool: PgPool, rows: Vec<i64>) -> BoxFuture<Result<Vec<i64>, sqlx::Error>> {
        Box::pin(async move {
            HALVING_WRITES.fetch_add(1, Ordering::Relaxed);
            if rows.iter().any(|n| *n < 0) {
                return Err(sqlx::Error::Protocol("a negative row".into()));
            }
            Ok(rows.into_iter().map(|n| n * 2).collect())
        })
    }

    #[tokio::test]
    async fn one_bad_row_fails_alone_in_a_few_statements() {
        let batcher = batcher_of(refuse_negatives, 16);
        let rows = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, -16];
        let answers = futures_util::future::join_all(rows.map(|n| batcher.submit(n))).await;
        for (n, answer) in rows.iter().zip(&answers) {
            match answer {
                Ok(doubled) => assert_eq!(*doubled, n * 2),
                Err(_) => assert!(*n < 0, "{n} failed with the bad row"),
            }
        }
        assert!(answers.last().unwrap().is_err());
        // The batch, then two halves per level of four: 9 at most, where
        // every row alone took 17.
        let writes = HALVING_WRITES.load(Ordering::Relaxed);
        assert!(writes <= 9, "{writes} statements");
    }

    static DOWN_WRITES: AtomicU64 = AtomicU64::new(0);

    fn database_down(_pool: PgPool, _rows: Vec<i64>) -> BoxFuture<Result<Vec<i64>, sqlx::Error>> {
        Box::pin(async move {
            DOWN_WRITES.fetch_add(1, Ordering::Relaxed);
            Err(sqlx::Error::PoolTimedOut)
        })
    }

    #[tokio::test]
    async fn the_database_failing_fails_every_row_at_once() {
        let batcher = batcher_of(database_down, 16);
        let answers = futures_util::future::join_all((0..16).map(|n| batcher.submit(n))).await;
        assert!(answers.iter().all(Result::is_err));
        assert_eq!(DOWN_WRITES.load(Ordering::Relaxed), 1, "not written again");
    }

    #[tokio::test]
    async fn a_panicking_write_fails_its_requests_and_the_next_ones_are_served() {
        let batcher = batcher();
        let failed = batcher.submit(-1).await;
        assert!(matches!(failed, Err(sqlx::Error::PoolClosed)), "{failed:?}");
        assert_eq!(batcher.submit(21).await.unwrap(), 42);
    }
}
