//! `gateway reconcile`: one run from the command line, its report printed.
//!
//! Exit status: 0 when nothing is left over (no mismatch, no unverified
//! payment, and in a dry run nothing to repair); 1 otherwise, or on an
//! error; 2 for a usage error (clap's). An unverified payment fails the run
//! because nothing about it was proven: a run that could not reach the bank
//! must not look like a clean one to a cron job.

use std::fmt::Write as _;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use clap::Args;

use super::{CONCURRENCY, Entry, Outcome, Report, Scope, pass};
use crate::bank::{BankClient, CircuitSettings, RetryPolicy};
use crate::cli::DatabaseArgs;
use crate::store;

#[derive(Debug, Clone, Args)]
pub struct ReconcileArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// The acquiring bank's base URL.
    #[arg(long, env = "BANK_URL", default_value = "http://127.0.0.1:8787")]
    pub bank_url: String,
    /// Payments created at or after this: an RFC 3339 time
    /// (2030-01-01T00:00:00Z) or a duration ago (90s, 30m, 24h, 7d).
    #[arg(long, value_name = "TIME|DURATION", default_value = "24h", value_parser = parse_since)]
    pub since: DateTime<Utc>,
    /// Which payments to ask the bank about: all of them (an audit), those
    /// due (new, moved since they last matched, left over: what the
    /// server's background pass asks), or a sweep (those due and all the
    /// bank can move alone).
    #[arg(long, value_enum, default_value = "all")]
    pub scope: Scope,
    /// Report what would be repaired, and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs once, prints the report on stdout, and fails when anything is left
/// over (see the module doc).
pub async fn run(args: ReconcileArgs) -> anyhow::Result<()> {
    let pool = store::connect(&args.database.database_url, 4, Duration::from_secs(10)).await?;
    let bank = BankClient::new(
        &args.bank_url,
        RetryPolicy::default(),
        CONCURRENCY,
        CircuitSettings::default(),
    )?;
    let report = pass(&pool, &bank, args.since, args.scope, !args.dry_run, None).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    let c = report.counts;
    if report.left_over() > 0 {
        anyhow::bail!(
            "reconciliation left {} mismatch(es), {} unverified, {} not repaired",
            c.mismatch,
            c.unverified,
            c.repairable
        );
    }
    Ok(())
}

/// `RFC 3339`, or `<n>s|m|h|d` ago.
pub fn parse_since(raw: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(at) = DateTime::parse_from_rfc3339(raw) {
        return Ok(at.with_timezone(&Utc));
    }
    let ago = parse_duration(raw)?;
    Utc::now()
        .checked_sub_signed(ago)
        .ok_or_else(|| format!("{raw:?} reaches too far back"))
}

fn parse_duration(raw: &str) -> Result<TimeDelta, String> {
    let invalid = || format!("{raw:?} is neither an RFC 3339 time nor a duration like 24h");
    let split = raw
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(invalid)?;
    let (digits, unit) = raw.split_at(split);
    let count: i64 = digits.parse().map_err(|_| invalid())?;
    let unit_seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(invalid()),
    };
    count
        .checked_mul(unit_seconds)
        .and_then(TimeDelta::try_seconds)
        .ok_or_else(invalid)
}

/// The readable report: counts, then each mismatch with both sides, each
/// unverified payment, each repair (made or, in a dry run, to make).
pub fn render(report: &Report) -> String {
    let c = report.counts;
    let mode = if report.repair { "repair" } else { "dry run" };
    let reach = report
        .authorized_since
        .map(|at| format!(", and those still authorized since {}", at.to_rfc3339()))
        .unwrap_or_default();
    let mut out = format!(
        "reconciled {} payment(s) created since {}{reach} (scope {}, {mode})\n\
         matched {}, in flight {}, repaired {}, to repair {}, mismatch {}, unverified {}\n",
        c.checked,
        report.since.to_rfc3339(),
        report.scope.as_str(),
        c.matched,
        c.in_flight,
        c.repaired,
        c.repairable,
        c.mismatch,
        c.unverified,
    );
    section(
        &mut out,
        report,
        Outcome::Mismatch,
        "mismatches (left for a person)",
    );
    section(
        &mut out,
        report,
        Outcome::Unverified,
        "unverified (the bank could not be asked)",
    );
    section(&mut out, report, Outcome::Repaired, "repaired");
    section(
        &mut out,
        report,
        Outcome::Repairable,
        "would repair (dry run)",
    );
    out
}

fn section(out: &mut String, report: &Report, outcome: Outcome, title: &str) {
    let mut entries = report.entries_with(outcome).peekable();
    if entries.peek().is_none() {
        return;
    }
    let _ = writeln!(out, "\n{title}:");
    for entry in entries {
        write_entry(out, entry);
    }
}

fn write_entry(out: &mut String, entry: &Entry) {
    let _ = writeln!(out, "  {}", entry.payment_id);
    let _ = writeln!(out, "    gateway: {}", entry.gateway);
    let _ = writeln!(out, "    bank:    {}", entry.bank);
    if let Some(reason) = &entry.reason {
        let _ = writeln!(out, "    why:     {reason}");
    }
    if !entry.path.is_empty() {
        let path: Vec<&str> = entry.path.iter().map(|s| s.as_str()).collect();
        let _ = writeln!(
            out,
            "    moves:   {} -> {}",
            entry.gateway_status,
            path.join(" -> ")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_time_or_a_duration() {
        let at = parse_since("2030-01-02T03:04:05Z").unwrap();
        assert_eq!(at.to_rfc3339(), "2030-01-02T03:04:05+00:00");
        let day_ago = parse_since("24h").unwrap();
        let expected = Utc::now() - TimeDelta::hours(24);
        assert!((day_ago - expected).num_seconds().abs() < 5);
        assert_eq!(parse_duration("30m"), Ok(TimeDelta::minutes(30)));
        assert_eq!(parse_duration("7d"), Ok(TimeDelta::days(7)));
        assert_eq!(parse_duration("90s"), Ok(TimeDelta::seconds(90)));
        for bad in [
            "",
            "h",
            "24",
            "24x",
            "1h30m",
            "-1h",
            "99999999999999999999d",
            "yesterday",
        ] {
            assert!(parse_since(bad).is_err(), "{bad:?}");
        }
    }
}
