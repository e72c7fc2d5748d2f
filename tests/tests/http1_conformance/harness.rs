//! Running a vector on both paths and checking what each run saw.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use river_tests::free_port;
use river_tests::river::River;
use river_tests::wire::{RawClient, Read, Request, Response, Script, ScriptedUpstream, Unanswered};

use crate::{Check, Path, Vector, CLOSE_WITHIN, SETTLE};

/// What one read of an exchange got.
#[derive(Debug)]
pub(crate) enum Got {
    Http(Read),
    Raw(Vec<u8>),
}

impl Got {
    pub(crate) fn response(&self) -> Option<&Response> {
        match self {
            Got::Http(Read::Response(response)) => Some(response),
            _ => None,
        }
    }
}

/// What happened on one path.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) path: Path,
    /// Per exchange, what each read got.
    pub(crate) got: Vec<Vec<Got>>,
    /// Per exchange, from its first byte sent to the end of its first read.
    pub(crate) took: Vec<Duration>,
    /// Per exchange, whether all its bytes could be written.
    pub(crate) sent: Vec<Result<(), String>>,
    /// Whether the first connection closed at the end (when a check asks).
    pub(crate) closed: Option<Result<Vec<u8>, Vec<u8>>>,
    /// Everything the client received, all connections.
    pub(crate) client_bytes: Vec<u8>,
    /// Every byte each upstream connection received.
    pub(crate) upstream: Vec<Vec<u8>>,
    /// The complete requests in them, with their connection's index.
    pub(crate) requests: Vec<(usize, Request)>,
}

impl Run {
    pub(crate) fn first_response(&self) -> Option<&Response> {
        self.got.first()?.first()?.response()
    }

    pub(crate) fn first_request(&self) -> Option<&Request> {
        self.requests.first().map(|(_, r)| r)
    }

    pub(crate) fn arrived(&self, path: &str) -> usize {
        self.requests
            .iter()
            .filter(|(_, r)| r.path() == path)
            .count()
    }
}

/// KDL for one proxy service.
pub(crate) fn service(name: &str, port: u16, upstream: SocketAddr, extra: &str) -> String {
    format!(
        "    {name} {{\n        listeners {{\n            \"127.0.0.1:{port}\"\n        }}\n        connectors {{\n            \"{upstream}\"\n        }}\n{extra}    }}\n"
    )
}

/// A River with two identical services, `Fast` and `Pingora`, each in front
/// of its own upstream running `script`: their listening addresses.
pub(crate) struct Pair {
    /// The fast path's River, and the one with the fast path turned off.
    pub(crate) _rivers: [River; 2],
    pub(crate) fast: (SocketAddr, ScriptedUpstream),
    pub(crate) pingora: (SocketAddr, ScriptedUpstream),
    pub(crate) _unanswered: Option<Unanswered>,
}

impl Pair {
    pub(crate) fn start(script: &Script, service_lines: &str) -> Pair {
        Pair::start_with(script, service_lines, false)
    }

    /// As [`Pair::start`]; with `unanswered`, both services' connector is an
    /// address that never completes a connection.
    pub(crate) fn start_with(script: &Script, service_lines: &str, unanswered: bool) -> Pair {
        let fast_up = ScriptedUpstream::start(script.clone()).expect("bind an upstream");
        let pingora_up = ScriptedUpstream::start(script.clone()).expect("bind an upstream");
        let unanswered =
            unanswered.then(|| Unanswered::start().expect("a listener that never accepts"));
        let connector = |scripted: &ScriptedUpstream| match &unanswered {
            Some(unanswered) => unanswered.addr,
            None => scripted.addr,
        };
        let (fast_port, pingora_port) = (free_port(), free_port());
        let fast = River::start(
            "    workers 1",
            &service("Fast", fast_port, connector(&fast_up), service_lines),
        );
        let pingora = River::start_with_env(
            "    workers 1",
            &service(
                "Pingora",
                pingora_port,
                connector(&pingora_up),
                service_lines,
            ),
            &[("RIVER_TEST_NO_FAST_PATH", std::ffi::OsStr::new("1"))],
        );
        Pair {
            _rivers: [fast, pingora],
            fast: (river_tests::local(fast_port), fast_up),
            pingora: (river_tests::local(pingora_port), pingora_up),
            _unanswered: unanswered,
        }
    }
}

/// Run `vector` on both paths at once and check both; panic with a report
/// naming the path, the failed checks and what was seen.
pub(crate) fn run(name: &str, vector: Vector) {
    let pair = Pair::start_with(&vector.script, &vector.service, vector.unanswered);
    let (fast, pingora) = std::thread::scope(|s| {
        let fast = s.spawn(|| run_path(Path::Fast, pair.fast.0, &vector, &pair.fast.1));
        let pingora = s.spawn(|| run_path(Path::Pingora, pair.pingora.0, &vector, &pair.pingora.1));
        (
            fast.join().expect("the fast run"),
            pingora.join().expect("the pingora run"),
        )
    });
    let mut report = String::new();
    for run in [&fast, &pingora] {
        let failures: Vec<String> = vector
            .checks
            .iter()
            .filter_map(|c| {
                check(c, run)
                    .err()
                    .map(|err| format!("{}: {err}", label(c)))
            })
            .collect();
        if failures.is_empty() {
            continue;
        }
        let _ = writeln!(
            report,
            "=== {:?} path: {} check(s) failed",
            run.path,
            failures.len()
        );
        for failure in &failures {
            let _ = writeln!(report, "  FAIL {failure}");
        }
        report.push_str(&describe(run));
    }
    if !report.is_empty() {
        for (which, river) in ["fast", "pingora"].iter().zip(&pair._rivers) {
            let log = river.log();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            let _ = writeln!(report, "--- the {which} River's log, last lines:");
            for line in tail.iter().rev() {
                let _ = writeln!(report, "  {line}");
            }
        }
    }
    assert!(report.is_empty(), "vector {name}:\n{report}");
}

pub(crate) fn run_path(
    path: Path,
    addr: SocketAddr,
    vector: &Vector,
    upstream: &ScriptedUpstream,
) -> Run {
    let mut clients: Vec<RawClient> = Vec::new();
    let mut run = Run {
        path,
        got: Vec::new(),
        took: Vec::new(),
        sent: Vec::new(),
        closed: None,
        client_bytes: Vec::new(),
        upstream: Vec::new(),
        requests: Vec::new(),
    };
    for exchange in &vector.exchanges {
        if exchange.fresh || clients.is_empty() {
            clients.push(RawClient::connect(addr).expect("connect to river"));
        }
        let client = clients.last_mut().expect("a client");
        let send = match path {
            Path::Fast => exchange.send.clone(),
            Path::Pingora => exchange.send.clone(),
        };
        let started = Instant::now();
        let sending = client
            .send_in_background(send)
            .expect("clone the client socket");
        let mut got = Vec::new();
        let mut took = None;
        for _ in 0..exchange.reads {
            let read = client.read_response(exchange.to_head, exchange.within);
            took.get_or_insert(started.elapsed());
            let done = !matches!(read, Read::Response(_));
            got.push(Got::Http(read));
            if done {
                break;
            }
        }
        if exchange.raw > 0 {
            got.push(Got::Raw(client.read_raw(exchange.raw, exchange.within)));
            took.get_or_insert(started.elapsed());
        }
        run.took.push(took.unwrap_or_default());
        run.sent.push(sending.finish().map_err(|e| e.to_string()));
        run.got.push(got);
    }
    if vector
        .checks
        .iter()
        .any(|c| matches!(c, Check::Closed | Check::RefusedOrDropped(_)))
    {
        run.closed = Some(clients[0].wait_closed(CLOSE_WITHIN));
    }
    std::thread::sleep(SETTLE);
    run.client_bytes = clients
        .iter()
        .flat_map(|c| c.received.iter().copied())
        .collect();
    run.upstream = upstream.received();
    run.requests = upstream.requests().0;
    run
}

pub(crate) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Bytes for a report: escaped, cut at `max`.
pub(crate) fn show(bytes: &[u8], max: usize) -> String {
    let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(max)])
        .escape_debug()
        .to_string();
    if bytes.len() > max {
        format!("\"{shown}\"... ({} bytes)", bytes.len())
    } else {
        format!("\"{shown}\"")
    }
}

pub(crate) fn show_got(got: Option<&Got>) -> String {
    match got {
        None => "nothing read".into(),
        Some(Got::Http(Read::Response(r))) => {
            // No scripted upstream sends a Date; pingora adds one to what
            // it serves (not to what it relays raw, such as a 101).
            let date = if r.fields.has("date") {
                " (with pingora's Date)"
            } else {
                ""
            };
            format!("{}{date} {}", r.status, show(&r.raw, 300))
        }
        Some(Got::Http(Read::Closed(rest))) => format!("closed after {}", show(rest, 300)),
        Some(Got::Http(Read::TimedOut(rest))) => {
            format!(
                "no complete response in time, still open, after {}",
                show(rest, 300)
            )
        }
        Some(Got::Http(Read::Malformed(err, rest))) => {
            format!("malformed ({err}): {}", show(rest, 300))
        }
        Some(Got::Raw(raw)) => format!("raw {}", show(raw, 300)),
    }
}

/// What the client and the upstream saw, for a failure report.
pub(crate) fn describe(run: &Run) -> String {
    let mut out = String::new();
    for (i, got) in run.got.iter().enumerate() {
        let _ = writeln!(
            out,
            "  client exchange {i} ({:?}, sent: {:?}):",
            run.took.get(i).copied().unwrap_or_default(),
            run.sent.get(i)
        );
        for g in got {
            let _ = writeln!(out, "    {}", show_got(Some(g)));
        }
    }
    if let Some(closed) = &run.closed {
        let _ = writeln!(out, "  close at the end: {closed:?}");
    }
    if run.upstream.is_empty() {
        out.push_str("  upstream: no connection\n");
    }
    for (i, bytes) in run.upstream.iter().enumerate() {
        let _ = writeln!(out, "  upstream connection {i}: {}", show(bytes, 800));
    }
    out
}

pub(crate) fn expect_status(
    got: Option<&Got>,
    allowed: &[u16],
    or_close: bool,
) -> Result<(), String> {
    match got {
        Some(Got::Http(Read::Response(r))) if allowed.contains(&r.status) => Ok(()),
        Some(Got::Http(Read::Closed(rest))) if or_close && rest.is_empty() => Ok(()),
        other => Err(format!("wanted {allowed:?}, got {}", show_got(other))),
    }
}

pub(crate) fn check(check: &Check, run: &Run) -> Result<(), String> {
    let first = run.got.first().and_then(|g| g.first());
    let response = run.first_response();
    let request = run.first_request();
    let no_response = || format!("no response: {}", show_got(first));
    match check {
        Check::Status(allowed) => expect_status(first, allowed, false),
        Check::StatusOrClose(allowed) => expect_status(first, allowed, true),
        Check::StatusAt(at, allowed) => {
            expect_status(run.got.get(*at).and_then(|g| g.first()), allowed, false)
        }
        Check::BrokenBody(bad) => {
            if contains(&run.client_bytes, bad) {
                return Err(format!("the client received {}", show(bad, 50)));
            }
            match first {
                Some(Got::Http(Read::Response(r))) if r.status == 502 => Ok(()),
                Some(Got::Http(Read::Response(r))) => Err(format!(
                    "a complete {} response for a broken one: {}",
                    r.status,
                    show(&r.raw, 300)
                )),
                Some(Got::Http(Read::Closed(_))) => Ok(()),
                other => Err(format!(
                    "wanted a 502 or a close mid-response, got {}",
                    show_got(other)
                )),
            }
        }
        Check::BrokenOrDropped(bad) => match response {
            Some(r)
                if r.status == 200 && r.body == b"hello" && !contains(&run.client_bytes, bad) =>
            {
                Ok(())
            }
            _ => self::check(&Check::BrokenBody(bad), run),
        },
        Check::RefusedOrDropped(bad) => {
            if let Some(b) = run.upstream.iter().find(|b| contains(b, bad)) {
                return Err(format!("the upstream received {}", show(b, 400)));
            }
            match first {
                Some(Got::Http(Read::Response(r))) if r.status == 200 => {
                    match (run.arrived("/v"), request) {
                        (1, Some(request)) if request.body == b"hello" => Ok(()),
                        (n, _) => Err(format!("forwarded {n} times, or with another body")),
                    }
                }
                _ => {
                    expect_status(first, &[400], true)?;
                    if run.arrived("/v") > 0 {
                        return Err("refused, yet forwarded whole".into());
                    }
                    match &run.closed {
                        Some(Ok(rest)) if rest.is_empty() => Ok(()),
                        other => Err(format!("not closed after the refusal: {other:?}")),
                    }
                }
            }
        }
        Check::Closed => match &run.closed {
            Some(Ok(rest)) if rest.is_empty() => Ok(()),
            Some(Ok(rest)) => Err(format!("more bytes before the close: {}", show(rest, 300))),
            Some(Err(_)) => Err(format!("still open {CLOSE_WITHIN:?} later")),
            None => Err("not observed".into()),
        },
        Check::NotForwarded => {
            let total: usize = run.upstream.iter().map(Vec::len).sum();
            if total == 0 {
                Ok(())
            } else {
                Err(format!("{total} bytes reached the upstream"))
            }
        }
        Check::Arrived(path, count) => match run.arrived(path) {
            n if n == *count => Ok(()),
            n => Err(format!("{path} arrived {n} times")),
        },
        Check::UpNever(bytes) => match run.upstream.iter().find(|b| contains(b, bytes)) {
            None => Ok(()),
            Some(b) => Err(format!("the upstream received {}", show(b, 400))),
        },
        Check::UpAbsent(name) => {
            if run.requests.is_empty() {
                return Err("no request reached the upstream".into());
            }
            match run.requests.iter().find(|(_, r)| r.fields.has(name)) {
                None => Ok(()),
                Some((_, r)) => Err(format!("upstream got {name}: {:?}", r.fields.all(name))),
            }
        }
        Check::UpLines(name, lines) => {
            let request = request.ok_or("no request reached the upstream")?;
            let got = request.fields.all(name);
            if got == *lines {
                Ok(())
            } else {
                Err(format!("upstream {name} lines: {got:?}"))
            }
        }
        Check::UpBody(body) => {
            let request = request.ok_or("no request reached the upstream")?;
            if request.body == *body {
                Ok(())
            } else {
                Err(format!("upstream body {}", show(&request.body, 200)))
            }
        }
        Check::UpCleanFraming => {
            for (_, request) in &run.requests {
                let te = request.fields.all("transfer-encoding");
                if !(te.is_empty() || te.len() == 1 && te[0].eq_ignore_ascii_case("chunked")) {
                    return Err(format!("upstream transfer-encoding lines {te:?}"));
                }
                if !te.is_empty() && request.fields.has("content-length") {
                    return Err("both framings upstream".into());
                }
            }
            Ok(())
        }
        Check::Lines(name, lines) => {
            let response = response.ok_or_else(no_response)?;
            let got = response.fields.all(name);
            if got == *lines {
                Ok(())
            } else {
                Err(format!("{name} lines: {got:?}"))
            }
        }
        Check::Absent(name) => {
            let response = response.ok_or_else(no_response)?;
            match response.fields.all(name) {
                values if values.is_empty() => Ok(()),
                values => Err(format!("{name}: {values:?}")),
            }
        }
        Check::Body(body) => {
            let response = response.ok_or_else(no_response)?;
            if response.body == *body {
                Ok(())
            } else {
                Err(format!("body {}", show(&response.body, 200)))
            }
        }
        Check::Never(bytes) => {
            if contains(&run.client_bytes, bytes) {
                Err(format!(
                    "the client received {}",
                    show(&run.client_bytes, 600)
                ))
            } else {
                Ok(())
            }
        }
        Check::Interim(status) => {
            let response = response.ok_or_else(no_response)?;
            if response.interim.iter().any(|i| i.status == *status) {
                Ok(())
            } else {
                Err(format!(
                    "interim responses: {:?}",
                    interim_statuses(response)
                ))
            }
        }
        Check::NoInterim(status) => {
            let response = response.ok_or_else(no_response)?;
            if response.interim.iter().any(|i| i.status == *status) {
                Err(format!(
                    "interim responses: {:?}",
                    interim_statuses(response)
                ))
            } else {
                Ok(())
            }
        }
        Check::NextClean | Check::NextServed => {
            let last = run.got.last().and_then(|g| g.first());
            match last {
                Some(Got::Http(Read::Response(r)))
                    if r.status == 200 && r.body == b"path=/next" =>
                {
                    Ok(())
                }
                Some(Got::Http(Read::Closed(rest)))
                    if rest.is_empty() && matches!(check, Check::NextClean) =>
                {
                    Ok(())
                }
                other => Err(format!("GET /next got {}", show_got(other))),
            }
        }
        Check::Within(limit) => match run.took.first() {
            Some(took) if took <= limit => Ok(()),
            took => Err(format!("took {took:?}")),
        },
        Check::Custom(_, check) => check(run),
    }
}

/// A check as a failure report names it.
pub(crate) fn label(check: &Check) -> String {
    let bytes = |b: &[u8]| show(b, 60);
    match check {
        Check::Custom(what, _) => format!("Custom({what})"),
        Check::BrokenBody(b) => format!("BrokenBody({})", bytes(b)),
        Check::BrokenOrDropped(b) => format!("BrokenOrDropped({})", bytes(b)),
        Check::RefusedOrDropped(b) => format!("RefusedOrDropped({})", bytes(b)),
        Check::UpNever(b) => format!("UpNever({})", bytes(b)),
        Check::UpBody(b) => format!("UpBody({})", bytes(b)),
        Check::Body(b) => format!("Body({})", bytes(b)),
        Check::Never(b) => format!("Never({})", bytes(b)),
        other => format!("{other:?}"),
    }
}

pub(crate) fn interim_statuses(response: &Response) -> Vec<u16> {
    response.interim.iter().map(|i| i.status).collect()
}
