//! The gateway as a child process: this binary again, as `simulator
//! gateway serve …`, so that it can be killed (even with SIGKILL), restarted
//! and run as several replicas, like a real deployment.

use std::ffi::OsString;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use gateway::idempotency::Secret;
use tokio::process::{Child, Command};

use crate::cli::GatewayArgs;
use crate::running;

/// `/ready` is polled this often while the gateway starts ...
const READY_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// ... at most this many times (a minute), each try bounded by
/// [`READY_REQUEST_TIMEOUT`].
const READY_TRIES: u32 = 600;
const READY_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// `simulator gateway …`: the gateway's command line, with `DATABASE_URL`
/// and `BANK_URL` pointed at the running `simulator up`'s stack (see
/// [`running`]). A command that names its database (`--database-url`, as
/// the stack's own gateway children do) is run as it is.
pub fn gateway_main(args: GatewayArgs) -> ExitCode {
    if names_database(&args.args) {
        return run_gateway(args.args);
    }
    match running::find() {
        Ok(None) => {
            // Said first: the gateway's own error (clap's) exits the process.
            if needs_database(&args.args) && std::env::var_os("DATABASE_URL").is_none() {
                eprintln!(
                    "simulator gateway: no `simulator up` is running (none recorded in {}), \
                     and DATABASE_URL is not set",
                    std::env::temp_dir().display()
                );
            }
            run_gateway(args.args)
        }
        Ok(Some(up)) if points_at(&up) => run_gateway(args.args),
        Ok(Some(up)) => {
            eprintln!(
                "simulator gateway: on the stack of `simulator up` (pid {}): DATABASE_URL={}",
                up.pid, up.gateway_database_url
            );
            // Exec'ed again with the environment set, rather than setting it
            // here: this process's environment is only safe to change before
            // any thread starts, which a library function cannot promise.
            let exe = std::env::current_exe().unwrap_or_else(|_| "simulator".into());
            let error = std::process::Command::new(exe)
                .arg("gateway")
                .args(&args.args)
                .env("DATABASE_URL", &up.gateway_database_url)
                .env("BANK_URL", &up.bank_url)
                .exec();
            eprintln!("simulator gateway: running the gateway: {error}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("simulator gateway: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_gateway(args: Vec<OsString>) -> ExitCode {
    gateway::cli::main_from(std::iter::once(OsString::from("gateway")).chain(args))
}

/// Whether the arguments say which database to use.
fn names_database(args: &[OsString]) -> bool {
    args.iter()
        .any(|arg| arg.to_string_lossy().split('=').next() == Some("--database-url"))
}

/// Whether the command reads a database: all but help, the version and
/// the state diagram.
fn needs_database(args: &[OsString]) -> bool {
    let first = args.first().map(|arg| arg.to_string_lossy());
    !matches!(
        first.as_deref(),
        Some("state-diagram" | "help" | "--help" | "-h" | "--version" | "-V")
    )
}

/// Whether this process's environment already points at `up`'s stack.
fn points_at(up: &running::UpRecord) -> bool {
    let var = |name| std::env::var(name).ok();
    var("DATABASE_URL").as_ref() == Some(&up.gateway_database_url)
        && var("BANK_URL").as_ref() == Some(&up.bank_url)
}

/// Where the child's stdout and stderr go.
#[derive(Debug, Clone)]
pub enum GatewayOutput {
    /// This process's own (`--verbose`).
    Inherit,
    /// Both appended to this file.
    LogFile(PathBuf),
    Discard,
}

impl GatewayOutput {
    /// A log file in the system's temporary directory, named after this
    /// process and `label`.
    pub fn temp_log_file(label: &str) -> Self {
        let name = format!("simulator-{}-{label}.log", std::process::id());
        Self::LogFile(std::env::temp_dir().join(name))
    }
}

/// How to start a gateway.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// 0 picks a free port.
    pub port: u16,
    /// The operator listener's (`/metrics`, `/ready`); 0 picks a free port,
    /// anew at every start.
    pub operator_port: u16,
    /// `--db-pool-size`.
    pub db_pool_size: u32,
    /// `--bank-max-in-flight`.
    pub bank_max_in_flight: usize,
    pub output: GatewayOutput,
    /// The `simulator` binary to run as `simulator gateway serve`; `None`
    /// is this executable (a test binary must name the real one).
    pub program: Option<PathBuf>,
    /// Extra environment for the child (e.g. `RUST_LOG`), on top of this
    /// process's. The gateway's settings go in `args`: its top-level
    /// command line reads the same variables, and one of them set without
    /// `DATABASE_URL` makes it refuse to start.
    pub env: Vec<(String, String)>,
    /// Extra `gateway serve` flags (e.g. `--lease-ms 5000`).
    pub args: Vec<String>,
    /// The idempotency fingerprint's secret: gateways sharing a database
    /// must share it. Passed in the environment, not on the command line
    /// (which `ps` shows).
    pub fingerprint_secret: Secret,
    /// The key webhook secrets derive from: shared by gateways on one
    /// database like the fingerprint's. In the environment too.
    pub webhook_secret_key: Secret,
}

impl GatewayOptions {
    /// The gateway's own defaults (pool of 10, 2048 bank calls in flight).
    pub fn new(port: u16, output: GatewayOutput) -> Self {
        Self {
            port,
            operator_port: 0,
            db_pool_size: 10,
            bank_max_in_flight: 2048,
            output,
            program: None,
            env: Vec::new(),
            args: Vec::new(),
            fingerprint_secret: Secret::random(),
            webhook_secret_key: Secret::random(),
        }
    }
}

/// A running `gateway serve` child. Dropping it kills the child (SIGKILL);
/// [`GatewayProcess::terminate`] stops it gracefully.
pub struct GatewayProcess {
    child: Child,
    pid: u32,
    url: String,
    /// The operator listener's root URL.
    operator_url: String,
    log_file: Option<PathBuf>,
}

impl GatewayProcess {
    /// Starts `simulator gateway serve` on `database_url`, talking to the
    /// bank at `bank_url`. `RUST_LOG` and the rest of the environment are
    /// passed through. Returns once the process exists; see
    /// [`GatewayProcess::wait_ready`].
    pub fn spawn(
        database_url: &str,
        bank_url: &str,
        options: &GatewayOptions,
    ) -> anyhow::Result<Self> {
        // Both held until both are picked, so that two free ones differ.
        let mut held = Vec::new();
        let port = pick_port(options.port, &mut held)?;
        let operator_port = pick_port(options.operator_port, &mut held)?;
        drop(held);
        let exe = match &options.program {
            Some(program) => program.clone(),
            None => {
                std::env::current_exe().context("finding this executable to run the gateway")?
            }
        };
        let mut command = Command::new(exe);
        command
            .envs(options.env.iter().map(|(k, v)| (k, v)))
            .env("FINGERPRINT_SECRET", options.fingerprint_secret.expose())
            .env("WEBHOOK_SECRET_KEY", options.webhook_secret_key.expose())
            .args(["gateway", "serve"])
            .arg("--database-url")
            .arg(database_url)
            .arg("--bank-url")
            .arg(bank_url)
            .args(["--host", "127.0.0.1"])
            .arg("--port")
            .arg(port.to_string())
            .arg("--operator-port")
            .arg(operator_port.to_string())
            .arg("--db-pool-size")
            .arg(options.db_pool_size.to_string())
            .arg("--bank-max-in-flight")
            .arg(options.bank_max_in_flight.to_string())
            .args(&options.args)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let log_file = match &options.output {
            GatewayOutput::Inherit => {
                command.stdout(Stdio::inherit()).stderr(Stdio::inherit());
                None
            }
            GatewayOutput::Discard => {
                command.stdout(Stdio::null()).stderr(Stdio::null());
                None
            }
            GatewayOutput::LogFile(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| {
                        format!("opening the gateway's log file {}", path.display())
                    })?;
                command.stdout(file.try_clone()?).stderr(file);
                Some(path.clone())
            }
        };
        let child = crate::children::spawn(command).context("starting the gateway process")?;
        let pid = child
            .id()
            .context("the gateway process has no id right after starting")?;
        Ok(Self {
            child,
            pid,
            url: format!("http://127.0.0.1:{port}"),
            operator_url: format!("http://127.0.0.1:{operator_port}"),
            log_file,
        })
    }

    /// The gateway's root URL, e.g. `http://127.0.0.1:8080`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Its operator listener's root URL (`/metrics`, `/ready`).
    pub fn operator_url(&self) -> &str {
        &self.operator_url
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Where its output goes, when that is a file.
    pub fn log_file(&self) -> Option<&Path> {
        self.log_file.as_deref()
    }

    /// Polls `GET /ready` (on the operator port) until it answers 200. Fails, saying why, when the
    /// process exits first or when it is still not ready after a minute.
    pub async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let client = reqwest::Client::builder()
            .timeout(READY_REQUEST_TIMEOUT)
            .build()?;
        let url = format!("{}/ready", self.operator_url);
        let mut last = String::from("no answer yet");
        for _ in 0..READY_TRIES {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "the gateway exited before it was ready ({status}){}",
                    self.see_log()
                );
            }
            match client.get(&url).send().await {
                Ok(response) if response.status() == reqwest::StatusCode::OK => return Ok(()),
                Ok(response) => last = format!("GET {url} answered {}", response.status()),
                Err(e) => last = format!("GET {url}: {e}"),
            }
            tokio::time::sleep(READY_POLL_INTERVAL).await;
        }
        bail!(
            "the gateway (pid {}) was not ready after {} tries: {last}{}",
            self.pid,
            READY_TRIES,
            self.see_log()
        )
    }

    /// Resolves when the process exits, with how. Cancel-safe, and may be
    /// called again after it resolved.
    pub async fn exited(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// Whether it has exited, without waiting.
    pub fn try_exited(&mut self) -> std::io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// SIGTERM (the gateway finishes its in-flight requests and exits),
    /// then waits up to `grace`; SIGKILL if it has not exited by then.
    pub async fn terminate(&mut self, grace: Duration) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        // The process has not been reaped, so the pid is still its own.
        let sent = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .context("running `kill -TERM`")?;
        if !sent.success() {
            // It may have exited in between; waiting tells.
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            eprintln!("`kill -TERM {}` failed ({sent}): killing it", self.pid);
            return self.kill().await;
        }
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => {
                eprintln!(
                    "the gateway (pid {}) did not stop within {} s of SIGTERM: killing it",
                    self.pid,
                    grace.as_secs()
                );
                self.kill().await
            }
        }
    }

    /// SIGKILL, as a crash would: no request is finished. Waits for it.
    pub async fn kill(&mut self) -> anyhow::Result<ExitStatus> {
        self.child
            .kill()
            .await
            .context("killing the gateway process")?;
        Ok(self.child.wait().await?)
    }

    /// Where its output is, after its last line: when it exits at start,
    /// that line is its error (e.g. "Address already in use"), which belongs
    /// in the message rather than only in the file.
    fn see_log(&self) -> String {
        let Some(path) = &self.log_file else {
            return String::new();
        };
        match last_line(path) {
            Some(line) => format!(": {line}\n(its output is in {})", path.display()),
            None => format!("; its output is in {}", path.display()),
        }
    }
}

/// The last non-empty line of a file, cut to a readable length.
fn last_line(path: &Path) -> Option<String> {
    const MAX_CHARS: usize = 500;
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().rev().find(|line| !line.trim().is_empty())?;
    Some(line.trim().chars().take(MAX_CHARS).collect())
}

/// `port`, or for 0 a free one, whose listener is kept in `held` until the
/// caller releases it.
fn pick_port(port: u16, held: &mut Vec<TcpListener>) -> anyhow::Result<u16> {
    if port != 0 {
        return Ok(port);
    }
    let listener = bind_listening_port()?;
    let port = listener.local_addr()?.port();
    held.push(listener);
    Ok(port)
}

/// A port that was free a moment ago, for a service to listen on; another
/// process may take it before the child binds it, and the child then fails
/// to start and says so. A replica keeps its port across restarts, so the
/// port is taken below the kernel's ephemeral range: there no outgoing
/// connection (of which a run makes thousands) can be given it while the
/// replica is down.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(bind_listening_port()?.local_addr()?.port())
}

/// Ports below this are well-known or registered for common services.
const LISTENING_PORTS_FROM: u16 = 10_000;
/// Random ports tried before falling back to one the kernel picks.
const LISTENING_PORT_TRIES: u32 = 64;

fn bind_listening_port() -> anyhow::Result<TcpListener> {
    let ephemeral_from = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    if ephemeral_from > LISTENING_PORTS_FROM {
        for _ in 0..LISTENING_PORT_TRIES {
            let port = rand::random_range(LISTENING_PORTS_FROM..ephemeral_from);
            if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
                return Ok(listener);
            }
        }
    }
    TcpListener::bind(("127.0.0.1", 0)).context("finding a free port")
}
