//! Shared pieces of the integration tests: a real upstream server, a strict
//! HTTP/1.1 client (no retries, so every failure counts), and a handle on a
//! running `river` master.

pub mod client;
pub mod dns;
pub mod features;
pub mod load;
pub mod metrics;
pub mod raw;
pub mod river;
pub mod upstream;
pub mod wire;

use std::time::{Duration, Instant};

/// A port that was free a moment ago on 127.0.0.1. River must be told its port
/// in the config, so tests cannot simply bind port 0 inside River.
///
/// Not from the kernel's ephemeral range (port 0 would give one): every
/// outgoing connection of the tests running in parallel takes its local port
/// from there, and one of them could take the port before River binds it.
/// Ports below that range are handed out in turn from a start that differs
/// per test process, and each is checked free.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 10_000;
    const SPAN: u32 = 22_000; // below 32768, Linux's default ephemeral range
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let start = std::process::id().wrapping_mul(7919).wrapping_add(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos()),
    );
    let _ = NEXT.compare_exchange(u32::MAX, start % SPAN, Ordering::AcqRel, Ordering::Acquire);
    for _ in 0..SPAN {
        let port = (FIRST + NEXT.fetch_add(1, Ordering::AcqRel) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// Poll `check` until it returns Some, or panic with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `127.0.0.1:port`.
pub fn local(port: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], port))
}

/// KDL for a proxy service named `name` listening on each of `ports`, proxying
/// to `upstream`, and marking responses with `x-gen: GENERATION`.
pub fn tagged_proxy(
    name: &str,
    ports: &[u16],
    upstream: std::net::SocketAddr,
    generation: &str,
) -> String {
    let listeners: String = ports
        .iter()
        .map(|port| format!("            \"127.0.0.1:{port}\"\n"))
        .collect();
    format!(
        r#"    {name} {{
        listeners {{
{listeners}        }}
        connectors {{
            "{upstream}"
        }}
        path-control {{
            upstream-response {{
                filter kind="upsert-header" key="x-gen" value="{generation}"
            }}
        }}
    }}"#
    )
}

/// Start a `/hold` request through River on `port` and return once `upstream`
/// has it, so the serving worker holds a connection until released.
pub fn hold_request(
    upstream: &upstream::Upstream,
    port: u16,
) -> std::thread::JoinHandle<std::io::Result<client::Response>> {
    let before = upstream.requests();
    let held = std::thread::spawn(move || client::get(local(port), "/hold"));
    wait_for("a held request upstream", Duration::from_secs(5), || {
        (upstream.requests() > before).then_some(())
    });
    held
}

/// Wait until none of `pids` is alive.
pub fn wait_gone(what: &str, pids: &[u32], timeout: Duration) {
    wait_for(what, timeout, || {
        pids.iter().all(|pid| !river::alive(*pid)).then_some(())
    });
}
