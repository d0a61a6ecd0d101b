//! `simulator up` as a user meets it: killed with SIGKILL, stopped with
//! Ctrl-C, asked for a port that is taken, and `simulator gateway …` run
//! beside it. Each test gives its `up` a temp directory of its own
//! (`TMPDIR`), so that its run directory is found there alone and anything
//! left behind shows.

use std::io::{BufRead, BufReader, Read};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use simulator::process::{GatewayOptions, GatewayOutput};
use simulator::stack::{BankChaos, Durability, Stack, StackOptions};

/// A cold start builds a Postgres cluster and migrates two databases.
const READY_TIMEOUT: Duration = Duration::from_secs(180);
const FREE_PORTS: [&str; 6] = [
    "--bank-port",
    "0",
    "--gateway-port",
    "0",
    "--operator-port",
    "0",
];

/// A temp directory for one test, empty; removed by the test when it passes.
fn temp_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ficmart-test-up-{}-{test}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).unwrap();
    }
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The `simulator` binary with `TMPDIR` set to `tmp`.
fn simulator(tmp: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_simulator"));
    command.env("TMPDIR", tmp).stdin(Stdio::null());
    command
}

/// A running `simulator up`; dropping it kills it (SIGKILL: its children
/// die with it).
struct Up {
    child: Child,
    /// Its stdout and stderr, line by line, read by threads until they close.
    lines: mpsc::Receiver<String>,
    /// Every line read so far.
    seen: Vec<String>,
}

/// What `up` printed about the running stack.
struct Printed {
    run_dir: PathBuf,
    gateway_pid: u32,
    gateway_url: String,
    bank_url: String,
    api_key: String,
    /// The throwaway cluster's directory (none with DATABASE_URL).
    postgres_dir: Option<PathBuf>,
}

impl Up {
    fn start(tmp: &Path, args: &[&str]) -> Self {
        let mut child = simulator(tmp)
            .arg("up")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the simulator binary runs");
        let (send, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        forward_lines(stdout, send.clone());
        forward_lines(stderr, send);
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads until the stack is described, and parses the description.
    fn wait_ready(&mut self) -> Printed {
        let deadline = Instant::now() + READY_TIMEOUT;
        while !self.seen.iter().any(|l| l == "Ctrl-C stops the stack.") {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!("`up` did not get ready:\n{}", self.seen.join("\n")),
            }
        }
        parse(&self.seen)
    }

    /// Waits for it to exit and for its output to end; everything it printed.
    fn wait(&mut self, timeout: Duration) -> (ExitStatus, String) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "`up` did not exit:\n{}",
                self.seen.join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        (status, self.seen.join("\n"))
    }

    fn signal(&self, signal: &str) {
        signal_pid(self.child.id(), signal);
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn forward_lines(output: impl Read + Send + 'static, send: mpsc::Sender<String>) {
    std::thread::spawn(move || {
        for line in BufReader::new(output).lines() {
            let Ok(line) = line else { break };
            if send.send(line).is_err() {
                break;
            }
        }
    });
}

fn parse(lines: &[String]) -> Printed {
    let find = |prefix: &str| {
        lines
            .iter()
            .find_map(|l| l.trim().strip_prefix(prefix).map(str::trim))
            .unwrap_or_else(|| panic!("no line {prefix:?}:\n{}", lines.join("\n")))
    };
    let word = |prefix: &str| find(prefix).split_whitespace().next().unwrap().to_owned();
    Printed {
        run_dir: PathBuf::from(word("run directory ")),
        gateway_pid: find("gateway is up (pid ")
            .trim_end_matches(')')
            .parse()
            .unwrap(),
        gateway_url: find("URL ").to_owned(),
        bank_url: word("chaos ").trim_end_matches("/admin/chaos").to_owned(),
        api_key: word("API key "),
        postgres_dir: lines.iter().find_map(|l| {
            let rest = l.strip_prefix("started a throwaway PostgreSQL cluster in ")?;
            Some(PathBuf::from(rest.split_whitespace().next()?))
        }),
    }
}

fn signal_pid(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill {signal} {pid} failed");
}

/// Whether `pid` is a live process (a zombie is dead: it only waits to be reaped).
fn is_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            let state = stat[stat.rfind(')').unwrap() + 1..]
                .split_whitespace()
                .next();
            !matches!(state, Some("Z" | "X"))
        })
        .unwrap_or(false)
}

fn port(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().unwrap()
}

fn is_listened_on(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// Polls `condition` until it holds, for at most `timeout`.
fn eventually(timeout: Duration, condition: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    condition()
}

#[test]
fn kill_9_of_up_takes_the_gateway_the_bank_and_postgres_along() {
    let tmp = temp_dir("kill-9");
    let mut up = Up::start(&tmp, &[&FREE_PORTS[..], &["--calm"]].concat());
    let printed = up.wait_ready();
    let (gateway, bank) = (port(&printed.gateway_url), port(&printed.bank_url));
    assert!(is_alive(printed.gateway_pid));
    assert!(is_listened_on(gateway) && is_listened_on(bank));

    up.signal("-KILL");
    up.wait(Duration::from_secs(10));
    assert!(
        eventually(Duration::from_secs(5), || !is_alive(printed.gateway_pid)),
        "the gateway (pid {}) outlived `up`",
        printed.gateway_pid
    );
    assert!(
        eventually(Duration::from_secs(5), || !is_listened_on(gateway)
            && !is_listened_on(bank)),
        "ports {gateway} (gateway) and {bank} (bank) are still taken"
    );
    if let Some(postgres) = &printed.postgres_dir {
        // Its watchdog polls once a second, then stops the server.
        assert!(
            eventually(Duration::from_secs(20), || !postgres.exists()),
            "the throwaway cluster in {} outlived `up`",
            postgres.display()
        );
    }
    // SIGKILL left no chance to remove the run directory.
    assert!(
        printed.run_dir.starts_with(&tmp),
        "{}",
        printed.run_dir.display()
    );
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn simulator_gateway_runs_on_the_running_stack_and_a_clean_stop_leaves_nothing() {
    let tmp = temp_dir("gateway-command");
    let mut up = Up::start(&tmp, &[&FREE_PORTS[..], &["--calm"]].concat());
    let printed = up.wait_ready();
    let said = up.seen.join("\n");
    assert_eq!(printed.run_dir.parent(), Some(tmp.as_path()), "{said}");
    assert_eq!(entries(&printed.run_dir), ["gateway.log", "stack.json"]);
    assert_eq!(said.matches("  database postgres://").count(), 2, "{said}");
    assert!(
        said.contains("cargo run -p simulator -- gateway api-key list"),
        "{said}"
    );

    // Found through the run directory: no DATABASE_URL given.
    let listed = simulator(&tmp)
        .args(["gateway", "api-key", "list"])
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&listed.stdout);
    let stderr = String::from_utf8_lossy(&listed.stderr);
    assert!(listed.status.success(), "{stdout}\n{stderr}");
    let prefix = &printed.api_key[..12];
    assert!(
        stdout.contains(&format!("\tficmart\t{prefix}\t")) && stdout.contains("active"),
        "{stdout}"
    );

    up.signal("-TERM");
    let (status, said) = up.wait(Duration::from_secs(60));
    assert!(status.success(), "{said}");
    assert!(said.lines().any(|l| l == "stopped"), "{said}");
    assert!(entries(&tmp).is_empty(), "left behind: {:?}", entries(&tmp));
    let after = simulator(&tmp)
        .args(["gateway", "api-key", "list"])
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&after.stderr);
    assert!(!after.status.success(), "no stack runs any more: {stderr}");
    assert!(stderr.contains("no `simulator up` is running"), "{stderr}");
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn the_run_directory_is_kept_and_named_when_the_gateway_dies() {
    let tmp = temp_dir("gateway-dies");
    let mut up = Up::start(&tmp, &[&FREE_PORTS[..], &["--calm"]].concat());
    let printed = up.wait_ready();
    signal_pid(printed.gateway_pid, "-KILL");
    let (status, said) = up.wait(Duration::from_secs(60));
    assert!(!status.success(), "{said}");
    let dir = printed.run_dir.display().to_string();
    assert!(said.contains("the gateway exited"), "{said}");
    assert!(said.contains(&format!("logs are kept in {dir}")), "{said}");
    // The log stays for reading; the record of a running stack does not.
    assert_eq!(entries(&printed.run_dir), ["gateway.log"]);
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn keep_logs_keeps_the_run_directory_after_a_clean_stop() {
    let tmp = temp_dir("keep-logs");
    let mut up = Up::start(
        &tmp,
        &[&FREE_PORTS[..], &["--calm", "--keep-logs"]].concat(),
    );
    let printed = up.wait_ready();
    up.signal("-INT");
    let (status, said) = up.wait(Duration::from_secs(60));
    assert!(status.success(), "{said}");
    let dir = printed.run_dir.display().to_string();
    let kept = format!("stopped; its logs are kept in {dir}");
    assert!(said.lines().any(|l| l == kept), "{said}");
    assert_eq!(entries(&printed.run_dir), ["gateway.log"]);
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn a_busy_port_fails_up_at_once_and_names_the_port() {
    let tmp = temp_dir("busy-port");
    let taken = TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let started = Instant::now();
    let Output { status, stderr, .. } = simulator(&tmp)
        .args([
            "up",
            "--gateway-port",
            &port,
            "--bank-port",
            "0",
            "--operator-port",
            "0",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&stderr);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "port {port} is already in use (is another `simulator up` running?)"
        )),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(5), "not at once");
    assert!(entries(&tmp).is_empty(), "left behind: {:?}", entries(&tmp));
    std::fs::remove_dir_all(&tmp).unwrap();
}

/// When the port is taken after `up` looked (a race), the gateway's own
/// error is in the message, not only in its log.
#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_that_cannot_bind_says_why_in_the_error() {
    let tmp = temp_dir("gateway-bind");
    let taken = TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut gateway = GatewayOptions::new(port, GatewayOutput::LogFile(tmp.join("gateway.log")));
    gateway.program = Some(PathBuf::from(env!("CARGO_BIN_EXE_simulator")));
    let started = Stack::start(&StackOptions {
        bank_port: 0,
        bank_chaos: BankChaos::Calm,
        gateway: Some(gateway),
        durability: Durability::Fast,
    })
    .await;
    let error = format!("{:#}", started.err().expect("the gateway cannot start"));
    assert!(error.contains("exited before it was ready"), "{error}");
    assert!(
        error.to_lowercase().contains("address already in use"),
        "{error}"
    );
    std::fs::remove_dir_all(&tmp).unwrap();
}
