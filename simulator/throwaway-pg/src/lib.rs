//! A Postgres URL for tests and for the launcher, with no set-up by hand.
//!
//! [`Postgres::from_env_or_throwaway`] answers `DATABASE_URL` when it is set;
//! otherwise it starts a throwaway cluster from the installed server binaries
//! in a temp dir on a free port and removes it when dropped. Tests call
//! [`shared`], which starts at most one cluster per test process and gives
//! each test its own fresh database through [`Postgres::fresh_database`].
//!
//! Postgres refuses to run as root, so when we are root every server binary
//! runs through `runuser -u postgres`, and the cluster lives under `/tmp`
//! (the `postgres` user cannot enter `/root`). A watchdog process stops the
//! cluster when the process that started it dies, even by `kill -9`, so a
//! crashed test run does not leave clusters behind.

use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use sqlx::Connection;

/// How long `pg_ctl` may take to start the server before we give up.
const START_TIMEOUT_SECONDS: u32 = 30;
/// Tests run many pools side by side; the default 100 is too few.
const MAX_CONNECTIONS: u32 = 500;
/// A free port can be taken between our probe and the server's bind.
const START_ATTEMPTS: u32 = 3;
/// Environment variable with extra `postgres` options for a throwaway
/// cluster (profiling: `-c shared_preload_libraries=pg_stat_statements`).
pub const EXTRA_OPTIONS_VAR: &str = "THROWAWAY_PG_OPTIONS";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl) were not found: install them with \
         `apt-get install postgresql`, or set DATABASE_URL to an existing database"
    )]
    BinariesMissing,
    #[error("could not start a throwaway PostgreSQL cluster: {0}")]
    Start(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// How a throwaway cluster commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `fsync`, `synchronous_commit` and full-page writes off: the data is
    /// a test's and dies with it, and tests run several times faster.
    #[default]
    Fast,
    /// Postgres' own defaults (every commit flushed to disk), as production
    /// runs: what a benchmark must measure.
    Durable,
}

impl Durability {
    fn server_options(self) -> &'static str {
        match self {
            Durability::Fast => "-c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            Durability::Durable => "",
        }
    }
}

/// A Postgres server we may create databases on.
#[derive(Debug)]
pub struct Postgres {
    /// URL of the server's maintenance database.
    url: String,
    /// Present when we started the server; dropping it stops the server.
    cluster: Option<Cluster>,
}

impl Postgres {
    /// `DATABASE_URL` when set, otherwise a new (fast) throwaway cluster.
    pub fn from_env_or_throwaway() -> Result<Self, Error> {
        Self::from_env_or_throwaway_with(Durability::Fast)
    }

    /// `DATABASE_URL` when set, otherwise a new throwaway cluster that
    /// commits as `durability` says.
    pub fn from_env_or_throwaway_with(durability: Durability) -> Result<Self, Error> {
        match std::env::var("DATABASE_URL") {
            Ok(url) if !url.trim().is_empty() => Ok(Self { url, cluster: None }),
            _ => {
                let cluster = Cluster::start(durability)?;
                Ok(Self {
                    url: cluster.url(),
                    cluster: Some(cluster),
                })
            }
        }
    }

    /// A new throwaway cluster of our own, whatever `DATABASE_URL` says: for
    /// a test that stops and starts its server.
    pub fn throwaway() -> Result<Self, Error> {
        let cluster = Cluster::start(Durability::Fast)?;
        Ok(Self {
            url: cluster.url(),
            cluster: Some(cluster),
        })
    }

    /// A new throwaway cluster that outlives this process: no watchdog,
    /// and dropping it leaves it running. For a loaded database that other
    /// commands are pointed at afterwards; [`Postgres::stop_command`] says
    /// how to remove it.
    pub fn kept(durability: Durability) -> Result<Self, Error> {
        let cluster = Cluster::start_with(durability, true)?;
        Ok(Self {
            url: cluster.url(),
            cluster: Some(cluster),
        })
    }

    /// The data directory of our cluster; `None` for a server we did not start.
    pub fn data_dir(&self) -> Option<PathBuf> {
        self.cluster.as_ref().map(Cluster::data_dir)
    }

    /// The shell command that stops our cluster and removes its directory
    /// (what dropping it does, unless it is [kept](Postgres::kept)).
    pub fn stop_command(&self) -> Option<String> {
        self.cluster.as_ref().map(Cluster::stop_script)
    }

    /// Stops our cluster (fast shutdown: connections are cut), keeping its
    /// data, as in a database outage. An error for a server we did not start.
    pub fn stop(&self) -> Result<(), Error> {
        self.own_cluster()?.pg_ctl_stop()
    }

    /// Starts our stopped cluster again on the same port.
    pub fn start(&self) -> Result<(), Error> {
        self.own_cluster()?.pg_ctl_start()
    }

    fn own_cluster(&self) -> Result<&Cluster, Error> {
        self.cluster.as_ref().ok_or_else(|| {
            Error::Start("only a throwaway cluster can be stopped and started".to_owned())
        })
    }

    /// The URL this server was reached by (`DATABASE_URL` or the cluster's).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// One sentence saying where the database came from, for the user.
    pub fn describe(&self) -> String {
        match &self.cluster {
            None => "using the PostgreSQL server at DATABASE_URL".to_owned(),
            Some(cluster) => format!(
                "started a throwaway PostgreSQL cluster in {} on 127.0.0.1:{}{} ({})",
                cluster.dir.display(),
                cluster.port,
                match cluster.durability {
                    Durability::Fast => ", fsync off",
                    Durability::Durable => ", durable (fsync on)",
                },
                if cluster.kept {
                    "kept running after exit"
                } else {
                    "removed on exit; set DATABASE_URL to use your own server"
                }
            ),
        }
    }

    /// Creates an empty database with a unique name and returns its URL.
    pub async fn fresh_database(&self, prefix: &str) -> Result<String, Error> {
        let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&self.url).await?;
        sqlx::query(&format!(r#"CREATE DATABASE "{name}""#))
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        Ok(with_database(&self.url, &name))
    }
}

/// The server every test in this process shares; started on first use.
///
/// Panics with the one-sentence reason when no server can be had: a test
/// cannot go on without one.
pub fn shared() -> &'static Postgres {
    static SHARED: OnceLock<Postgres> = OnceLock::new();
    SHARED.get_or_init(|| {
        let pg = Postgres::from_env_or_throwaway().unwrap_or_else(|e| panic!("{e}"));
        eprintln!("throwaway-pg: {}", pg.describe());
        pg
    })
}

/// Returns once `sessions` sessions of `pool`'s database wait for a lock
/// (a row another transaction holds), polling every 10 ms: a test has
/// reached the interleaving it set up. False when they did not within
/// `attempts` polls.
pub async fn until_sessions_wait_for_a_lock(
    pool: &sqlx::PgPool,
    sessions: i64,
    attempts: u32,
) -> Result<bool, sqlx::Error> {
    for _ in 0..attempts {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(pool)
        .await?;
        if waiting >= sessions {
            return Ok(true);
        }
        // The server's sleep: this crate has no runtime of its own.
        sqlx::query("SELECT pg_sleep(0.01)").execute(pool).await?;
    }
    Ok(false)
}

/// Replaces the database name (the URL's path) in a Postgres URL.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{database}?{query}"),
        None => format!("{base}/{database}"),
    }
}

/// A Postgres cluster we started; stopped and deleted on drop.
#[derive(Debug)]
struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    as_postgres_user: bool,
    durability: Durability,
    /// Left running when dropped, and without a watchdog.
    kept: bool,
}

impl Cluster {
    fn start(durability: Durability) -> Result<Self, Error> {
        Self::start_with(durability, false)
    }

    fn start_with(durability: Durability, kept: bool) -> Result<Self, Error> {
        let bin = server_bin_dir().ok_or(Error::BinariesMissing)?;
        let as_postgres_user = std::fs::metadata("/proc/self")?.uid() == 0;
        let dir = make_temp_dir()?;
        if as_postgres_user {
            run(Command::new("chown").arg("postgres:postgres").arg(&dir))?;
        }
        let mut cluster = Self {
            bin,
            dir,
            port: 0,
            as_postgres_user,
            durability,
            kept,
        };
        if !kept {
            cluster.spawn_watchdog()?;
        }
        cluster.initdb()?;
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            cluster.port = free_port()?;
            match cluster.pg_ctl_start() {
                Ok(()) => return Ok(cluster),
                Err(e) => last_error = e.to_string(),
            }
        }
        Err(Error::Start(last_error))
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// A command for a server binary, run as `postgres` when we are root.
    fn server_command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        if self.as_postgres_user {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn initdb(&self) -> Result<(), Error> {
        let mut command = self.server_command("initdb");
        command
            .arg("-D")
            .arg(self.data_dir())
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8"])
            .args(["--locale=C.UTF-8", "--no-sync", "--no-instructions"]);
        run(&mut command)
    }

    fn pg_ctl_start(&self) -> Result<(), Error> {
        // Extra server options, for profiling a run (for instance
        // `-c shared_preload_libraries=pg_stat_statements`); none by default.
        let extra = std::env::var(EXTRA_OPTIONS_VAR).unwrap_or_default();
        let options = format!(
            "-p {port} -k {dir} -c listen_addresses=127.0.0.1 {durability} \
             -c max_connections={MAX_CONNECTIONS} {extra}",
            port = self.port,
            dir = self.dir.display(),
            durability = self.durability.server_options(),
        );
        let mut command = self.server_command("pg_ctl");
        command
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.dir.join("log"))
            .args([
                "-w",
                "-t",
                &START_TIMEOUT_SECONDS.to_string(),
                "-o",
                &options,
            ])
            .arg("start");
        run(&mut command)
    }

    fn pg_ctl_stop(&self) -> Result<(), Error> {
        let mut command = self.server_command("pg_ctl");
        command
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", "fast", "-w", "stop"]);
        run(&mut command)
    }

    /// A detached shell that waits for this process to die, then stops the
    /// cluster and removes its directory. `Drop` does the same sooner; the
    /// watchdog covers `kill -9` and statics that are never dropped.
    fn spawn_watchdog(&self) -> Result<(), Error> {
        let stop = self.stop_script();
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop}",
            pid = std::process::id()
        );
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(())
    }

    fn stop_script(&self) -> String {
        let runuser = if self.as_postgres_user {
            "runuser -u postgres -- "
        } else {
            ""
        };
        format!(
            "[ -d {dir} ] && {runuser}{pg_ctl} -D {data} -m immediate -w stop >/dev/null 2>&1; rm -rf {dir}",
            dir = self.dir.display(),
            pg_ctl = self.bin.join("pg_ctl").display(),
            data = self.data_dir().display(),
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        let _ = Command::new("sh")
            .args(["-c", &self.stop_script()])
            .stdin(Stdio::null())
            .status();
    }
}

/// A program installed with the server a throwaway cluster runs on (e.g.
/// `pgbench`, to measure that cluster): in the newest installed server's
/// `bin` directory, or else on PATH. `None` when it is in neither.
pub fn server_program(name: &str) -> Option<PathBuf> {
    let beside_server = server_bin_dir()
        .map(|bin| bin.join(name))
        .filter(|program| program.is_file());
    beside_server.or_else(|| {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|program| program.is_file())
    })
}

/// The newest installed server's `bin` directory, or where `initdb` is on PATH.
fn server_bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .find(|dir| dir.join("initdb").exists() && dir.join("pg_ctl").exists())
}

/// A short, fresh directory under /tmp: socket paths are limited to ~107 bytes.
fn make_temp_dir() -> Result<PathBuf, Error> {
    for _ in 0..16 {
        let dir = Path::new("/tmp").join(format!(
            "pg.{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        ));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::Start(
        "could not create a temp directory under /tmp".to_owned(),
    ))
}

fn free_port() -> Result<u16, Error> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn run(command: &mut Command) -> Result<(), Error> {
    let output = command.stdin(Stdio::null()).output()?;
    if output.status.success() {
        return Ok(());
    }
    Err(Error::Start(format!(
        "{:?} failed: {}",
        command.get_program(),
        String::from_utf8_lossy(&output.stderr).trim()
    )))
}

#[cfg(test)]
mod tests {
    use super::with_database;
    use sqlx::Connection;

    #[test]
    fn with_database_replaces_only_the_path() {
        assert_eq!(
            with_database("postgres://u@h:1/postgres", "t1"),
            "postgres://u@h:1/t1"
        );
        assert_eq!(
            with_database("postgres://u@h:1", "t1"),
            "postgres://u@h:1/t1"
        );
        assert_eq!(
            with_database("postgres://u:p@h/db?sslmode=disable", "t1"),
            "postgres://u:p@h/t1?sslmode=disable"
        );
    }

    #[tokio::test]
    async fn an_own_cluster_can_be_stopped_and_started_with_its_data() {
        let pg = super::Postgres::throwaway().unwrap();
        let url = pg.fresh_database("t").await.unwrap();
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::query("CREATE TABLE kept (x int)")
            .execute(&mut conn)
            .await
            .unwrap();
        drop(conn);
        pg.stop().unwrap();
        assert!(
            sqlx::PgConnection::connect(&url).await.is_err(),
            "down while stopped"
        );
        pg.start().unwrap();
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM kept")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(rows, 0);
    }

    #[tokio::test]
    async fn fresh_databases_are_distinct_and_reachable() {
        let pg = super::shared();
        let a = pg.fresh_database("t").await.unwrap();
        let b = pg.fresh_database("t").await.unwrap();
        assert_ne!(a, b);
        for url in [a, b] {
            let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
            let one: i32 = sqlx::query_scalar("SELECT 1")
                .fetch_one(&mut conn)
                .await
                .unwrap();
            assert_eq!(one, 1);
        }
    }
}
