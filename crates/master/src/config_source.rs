//! Where the configuration comes from, and loading it without risk to the
//! master.
//!
//! At start-up the master loads its config in-process: nothing serves yet, and
//! the errors belong on the caller's terminal. A reload instead loads it in a
//! short-lived child (`river load-config`, the master's own binary), read back
//! as JSON: whatever a hostile file does to the KDL parser (exhaust its stack,
//! take seconds, grow to a gigabyte), it does to the child, which is killed at
//! [`LOAD_TIMEOUT`], while the master's event loop keeps answering riverctl,
//! signals and deadlines.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use river_config::Config;
use tokio::io::AsyncReadExt;

/// A reload's validation is given up (and the child killed) after this long.
pub const LOAD_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest answer read from the child: a config's JSON is a few times
/// the size of its KDL, which is at most `MAX_CONFIG_BYTES`.
const MAX_CHILD_OUTPUT: u64 = 8 * river_config::MAX_CONFIG_BYTES;
/// Address space of the loader child. The KDL parser needs about 2.5 KiB per
/// node: a 16 MiB file of tiny nodes would reach 10 GiB and invite the OOM
/// killer to the whole machine; with this cap the child fails alone.
const LOADER_ADDRESS_SPACE: u64 = 4 * 1024 * 1024 * 1024;
/// The largest error text a reload answers with; a control frame holds it
/// with room to spare.
pub const MAX_ERROR_BYTES: usize = 64 * 1024;

/// Where the configuration comes from, re-read on every reload.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    File(PathBuf),
    Embedded,
}

impl ConfigSource {
    /// Command-line overrides, applied again on every reload.
    pub fn with_overrides(self, threads_per_service: Option<usize>) -> LoadConfig {
        LoadConfig {
            source: self,
            threads_per_service,
        }
    }
}

/// A config source plus the command-line settings that win over the file.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    source: ConfigSource,
    threads_per_service: Option<usize>,
}

/// What `river load-config` prints: the config, or the error text.
pub type ChildAnswer = Result<Config, String>;

impl LoadConfig {
    /// Load in this process (start-up, `--validate`).
    pub fn load(&self) -> Result<Config, river_config::ConfigError> {
        let config = match &self.source {
            ConfigSource::File(path) => river_config::load(path)?,
            ConfigSource::Embedded => river_config::embedded_default(),
        };
        Ok(self.override_config(config))
    }

    /// Load in a child process, within [`LOAD_TIMEOUT`]; the error is the text
    /// to show the operator, at most [`MAX_ERROR_BYTES`] long.
    pub async fn load_isolated(&self) -> Result<Config, String> {
        let path = match &self.source {
            ConfigSource::File(path) => path,
            ConfigSource::Embedded => return self.load().map_err(|err| err.to_string()),
        };
        let answer = match tokio::time::timeout(LOAD_TIMEOUT, load_in_child(path)).await {
            Ok(answer) => answer,
            Err(_) => Err(format!(
                "error: validating {} took longer than {} s: given up",
                path.display(),
                LOAD_TIMEOUT.as_secs()
            )),
        };
        answer
            .map(|config| self.override_config(config))
            .map_err(|err| truncate_error(err, MAX_ERROR_BYTES))
    }

    fn override_config(&self, mut config: Config) -> Config {
        if let Some(threads) = self.threads_per_service {
            config.system.threads_per_service = threads.max(1);
        }
        config
    }
}

/// The body of `river load-config PATH`: the answer as one line of JSON on
/// stdout.
pub fn load_config_child(path: &std::path::Path) -> anyhow::Result<()> {
    let answer: ChildAnswer = river_config::load(path).map_err(|err| err.to_string());
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer(&mut stdout, &answer)?;
    std::io::Write::flush(&mut stdout)?;
    Ok(())
}

/// Run `river load-config` and read its answer. The child dies with this
/// future (kill on drop), so a timeout leaves nothing behind.
async fn load_in_child(path: &std::path::Path) -> Result<Config, String> {
    let mut command = tokio::process::Command::new("/proc/self/exe");
    command
        .arg0("river: config loader")
        .arg("load-config")
        .arg(path)
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    // SAFETY: between fork and exec, only setrlimit (async-signal-safe).
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: LOADER_ADDRESS_SPACE,
                rlim_max: LOADER_ADDRESS_SPACE,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(|err| format!("error: cannot start the configuration loader: {err}"))?;
    let mut output = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        let read = stdout.take(MAX_CHILD_OUTPUT).read_to_end(&mut output).await;
        if let Err(err) = read {
            return Err(format!(
                "error: cannot read the configuration loader's answer: {err}"
            ));
        }
    }
    let status = child
        .wait()
        .await
        .map_err(|err| format!("error: configuration loader: {err}"))?;
    if !status.success() || output.is_empty() {
        return Err(format!(
            "error: the configuration loader failed on {} ({status}): the file is too large or malformed beyond what River can report",
            path.display()
        ));
    }
    match serde_json::from_slice::<ChildAnswer>(&output) {
        Ok(answer) => answer,
        Err(err) => Err(format!(
            "error: unreadable answer from the configuration loader: {err}"
        )),
    }
}

/// `text` cut to at most `max` bytes (at a character boundary), saying so.
pub fn truncate_error(text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(
        "{}\n\n(error text cut: {} more bytes)",
        &text[..cut],
        text.len() - cut
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_errors_are_cut_at_a_char_boundary_with_a_note() {
        let short = "error: x".to_string();
        assert_eq!(truncate_error(short.clone(), 100), short);
        let long = "é".repeat(100);
        let cut = truncate_error(long, 51);
        assert!(cut.starts_with(&"é".repeat(25)), "{cut}");
        assert!(cut.ends_with("(error text cut: 150 more bytes)"), "{cut}");
    }
}
