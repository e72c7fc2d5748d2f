//! A running `river` master started from a config in a fresh temp dir, killed
//! (with its workers) when dropped.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::wait_for;

/// The workspace's built binaries sit next to the test's deps directory.
pub fn binary(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("RIVER_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not built (run cargo test --workspace)",
        path.display()
    );
    path
}

pub struct River {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub pid: u32,
    child: Child,
}

impl River {
    /// Write a config whose `system` block has a pid file and control socket in
    /// the temp dir plus `system` lines, and whose `services` block is `services`.
    /// `$DIR` in `system` stands for the temp dir.
    pub fn start(system: &str, services: &str) -> River {
        let river = Self::spawn(system, services);
        river.wait_log("generation serving", 1);
        river
    }

    /// As [`River::start`], with extra environment variables for the master
    /// (and so its workers), such as `RIVER_TEST_NO_FAST_PATH`.
    pub fn start_with_env(system: &str, services: &str, env: &[(&str, &std::ffi::OsStr)]) -> River {
        let river = Self::spawn_with_env(system, services, env);
        river.wait_log("generation serving", 1);
        river
    }

    /// Start without waiting for the first generation.
    pub fn spawn(system: &str, services: &str) -> River {
        Self::spawn_with_env(system, services, &[])
    }

    /// As [`River::spawn`], with extra environment variables for the master.
    pub fn spawn_with_env(system: &str, services: &str, env: &[(&str, &std::ffi::OsStr)]) -> River {
        Self::launch(Command::new(binary("river")), system, services, env)
    }

    /// As [`River::spawn`], run through `wrapper` (e.g. `setpriv ...`), which
    /// must exec river in its own process so that the pid stays the master's.
    pub fn spawn_under(wrapper: &[&str], system: &str, services: &str) -> River {
        let (program, args) = wrapper.split_first().expect("a wrapper command");
        let mut command = Command::new(program);
        command.args(args).arg(binary("river"));
        Self::launch(command, system, services, &[])
    }

    fn launch(
        mut command: Command,
        system: &str,
        services: &str,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> River {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("river.kdl");
        write_config(&config_path, dir.path(), system, services);
        let log = fs::File::create(dir.path().join("river.log")).expect("log file");
        let child = command
            .arg("-c")
            .arg(&config_path)
            .env("RIVER_LOG", "info")
            .env(
                "RIVER_TEST_FAIL_WORKER_START",
                dir.path().join("fail-worker-start"),
            )
            .env(
                "RIVER_TEST_STOP_WORKER_START",
                dir.path().join("stop-worker-start"),
            )
            .env("RIVER_TEST_HOLD_ADOPT", dir.path().join("hold-adopt"))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn river");
        River {
            pid: child.id(),
            dir,
            config_path,
            child,
        }
    }

    pub fn pid_file(&self) -> PathBuf {
        self.dir.path().join("river.pid")
    }

    pub fn control_socket(&self) -> PathBuf {
        self.dir.path().join("river.sock")
    }

    /// The metrics listener of a config with `metrics "$DIR/metrics.sock"`.
    pub fn metrics_socket(&self) -> String {
        self.dir.path().join("metrics.sock").display().to_string()
    }

    /// Replace the config file (for a reload).
    pub fn rewrite_config(&self, system: &str, services: &str) {
        write_config(&self.config_path, self.dir.path(), system, services);
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("river.log")).unwrap_or_default()
    }

    /// Wait until `needle` appears at least `count` times in the log.
    pub fn wait_log(&self, needle: &str, count: usize) {
        wait_for(
            &format!("{count}x `{needle}` in river's log"),
            Duration::from_secs(20),
            || {
                let log = self.log();
                if log.matches(needle).count() >= count {
                    Some(())
                } else {
                    assert!(
                        !self.exited(),
                        "river exited while waiting for `{needle}`; log:\n{log}"
                    );
                    None
                }
            },
        )
    }

    fn exited(&self) -> bool {
        !Path::new(&format!("/proc/{}", self.pid)).exists() || process_state(self.pid) == Some('Z')
    }

    /// The master's live children (its workers), sorted.
    pub fn workers(&self) -> Vec<u32> {
        children(self.pid)
    }

    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid as i32), signal).expect("signal river");
    }

    /// Wait for the master to exit; its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        wait_for("river to exit", timeout, || {
            self.child.try_wait().ok().flatten()
        })
    }

    pub fn riverctl(&self, args: &[&str]) -> Output {
        Command::new(binary("riverctl"))
            .arg("-s")
            .arg(self.control_socket())
            .args(args)
            .output()
            .expect("run riverctl")
    }
}

impl Drop for River {
    fn drop(&mut self) {
        for worker in self.workers() {
            let _ = kill(Pid::from_raw(worker as i32), Signal::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_config(path: &Path, dir: &Path, system: &str, services: &str) {
    // Two threads per worker unless the test says otherwise.
    let threads = if system.contains("threads-per-service") {
        ""
    } else {
        "    threads-per-service 2\n"
    };
    let system = system.replace("$DIR", &dir.display().to_string());
    let config = format!(
        "system {{\n    pid-file \"{dir}/river.pid\"\n    control-socket \"{dir}/river.sock\"\n{threads}{system}\n}}\nservices {{\n{services}\n}}\n",
        dir = dir.display()
    );
    // Write then rename: a reload never reads a half-written file.
    let tmp = path.with_extension("kdl.tmp");
    fs::write(&tmp, config).expect("write config");
    fs::rename(&tmp, path).expect("rename config");
}

fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

pub fn process_state(pid: u32) -> Option<char> {
    stat_fields(pid)?.first()?.chars().next()
}

/// The parent pid of `pid`.
pub fn parent(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

/// Live (not zombie) children of `parent`.
pub fn children(parent: u32) -> Vec<u32> {
    let mut pids: Vec<u32> = fs::read_dir("/proc")
        .expect("read /proc")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            stat_fields(*pid).is_some_and(|f| {
                f.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(parent) && f[0] != "Z"
            })
        })
        .collect();
    pids.sort_unstable();
    pids
}

pub fn alive(pid: u32) -> bool {
    matches!(process_state(pid), Some(state) if state != 'Z')
}

/// Socket inodes held open by `pid` (from /proc/PID/fd links `socket:[N]`).
pub fn socket_inodes(pid: u32) -> Vec<u64> {
    let Ok(entries) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let link = fs::read_link(entry.ok()?.path()).ok()?;
            let link = link.to_str()?;
            link.strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

/// Inodes of the TCP sockets in LISTEN state on `port` (IPv4, /proc/net/tcp).
pub fn listening_inodes(port: u16) -> Vec<u64> {
    let table = fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = u16::from_str_radix(fields.get(1)?.rsplit(':').next()?, 16).ok()?;
            let listening = *fields.get(3)? == "0A";
            (local_port == port && listening).then(|| fields.get(9)?.parse().ok())?
        })
        .collect()
}
