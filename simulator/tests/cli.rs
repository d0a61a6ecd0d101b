//! The built `simulator` binary, run as a user would.

use std::process::{Command, Output};

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
    for command in ["up", "bench"] {
        assert!(
            help.lines()
                .any(|line| line.trim_start().starts_with(command)),
            "--help does not list `{command}`:\n{help}"
        );
    }
}

#[test]
fn the_gateway_target_is_not_there_yet() {
    let output = simulator(&["bench", "--target", "gateway"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("issue 3"));
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
        "--json",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench failed:\n{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{stderr}"));
    assert_eq!(report["total"], 200);
    assert_eq!(report["ok"], 200, "{report:#}");
    assert_eq!(report["errors"], serde_json::json!({}), "{report:#}");
    let rate = report["authorizations_per_second"]
        .as_f64()
        .expect("a numeric rate");
    assert!(rate > 0.0, "{report:#}");
    assert_eq!(report["ledger"]["ok"], true, "{report:#}");
    let latency = &report["latency_us"];
    let us = |field: &str| latency[field].as_u64().expect("integer microseconds");
    assert!(us("p50_us") <= us("p95_us"));
    assert!(us("p95_us") <= us("p99_us"));
    assert!(us("p99_us") <= us("max_us"));
}
