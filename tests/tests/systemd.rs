//! sd_notify: what a `Type=notify-reload` unit hears from the master, through a
//! fake NOTIFY_SOCKET.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use nix::sys::signal::Signal;
use river_tests::river::River;
use river_tests::upstream::Upstream;
use river_tests::{free_port, tagged_proxy};

fn next(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    let n = socket
        .recv(&mut buf)
        .expect("a notification within the timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn ready_reloading_and_stopping_reach_systemd() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let systemd = UnixDatagram::bind(&path).unwrap();
    systemd
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();

    let upstream = Upstream::start("alpha");
    let port = free_port();
    let mut river = River::spawn_with_env(
        "    workers 1",
        &tagged_proxy("S", &[port], upstream.addr, "1"),
        &[("NOTIFY_SOCKET", path.as_os_str())],
    );
    assert!(next(&systemd).starts_with("READY=1\n"));

    river.signal(Signal::SIGHUP);
    let reloading = next(&systemd);
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading}"
    );
    let usec: u64 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .and_then(|v| v.parse().ok())
        .expect("MONOTONIC_USEC value");
    assert!(usec > 0);
    assert_eq!(next(&systemd), "READY=1\nSTATUS=generation 2 serving\n");

    // A rejected reload also ends with READY=1: systemd must not wait forever.
    std::fs::write(&river.config_path, "system {\n    bogus 1\n}\n").unwrap();
    river.signal(Signal::SIGHUP);
    assert!(next(&systemd).starts_with("RELOADING=1\n"));
    assert_eq!(
        next(&systemd),
        "READY=1\nSTATUS=reload rejected, configuration unchanged; generation 2 serving\n"
    );

    river.signal(Signal::SIGTERM);
    assert!(next(&systemd).starts_with("STOPPING=1\n"));
    assert!(river.wait_exit(Duration::from_secs(10)).success());
    // Workers never talk to systemd: nothing but the master's messages arrived.
    systemd.set_nonblocking(true).unwrap();
    assert!(systemd.recv(&mut [0u8; 64]).is_err());
}

#[test]
fn after_an_upgrade_the_new_master_is_the_main_pid_and_the_old_one_is_silent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let systemd = UnixDatagram::bind(&path).unwrap();
    systemd
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let upstream = Upstream::start("alpha");
    let port = free_port();
    let river = River::spawn_with_env(
        "    workers 1",
        &tagged_proxy("S", &[port], upstream.addr, "1"),
        &[("NOTIFY_SOCKET", path.as_os_str())],
    );
    assert!(next(&systemd).starts_with("READY=1\n"));

    let output = river.riverctl(&["upgrade"]);
    assert!(output.status.success(), "{output:?}\n{}", river.log());
    let new: u32 = std::fs::read_to_string(river.pid_file())
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_ne!(new, river.pid);
    let takeover = next(&systemd);
    assert!(
        takeover.starts_with(&format!("MAINPID={new}\nREADY=1\n")),
        "{takeover}"
    );
    // The old master drains and exits without a word to systemd (a STOPPING=1
    // from it would stop the service).
    river_tests::wait_gone("the old master", &[river.pid], Duration::from_secs(10));
    systemd.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 256];
    if let Ok(n) = systemd.recv(&mut buf) {
        panic!("unexpected: {}", String::from_utf8_lossy(&buf[..n]));
    }
    systemd.set_nonblocking(false).unwrap();

    // The new master speaks for the service from now on.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(new as i32), Signal::SIGTERM).unwrap();
    assert!(next(&systemd).starts_with("STOPPING=1\n"));
    river_tests::wait_gone("the new master", &[new], Duration::from_secs(10));
}
