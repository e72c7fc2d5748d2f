//! `riverctl` as a real process, without a master. (Also makes `cargo test
//! --workspace` build the binary the tests/ crate spawns.)

use std::process::Command;

fn riverctl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_riverctl"))
}

#[test]
fn check_reports_the_position_of_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.kdl");
    std::fs::write(&path, "system {\n    workers \"two\"\n}\n").unwrap();
    let output = riverctl()
        .arg("check")
        .arg("-c")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("{}:2:", path.display())),
        "{stderr}"
    );
}

#[test]
fn a_missing_master_is_a_clear_error() {
    let output = riverctl()
        .args(["-s", "/nonexistent/river.sock", "status"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot connect to the master's control socket /nonexistent/river.sock"),
        "{stderr}"
    );
}
