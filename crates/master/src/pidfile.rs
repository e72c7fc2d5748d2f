//! The pid file: written once the master is set up, removed on exit.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub struct PidFile {
    path: PathBuf,
}

impl PidFile {
    /// Write our pid atomically (temp file + rename), so readers never see a
    /// half-written file.
    pub fn create(path: &Path) -> io::Result<PidFile> {
        let tmp = path.with_extension("pid.tmp");
        let mut file = std::fs::File::create(&tmp)?;
        writeln!(file, "{}", std::process::id())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(PidFile {
            path: path.to_owned(),
        })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Only remove it if it is still ours (a newer master may have replaced it).
        let ours = std::fs::read_to_string(&self.path)
            .map(|content| content.trim() == std::process::id().to_string())
            .unwrap_or(false);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_then_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("river.pid");
        let pid_file = PidFile::create(&path).unwrap();
        let content = std::fs::read_to_string(&path).unwrap();
        assert_eq!(content.trim(), std::process::id().to_string());
        drop(pid_file);
        assert!(!path.exists());
    }

    #[test]
    fn not_removed_when_another_process_owns_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("river.pid");
        let pid_file = PidFile::create(&path).unwrap();
        std::fs::write(&path, "1\n").unwrap();
        drop(pid_file);
        assert!(path.exists());
    }
}
