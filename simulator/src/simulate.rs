//! `simulator run`: a seeded scenario (or one read from a file) against its
//! own stack, the report, and the exit status (non-zero on any violation).
//! On a violation the scenario is shrunk, re-run on fresh stacks, and the
//! smallest that still fails is written to a file that `--scenario`
//! replays. Also the shrinking loop that the property test uses.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use crate::cli::RunArgs;
use crate::run::{Given, RunOptions, Session};
use crate::run_report::RunReport;
use crate::scenario::{self, Params, Profile, Scenario};
use crate::stack::{BankChaos, Durability, Stack, StackOptions};

/// Re-runs `simulator run` may spend on shrinking a failure.
pub const SHRINK_RUNS: usize = 6;

/// A Postgres and a calm bank on a free port, no gateway (each run starts
/// its own replicas).
pub fn stack_options() -> StackOptions {
    StackOptions {
        bank_port: 0,
        bank_chaos: BankChaos::Calm,
        gateway: None,
        durability: Durability::Fast,
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

/// Runs `scenario` on the running system `options.given` names (see
/// [`Given`]): nothing is started; a scenario with kills is refused.
pub async fn simulate_given(scenario: Scenario, options: RunOptions) -> anyhow::Result<RunReport> {
    Session::start_given(scenario, options).await?.run().await
}

/// Runs `scenario` on a stack of its own, shut down afterwards.
pub async fn simulate_on_fresh_stack(
    scenario: Scenario,
    options: RunOptions,
) -> anyhow::Result<RunReport> {
    let stack = Stack::start(&stack_options()).await?;
    let outcome = simulate(&stack, scenario, options).await;
    stack.shutdown().await;
    outcome
}

/// Shrinks a failing `scenario` on `stack`: see [`shrink_with`].
pub async fn shrink(
    stack: &Stack,
    scenario: Scenario,
    report: RunReport,
    options: &RunOptions,
    budget: usize,
) -> (Scenario, RunReport) {
    shrink_with(scenario, report, budget, async |candidate| {
        simulate(stack, candidate, options.clone()).await
    })
    .await
}

/// Shrinks a failing `scenario`: tries [`Scenario::smaller`] variants with
/// `run`, keeps the first that still fails, until none does or `budget`
/// runs are spent. Returns the smallest failing scenario and its report.
pub async fn shrink_with(
    scenario: Scenario,
    report: RunReport,
    budget: usize,
    mut run: impl AsyncFnMut(Scenario) -> anyhow::Result<RunReport>,
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
            match run(candidate.clone()).await {
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

/// The scenario `args` ask for: read from `--scenario`, or generated from
/// the seed (a random one when none is given) and the flags.
pub fn scenario_of(args: &RunArgs) -> anyhow::Result<Scenario> {
    if let Some(path) = &args.scenario {
        return read_scenario(path);
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
    let mut scenario = scenario::generate(seed, &params);
    scenario.faults.console_waves = spread(args.console_waves);
    Ok(scenario)
}

/// `count` moments spread evenly over the payments, in permille of them
/// done: 1 → 500; 3 → 250, 500, 750.
pub(crate) fn spread(count: u32) -> Vec<u32> {
    (1..=count).map(|k| k * 1_000 / (count + 1)).collect()
}

/// How `args` run a scenario.
pub fn options_of(args: &RunArgs) -> anyhow::Result<RunOptions> {
    Ok(RunOptions {
        concurrency: usize::try_from(args.concurrency)?,
        replicas: usize::try_from(args.replicas)?,
        duration: args.duration,
        program: None,
        verbose: args.verbose,
        log_dir: None,
        progress: !args.quiet,
        quiesce_timeout: Duration::from_secs(120),
        gateway_bank_url: None,
        given: given_of(args),
        mutant: args.mutant.clone(),
        reconcile_every: args.reconcile_every,
    })
}

/// The running system `--gateway-url` and its companions name (clap makes
/// sure they come together).
fn given_of(args: &RunArgs) -> Option<Given> {
    if args.gateway_url.is_empty() {
        return None;
    }
    Some(Given {
        gateway_urls: args
            .gateway_url
            .iter()
            .map(|u| u.trim_end_matches('/').to_owned())
            .collect(),
        api_key: args.api_key.clone()?,
        bank_url: args.bank_url.clone()?,
        gateway_database_url: args.gateway_database_url.clone()?,
        bank_database_url: args.bank_database_url.clone()?,
    })
}

/// A scenario as `--scenario` reads it.
pub fn read_scenario(path: &Path) -> anyhow::Result<Scenario> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the scenario {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{} is not a scenario (JSON)", path.display()))
}

/// Writes `scenario` where `--scenario` can read it.
pub fn write_scenario(path: &Path, scenario: &Scenario) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(scenario)? + "\n")
        .with_context(|| format!("writing the scenario to {}", path.display()))
}

/// `--report FILE` + `.shrunk.json`, or one in the temporary directory
/// named after the run.
fn shrunk_path(report: Option<&Path>, run_id: &str) -> PathBuf {
    match report {
        Some(path) => {
            let mut name = path.as_os_str().to_owned();
            name.push(".shrunk.json");
            PathBuf::from(name)
        }
        None => std::env::temp_dir().join(format!("simulator-{run_id}.shrunk.json")),
    }
}

pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    if args.verbose {
        mock_bank::telemetry::init_logging();
    }
    let scenario = scenario_of(&args)?;
    eprintln!("{}", scenario.headline());
    let options = options_of(&args)?;
    let outcome = if let Some(given) = &options.given {
        crate::run::refuse_kills(&scenario)?;
        eprintln!("{}", given.describe());
        simulate_given(scenario.clone(), options.clone()).await
    } else {
        let stack = Stack::start(&stack_options()).await?;
        eprintln!("{}", stack.database());
        let outcome = simulate(&stack, scenario.clone(), options.clone()).await;
        stack.shutdown().await;
        outcome
    };
    let mut report = outcome?;
    report.scenario_file = args.scenario.as_ref().map(|p| p.display().to_string());
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
    if report.passed {
        return Ok(ExitCode::SUCCESS);
    }
    if !args.no_shrink {
        shrink_and_print(&args, scenario, report, &options).await?;
    }
    Ok(ExitCode::FAILURE)
}

/// Shrinks a failure (each re-run on a fresh stack), prints the smallest
/// failing scenario and its report, writes it for `--scenario`, and prints
/// both replay commands.
async fn shrink_and_print(
    args: &RunArgs,
    scenario: Scenario,
    report: RunReport,
    options: &RunOptions,
) -> anyhow::Result<()> {
    let replay = report.replay_command();
    let path = shrunk_path(args.report.as_deref(), &report.run_id);
    let planned = scenario.payments.len();
    let quiet = RunOptions {
        progress: false,
        ..options.clone()
    };
    let given = quiet.given.is_some();
    eprintln!(
        "shrinking: at most {SHRINK_RUNS} re-runs, {}",
        if given {
            "each on the given URLs with fresh cards"
        } else {
            "each on a fresh stack"
        }
    );
    let (smallest, mut small_report) =
        shrink_with(scenario.clone(), report, SHRINK_RUNS, async |candidate| {
            if given {
                simulate_given(candidate, quiet.clone()).await
            } else {
                simulate_on_fresh_stack(candidate, quiet.clone()).await
            }
        })
        .await;
    write_scenario(&path, &smallest)?;
    small_report.scenario_file = Some(path.display().to_string());
    if smallest == scenario {
        println!("\nno smaller scenario failed within {SHRINK_RUNS} re-runs; this one:");
    } else {
        println!(
            "\nshrunk from {planned} to {} payment(s):",
            smallest.payments.len()
        );
    }
    println!("{smallest}\n\n{small_report}\n");
    println!("shrunk scenario written to {}", path.display());
    println!("replay the run:              {replay}");
    println!(
        "replay the shrunk scenario:  {}",
        small_report.replay_command()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};
    use crate::invariants::{CardData, Observations};

    fn run_args(args: &[String]) -> RunArgs {
        match Cli::try_parse_from(args).unwrap().command {
            Command::Run(args) => args,
            Command::Up(_)
            | Command::Bench(_)
            | Command::Gateway(_)
            | Command::Mutants(_)
            | Command::Load(_)
            | Command::Reads(_) => {
                panic!("not run")
            }
        }
    }

    /// A command line as a shell splits it (single quotes and backslashes).
    fn words(command: &str) -> Vec<String> {
        let (mut words, mut word, mut quoted) = (Vec::new(), String::new(), false);
        let mut chars = command.chars();
        while let Some(c) = chars.next() {
            match c {
                '\'' => quoted = !quoted,
                '\\' if !quoted => word.extend(chars.next()),
                ' ' if !quoted => {
                    if !word.is_empty() {
                        words.push(std::mem::take(&mut word));
                    }
                }
                c => word.push(c),
            }
        }
        words.push(word);
        words
    }

    /// The report `scenario` would get (the replay command reads only the
    /// scenario and the options).
    fn report_of(scenario: &Scenario, options: &RunOptions) -> RunReport {
        let nothing = Observations {
            seed: scenario.seed,
            flows: vec![],
            receipts: vec![],
            bank: vec![],
            bank_keys: vec![],
            operations: vec![],
            tapped: None,
            cards: vec![],
            ledger: serde_json::json!({"ok": true}),
            reconcile: Ok(vec![]),
            in_flight: vec![],
            authorization_grace_ms: 0,
            key_retention_ms: 0,
            webhooks: None,
            revocation: None,
            bank_own_errors: None,
            index: Default::default(),
            card_data: CardData::default(),
        };
        let invariants = crate::invariants::check(&nothing);
        let events = vec![];
        RunReport::new(
            scenario,
            options,
            &nothing,
            invariants,
            Default::default(),
            events,
            (0, 0),
            (0, 0),
        )
    }

    fn temp_file(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("simulator-test-{}-{name}", std::process::id()))
    }

    #[test]
    fn a_scenario_written_and_read_back_is_the_same() {
        let args = words(
            r#"simulator run --seed 9 --payments 40 --cards 5 --chaos everything --kill-every 2s"#,
        );
        let mut scenario = scenario_of(&run_args(&args)).unwrap();
        scenario.faults.kills_ms = vec![250, 1_500];
        scenario.profile = Profile::parse(r#"{"failure_rate": 0.07, "timeout_ms": 1500}"#).unwrap();
        let path = temp_file("round-trip.json");
        write_scenario(&path, &scenario).unwrap();
        let read = read_scenario(&path);
        std::fs::remove_file(&path).ok();
        assert_eq!(read.unwrap(), scenario);
    }

    #[test]
    fn the_printed_replay_commands_give_the_same_scenario() {
        // The run options a replay must give again.
        let shape = |o: &RunOptions| (o.concurrency, o.replicas, o.duration, o.reconcile_every);
        for command in [
            "simulator run --seed 5 --payments 12 --cards 3 --chaos crashy --duration 20s --replicas 2 --concurrency 4",
            "simulator run --seed 6 --payments 7 --chaos lossy --kill-every 1500ms --reconcile-every 1s",
            r#"simulator run --seed 7 --payments 9 --cards 2 --chaos {"error_after_commit_rate":0.5}"#,
        ] {
            let args = run_args(&words(command));
            let scenario = scenario_of(&args).unwrap();
            let options = options_of(&args).unwrap();
            let replay = report_of(&scenario, &options).replay_command();
            let again = run_args(&words(&replay));
            assert_eq!(
                scenario_of(&again).unwrap(),
                scenario,
                "{command} → {replay}"
            );
            assert_eq!(
                shape(&options_of(&again).unwrap()),
                shape(&options),
                "{replay}"
            );

            // The shrunk one: written, named by `--scenario`, read back.
            let mut shrunk = scenario.clone();
            shrunk.payments.truncate(2);
            shrunk.faults.kills_ms.clear();
            let path = temp_file("shrunk folder/it's.json");
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            write_scenario(&path, &shrunk).unwrap();
            let mut report = report_of(&shrunk, &options);
            report.scenario_file = Some(path.display().to_string());
            let replay = report.replay_command();
            let again = run_args(&words(&replay));
            let read = scenario_of(&again);
            std::fs::remove_dir_all(path.parent().unwrap()).ok();
            assert_eq!(read.unwrap(), shrunk, "{replay}");
            assert_eq!(
                shape(&options_of(&again).unwrap()),
                shape(&options),
                "{replay}"
            );
        }
    }

    #[test]
    fn shrinking_stops_at_its_budget_and_keeps_the_smallest_failure() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let args = run_args(&words("simulator run --seed 3 --payments 20 --chaos calm"));
        let scenario = scenario_of(&args).unwrap();
        let options = options_of(&args).unwrap();
        let failing = |s: &Scenario| {
            let mut report = report_of(s, &options);
            report.passed = false;
            report
        };
        let mut runs = 0;
        let (smallest, report) = runtime.block_on(shrink_with(
            scenario.clone(),
            failing(&scenario),
            4,
            async |candidate: Scenario| {
                runs += 1;
                Ok(failing(&candidate))
            },
        ));
        assert_eq!(runs, 4);
        assert!(smallest.payments.len() < 20, "{smallest}");
        assert_eq!(report.payments_planned, smallest.payments.len());
    }
}
