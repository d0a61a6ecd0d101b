//! Where a running `simulator up` is: `up` writes [`STATE_FILE`] in its run
//! directory (`$TMPDIR/ficmart-up-<pid>/`) once the stack is ready and
//! removes it when it stops; `simulator gateway …` reads it to point the
//! gateway's command line at that stack's databases.
//!
//! A record whose process is gone (`up` killed with SIGKILL leaves its
//! directory behind) is ignored: the record names the process by its pid and
//! its start time, so a new process that got the same pid is not taken for it.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::run_dir::{PREFIX, RunDir};

/// The record's file name in the run directory.
pub const STATE_FILE: &str = "stack.json";
/// Names the run directory of the `up` to use when several run.
pub const UP_DIR_VAR: &str = "SIMULATOR_UP_DIR";

/// What `gateway` subcommands need to know about a running stack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpRecord {
    /// The `up` process.
    pub pid: u32,
    /// Its start time, in clock ticks after boot (`/proc/<pid>/stat`).
    pub started_at_tick: u64,
    pub gateway_database_url: String,
    pub bank_database_url: String,
    pub gateway_url: String,
    pub bank_url: String,
}

impl UpRecord {
    /// A record of this process, for a stack at these URLs.
    pub fn of_this_process(
        gateway_database_url: String,
        bank_database_url: String,
        gateway_url: String,
        bank_url: String,
    ) -> anyhow::Result<Self> {
        let pid = std::process::id();
        let started_at_tick = start_tick(pid).context("reading this process's start time")?;
        Ok(Self {
            pid,
            started_at_tick,
            gateway_database_url,
            bank_database_url,
            gateway_url,
            bank_url,
        })
    }

    /// Writes it into `dir`, whole or not at all (a reader never sees half).
    pub fn write(&self, dir: &RunDir) -> anyhow::Result<()> {
        let partial = dir.file(&format!("{STATE_FILE}.partial"));
        std::fs::write(&partial, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", partial.display()))?;
        std::fs::rename(&partial, dir.file(STATE_FILE))
            .with_context(|| format!("renaming {}", partial.display()))
    }

    /// Whether the process that wrote it still runs.
    pub fn is_alive(&self) -> bool {
        start_tick(self.pid) == Some(self.started_at_tick)
    }
}

/// Removes the record from `dir`: the stack it describes is stopping.
pub fn forget(dir: &RunDir) {
    std::fs::remove_file(dir.file(STATE_FILE)).ok();
}

/// The running `up` to use: the one in `$SIMULATOR_UP_DIR` when it is set,
/// else the only one in the temp directory; `None` when none runs, an error
/// when several do (naming them) or the named one is not running.
pub fn find() -> anyhow::Result<Option<UpRecord>> {
    if let Some(dir) = std::env::var_os(UP_DIR_VAR) {
        let dir = PathBuf::from(dir);
        return match read(&dir) {
            Some(record) => Ok(Some(record)),
            None => bail!(
                "{UP_DIR_VAR}={}: no `simulator up` runs there",
                dir.display()
            ),
        };
    }
    let mut found: Vec<(PathBuf, UpRecord)> = up_dirs()
        .into_iter()
        .filter_map(|dir| Some((dir.clone(), read(&dir)?)))
        .collect();
    if found.len() > 1 {
        let dirs: Vec<String> = found.iter().map(|(d, _)| d.display().to_string()).collect();
        bail!(
            "{} `simulator up`s are running; set {UP_DIR_VAR} to the run directory of one: {}",
            found.len(),
            dirs.join(", ")
        );
    }
    Ok(found.pop().map(|(_, record)| record))
}

/// The `up` run directories in the temp directory, running or not.
fn up_dirs() -> Vec<PathBuf> {
    let prefix = format!("{PREFIX}up-");
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect()
}

/// The record in `dir`, if there is one and its process runs.
fn read(dir: &Path) -> Option<UpRecord> {
    let text = std::fs::read(dir.join(STATE_FILE)).ok()?;
    let record: UpRecord = serde_json::from_slice(&text).ok()?;
    record.is_alive().then_some(record)
}

/// When the process `pid` started (field 22 of `/proc/<pid>/stat`), if it
/// exists and is not a zombie.
fn start_tick(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: the
    // fields after it start after its last `)`.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    // State was field 3; the start time is field 22.
    fields.nth(22 - 4)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_another_start_time_is_not() {
        let mut record = UpRecord::of_this_process(
            "postgres://g".into(),
            "postgres://b".into(),
            "http://g".into(),
            "http://b".into(),
        )
        .unwrap();
        assert!(record.is_alive());
        record.started_at_tick += 1;
        assert!(!record.is_alive(), "a reused pid is not the same process");
    }

    #[test]
    fn a_record_is_read_back_from_its_run_directory() {
        let dir = RunDir::create("running-unit-test").unwrap();
        let record = UpRecord::of_this_process(
            "postgres://g".into(),
            "postgres://b".into(),
            "http://g".into(),
            "http://b".into(),
        )
        .unwrap();
        record.write(&dir).unwrap();
        assert_eq!(read(dir.path()), Some(record));
        forget(&dir);
        assert_eq!(read(dir.path()), None);
        dir.remove().unwrap();
    }
}
