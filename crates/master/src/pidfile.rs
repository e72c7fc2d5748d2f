//! The pid file, and the lock that makes its master the only one.
//!
//! A master holds an exclusive `flock` on its pid file for its whole life, so
//! a second master started with the same pid file is refused, naming the pid
//! of the first, instead of overwriting it. Two steps, because the pid is only
//! known after daemonizing: [`PidFile::lock`] claims the path before anything
//! is bound, [`PidLock::write`] writes the pid (temp file + rename, so readers
//! never see half a pid; the new file is locked before it replaces the old,
//! so the path is never unlocked while the master lives).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

#[derive(Debug, thiserror::Error)]
pub enum PidFileError {
    #[error("another River master (pid {pid}) is running with the pid file {}", path.display())]
    Held { pid: String, path: PathBuf },
    #[error("cannot use the pid file {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

/// The claimed pid file, before the pid is written. Dropped unwritten (the
/// master failed to start), it removes the file if it created it.
pub struct PidLock {
    path: PathBuf,
    held: Option<Flock<File>>,
    created: bool,
}

/// The written pid file; removed on drop if the path still names it.
pub struct PidFile {
    path: PathBuf,
    held: Flock<File>,
}

impl PidFile {
    /// Claim `path`: refused when another live master holds it.
    pub fn lock(path: &Path) -> Result<PidLock, PidFileError> {
        let io = |source| PidFileError::Io {
            path: path.to_owned(),
            source,
        };
        let created = !path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(path)
            .map_err(io)?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(held) => Ok(PidLock {
                path: path.to_owned(),
                held: Some(held),
                created,
            }),
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut content = String::new();
                let _ = file.read_to_string(&mut content);
                let pid = content.trim().chars().take(20).collect::<String>();
                Err(PidFileError::Held {
                    pid: if pid.is_empty() {
                        "unknown".into()
                    } else {
                        pid
                    },
                    path: path.to_owned(),
                })
            }
            Err((_, errno)) => Err(io(errno.into())),
        }
    }
}

impl PidFile {
    /// A new master after a binary upgrade: the old master holds the lock on
    /// the current file; this one writes its own and renames it over, so
    /// the path names the serving master from then on.
    pub fn take_over(path: &Path) -> Result<PidFile, PidFileError> {
        PidLock {
            path: path.to_owned(),
            held: None,
            created: false,
        }
        .write()
    }
}

impl PidLock {
    /// Write this process's pid (after daemonizing) and keep the lock.
    pub fn write(mut self) -> Result<PidFile, PidFileError> {
        let path = self.path.clone();
        let io = |source| PidFileError::Io {
            path: path.clone(),
            source,
        };
        let tmp = self.path.with_extension("pid.tmp");
        let _ = std::fs::remove_file(&tmp);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_CLOEXEC)
            .open(&tmp)
            .map_err(io)?;
        let mut held = Flock::lock(file, FlockArg::LockExclusiveNonblock)
            .map_err(|(_, errno)| io(errno.into()))?;
        writeln!(held, "{}", std::process::id()).map_err(io)?;
        held.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        self.created = false;
        self.held = None;
        Ok(PidFile {
            path: self.path.clone(),
            held,
        })
    }
}

impl Drop for PidLock {
    fn drop(&mut self) {
        if let (true, Some(held)) = (self.created, &self.held) {
            remove_if_same(&self.path, held);
        }
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Only if the path still names our file (an upgrade's new master may
        // have replaced it).
        remove_if_same(&self.path, &self.held);
    }
}

/// Remove `path` if it is still the file `held` is open on.
fn remove_if_same(path: &Path, held: &File) {
    let same = match (std::fs::symlink_metadata(path), held.metadata()) {
        (Ok(on_disk), Ok(held)) => on_disk.dev() == held.dev() && on_disk.ino() == held.ino(),
        _ => false,
    };
    if same {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_then_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("river.pid");
        let pid_file = PidFile::lock(&path).unwrap().write().unwrap();
        let content = std::fs::read_to_string(&path).unwrap();
        assert_eq!(content.trim(), std::process::id().to_string());
        drop(pid_file);
        assert!(!path.exists());
    }

    #[test]
    fn a_second_claim_is_refused_with_the_holders_pid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("river.pid");
        let first = PidFile::lock(&path).unwrap();
        // Held before the pid is written: the pid is not known yet.
        assert!(matches!(
            PidFile::lock(&path),
            Err(PidFileError::Held { .. })
        ));
        let written = first.write().unwrap();
        let err = PidFile::lock(&path).err().unwrap().to_string();
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(written);
        // Released with the master.
        let again = PidFile::lock(&path).unwrap().write().unwrap();
        drop(again);
    }

    #[test]
    fn a_claim_that_is_never_written_leaves_no_file_it_made() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("river.pid");
        drop(PidFile::lock(&path).unwrap());
        assert!(!path.exists());
        std::fs::write(&path, "").unwrap();
        drop(PidFile::lock(&path).unwrap());
        assert!(path.exists(), "not ours to remove");
    }

    #[test]
    fn a_stale_file_of_a_dead_master_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("river.pid");
        std::fs::write(&path, "999999\n").unwrap();
        let pid_file = PidFile::lock(&path).unwrap().write().unwrap();
        let content = std::fs::read_to_string(&path).unwrap();
        assert_eq!(content.trim(), std::process::id().to_string());
        drop(pid_file);
    }

    #[test]
    fn not_removed_when_another_file_took_its_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("river.pid");
        let pid_file = PidFile::lock(&path).unwrap().write().unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "1\n").unwrap();
        drop(pid_file);
        assert!(path.exists());
    }
}
