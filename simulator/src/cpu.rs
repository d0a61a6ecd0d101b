//! Where the CPU went during a bench's load, per authorization, read from
//! Linux's `/proc`: the gateway process, the Postgres backends serving the
//! gateway's database and the bank's, this process (the load generator and
//! the bank), and the machine as a whole.
//!
//! On a machine where all of them share the cores, throughput says little
//! about the gateway alone; its own CPU per authorization says what it
//! would do with the cores to itself. Only for a stack the bench started
//! (it knows the pids and databases); elsewhere, or off Linux, absent.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use sqlx::Connection;

/// Linux reports process times in USER_HZ ticks, 100 per second on every
/// architecture it supports.
pub(crate) const TICKS_PER_SECOND: u64 = 100;

/// Whose CPU is counted, and how to find them.
pub struct Parties {
    pub gateway_pid: u32,
    /// URLs of the gateway's and the bank's databases, on one cluster.
    pub gateway_database_url: String,
    pub bank_database_url: String,
}

/// Counters at one moment, in ticks.
pub struct Sample {
    /// By party name.
    ticks: BTreeMap<&'static str, u64>,
    /// Each backend's ticks, so that one that starts during the load counts
    /// from zero and one that ends is not counted at all.
    backends: HashMap<u32, (&'static str, u64)>,
}

const GATEWAY: &str = "gateway process";
const GATEWAY_POSTGRES: &str = "gateway's Postgres";
const BANK_POSTGRES: &str = "bank's Postgres";
const SIMULATOR: &str = "load generator and bank";
const MACHINE: &str = "machine, all busy cores";

/// Milliseconds of CPU per authorization, by party; the machine's total
/// includes everything else running.
#[derive(Debug, Clone, Serialize)]
pub struct CpuPerAuthorization {
    pub ms: BTreeMap<&'static str, f64>,
}

impl CpuPerAuthorization {
    /// The gateway's own share: its process plus the Postgres backends
    /// serving its database; `None` when either is missing.
    pub fn gateway_own(&self) -> Option<f64> {
        Some(self.ms.get(GATEWAY)? + self.ms.get(GATEWAY_POSTGRES)?)
    }
}

impl Parties {
    /// `None` when `/proc` or the database cannot be read.
    pub async fn sample(&self) -> Option<Sample> {
        let mut ticks = BTreeMap::new();
        ticks.insert(GATEWAY, process_ticks(&self.gateway_pid.to_string())?);
        ticks.insert(SIMULATOR, process_ticks("self")?);
        ticks.insert(MACHINE, machine_busy_ticks()?);
        let mut backends = HashMap::new();
        for (pid, database) in self.backends().await? {
            let party = if database == database_name(&self.gateway_database_url) {
                GATEWAY_POSTGRES
            } else {
                BANK_POSTGRES
            };
            // A backend may end between the query and the read.
            if let Some(t) = process_ticks(&pid.to_string()) {
                backends.insert(pid, (party, t));
            }
        }
        Some(Sample { ticks, backends })
    }

    /// (pid, database) of every backend of the two databases but the one
    /// asking.
    async fn backends(&self) -> Option<Vec<(u32, String)>> {
        let mut conn = sqlx::PgConnection::connect(&self.bank_database_url)
            .await
            .ok()?;
        let rows: Vec<(i32, String)> = sqlx::query_as(
            "SELECT pid, datname::text FROM pg_stat_activity \
             WHERE datname = ANY($1) AND pid <> pg_backend_pid()",
        )
        .bind(vec![
            database_name(&self.gateway_database_url),
            database_name(&self.bank_database_url),
        ])
        .fetch_all(&mut conn)
        .await
        .ok()?;
        conn.close().await.ok();
        Some(
            rows.into_iter()
                .filter_map(|(pid, db)| Some((u32::try_from(pid).ok()?, db)))
                .collect(),
        )
    }
}

/// What each party spent between `before` and `after`, per authorization.
pub fn per_authorization(
    before: &Sample,
    after: &Sample,
    authorizations: u64,
) -> CpuPerAuthorization {
    let mut spent: BTreeMap<&'static str, u64> = after
        .ticks
        .iter()
        .map(|(party, t)| {
            (
                *party,
                t.saturating_sub(before.ticks.get(party).copied().unwrap_or(0)),
            )
        })
        .collect();
    for (pid, (party, t)) in &after.backends {
        let start = before.backends.get(pid).map_or(0, |(_, t)| *t);
        *spent.entry(party).or_default() += t.saturating_sub(start);
    }
    let ms = spent
        .into_iter()
        .map(|(party, ticks)| {
            let ms =
                (ticks * 1_000) as f64 / TICKS_PER_SECOND as f64 / authorizations.max(1) as f64;
            (party, (ms * 1_000.0).round() / 1_000.0)
        })
        .collect();
    CpuPerAuthorization { ms }
}

/// utime + stime of `/proc/{pid}/stat`, all threads included.
pub(crate) fn process_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_process_ticks(&stat)
}

/// The command name, in parentheses, may hold spaces: fields are counted
/// from the closing one. utime and stime are fields 14 and 15.
fn parse_process_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// All cores' non-idle time from `/proc/stat`'s first line.
fn machine_busy_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_machine_busy(stat.lines().next()?)
}

/// `cpu user nice system idle iowait irq softirq steal …`: all but idle
/// and iowait (and the guest columns, already inside user).
fn parse_machine_busy(line: &str) -> Option<u64> {
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    let [user, nice, system, _idle, _iowait, irq, softirq, steal] = values.try_into().ok()?;
    Some(user + nice + system + irq + softirq + steal)
}

/// The database of a `postgres://…/name?…` URL.
fn database_name(url: &str) -> String {
    let path = url.split('?').next().unwrap_or(url);
    path.rsplit('/').next().unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_ticks_are_utime_plus_stime_even_with_spaces_in_the_name() {
        let stat = "4242 (actix-server wo) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    1500 250 0 0 20 0 4 0 100 1000 50";
        assert_eq!(parse_process_ticks(stat), Some(1750));
    }

    #[test]
    fn machine_busy_leaves_out_idle_and_iowait() {
        let line = "cpu  84328 5 17477 39118 846 10 2704 3942 0 0";
        assert_eq!(
            parse_machine_busy(line),
            Some(84328 + 5 + 17477 + 10 + 2704 + 3942)
        );
    }

    #[test]
    fn the_database_is_the_last_path_segment() {
        assert_eq!(
            database_name("postgres://postgres@127.0.0.1:5432/gateway_ab12?sslmode=disable"),
            "gateway_ab12"
        );
    }

    #[test]
    fn a_backend_that_started_during_the_load_counts_from_zero() {
        let sample = |gateway: u64, backends: &[(u32, u64)]| Sample {
            ticks: [(GATEWAY, gateway)].into_iter().collect(),
            backends: backends
                .iter()
                .map(|(pid, t)| (*pid, (BANK_POSTGRES, *t)))
                .collect(),
        };
        let before = sample(100, &[(1, 50)]);
        let after = sample(300, &[(1, 150), (2, 100)]);
        let cpu = per_authorization(&before, &after, 100);
        // 200 ticks = 2 s over 100 authorizations; (100 + 100) ticks likewise.
        assert_eq!(cpu.ms[GATEWAY], 20.0);
        assert_eq!(cpu.ms[BANK_POSTGRES], 20.0);
    }
}
