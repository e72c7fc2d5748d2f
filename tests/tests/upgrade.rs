//! Issue 13: binary upgrade without a dropped connection. `riverctl upgrade`
//! (and SIGUSR2) start the binary on disk as a new master on the same
//! sockets; the old master retires once the new one serves, and keeps
//! serving untouched when the new one fails.

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use river_tests::client;
use river_tests::load::Load;
use river_tests::river::{alive, binary, children, listening_inodes, River};
use river_tests::upstream::Upstream;
use river_tests::{free_port, local, tagged_proxy, wait_for};

const SYSTEM: &str = "    workers 2\n    threads-per-service 1\n    drain-timeout-secs 10";

/// A River whose masters (the first one and every one an upgrade starts)
/// and their workers are all killed at the end of the test, whoever serves.
struct Upgradable {
    river: River,
    port: u16,
    upstream: Upstream,
}

impl Upgradable {
    fn start(system: &str) -> Upgradable {
        let upstream = Upstream::start("alpha");
        let port = free_port();
        let river = River::start(system, &tagged_proxy("S", &[port], upstream.addr, "0"));
        Upgradable {
            river,
            port,
            upstream,
        }
    }

    /// The master the pid file names.
    fn master(&self) -> u32 {
        std::fs::read_to_string(self.river.pid_file())
            .ok()
            .and_then(|pid| pid.trim().parse().ok())
            .expect("a pid file naming the master")
    }

    fn riverctl(&self, args: &[&str]) -> (bool, String) {
        let output = self.river.riverctl(args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.success(), text)
    }

    fn upgrade(&self, args: &[&str]) -> String {
        let mut all = vec!["upgrade"];
        all.extend_from_slice(args);
        let (ok, text) = self.riverctl(&all);
        assert!(ok, "upgrade failed: {text}\nlog:\n{}", self.river.log());
        text
    }

    fn upgrade_fails(&self, args: &[&str]) -> String {
        let mut all = vec!["upgrade"];
        all.extend_from_slice(args);
        let (ok, text) = self.riverctl(&all);
        assert!(!ok, "upgrade should fail: {text}");
        text
    }

    fn status(&self) -> serde_json::Value {
        let output = self.river.riverctl(&["status", "--json"]);
        assert!(output.status.success(), "{output:?}");
        serde_json::from_slice(&output.stdout).expect("status --json")
    }
}

impl Drop for Upgradable {
    fn drop(&mut self) {
        let _ = self.river.riverctl(&["stop"]);
        // Masters started by upgrades are not this test's children.
        let masters: Vec<u32> = all_processes()
            .into_iter()
            .filter(|pid| cmdline(*pid).contains(&self.river.config_path.display().to_string()))
            .collect();
        for master in masters {
            for worker in children(master) {
                let _ = kill(Pid::from_raw(worker as i32), Signal::SIGKILL);
            }
            let _ = kill(Pid::from_raw(master as i32), Signal::SIGKILL);
        }
    }
}

fn all_processes() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|bytes| String::from_utf8_lossy(&bytes).replace('\0', " "))
        .unwrap_or_default()
}

/// Live processes whose command line names `needle`.
fn processes_named(needle: &str) -> Vec<u32> {
    all_processes()
        .into_iter()
        .filter(|pid| alive(*pid) && cmdline(*pid).contains(needle))
        .collect()
}

#[test]
fn ten_upgrades_under_load_drop_nothing_and_keep_the_listening_socket() {
    let up = Upgradable::start(SYSTEM);
    let port = up.port;
    let inode = listening_inodes(port);
    assert_eq!(inode.len(), 1, "one listening socket");
    let keep_alive = Load::keep_alive(local(port), 16, "/");
    let fresh = Load::repeat(2, move || client::get(local(port), "/"));
    std::thread::sleep(Duration::from_millis(300));

    let mut masters = vec![up.master()];
    for round in 0..10 {
        let answer = up.upgrade(&[]);
        assert!(
            answer.starts_with("upgraded: river ") && answer.contains(" draining"),
            "round {round}: {answer}"
        );
        let master = up.master();
        assert!(!masters.contains(&master), "round {round}: a new master");
        assert!(
            answer.contains(&format!("(pid {master}) serving")),
            "{answer}"
        );
        masters.push(master);
        assert_eq!(
            listening_inodes(port),
            inode,
            "round {round}: the same socket"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The riverctl status of the serving master shows itself.
    let status = up.status();
    assert_eq!(status["master_pid"], *masters.last().unwrap());
    assert!(status["master"]["version"].is_string());

    keep_alive.finish().assert_clean(200);
    fresh.finish().assert_clean(50);
    // Every old master is gone once its (idle) generation drained.
    let old: Vec<u32> = masters[..masters.len() - 1].to_vec();
    river_tests::wait_gone("the retired masters", &old, Duration::from_secs(15));
    assert_eq!(listening_inodes(port), inode);
}

#[test]
fn sigusr2_upgrades_and_status_shows_the_retiring_master() {
    let system = "    workers 1\n    drain-timeout-secs 30";
    let up = Upgradable::start(system);
    let first = up.master();
    // A long request keeps the old generation (and so the old master) alive.
    let held = river_tests::hold_request(&up.upstream, up.port);

    kill(Pid::from_raw(first as i32), Signal::SIGUSR2).expect("USR2");
    let second = wait_for("a new master", Duration::from_secs(20), || {
        let pid = up.master();
        (pid != first).then_some(pid)
    });
    let status = wait_for(
        "the retiring master in status",
        Duration::from_secs(5),
        || {
            let status = up.status();
            (status["retiring"][0]["master"]["pid"] == first).then_some(status)
        },
    );
    assert_eq!(status["master_pid"], second);
    assert_eq!(status["retiring"][0]["generations"][0]["state"], "draining");
    let (_, text) = up.riverctl(&["status"]);
    assert!(
        text.contains(&format!("retiring master pid {first}")),
        "{text}"
    );
    assert_eq!(
        client::get(local(up.port), "/").expect("request").status,
        200
    );
    assert!(alive(first), "the old master waits for its long request");
    up.upstream.release_held();
    assert_eq!(held.join().expect("held").expect("response").status, 200);
    river_tests::wait_gone("the old master", &[first], Duration::from_secs(10));
}

#[test]
fn a_failed_upgrade_leaves_the_old_master_serving_untouched() {
    let up = Upgradable::start(SYSTEM);
    let master = up.master();
    let workers = up.river.workers();

    let error = up.upgrade_fails(&["--binary", "/nonexistent/river"]);
    assert!(error.contains("No such file or directory"), "{error}");

    let dir = tempfile::tempdir().expect("tempdir");
    let exits = dir.path().join("river-exits");
    std::fs::write(&exits, "#!/bin/sh\nexit 3\n").expect("script");
    std::fs::set_permissions(&exits, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let error = up.upgrade_fails(&["--binary", exits.to_str().expect("utf-8")]);
    assert!(
        error.contains("exit status: 3") || error.contains("closed the link"),
        "{error}"
    );

    let not_executable = dir.path().join("river-text");
    std::fs::write(&not_executable, "not a program").expect("file");
    let error = up.upgrade_fails(&["--binary", not_executable.to_str().expect("utf-8")]);
    assert!(error.contains("Permission denied"), "{error}");

    let good = std::fs::read_to_string(&up.river.config_path).expect("config");
    std::fs::write(&up.river.config_path, format!("{good}\nbogus 1\n")).expect("config");
    let error = up.upgrade_fails(&[]);
    assert!(error.contains("unknown key `bogus`"), "{error}");
    std::fs::write(&up.river.config_path, good).expect("config");

    assert_eq!(up.master(), master);
    // The failed new masters are its children until reaped.
    wait_for("only the serving workers", Duration::from_secs(10), || {
        (up.river.workers() == workers).then_some(())
    });
    assert_eq!(
        client::get(local(up.port), "/").expect("request").status,
        200
    );
    // Nothing the failed attempts started is left.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(processes_named("river-exits"), Vec::<u32>::new());
    assert!(up.riverctl(&["status"]).0);
    // And a good upgrade still works afterwards.
    assert!(up.upgrade(&[]).starts_with("upgraded: "));
}

#[test]
fn a_new_master_killed_while_it_starts_leaves_the_old_one_serving() {
    let up = Upgradable::start(SYSTEM);
    let old = up.master();
    // The new master's worker 0 stops itself before Ready: it never serves.
    let stop = up.river.dir.path().join("stop-worker-start");
    std::fs::write(&stop, "0").expect("hook");
    let socket = up.river.control_socket();
    let upgrade = std::thread::spawn(move || {
        std::process::Command::new(binary("riverctl"))
            .arg("-s")
            .arg(socket)
            .arg("upgrade")
            .output()
            .expect("riverctl")
    });
    let new = wait_for("the new master", Duration::from_secs(20), || {
        children(old)
            .into_iter()
            .find(|pid| !cmdline(*pid).contains("worker"))
    });
    wait_for("the new master's workers", Duration::from_secs(20), || {
        (children(new).len() == 2).then_some(())
    });
    let new_workers = children(new);
    kill(Pid::from_raw(new as i32), Signal::SIGKILL).expect("kill the new master");
    let output = upgrade.join().expect("riverctl thread");
    let text = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("signal: 9"), "{text}");
    std::fs::remove_file(&stop).expect("hook");

    // Its workers, never told to serve, exit with it (the stopped one once
    // it runs again).
    for worker in &new_workers {
        let _ = kill(Pid::from_raw(*worker as i32), Signal::SIGCONT);
    }
    river_tests::wait_gone(
        "the new master's workers",
        &new_workers,
        Duration::from_secs(10),
    );
    assert_eq!(up.master(), old);
    assert_eq!(
        client::get(local(up.port), "/").expect("request").status,
        200
    );
    assert!(up.upgrade(&[]).starts_with("upgraded: "));
}

#[test]
fn an_upgrade_and_a_reload_never_run_at_once() {
    let up = Upgradable::start(SYSTEM);
    let old = up.master();
    // An upgrade whose new master cannot get ready (worker 0 stops itself).
    let stop = up.river.dir.path().join("stop-worker-start");
    std::fs::write(&stop, "0").expect("hook");
    let socket = up.river.control_socket();
    let upgrade = std::thread::spawn(move || {
        std::process::Command::new(binary("riverctl"))
            .arg("-s")
            .arg(socket)
            .args(["upgrade", "--timeout", "120"])
            .output()
            .expect("riverctl")
    });
    let new = wait_for("the new master", Duration::from_secs(20), || {
        children(old)
            .into_iter()
            .find(|pid| !cmdline(*pid).contains("worker"))
    });
    let (ok, text) = up.riverctl(&["reload"]);
    assert!(
        !ok && text.contains("a binary upgrade is in progress"),
        "{text}"
    );
    let (ok, text) = up.riverctl(&["upgrade"]);
    assert!(
        !ok && text.contains("an upgrade is already in progress"),
        "{text}"
    );
    let new_workers = children(new);
    kill(Pid::from_raw(new as i32), Signal::SIGKILL).expect("kill");
    assert_eq!(upgrade.join().expect("thread").status.code(), Some(1));
    std::fs::remove_file(&stop).expect("hook");
    for worker in &new_workers {
        let _ = kill(Pid::from_raw(*worker as i32), Signal::SIGCONT);
    }

    // A reload that takes a while (a slow file to parse) refuses upgrades.
    let good = std::fs::read_to_string(&up.river.config_path).expect("config");
    std::fs::write(
        &up.river.config_path,
        format!("a {}\nservices {{}}\n", "1 ".repeat(300_000)),
    )
    .expect("config");
    let socket = up.river.control_socket();
    let reload = std::thread::spawn(move || {
        std::process::Command::new(binary("riverctl"))
            .arg("-s")
            .arg(socket)
            .arg("reload")
            .output()
            .expect("riverctl")
    });
    // The first reload request was the refused one above.
    up.river.wait_log("reload requested", 2);
    let started = Instant::now();
    let refused = wait_for(
        "an upgrade refused during the reload",
        Duration::from_secs(20),
        || {
            let (ok, text) = up.riverctl(&["upgrade"]);
            assert!(!ok || started.elapsed() > Duration::from_secs(60), "{text}");
            text.contains("a reload is in progress").then_some(text)
        },
    );
    assert!(
        refused.contains("upgrade again once it is done"),
        "{refused}"
    );
    assert_eq!(reload.join().expect("thread").status.code(), Some(1));
    std::fs::write(&up.river.config_path, good).expect("config");
    assert_eq!(up.master(), old, "never two masters");
    assert_eq!(
        client::get(local(up.port), "/").expect("request").status,
        200
    );
}

#[test]
fn the_metrics_listener_moves_to_the_new_master() {
    let metrics_port = free_port();
    let system = format!("{SYSTEM}\n    metrics \"127.0.0.1:{metrics_port}\"");
    let up = Upgradable::start(&system);
    let old = up.master();
    let scrape = || client::get(local(metrics_port), "/metrics");
    assert_eq!(scrape().expect("scrape").status, 200);
    assert!(up.upgrade(&[]).starts_with("upgraded: "));
    river_tests::wait_gone("the old master", &[old], Duration::from_secs(15));
    let answer = scrape().expect("scrape after the upgrade");
    assert_eq!(answer.status, 200);
    assert!(
        answer.text().contains("river_generation"),
        "{}",
        answer.text()
    );
}
