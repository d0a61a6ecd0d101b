//! `simulator run`: a seeded scenario against its own stack, the report,
//! and the exit status (non-zero on any violation). Also the shrinking
//! loop that the property test uses.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use crate::cli::RunArgs;
use crate::run::{RunOptions, Session};
use crate::run_report::RunReport;
use crate::scenario::{self, Params, Profile, Scenario};
use crate::stack::{BankChaos, Stack, StackOptions};

/// A Postgres and a calm bank on a free port, no gateway (each run starts
/// its own replicas).
pub fn stack_options() -> StackOptions {
    StackOptions {
        bank_port: 0,
        bank_chaos: BankChaos::Calm,
        gateway: None,
    }
}

/// Runs `scenario` on `stack`: every phase, the report.
pub async fn simulate(
    stack: &Stack,
    scenario: Scenario,
    options: RunOptions,
) -> anyhow::Result<RunReport> {
    Session::start(stack, scenario, options).await?.run().await
}

/// Shrinks a failing `scenario`: tries [`Scenario::smaller`] variants,
/// keeps the first that still fails, until none does or `budget` runs are
/// spent. Returns the smallest failing scenario and its report.
pub async fn shrink(
    stack: &Stack,
    scenario: Scenario,
    report: RunReport,
    options: &RunOptions,
    budget: usize,
) -> (Scenario, RunReport) {
    let (mut smallest, mut report) = (scenario, report);
    let mut runs = 0;
    'shrink: while runs < budget {
        for candidate in smallest.smaller() {
            if runs >= budget {
                break 'shrink;
            }
            runs += 1;
            eprintln!(
                "shrinking ({runs}/{budget}): trying {} payments",
                candidate.payments.len()
            );
            match simulate(stack, candidate.clone(), options.clone()).await {
                Ok(r) if !r.passed => {
                    smallest = candidate;
                    report = r;
                    continue 'shrink;
                }
                Ok(_) => {}
                Err(e) => eprintln!("a shrinking run failed to run: {e:#}"),
            }
        }
        break;
    }
    (smallest, report)
}

pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    if args.verbose {
        mock_bank::telemetry::init_logging();
    }
    let profile = Profile::parse(&args.chaos).map_err(anyhow::Error::msg)?;
    let seed = args.seed.unwrap_or_else(rand::random);
    let kill_every_ms = args
        .kill_every
        .map(|d| u32::try_from(d.as_millis()).unwrap_or(u32::MAX));
    let params = Params {
        payments: usize::try_from(args.payments)?..=usize::try_from(args.payments)?,
        cards: args.cards,
        profiles: vec![profile],
        kill_every_ms,
        random_kills: 0,
        horizon_ms: args
            .duration
            .map_or(30_000, |d| u32::try_from(d.as_millis()).unwrap_or(u32::MAX)),
    };
    let scenario = scenario::generate(seed, &params);
    let header = scenario.to_string();
    eprintln!("{}", header.lines().next().unwrap_or_default());
    let options = RunOptions {
        concurrency: usize::try_from(args.concurrency)?,
        replicas: usize::try_from(args.replicas)?,
        duration: args.duration,
        program: None,
        verbose: args.verbose,
        progress: !args.quiet,
        quiesce_timeout: Duration::from_secs(120),
        gateway_bank_url: None,
    };
    let stack = Stack::start(&stack_options()).await?;
    eprintln!("{}", stack.database());
    let outcome = simulate(&stack, scenario, options).await;
    stack.shutdown().await;
    let report = outcome?;
    println!("{report}");
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        let html = path.with_extension(match path.extension() {
            Some(ext) => format!("{}.html", ext.to_string_lossy()),
            None => "html".to_owned(),
        });
        std::fs::write(&html, report.html())
            .with_context(|| format!("writing {}", html.display()))?;
        eprintln!("report: {} and {}", path.display(), html.display());
    }
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
