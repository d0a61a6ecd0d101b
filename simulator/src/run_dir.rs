//! One directory per command for the files it makes (the gateway's log, the
//! record of a running `up`), so that they are found in one place, announced
//! once, and removed together.
//!
//! Nothing removes it on drop: a command calls [`RunDir::remove`] when it
//! ends well, and otherwise leaves the directory (and says where) so that the
//! logs of what failed can be read.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// What a run directory's name starts with, before the command's name.
pub const PREFIX: &str = "ficmart-";

#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
}

impl RunDir {
    /// `$TMPDIR/ficmart-<command>-<pid>`, empty. One left by an earlier
    /// process with the same pid (which is dead, as the pid is ours now) is
    /// replaced.
    pub fn create(command: &str) -> anyhow::Result<Self> {
        let name = format!("{PREFIX}{command}-{}", std::process::id());
        let path = std::env::temp_dir().join(name);
        if path.exists() {
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("removing the stale {}", path.display()))?;
        }
        // Only for its owner: it holds database URLs, which may hold a password.
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .with_context(|| format!("creating the run directory {}", path.display()))?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of a file in it.
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Removes it and everything in it.
    pub fn remove(self) -> anyhow::Result<()> {
        std::fs::remove_dir_all(&self.path)
            .with_context(|| format!("removing the run directory {}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_directory_is_named_after_the_command_and_removed_whole() {
        let dir = RunDir::create("unit-test").unwrap();
        let name = dir
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert_eq!(name, format!("ficmart-unit-test-{}", std::process::id()));
        std::fs::write(dir.file("gateway.log"), "x").unwrap();
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&dir.path().metadata().unwrap().permissions());
        assert_eq!(mode & 0o777, 0o700, "only its owner may read it");
        let path = dir.path().to_owned();
        dir.remove().unwrap();
        assert!(!path.exists());
    }
}
