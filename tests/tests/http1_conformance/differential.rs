//! The differential test: generated requests through both paths, compared.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use river_tests::wire::{Piece, RawClient, Read, Request, ScriptedUpstream};

use crate::harness::{show, Pair};
use crate::{serve, SETTLE};

/// Generated requests.
const DIFFERENTIAL_CASES: usize = 300;
const DIFFERENTIAL_SEED: u64 = 0x5EED_0011_C0FF_EE00;
/// A generated request whose response takes longer counts as "timed out".
const DIFFERENTIAL_WITHIN: Duration = Duration::from_secs(3);

/// xorshift64*: small, deterministic, good enough to mix test inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn percent(&mut self) -> usize {
        self.below(100)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn body(&mut self, len: usize) -> Vec<u8> {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        (0..len).map(|_| *self.pick(ALPHABET)).collect()
    }
}

/// One generated request.
#[derive(Debug, Clone)]
struct Case {
    id: usize,
    /// What was chosen, for reports and the allow-list.
    traits: Vec<String>,
    bytes: Vec<u8>,
    head: bool,
}

/// Field lines a request may carry, besides Host and framing.
const EXTRA_FIELDS: &[&str] = &[
    "Accept: */*",
    "User-Agent: gen/1.0",
    "X-Custom: value",
    "Cookie: a=b; c=d",
    "Accept-Encoding: gzip, br",
    "Cache-Control: no-cache",
    "X-Forwarded-For: 203.0.113.9",
    "X-Forwarded-Proto: https",
    "Via: 1.1 other",
    "Forwarded: for=198.51.100.1",
    "Connection: keep-alive",
    "Connection: close",
    "Keep-Alive: timeout=5",
    "TE: trailers",
    "Proxy-Authorization: Basic Zm9vOmJhcg==",
    "Proxy-Connection: keep-alive",
    "Trailer: X-T",
    "Upgrade: h2c",
    "X-Empty:",
    "X-Spaces:    padded   ",
    "x-lower-case: v",
    "X-UPPER-CASE: V",
    "X-Dup: 1",
    "Content-Type: text/plain",
    "Range: bytes=0-1",
    "If-None-Match: \"x\"",
    "Authorization: Bearer t0k3n",
    "Connection: x-hop",
    "X-Hop: dropped",
];

fn generate(id: usize, rng: &mut Rng) -> Case {
    let mut traits = Vec::new();
    let method = *rng.pick(&[
        "GET", "GET", "GET", "HEAD", "POST", "POST", "PUT", "DELETE", "OPTIONS", "PATCH",
    ]);
    let suffix = *rng.pick(&[
        "",
        "/a/b",
        "?x=1&y=2",
        "/%7Euser",
        "//double",
        "/a/./b/../c",
        "?q=a%20b",
        "/caf%C3%A9",
        ";p=1",
        "/x?",
    ]);
    let version = if rng.percent() < 10 {
        "HTTP/1.0"
    } else {
        "HTTP/1.1"
    };
    traits.push(format!("{method} {version}"));
    let mut lines = vec![format!("{method} /d/{id}{suffix} {version}")];
    let host: &[&str] = match rng.percent() {
        0..=79 => &["Host: localhost"],
        80..=84 => &["Host: localhost:8080"],
        85..=89 => &[],
        90..=92 => &["Host: localhost", "Host: localhost"],
        93..=95 => &["Host: exa mple"],
        96..=97 => &["Host: a.example, b.example"],
        _ => &["Host: user@localhost"],
    };
    traits.push(format!("host {host:?}"));
    lines.extend(host.iter().map(|h| (*h).to_owned()));
    lines.push(format!("X-Case: {id}"));
    for _ in 0..rng.below(5) {
        let field = *rng.pick(EXTRA_FIELDS);
        traits.push(format!("field {field}"));
        lines.push(field.to_owned());
    }
    let body = {
        let len = 1 + rng.below(20);
        rng.body(len)
    };
    let chunked_body = |body: &[u8], ext: &str, trailer: &str| -> Vec<u8> {
        let (a, b) = body.split_at(body.len() / 2);
        let mut out = Vec::new();
        for part in [a, b] {
            if !part.is_empty() {
                out.extend_from_slice(format!("{:x}{ext}\r\n", part.len()).as_bytes());
                out.extend_from_slice(part);
                out.extend_from_slice(b"\r\n");
            }
        }
        out.extend_from_slice(format!("0\r\n{trailer}\r\n").as_bytes());
        out
    };
    let n = body.len();
    let (framing, fields, payload): (&str, Vec<String>, Vec<u8>) = match rng.percent() {
        0..=39 => ("none", vec![], vec![]),
        40..=64 => (
            "content-length",
            vec![format!("Content-Length: {n}")],
            body.clone(),
        ),
        65..=67 => (
            "content-length list",
            vec![format!("Content-Length: {n},{n}")],
            body.clone(),
        ),
        68..=70 => (
            "content-length twice",
            vec![
                format!("Content-Length: {n}"),
                format!("Content-Length: {n}"),
            ],
            body.clone(),
        ),
        71..=72 => (
            "content-length differing",
            vec![
                format!("Content-Length: {n}"),
                format!("Content-Length: {}", n + 1),
            ],
            [&body[..], b"x"].concat(),
        ),
        73..=74 => (
            "content-length plus",
            vec![format!("Content-Length: +{n}")],
            body.clone(),
        ),
        75..=86 => (
            "chunked",
            vec!["Transfer-Encoding: chunked".into()],
            chunked_body(&body, "", ""),
        ),
        87..=89 => (
            "chunked extension",
            vec!["Transfer-Encoding: chunked".into()],
            chunked_body(&body, ";e=1", ""),
        ),
        90..=91 => (
            "chunked trailer",
            vec!["Transfer-Encoding: chunked".into()],
            chunked_body(&body, "", "X-T: 1\r\n"),
        ),
        92..=93 => (
            "gzip, chunked",
            vec!["Transfer-Encoding: gzip, chunked".into()],
            chunked_body(&body, "", ""),
        ),
        94..=96 => (
            "chunked and content-length",
            vec![
                "Transfer-Encoding: chunked".into(),
                format!("Content-Length: {n}"),
            ],
            chunked_body(&body, "", ""),
        ),
        97..=98 => (
            "chunked, (empty element)",
            vec!["Transfer-Encoding: chunked, ".into()],
            chunked_body(&body, "", ""),
        ),
        _ => (
            "identity",
            vec!["Transfer-Encoding: identity".into()],
            vec![],
        ),
    };
    traits.push(format!("framing {framing}"));
    lines.extend(fields);
    if framing != "none" && rng.percent() < 10 {
        traits.push("field Expect: 100-continue".into());
        lines.push("Expect: 100-continue".into());
    }
    let mut bytes = lines.join("\r\n").into_bytes();
    bytes.extend_from_slice(b"\r\n\r\n");
    bytes.extend_from_slice(&payload);
    Case {
        id,
        traits,
        bytes,
        head: method == "HEAD",
    }
}

/// What the client saw.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Status(u16),
    Closed,
    TimedOut,
    Malformed,
}

/// A request as it reached the upstream, normalized: field names lowercased
/// and sorted (their order is not compared), values kept but for the
/// upstream's own address (each path has its own upstream; River names it in
/// the Host it adds to a request without one), which reads `UPSTREAM`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Forwarded {
    request_line: String,
    fields: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Forwarded {
    fn of(request: &Request, upstream: SocketAddr) -> Forwarded {
        let upstream = upstream.to_string();
        let mut fields: Vec<(String, String)> = request
            .fields
            .0
            .iter()
            .map(|f| {
                (
                    f.name.to_ascii_lowercase(),
                    f.value.replace(&upstream, "UPSTREAM"),
                )
            })
            .collect();
        fields.sort();
        Forwarded {
            request_line: format!("{} {} {}", request.method, request.target, request.version),
            fields,
            body: request.body.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    seen: Seen,
    forwarded: Vec<Forwarded>,
}

/// A difference between the paths River accepts, and why.
struct Allowed {
    reason: &'static str,
    /// Whether it explains the difference for this case (see `Case::traits`
    /// for what was generated, e.g. `"field TE: trailers"`).
    applies: fn(&Case, &Outcome, &Outcome) -> bool,
}

/// Differences between the paths that are not defects. Empty: both paths
/// apply one message model (DESIGN.md), so any difference is a bug to fix
/// or an entry here with its reason.
const ALLOWED: &[Allowed] = &[];

fn send_case(addr: SocketAddr, bytes: Vec<u8>, head: bool) -> Seen {
    let Ok(mut client) = RawClient::connect(addr) else {
        return Seen::Closed;
    };
    let Ok(sending) = client.send_in_background(vec![Piece::Bytes(bytes)]) else {
        return Seen::Closed;
    };
    let seen = match client.read_response(head, DIFFERENTIAL_WITHIN) {
        Read::Response(r) => Seen::Status(r.status),
        Read::Closed(_) => Seen::Closed,
        Read::TimedOut(_) => Seen::TimedOut,
        Read::Malformed(..) => Seen::Malformed,
    };
    let _ = sending.finish();
    seen
}

/// The requests an upstream received, by the case named in `X-Case`; and the
/// bytes it could not parse as requests.
fn forwarded_by_case(upstream: &ScriptedUpstream) -> (Vec<Vec<Forwarded>>, Vec<Vec<u8>>) {
    let (requests, rests) = upstream.requests();
    let mut by_case = vec![Vec::new(); DIFFERENTIAL_CASES];
    for (_, request) in &requests {
        let case = request
            .fields
            .get("x-case")
            .and_then(|id| id.parse::<usize>().ok())
            .filter(|id| *id < DIFFERENTIAL_CASES);
        if let Some(case) = case {
            by_case[case].push(Forwarded::of(request, upstream.addr));
        }
    }
    (
        by_case,
        rests.into_iter().filter(|r| !r.is_empty()).collect(),
    )
}

/// A corpus of generated requests, valid and invalid, through both paths of
/// one River: what reached the upstream and the status the client saw must
/// agree, or the difference is in [`ALLOWED`].
#[test]
fn differential() {
    let mut rng = Rng(DIFFERENTIAL_SEED);
    let cases: Vec<Case> = (0..DIFFERENTIAL_CASES)
        .map(|id| generate(id, &mut rng))
        .collect();
    let pair = Pair::start(&serve(), "");
    let (fast_addr, pingora_addr) = (pair.fast.0, pair.pingora.0);
    let threads = 4;
    let seen: Vec<(usize, Seen, Seen)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|k| {
                let cases = &cases;
                s.spawn(move || {
                    cases
                        .iter()
                        .skip(k)
                        .step_by(threads)
                        .map(|case| {
                            let fast = send_case(fast_addr, case.bytes.clone(), case.head);
                            let pingora = send_case(pingora_addr, case.bytes.clone(), case.head);
                            (case.id, fast, pingora)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("a differential worker"))
            .collect()
    });
    std::thread::sleep(SETTLE);
    let (fast_up, fast_rest) = forwarded_by_case(&pair.fast.1);
    let (pingora_up, pingora_rest) = forwarded_by_case(&pair.pingora.1);

    let mut report = String::new();
    let mut kinds: Vec<(String, usize)> = Vec::new();
    let mut differences = 0;
    let mut allowed = 0;
    for (id, fast_seen, pingora_seen) in seen {
        let case = &cases[id];
        let fast = Outcome {
            seen: fast_seen,
            forwarded: fast_up[id].clone(),
        };
        let pingora = Outcome {
            seen: pingora_seen,
            forwarded: pingora_up[id].clone(),
        };
        if fast == pingora {
            continue;
        }
        if let Some(allow) = ALLOWED.iter().find(|a| (a.applies)(case, &fast, &pingora)) {
            allowed += 1;
            note_allowed(allow.reason, id);
            continue;
        }
        differences += 1;
        let kind = difference_kind(&fast, &pingora);
        match kinds.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, count)) => *count += 1,
            None => kinds.push((kind, 1)),
        }
        let _ = writeln!(report, "--- case {id}: {:?}", case.traits);
        let _ = writeln!(report, "  request: {}", show(&case.bytes, 400));
        let _ = writeln!(report, "  fast:    {:?}", fast.seen);
        let _ = writeln!(report, "  pingora: {:?}", pingora.seen);
        describe_forwarded_difference(&mut report, &fast.forwarded, &pingora.forwarded);
    }
    for (path, rest) in [("fast", &fast_rest), ("pingora", &pingora_rest)] {
        for bytes in rest.iter() {
            let _ = writeln!(
                report,
                "--- unparsable bytes reached the {path} upstream: {}",
                show(bytes, 400)
            );
        }
    }
    let mut summary = String::new();
    kinds.sort_by_key(|kind| std::cmp::Reverse(kind.1));
    for (kind, count) in &kinds {
        let _ = writeln!(summary, "  {count:3} x {kind}");
    }
    assert!(
        report.is_empty(),
        "{differences} of {DIFFERENTIAL_CASES} generated requests differ between the paths \
         ({allowed} allowed differences). By kind:\n{summary}\n{report}"
    );
}

/// An allowed difference, on stderr (shown with `--nocapture`).
fn note_allowed(reason: &str, id: usize) {
    eprintln!("case {id}: allowed difference: {reason}");
}

/// A short name for how two outcomes differ, to count differences by kind.
fn difference_kind(fast: &Outcome, pingora: &Outcome) -> String {
    if fast.seen != pingora.seen {
        return format!(
            "client sees {:?} on the fast path, {:?} on pingora's",
            fast.seen, pingora.seen
        );
    }
    if fast.forwarded.len() != pingora.forwarded.len() {
        return format!(
            "{} request(s) upstream on the fast path, {} on pingora's",
            fast.forwarded.len(),
            pingora.forwarded.len()
        );
    }
    let mut parts = Vec::new();
    for (f, p) in fast.forwarded.iter().zip(&pingora.forwarded) {
        if f.request_line != p.request_line {
            parts.push("request line".to_owned());
        }
        let names = |a: &[(String, String)], b: &[(String, String)]| -> Vec<String> {
            let mut names: Vec<String> = a
                .iter()
                .filter(|x| !b.contains(x))
                .map(|(n, _)| n.clone())
                .collect();
            names.dedup();
            names
        };
        let (only_fast, only_pingora) = (names(&f.fields, &p.fields), names(&p.fields, &f.fields));
        if !only_fast.is_empty() {
            parts.push(format!(
                "upstream gets {only_fast:?} only from the fast path"
            ));
        }
        if !only_pingora.is_empty() {
            parts.push(format!(
                "upstream gets {only_pingora:?} only from pingora's"
            ));
        }
        if f.body != p.body {
            parts.push("body".to_owned());
        }
    }
    parts.join(", ")
}

fn describe_forwarded_difference(report: &mut String, fast: &[Forwarded], pingora: &[Forwarded]) {
    if fast.len() != pingora.len() {
        let _ = writeln!(
            report,
            "  upstream got {} request(s) on the fast path, {} on pingora's",
            fast.len(),
            pingora.len()
        );
    }
    for (f, p) in fast.iter().zip(pingora) {
        if f.request_line != p.request_line {
            let _ = writeln!(
                report,
                "  request line: fast {:?}, pingora {:?}",
                f.request_line, p.request_line
            );
        }
        let only = |a: &[(String, String)], b: &[(String, String)]| -> Vec<String> {
            a.iter()
                .filter(|x| !b.contains(x))
                .map(|(n, v)| format!("{n}: {v}"))
                .collect()
        };
        let (only_fast, only_pingora) = (only(&f.fields, &p.fields), only(&p.fields, &f.fields));
        if !only_fast.is_empty() || !only_pingora.is_empty() {
            let _ = writeln!(
                report,
                "  fields only on the fast path {only_fast:?}, only on pingora's {only_pingora:?}"
            );
        }
        if f.body != p.body {
            let _ = writeln!(
                report,
                "  body: fast {}, pingora {}",
                show(&f.body, 100),
                show(&p.body, 100)
            );
        }
    }
}
