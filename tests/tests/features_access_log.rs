//! Issue 4: the access log: a line per request, reopened on `reopen-logs`
//! (logrotate's rename-then-signal), moved by a reload.

use std::path::Path;
use std::time::Duration;

use river_tests::client;
use river_tests::features::reload_ok;
use river_tests::river::River;
use river_tests::upstream::Upstream;
use river_tests::{free_port, local, tagged_proxy, wait_for};

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn wait_line(path: &Path, needle: &str) -> String {
    wait_for(
        &format!("`{needle}` in {}", path.display()),
        Duration::from_secs(10),
        || lines(path).into_iter().find(|l| l.contains(needle)),
    )
}

#[test]
fn requests_are_logged_and_reopen_switches_files() {
    let upstream = Upstream::start("alpha");
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("access.log");
    let port = free_port();
    let system = format!("    workers 2\n    access-log \"{}\"", log.display());
    let river = River::start(
        &system,
        &tagged_proxy("Logged", &[port], upstream.addr, "g"),
    );

    for i in 0..5 {
        assert_eq!(
            client::get(local(port), &format!("/first/{i}"))
                .unwrap()
                .status,
            200
        );
    }
    let line = wait_line(&log, "/first/4");
    // TIME CLIENT METHOD PATH STATUS BYTES UPSTREAM MILLIS
    let fields: Vec<&str> = line.split(' ').collect();
    assert_eq!(fields.len(), 8, "{line}");
    assert!(
        fields[0].ends_with('Z') && fields[0].contains('T'),
        "{line}"
    );
    assert_eq!(fields[1], "127.0.0.1");
    assert_eq!(fields[2], "GET");
    assert_eq!(fields[3], "/first/4");
    assert_eq!(fields[4], "200");
    assert_eq!(fields[5], "hello from alpha".len().to_string());
    assert_eq!(fields[6], upstream.addr.to_string());
    assert!(fields[7].parse::<u64>().is_ok(), "{line}");
    wait_for("5 lines", Duration::from_secs(10), || {
        (lines(&log).len() == 5).then_some(())
    });

    // logrotate: rename, then ask for a reopen.
    let rotated = logs.path().join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    let output = river.riverctl(&["reopen-logs"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    wait_for("a fresh access.log", Duration::from_secs(10), || {
        let _ = client::get(local(port), "/probe");
        lines(&log)
            .iter()
            .any(|l| l.contains("/probe"))
            .then_some(())
    });
    // Give the other worker's reopen a moment to land, then log more.
    std::thread::sleep(Duration::from_millis(200));
    for i in 0..10 {
        client::get(local(port), &format!("/second/{i}")).unwrap();
    }
    wait_for("10 lines in the new file", Duration::from_secs(10), || {
        (lines(&log)
            .iter()
            .filter(|l| l.contains("/second/"))
            .count()
            == 10)
            .then_some(())
    });
    assert!(
        !lines(&rotated).iter().any(|l| l.contains("/second/")),
        "the rotated file gets nothing new"
    );
    assert_eq!(
        lines(&rotated)
            .iter()
            .filter(|l| l.contains("/first/"))
            .count(),
        5
    );

    // A reload can move the log.
    let moved = logs.path().join("moved.log");
    let system = format!("    workers 2\n    access-log \"{}\"", moved.display());
    river.rewrite_config(
        &system,
        &tagged_proxy("Logged", &[port], upstream.addr, "g"),
    );
    reload_ok(&river);
    client::get(local(port), "/third").unwrap();
    let line = wait_line(&moved, "/third");
    assert!(line.contains(" 200 "), "{line}");
}

#[test]
fn error_responses_and_unknown_upstreams_are_logged_too() {
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("access.log");
    let port = free_port();
    let dead = local(free_port());
    let system = format!("    workers 1\n    access-log \"{}\"", log.display());
    let _river = River::start(&system, &tagged_proxy("Logged", &[port], dead, "g"));
    assert_eq!(client::get(local(port), "/nowhere").unwrap().status, 502);
    let line = wait_line(&log, "/nowhere");
    assert!(line.contains(" 502 "), "{line}");
    assert!(
        line.contains(&dead.to_string()),
        "the upstream tried: {line}"
    );
}
