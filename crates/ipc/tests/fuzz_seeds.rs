//! The `ipc_frame` fuzz target's seeds for connection handoff are the
//! current encoding of real handoff messages, so that the fuzzer starts from
//! frames the master and workers actually exchange. When the encoding
//! changes, this fails; `RIVER_WRITE_SEEDS=1 cargo test -p river-ipc --test
//! fuzz_seeds` rewrites them.

use std::path::PathBuf;

use river_ipc::frame::encode;
use river_ipc::{FromWorker, HandedConn, HandedIdle, HandedTunnel, ToWorker};

fn seeds_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/ipc_frame")
}

fn tunnel() -> HandedConn {
    HandedConn::Tunnel(Box::new(HandedTunnel {
        service: "Ws".into(),
        client: Some("127.0.0.1:40000".parse().unwrap()),
        upstream: "127.0.0.1:9000".parse().unwrap(),
        method: "GET".into(),
        path: "/chat".into(),
        started_unix_micros: 1_764_547_200_000_000,
        to_client_bytes: 1234,
        to_upstream_bytes: 99,
        client_done: false,
        upstream_done: false,
        to_client: b"\x81\x05hello".to_vec(),
        to_upstream: Vec::new(),
    }))
}

fn idle() -> HandedConn {
    HandedConn::Idle(HandedIdle {
        service: "Proxy".into(),
        client: Some("[::1]:50000".parse().unwrap()),
        tls: false,
    })
}

/// (file name, frames): the first byte of a seed is the fuzz target's
/// piece size.
fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let handoff = FromWorker::Handoff {
        batch: 7,
        conns: vec![idle(), tunnel()],
    };
    let adopt = ToWorker::Adopt {
        batch: 3,
        conns: vec![tunnel(), idle()],
    };
    let answers = [
        encode(
            &FromWorker::Adopted {
                batch: 3,
                accepted: vec![true, false],
            },
            0,
        ),
        encode(
            &ToWorker::AdoptOutcome {
                batch: 3,
                commit: true,
            },
            0,
        ),
        encode(
            &ToWorker::HandoffResult {
                batch: 7,
                accepted: vec![false, true],
            },
            0,
        ),
    ];
    let with_piece = |piece: u8, frames: Vec<Vec<u8>>| {
        let mut seed = vec![piece];
        for frame in frames {
            seed.extend(frame);
        }
        seed
    };
    vec![
        (
            "handoff",
            with_piece(63, vec![encode(&handoff, 3).expect("encode handoff")]),
        ),
        (
            "adopt",
            with_piece(7, vec![encode(&adopt, 3).expect("encode adopt")]),
        ),
        (
            "handoff-answers",
            with_piece(
                20,
                answers
                    .into_iter()
                    .map(|f| f.expect("encode answer"))
                    .collect(),
            ),
        ),
    ]
}

#[test]
fn handoff_seeds_are_the_current_encoding() {
    let dir = seeds_dir();
    for (name, bytes) in seeds() {
        let path = dir.join(name);
        if std::env::var_os("RIVER_WRITE_SEEDS").is_some() {
            std::fs::write(&path, &bytes).expect("write seed");
            continue;
        }
        let committed = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (RIVER_WRITE_SEEDS=1 writes it)", path.display()));
        assert_eq!(
            committed,
            bytes,
            "{} is not the current encoding (RIVER_WRITE_SEEDS=1 rewrites it)",
            path.display()
        );
    }
}
