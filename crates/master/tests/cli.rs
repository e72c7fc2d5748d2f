//! The `river` command line, run as a real process. (Having an integration test
//! here also makes `cargo test --workspace` build the binary the tests/ crate
//! spawns.)

use std::process::Command;

fn river() -> Command {
    Command::new(env!("CARGO_BIN_EXE_river"))
}

#[test]
fn validates_the_embedded_default() {
    let output = river().arg("--validate").output().unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("embedded default is valid"));
}

#[test]
fn validate_reports_a_missing_file() {
    let output = river()
        .args(["--validate", "-c", "/nonexistent/river.kdl"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/river.kdl"));
}

#[test]
fn worker_mode_refuses_to_run_without_a_master() {
    let output = river().args(["worker", "--ipc-fd", "97"]).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("started by the master"));
}
