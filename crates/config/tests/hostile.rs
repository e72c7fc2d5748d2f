//! The loader against hostile input: random mutations of real configs, deep
//! nesting of every construct the KDL parser recurses on, binary garbage and
//! huge files. Each must give a value (a config or an error), never a panic,
//! an abort or a hang. (The `cargo fuzz` target `config` explores further;
//! this runs in every `cargo test`.)

use std::time::{Duration, Instant};

use river_config::{load, parse, ConfigError, EMBEDDED_DEFAULT_KDL, MAX_CONFIG_BYTES};

/// Generous for a debug build on a loaded machine; the inputs are small.
const PER_INPUT: Duration = Duration::from_secs(10);

const REAL: &str = r##"
system {
    workers 2
    threads-per-service 2
    drain-timeout-secs 60
    max-draining-generations 2
}
services {
    Example {
        listeners {
            "127.0.0.1:8080"
        }
        connectors {
            load-balance {
                selection "Ketama" key="UriPath"
                health-check "None"
            }
            "10.0.0.5:8000"
            "10.0.0.6:8000"
        }
        path-control {
            request-filters {
                filter kind="block-cidr-range" addrs="192.168.0.0/16, 10.0.0.0/8"
            }
            upstream-request {
                filter kind="remove-header-key-regex" pattern=".*(secret|SECRET).*"
                filter kind="upsert-header" key="x-proxy-friend" value="river"
            }
        }
        rate-limiting {
            rule kind="source-ip" max-buckets=4000 tokens-per-bucket=10 refill-qty=1 refill-rate-ms=10
        }
    }
    /- Off { listeners { "127.0.0.1:9" } ; welcome-page }
    (t)Typed r#"raw { string"# #"v2 { raw"# """
    multi { line
    """ offer-h2=true
}
"##;

/// xorshift64*: deterministic, so a failure names a reproducible case.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// KDL's structural characters, heavily weighted, plus anything.
fn random_piece(rng: &mut Rng) -> String {
    const PIECES: &[&str] = &[
        "{",
        "}",
        "(",
        ")",
        ";",
        "/-",
        "/*",
        "*/",
        "//",
        "\"",
        "\"\"\"",
        "#\"",
        "\"#",
        "r#\"",
        "\\",
        "\n",
        "=",
        "#true",
        "true",
        "null",
        "-1",
        "1e999",
        "0x",
        "\u{feff}",
        "\u{2028}",
        " ",
        "workers",
        "services",
        "listeners",
        "\"127.0.0.1:0\"",
        "é",
    ];
    if rng.below(8) == 0 {
        char::from_u32(rng.below(0x11_0000) as u32)
            .map(String::from)
            .unwrap_or_default()
    } else {
        PIECES[rng.below(PIECES.len())].to_string()
    }
}

fn mutate(rng: &mut Rng, base: &str) -> String {
    let mut text: Vec<char> = base.chars().collect();
    for _ in 0..1 + rng.below(8) {
        let at = rng.below(text.len() + 1);
        match rng.below(3) {
            0 => {
                let piece: Vec<char> = random_piece(rng).chars().collect();
                text.splice(at..at, piece);
            }
            1 if at < text.len() => {
                let end = (at + 1 + rng.below(20)).min(text.len());
                text.drain(at..end);
            }
            _ => {
                let piece = random_piece(rng);
                let times = 1 + rng.below(200);
                let repeated: Vec<char> = piece.repeat(times).chars().collect();
                text.splice(at..at, repeated);
            }
        }
    }
    text.into_iter().collect()
}

/// Parse `text`: a value within PER_INPUT, or a panic naming the case.
fn survives(case: &str, text: &str) {
    let started = Instant::now();
    let outcome = std::panic::catch_unwind(|| parse(text, "fuzz.kdl").map(|_| ()));
    let elapsed = started.elapsed();
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(err)) => assert!(!err.to_string().is_empty(), "{case}: empty error"),
        Err(_) => panic!("{case}: the loader panicked on {:?}", truncated(text)),
    }
    assert!(
        elapsed < PER_INPUT,
        "{case}: took {elapsed:?} on {:?}",
        truncated(text)
    );
}

fn truncated(text: &str) -> String {
    text.chars().take(300).collect()
}

#[test]
fn random_mutations_of_real_configs_give_values() {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    for round in 0..1500 {
        let base = if round % 2 == 0 {
            REAL
        } else {
            EMBEDDED_DEFAULT_KDL
        };
        let text = mutate(&mut rng, base);
        survives(&format!("mutation {round}"), &text);
    }
}

#[test]
fn deep_nesting_of_every_construct_is_an_error() {
    let deep = 20_000;
    for (name, text) in [
        ("blocks", "a {".repeat(deep)),
        (
            "closed blocks",
            format!("{}{}", "a {".repeat(deep), "}".repeat(deep)),
        ),
        ("comments", "/*".repeat(deep)),
        ("slashdash chain", format!("{}a", "/- ".repeat(deep))),
        (
            "entry slashdash chain",
            format!("a {}1", "/- ".repeat(deep)),
        ),
        (
            "slashdash chain after a malformed value",
            format!("a 0\"{}x", "/- ".repeat(deep)),
        ),
        ("annotations", format!("a {}1", "(t)".repeat(deep))),
        ("node annotations", format!("{}a", "(t)".repeat(deep))),
        (
            "blocks in v1 syntax",
            format!("a true {}", "b {".repeat(deep)),
        ),
        ("children slashdash", format!("a {}", "/-{".repeat(deep))),
        ("mixed", "a { /* (t)/- ".repeat(deep)),
    ] {
        survives(name, &text);
        assert!(parse(&text, "deep.kdl").is_err(), "{name} parsed");
    }
}

#[test]
fn long_flat_inputs_give_values() {
    for (name, text) in [
        ("many nodes", "a 1\n".repeat(20_000)),
        ("many entries", format!("a {}", "1 ".repeat(20_000))),
        ("many semicolons", format!("a {{}}{}", ";".repeat(20_000))),
        ("one long line", format!("a \"{}\"", "x".repeat(200_000))),
        ("many errors on one line", "nope 1; ".repeat(20_000)),
        ("continuations", format!("a {}1", "\\\n".repeat(20_000))),
        ("open strings", "\"".repeat(20_000)),
        ("raw hashes", format!("a {}\"x\"", "#".repeat(20_000))),
    ] {
        survives(name, &text);
    }
}

#[test]
fn binary_garbage_gives_values() {
    let mut rng = Rng(0xbadb_17e5);
    for round in 0..300 {
        let len = rng.below(4096);
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        survives(
            &format!("garbage {round}"),
            &String::from_utf8_lossy(&bytes),
        );
    }
    // Not UTF-8 at all, through the file loader.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("binary.kdl");
    std::fs::write(&path, [0xff, 0xfe, 0x00, b'{', 0x80]).unwrap();
    let err = load(&path).unwrap_err();
    assert!(err.to_string().contains("not UTF-8"), "{err}");
}

#[test]
fn a_file_over_the_limit_is_refused_unread() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.kdl");
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(MAX_CONFIG_BYTES + 1).unwrap();
    let started = Instant::now();
    let err = load(&path).unwrap_err();
    assert!(matches!(err, ConfigError::TooLarge { .. }), "{err}");
    assert!(
        err.to_string().contains("the limit is 16777216 bytes"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[test]
fn errors_are_capped_and_counted_in_linear_time() {
    let unknown: String = (0..40_000).map(|i| format!("key{i} 1\n")).collect();
    let text = format!("system {{\n{unknown}}}\nservices {{ S {{ listeners {{ \"127.0.0.1:1\" }}; welcome-page }} }}");
    let started = Instant::now();
    let err = parse(&text, "many.kdl").unwrap_err();
    let elapsed = started.elapsed();
    assert_eq!(err.diagnostics().len(), river_config::MAX_DIAGNOSTICS);
    let report = err.to_string();
    assert!(
        report.contains("and 39950 more errors (only the first 50 are shown)"),
        "{}",
        &report[report.len().saturating_sub(300)..]
    );
    assert!(report.contains("the configuration has 40000 errors"));
    // Quadratic took 21 s in a release build; this is a debug build.
    assert!(elapsed < Duration::from_secs(120), "{elapsed:?}");
}

#[test]
fn a_long_line_is_quoted_around_the_problem() {
    let text = format!("system {{ {}wrokers 2 }}\nservices {{}}", " ".repeat(5000));
    let err = parse(&text, "long.kdl").unwrap_err();
    let d = &err.diagnostics()[0];
    assert_eq!((d.line, d.column), (1, 5010));
    assert!(
        d.source_line.chars().count() <= 202,
        "{}",
        d.source_line.len()
    );
    assert!(d.source_line.contains("wrokers 2"), "{}", d.source_line);
    let report = err.to_string();
    assert!(report.contains("long.kdl:1:5010"), "{report}");
}
