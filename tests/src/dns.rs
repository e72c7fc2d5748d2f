//! A real DNS server for the service discovery tests: `dnsmasq` (Debian's
//! `dnsmasq-base`) on a loopback port, answering from a hosts directory the
//! test edits (A records) and from `--srv-host` options (SRV records), with a
//! TTL of 1 s. Stopped and started again on the same port to play an outage.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::upstream::Upstream;
use crate::wait_for;

/// An SRV record: `--srv-host=NAME,TARGET,PORT,PRIORITY,WEIGHT`.
pub struct Srv<'a> {
    pub name: &'a str,
    pub target: &'a str,
    pub port: u16,
    pub priority: u16,
    pub weight: u16,
}

pub struct Dns {
    pub port: u16,
    dir: tempfile::TempDir,
    srv: Vec<String>,
    child: Option<Child>,
}

impl Dns {
    /// Start dnsmasq with `hosts` (name -> addresses) and `srv` records.
    pub fn start(hosts: &[(&str, &[Ipv4Addr])], srv: &[Srv<'_>]) -> Dns {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir(dir.path().join("hosts")).expect("hosts dir");
        let mut dns = Dns {
            port: 0,
            dir,
            srv: srv
                .iter()
                .map(|s| {
                    format!(
                        "--srv-host={},{},{},{},{}",
                        s.name, s.target, s.port, s.priority, s.weight
                    )
                })
                .collect(),
            child: None,
        };
        for (name, ips) in hosts {
            dns.write_hosts(name, ips);
        }
        // A free port is only free until someone takes it: try a few.
        for _ in 0..5 {
            dns.port = free_udp_port();
            if dns.launch() {
                return dns;
            }
        }
        panic!("dnsmasq did not start; log:\n{}", dns.log());
    }

    /// `127.0.0.1:PORT`, for `resolver=`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn hosts_file(&self, name: &str) -> PathBuf {
        self.dir.path().join("hosts").join(name)
    }

    fn write_hosts(&self, name: &str, ips: &[Ipv4Addr]) {
        let lines: String = ips.iter().map(|ip| format!("{ip} {name}\n")).collect();
        let path = self.hosts_file(name);
        let tmp = self.dir.path().join("hosts.tmp");
        fs::write(&tmp, lines).expect("write hosts file");
        fs::rename(&tmp, path).expect("rename hosts file");
    }

    /// Make `name` resolve to `ips` from now on (SIGHUP: dnsmasq re-reads its
    /// hosts directory and forgets what it cached; removals need it).
    pub fn set(&self, name: &str, ips: &[Ipv4Addr]) {
        self.write_hosts(name, ips);
        if let Some(child) = &self.child {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGHUP);
        }
    }

    /// The outage: no server on the port any more.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Back on the same port.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "dnsmasq is running");
        wait_for("dnsmasq to start again", Duration::from_secs(20), || {
            self.launch().then_some(())
        });
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("dnsmasq.log")
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Start dnsmasq; false if it exited at once (its port was taken).
    fn launch(&mut self) -> bool {
        let mut command = Command::new("dnsmasq");
        command
            .arg("--keep-in-foreground")
            .arg("--conf-file=/dev/null")
            .arg(format!("--port={}", self.port))
            .arg("--listen-address=127.0.0.1")
            .arg("--bind-interfaces")
            .arg("--no-resolv")
            .arg("--no-hosts")
            .arg("--no-negcache")
            .arg("--local-ttl=1")
            .arg("--pid-file=")
            .arg(format!(
                "--hostsdir={}",
                self.dir.path().join("hosts").display()
            ))
            .arg(format!("--log-facility={}", self.log_path().display()))
            .args(&self.srv)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // As root, dnsmasq would become `nobody`, who cannot read the
        // test's private temp dir.
        if nix::unistd::geteuid().is_root() {
            command.arg("--user=root");
        }
        let mut child = command.spawn().expect(
            "start dnsmasq (Debian package dnsmasq-base; scripts/install-deps installs it)",
        );
        // Ready once it answers on its TCP port.
        let ready = wait_until(Duration::from_secs(10), || {
            if let Ok(Some(_)) = child.try_wait() {
                return Some(false);
            }
            std::net::TcpStream::connect(self.addr())
                .is_ok()
                .then_some(true)
        });
        if ready {
            self.child = Some(child);
        } else {
            let _ = child.kill();
            let _ = child.wait();
        }
        ready
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.stop();
    }
}

fn wait_until(timeout: Duration, mut check: impl FnMut() -> Option<bool>) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if let Some(answer) = check() {
            return answer;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("bind udp 127.0.0.1:0")
        .port()
}

/// One upstream on each of `ips`, all on the same port (an A record gives
/// addresses; the port is the config's).
pub fn upstreams_on_one_port(names: &[&str], ips: &[Ipv4Addr]) -> (Vec<Upstream>, u16) {
    assert_eq!(names.len(), ips.len());
    for _ in 0..20 {
        let first = std::net::TcpListener::bind((ips[0], 0)).expect("bind upstream");
        let port = first.local_addr().expect("addr").port();
        drop(first);
        let bound: Option<Vec<std::net::TcpListener>> = ips
            .iter()
            .map(|ip| std::net::TcpListener::bind((*ip, port)).ok())
            .collect();
        if let Some(listeners) = bound {
            drop(listeners);
            let upstreams = names
                .iter()
                .zip(ips)
                .map(|(name, ip)| Upstream::start_on(name, SocketAddr::from((*ip, port))))
                .collect();
            return (upstreams, port);
        }
    }
    panic!("no port free on all of {ips:?}");
}

/// The serving generation's number and worker pids, from `riverctl status --json`.
pub fn serving(river: &crate::river::River) -> (u64, Vec<u64>) {
    let status = status_json(river);
    let generation = status["generations"]
        .as_array()
        .expect("generations")
        .iter()
        .find(|g| g["state"] == "serving")
        .expect("a serving generation");
    let mut pids: Vec<u64> = generation["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .map(|w| w["pid"].as_u64().expect("pid"))
        .collect();
    pids.sort_unstable();
    (generation["generation"].as_u64().expect("number"), pids)
}

/// `riverctl status --json`, parsed.
pub fn status_json(river: &crate::river::River) -> serde_json::Value {
    let output = river.riverctl(&["status", "--json"]);
    assert!(output.status.success(), "riverctl status failed");
    serde_json::from_slice(&output.stdout).expect("status JSON")
}
