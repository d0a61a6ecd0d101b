//! The built `simulator` binary, run as a user would.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn simulator(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_simulator"))
        .args(args)
        .output()
        .expect("the simulator binary runs")
}

#[test]
fn help_lists_the_commands() {
    let output = simulator(&["--help"]);
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for command in ["up", "bench", "run"] {
        assert!(
            help.lines()
                .any(|line| line.trim_start().starts_with(command)),
            "--help does not list `{command}`:\n{help}"
        );
    }
}

/// A scenario file (as a failing run writes its shrunk scenario) is run as
/// it is, and the printed replay command names it.
#[test]
fn run_replays_a_scenario_file_and_says_how() {
    use simulator::scenario::{Params, Profile, generate};
    let mut scenario = generate(
        11,
        &Params {
            payments: 3..=3,
            cards: 2,
            profiles: vec![Profile::parse("calm").unwrap()],
            kill_every_ms: None,
            random_kills: 0,
            horizon_ms: 1_000,
        },
    );
    scenario.faults.outages.clear();
    let path = std::env::temp_dir().join(format!(
        "simulator-cli-test-{}.shrunk.json",
        std::process::id()
    ));
    simulator::simulate::write_scenario(&path, &scenario).unwrap();
    let file = path.display().to_string();
    let output = simulator(&["run", "--scenario", &file, "--quiet", "--concurrency", "2"]);
    std::fs::remove_file(&path).ok();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.starts_with("simulator run: PASS (seed 11)"),
        "{stdout}"
    );
    assert!(stdout.contains("3 of 3 payments"), "{stdout}");
    assert!(stdout.contains("PASS  12. card data"), "{stdout}");
    assert!(
        stdout.ends_with(&format!(
            "replay: simulator run --scenario {file} --concurrency 2 --replicas 2\n"
        )),
        "{stdout}"
    );
}

#[test]
fn bench_against_its_own_bank_reports_every_authorization() {
    let output = simulator(&[
        "bench",
        "--target",
        "bank",
        "--requests",
        "200",
        "--concurrency",
        "16",
        "--cards",
        "5",
        "--floor-seconds",
        "0",
        "--json",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench failed:\n{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{stderr}"));
    assert_eq!(report["total"], 200);
    assert_eq!(
        report["floor"],
        serde_json::Value::Null,
        "--floor-seconds 0"
    );
    // The steady window is inside the run and has its own rate.
    let steady = &report["steady_state"];
    let start = steady["start_us"].as_u64().expect("a window start");
    let end = steady["end_us"].as_u64().expect("a window end");
    assert!(start < end, "{report:#}");
    assert!(end <= report["elapsed_us"].as_u64().unwrap(), "{report:#}");
    assert!(
        steady["per_second"].as_f64().expect("a rate") > 0.0,
        "{report:#}"
    );
    assert_eq!(
        steady["share_of_ceiling"],
        serde_json::Value::Null,
        "{report:#}"
    );
    assert_eq!(report["ok"], 200, "{report:#}");
    assert_eq!(report["errors"], serde_json::json!({}), "{report:#}");
    let rate = report["authorizations_per_second"]
        .as_f64()
        .expect("a numeric rate");
    assert!(rate > 0.0, "{report:#}");
    assert_eq!(
        report["ceiling_per_second"],
        serde_json::Value::Null,
        "no added latency"
    );
    assert_eq!(report["ledger"]["ok"], true, "{report:#}");
    let latency = &report["latency_us"];
    let us = |field: &str| latency[field].as_u64().expect("integer microseconds");
    assert!(us("p50_us") <= us("p95_us"));
    assert!(us("p95_us") <= us("p99_us"));
    assert!(us("p99_us") <= us("max_us"));
}

#[test]
fn bench_through_its_own_gateway_reports_every_payment() {
    let output = simulator(&[
        "bench",
        "--target",
        "gateway",
        "--requests",
        "100",
        "--concurrency",
        "20",
        "--cards",
        "5",
        "--bank-latency-ms",
        "50",
        "--floor-seconds",
        "0",
        "--json",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench failed:\n{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{stderr}"));
    assert_eq!(report["target"], "gateway", "{report:#}");
    assert_eq!(report["total"], 100);
    assert_eq!(report["ok"], 100, "{report:#}\n{stderr}");
    assert_eq!(report["errors"], serde_json::json!({}), "{report:#}");
    assert_eq!(report["gateway_db_pool_size"], 10, "{report:#}");
    assert_eq!(report["ledger"]["ok"], true, "{report:#}");
    // A bench measures durable commits, whatever the tests' clusters do,
    // with Postgres's own autovacuum (with DATABASE_URL, the server says
    // what it does).
    if std::env::var_os("DATABASE_URL").is_none() {
        assert_eq!(
            report["postgres_durability"],
            "fsync on, synchronous_commit on, autovacuum_naptime 1min",
            "{report:#}"
        );
    }
    // 20 clients, each request 50 ms at the bank at least: 400/s at most.
    assert_eq!(report["ceiling_per_second"], 400.0, "{report:#}");
    let rate = report["authorizations_per_second"]
        .as_f64()
        .expect("a rate");
    assert!(rate > 0.0 && rate <= 400.0, "{report:#}");
    let share = report["steady_state"]["share_of_ceiling"]
        .as_f64()
        .expect("a share of the ceiling");
    // Not bounded by 1 in so short a run: a window of a few requests per
    // client counts whole requests that began just before it.
    assert!(share > 0.0, "{report:#}");
    // Every party is reported; the gateway and its database certainly
    // worked (coarser ones may round to zero ticks of 10 ms in so short a
    // run), and the machine's total covers them.
    let cpu = &report["cpu_ms_per_authorization"]["ms"];
    let ms = |party: &str| {
        cpu[party]
            .as_f64()
            .unwrap_or_else(|| panic!("no CPU for {party}: {report:#}"))
    };
    for party in ["bank's Postgres", "load generator and bank"] {
        assert!(ms(party) >= 0.0, "{party}: {report:#}");
    }
    for party in ["gateway process", "gateway's Postgres"] {
        assert!(ms(party) > 0.0, "{party}: {report:#}");
    }
    assert!(
        ms("machine, all busy cores") >= ms("gateway process") + ms("gateway's Postgres"),
        "{report:#}"
    );
}

/// A running `simulator up`; dropping it stops it (SIGTERM, then SIGKILL),
/// so that a failing test leaves nothing behind.
struct Up {
    child: Child,
    /// Its stdout, line by line, read by a thread until it closes.
    lines: mpsc::Receiver<String>,
}

impl Up {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_simulator"))
            .arg("up")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the simulator binary runs");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// The next line of its stdout, or `None` after `timeout` or at its end.
    fn next_line(&self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} failed");
    }

    /// Waits up to `timeout` for it to exit.
    fn wait(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            if self.wait(Duration::from_secs(40)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// Whether a process with this pid runs the hidden `gateway` subcommand.
fn gateway_is_running(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|cmdline| cmdline.split(|&b| b == 0).any(|arg| arg == b"gateway"))
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread")]
async fn up_serves_the_printed_payment_and_stops_cleanly_on_sigterm() {
    let mut up = Up::start(&[
        "--bank-port",
        "0",
        "--gateway-port",
        "0",
        "--operator-port",
        "0",
        "--calm",
    ]);
    let (mut pid, mut url, mut key, mut operator) = (None, None, None, None);
    let mut seen = Vec::new();
    while pid.is_none() || url.is_none() || key.is_none() || operator.is_none() {
        let line = tokio::task::block_in_place(|| up.next_line(Duration::from_secs(120)))
            .unwrap_or_else(|| {
                panic!(
                    "`up` did not print the gateway; it printed:\n{}",
                    seen.join("\n")
                )
            });
        let text = line.trim();
        if let Some(rest) = text.strip_prefix("gateway is up (pid ") {
            pid = rest.trim_end_matches(')').parse::<u32>().ok();
        } else if let Some(rest) = text.strip_prefix("URL ") {
            url = Some(rest.trim().to_owned());
        } else if let Some(rest) = text.strip_prefix("API key ") {
            key = rest.split_whitespace().next().map(str::to_owned);
        } else if let Some(rest) = text.strip_prefix("operator ") {
            operator = Some(rest.trim().to_owned());
        }
        seen.push(line);
    }
    let (pid, url, key) = (pid.unwrap(), url.unwrap(), key.unwrap());
    let operator = operator.unwrap();
    assert!(gateway_is_running(pid), "no gateway process at pid {pid}");
    // The printed operator URL serves readiness and metrics; the API's does not.
    for path in ["/ready", "/metrics"] {
        let client = reqwest::Client::new();
        let served = client.get(format!("{operator}{path}")).send().await;
        assert_eq!(
            served.expect("the operator port answers").status(),
            reqwest::StatusCode::OK,
            "{path}"
        );
        let public = client.get(format!("{url}{path}")).send().await;
        assert_eq!(
            public.expect("the API answers").status(),
            reqwest::StatusCode::NOT_FOUND,
            "{path}"
        );
    }

    // What the printed curl sends.
    let response = reqwest::Client::new()
        .post(format!("{url}/v1/payments"))
        .bearer_auth(&key)
        .header("Idempotency-Key", format!("test-{}", std::process::id()))
        .header("Content-Type", "application/json")
        .body(
            r#"{"order_id":"ord_1001","customer_id":"cus_77","amount":4999,"currency":"USD","card":{"number":"4111111111111111","cvv":"123","expiry_month":12,"expiry_year":2030}}"#,
        )
        .send()
        .await
        .expect("the gateway answers");
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    assert_eq!(status, reqwest::StatusCode::CREATED, "{body}");
    let payment: serde_json::Value = serde_json::from_str(&body).expect("a JSON payment");
    assert_eq!(payment["status"], "authorized", "{payment:#}");

    up.signal("-TERM");
    let status = tokio::task::block_in_place(|| up.wait(Duration::from_secs(60)))
        .expect("`up` did not exit within 60 s of SIGTERM");
    assert!(status.success(), "`up` exited with {status}");
    assert!(
        !gateway_is_running(pid),
        "the gateway (pid {pid}) outlived `up`"
    );
}

#[test]
fn bench_with_a_webhook_endpoint_delivers_while_it_loads() {
    // 200 payments, 20 at a time, each at least 100 ms at the bank: a
    // second of load, in which the delivery workers (polling every 250 ms)
    // send the first events.
    let output = simulator(&[
        "bench",
        "--target",
        "gateway",
        "--requests",
        "200",
        "--concurrency",
        "20",
        "--cards",
        "5",
        "--bank-latency-ms",
        "100",
        "--webhook",
        "calm",
        "--floor-seconds",
        "0",
        "--json",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench failed:\n{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{stderr}"));
    assert_eq!(report["ok"], 200, "{report:#}\n{stderr}");
    assert_eq!(report["webhook"]["receiver"], "calm", "{report:#}");
    let received = report["webhook"]["deliveries_received"]
        .as_u64()
        .expect("a count");
    assert!(
        received > 0,
        "nothing delivered during the load: {report:#}"
    );
}

/// A few dozen checkout flows: every kind of request is answered, each
/// has its latencies, the steady state has its rates, the ledger holds,
/// and the floor (pgbench on the same cluster) puts a flow in inserts.
#[test]
fn bench_mix_runs_whole_flows_and_reports_each_operation() {
    let output = simulator(&[
        "bench",
        "--target",
        "gateway",
        "--mix",
        "--seed",
        "7",
        "--requests",
        "30",
        "--concurrency",
        "6",
        "--cards",
        "5",
        "--bank-latency-ms",
        "20",
        "--floor-seconds",
        "1",
        "--json",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench failed:\n{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{stderr}"));
    assert_eq!(report["total"], 30);
    assert_eq!(report["ok"], 30, "{report:#}\n{stderr}");
    assert_eq!(report["errors"], serde_json::json!({}), "{report:#}");
    assert_eq!(report["ledger"]["ok"], true, "{report:#}");
    let mix = &report["mix"];
    assert_eq!(mix["seed"], 7, "{report:#}");
    assert!(
        mix["flows_per_second"].as_f64().unwrap() > 0.0,
        "{report:#}"
    );
    assert!(
        mix["operations_per_second"].as_f64().unwrap() > mix["flows_per_second"].as_f64().unwrap(),
        "{report:#}"
    );
    let by = &mix["by_operation"];
    let ok = |op: &str| by[op]["ok"].as_u64().unwrap_or(0);
    assert_eq!(ok("authorize"), 30, "{report:#}");
    assert_eq!(ok("get"), 30, "{report:#}");
    assert_eq!(ok("capture") + ok("void"), 30, "{report:#}");
    assert!(ok("capture") > ok("void"), "{report:#}");
    for op in [
        "authorize",
        "get",
        "capture",
        "list_by_order",
        "list_by_customer",
    ] {
        let latency = &by[op]["latency_us"];
        let us = |field: &str| {
            latency[field]
                .as_u64()
                .unwrap_or_else(|| panic!("no {field} for {op}: {report:#}"))
        };
        assert!(us("p50_us") <= us("p95_us") && us("p95_us") <= us("p99_us"));
        assert_eq!(by[op]["errors"], serde_json::json!({}), "{report:#}");
    }
    let steady = &report["steady_state"];
    assert!(
        steady["per_second"].as_f64().expect("flows/s") > 0.0,
        "{report:#}"
    );
    assert!(
        steady["operations_per_second"]
            .as_f64()
            .expect("operations/s")
            > 0.0,
        "{report:#}"
    );
    assert!(steady["share_of_ceiling"].as_f64().is_some(), "{report:#}");
    // CPU per flow, and the floor beside it (or why there is none).
    assert!(
        report["cpu_ms_per_flow"]["ms"]["gateway process"]
            .as_f64()
            .is_some(),
        "{report:#}"
    );
    assert_eq!(report["cpu_ms_per_authorization"], serde_json::Value::Null);
    let floor = &report["floor"];
    match floor["skipped"].as_str() {
        None => {
            let insert = floor["insert"]["cpu_ms_per_insert"]
                .as_f64()
                .expect("a cost");
            assert!(insert > 0.0, "{report:#}");
            assert!(
                floor["flow_in_inserts"].as_f64().expect("a ratio") > 0.0,
                "{report:#}"
            );
        }
        Some(why) => eprintln!("the floor was not measured: {why}"),
    }
}
