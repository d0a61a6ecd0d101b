//! `simulator mutants`: the mutation table. Each known bug of
//! [`gateway::faults::Mutant`] is reintroduced in turn, and the default
//! adversarial run tried against it seed after seed until an invariant
//! catches it; the table says which invariant, after how many seeds and
//! how long. The unmodified gateway runs the same seeds first: a table is
//! worth nothing if the correct code fails too.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use gateway::faults::Mutant;

use crate::cli::MutantsArgs;
use crate::run::RunOptions;
use crate::run_dir::RunDir;
use crate::run_report::RunReport;
use crate::scenario::{self, Params, Profile, Scenario};
use crate::simulate::{simulate, stack_options};
use crate::stack::Stack;

/// How often the gateways reconcile in a reconciliation mutant's runs: as
/// `simulator run --reconcile-every 1s`, a pass (a sweep) every second.
const RECONCILE_EVERY: Duration = Duration::from_secs(1);
/// How often the bank's console acts behind the gateways in those runs, as
/// `simulator run --console-waves 10`: as often as a run allows.
const CONSOLE_WAVES: u32 = 10;

/// One row of the table.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    /// The mutant's name, or `none` for the gateway as it is (`none,
    /// reconciling` with its background reconciliation on).
    pub mutant: String,
    /// Whether this is the gateway as it is, which must pass every seed.
    pub baseline: bool,
    pub bug: String,
    /// Whether some seed's run failed (for `none`: whether all passed).
    pub caught: bool,
    /// The invariants the first failing run named.
    pub by: Vec<String>,
    /// Seeds run until it was caught (or all of them).
    pub seeds: usize,
    pub seconds: u64,
}

/// The scenario of the default run for `seed`, as `simulator run` makes it.
pub fn default_scenario(seed: u64, payments: usize) -> anyhow::Result<Scenario> {
    let profile = Profile::parse("everything").map_err(anyhow::Error::msg)?;
    Ok(scenario::generate(
        seed,
        &Params {
            payments: payments..=payments,
            cards: 20,
            profiles: vec![profile],
            kill_every_ms: None,
            random_kills: 0,
            horizon_ms: 30_000,
        },
    ))
}

/// The mutants to run: all, or those `--only` names.
fn chosen(only: &[String]) -> anyhow::Result<Vec<Mutant>> {
    if only.is_empty() {
        return Ok(Mutant::ALL.to_vec());
    }
    only.iter()
        .map(|name| {
            Mutant::parse(name).with_context(|| {
                let names: Vec<&str> = Mutant::ALL.iter().map(|m| m.as_str()).collect();
                format!("unknown mutant {name:?}: one of {}", names.join(", "))
            })
        })
        .collect()
}

pub async fn run(args: MutantsArgs) -> anyhow::Result<ExitCode> {
    if args.list {
        for mutant in Mutant::ALL {
            println!("{:<32} {}", mutant.as_str(), mutant.describe());
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mutants = chosen(&args.only)?;
    // Every caught mutant is a failed run, whose gateway logs a run keeps.
    let logs = RunDir::create("mutants")?;
    let stack = Stack::start(&stack_options()).await?;
    eprintln!("{}", stack.database());
    let table = async {
        let mut rows = Vec::new();
        for subject in subjects(&mutants, !args.no_baseline) {
            rows.push(try_seeds(&stack, &args, subject, logs.path()).await?);
            print_row(rows.last().expect("just pushed"));
        }
        Ok::<_, anyhow::Error>(rows)
    }
    .await;
    stack.shutdown().await;
    let rows = table.inspect_err(|_| {
        eprintln!("the gateways' logs are kept in {}", logs.path().display());
    })?;
    println!("\n{}", markdown(&rows));
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_string_pretty(&rows)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let all_good = rows.iter().all(|row| row.caught);
    if all_good {
        logs.remove()?;
    } else {
        eprintln!("the gateways' logs are kept in {}", logs.path().display());
    }
    Ok(if all_good {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// What one row runs: the gateway as it is or with a mutant, with or
/// without its background reconciliation.
#[derive(Debug, Clone, Copy)]
struct Subject {
    mutant: Option<Mutant>,
    reconciling: bool,
}

/// The rows to run: with a baseline, the gateway as it is first, and, if
/// a chosen mutant needs reconciliation, the gateway as it is reconciling
/// too (a mutant caught only where the correct code also fails proves
/// nothing); then each mutant.
fn subjects(mutants: &[Mutant], baseline: bool) -> Vec<Subject> {
    let reconciling = mutants.iter().any(|m| m.needs_reconciliation());
    let baselines = [(true, false), (reconciling, true)]
        .into_iter()
        .filter(|&(wanted, _)| baseline && wanted)
        .map(|(_, reconciling)| Subject {
            mutant: None,
            reconciling,
        });
    let mutated = mutants.iter().map(|&m| Subject {
        mutant: Some(m),
        reconciling: m.needs_reconciliation(),
    });
    baselines.chain(mutated).collect()
}

impl Subject {
    fn name(self) -> &'static str {
        match (self.mutant, self.reconciling) {
            (Some(mutant), _) => mutant.as_str(),
            (None, false) => "none",
            (None, true) => "none, reconciling",
        }
    }

    fn bug(self) -> &'static str {
        match (self.mutant, self.reconciling) {
            (Some(mutant), _) => mutant.describe(),
            (None, false) => "the gateway as it is: every seed must pass",
            (None, true) => {
                "the gateway as it is, reconciling every second, the bank's console acting behind it: every seed must pass"
            }
        }
    }
}

/// Runs the seeds against `subject` until a run fails (or, for the
/// gateway as it is, through all of them).
async fn try_seeds(
    stack: &Stack,
    args: &MutantsArgs,
    subject: Subject,
    log_dir: &Path,
) -> anyhow::Result<Row> {
    let started = Instant::now();
    let Subject {
        mutant,
        reconciling,
    } = subject;
    let name = subject.name();
    let mut row = Row {
        mutant: name.to_owned(),
        baseline: mutant.is_none(),
        bug: subject.bug().to_owned(),
        caught: mutant.is_none(),
        by: Vec::new(),
        seeds: 0,
        seconds: 0,
    };
    for &seed in &args.seeds {
        row.seeds += 1;
        let mut scenario = default_scenario(seed, usize::try_from(args.payments)?)?;
        if reconciling {
            // What reconciliation repairs, and the only source of captures,
            // voids and refunds the bank refuses: moves made at its console.
            scenario.faults.console_waves = crate::simulate::spread(CONSOLE_WAVES);
        }
        let options = RunOptions {
            replicas: usize::try_from(args.replicas)?,
            mutant: mutant.map(|m| m.as_str().to_owned()),
            // A reconciliation bug shows only with reconciliation on; the
            // others run as a default run does, without its repairs.
            reconcile_every: reconciling.then_some(RECONCILE_EVERY),
            program: args.program.clone(),
            log_dir: Some(log_dir.to_owned()),
            ..RunOptions::default()
        };
        eprintln!("{name}: seed {seed}");
        let report = simulate(stack, scenario, options)
            .await
            .with_context(|| format!("running seed {seed} against {name}"))?;
        if !report.passed {
            row.by = failed(&report);
            row.caught = mutant.is_some();
            if mutant.is_none() {
                eprintln!("{report}");
            }
            break;
        }
    }
    row.seconds = started.elapsed().as_secs();
    Ok(row)
}

fn failed(report: &RunReport) -> Vec<String> {
    report
        .invariants
        .iter()
        .filter(|i| !i.passed)
        .map(|i| i.name.to_owned())
        .collect()
}

fn print_row(row: &Row) {
    let verdict = match (row.baseline, row.caught) {
        (true, true) => "passed every seed".to_owned(),
        (true, false) => format!("FAILED: {}", row.by.join(", ")),
        (false, true) => format!("caught by {}", row.by.join(", ")),
        (false, false) => "NOT CAUGHT".to_owned(),
    };
    eprintln!(
        "{}: {verdict} ({} seed(s), {} s)",
        row.mutant, row.seeds, row.seconds
    );
}

/// The table as Markdown, for the README.
pub fn markdown(rows: &[Row]) -> String {
    let mut out = String::from(
        "| mutant | the bug | caught | by | seeds | seconds |\n|---|---|---|---|---:|---:|\n",
    );
    for row in rows {
        let caught = match (row.baseline, row.caught) {
            (true, true) => "passes",
            (true, false) => "FAILS",
            (false, true) => "yes",
            (false, false) => "**no**",
        };
        out.push_str(&format!(
            "| `{}` | {} | {caught} | {} | {} | {} |\n",
            row.mutant,
            row.bug,
            row.by.join(", "),
            row.seeds,
            row.seconds
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(subjects: &[Subject]) -> Vec<&'static str> {
        subjects.iter().map(|s| s.name()).collect()
    }

    #[test]
    fn a_reconciliation_mutant_brings_a_reconciling_baseline_and_runs_reconciling() {
        let rows = subjects(
            &[Mutant::TwoSnapshotReads, Mutant::ReconcileRepairsInFlight],
            true,
        );
        assert_eq!(
            names(&rows),
            [
                "none",
                "none, reconciling",
                "two_snapshot_reads",
                "reconcile_repairs_in_flight"
            ]
        );
        let reconciling: Vec<bool> = rows.iter().map(|s| s.reconciling).collect();
        assert_eq!(reconciling, [false, true, false, true]);
    }

    #[test]
    fn other_mutants_run_without_reconciliation_and_baselines_can_be_skipped() {
        assert_eq!(
            names(&subjects(&[Mutant::TwoSnapshotReads], true)),
            ["none", "two_snapshot_reads"]
        );
        assert_eq!(
            names(&subjects(&[Mutant::ReconcileRepairsInFlight], false)),
            ["reconcile_repairs_in_flight"]
        );
    }
}
