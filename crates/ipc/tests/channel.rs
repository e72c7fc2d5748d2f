//! The transport over real socketpairs.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use nix::sys::stat::fstat;
use river_config::*;
use river_ipc::*;

fn pair() -> (Channel, Channel) {
    let (a, b) = socketpair().unwrap();
    (Channel::new(a).unwrap(), Channel::new(b).unwrap())
}

/// A channel and a plain blocking peer socket for writing raw bytes.
fn raw_pair() -> (Channel, OwnedFd) {
    let (a, b) = socketpair().unwrap();
    (Channel::new(a).unwrap(), b)
}

fn raw_send(fd: &OwnedFd, bytes: &[u8], fds: &[RawFd]) {
    let iov = [std::io::IoSlice::new(bytes)];
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    let n = sendmsg::<()>(fd.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None).unwrap();
    assert_eq!(n, bytes.len());
}

fn header(len: u32, version: u16, nfds: u16) -> Vec<u8> {
    let mut h = len.to_be_bytes().to_vec();
    h.extend_from_slice(&version.to_be_bytes());
    h.extend_from_slice(&nfds.to_be_bytes());
    h
}

fn same_file(a: impl AsFd, b: impl AsFd) -> bool {
    let (a, b) = (fstat(a).unwrap(), fstat(b).unwrap());
    (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
}

fn sample_config() -> Config {
    Config {
        system: System {
            workers: 2,
            threads_per_service: 2,
            daemonize: false,
            pid_file: Some(PathBuf::from("/run/river/river.pid")),
            upgrade_socket: None,
            control_socket: Some(PathBuf::from("/run/river/river.sock")),
            user: Some("river".into()),
            group: None,
            drain_timeout_secs: 60,
            max_draining_generations: 2,
            draining_memory_limit_mb: Some(512),
            worker_startup_timeout_secs: 10,
            listen_backlog: 4096,
            access_log: None,
            metrics: None,
            connection_handoff: true,
        },
        services: vec![
            Service {
                timeouts: Default::default(),
                name: "Example".into(),
                listeners: vec![
                    Listener {
                        address: ListenAddress::Tcp("0.0.0.0:8080".parse().unwrap()),
                        tls: None,
                    },
                    Listener {
                        address: ListenAddress::Tcp("[::]:4443".parse().unwrap()),
                        tls: Some(TlsListener {
                            cert_path: "/etc/river/cert.pem".into(),
                            key_path: "/etc/river/key.pem".into(),
                            offer_h2: true,
                        }),
                    },
                ],
                kind: ServiceKind::Proxy(ProxyService {
                    discovery: None,
                    load_balance: LoadBalance {
                        selection: Selection::Ketama {
                            key: SelectionKey::UriPath,
                        },
                        health_check: HealthCheck::Http {
                            path: "/health".into(),
                            interval_ms: 500,
                        },
                    },
                    upstreams: vec![Upstream {
                        address: "10.0.0.5:8000".parse().unwrap(),
                        tls_sni: Some("backend.example".into()),
                        proto: UpstreamProto::H2OrH1,
                    }],
                    path_control: PathControl {
                        request_filters: vec![RequestFilter::BlockCidrRange {
                            addrs: vec![
                                "192.168.0.0/16".parse().unwrap(),
                                "::1/128".parse().unwrap(),
                            ],
                        }],
                        upstream_request: vec![HeaderFilter::RemoveHeaderKeyRegex {
                            pattern: ".*(secret|SECRET).*".into(),
                        }],
                        upstream_response: vec![HeaderFilter::UpsertHeader {
                            key: "x-with-love-from".into(),
                            value: "river ✓".into(),
                        }],
                    },
                    rate_limiting: RateLimiting {
                        timeout_millis: Some(100),
                        rules: vec![RateRule {
                            kind: RateRuleKind::SpecificUri {
                                pattern: "^/api/.*$".into(),
                            },
                            max_buckets: 4000,
                            tokens_per_bucket: 10,
                            refill_qty: 1,
                            refill_rate_ms: 10,
                        }],
                    },
                }),
            },
            Service {
                timeouts: Default::default(),
                name: "Files".into(),
                listeners: vec![Listener {
                    address: ListenAddress::Unix("/run/river/files.sock".into()),
                    tls: None,
                }],
                kind: ServiceKind::FileServer(FileServer {
                    base_path: "/srv/www".into(),
                }),
            },
        ],
    }
}

async fn round_trip<M>(a: &Channel, b: &Channel, msg: &M)
where
    M: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    a.send(msg, &[]).await.unwrap();
    let (got, fds): (M, _) = b.recv().await.unwrap().unwrap();
    assert_eq!(&got, msg);
    assert!(fds.is_empty());
}

#[tokio::test]
async fn every_message_round_trips() {
    let (master, worker) = pair();
    let config = sample_config();
    let listeners: Vec<ListenAddress> = config
        .services
        .iter()
        .flat_map(|s| s.listeners.iter().map(|l| l.address.clone()))
        .collect();
    let hello = ToWorker::Hello(Box::new(Hello {
        generation: 3,
        worker_index: 1,
        config,
        listeners: listeners.clone(),
        tls: vec![river_ipc::TlsMaterial {
            address: listeners[0].clone(),
            cert_pem: b"-----BEGIN CERTIFICATE-----\n".to_vec(),
            key_pem: b"-----BEGIN PRIVATE KEY-----\n".to_vec(),
        }],
        access_log: true,
        balance: false,
        stats: true,
    }));
    for msg in [
        hello,
        ToWorker::Drain { deadline_secs: 60 },
        ToWorker::Quit,
        ToWorker::ReopenLogs,
        ToWorker::Discovered(DiscoveredSet {
            service: "Api".into(),
            name: "api.internal:8080".into(),
            version: 7,
            backends: vec![DiscoveredBackend {
                address: "[::1]:8080".parse().unwrap(),
                weight: 1,
            }],
        }),
        ToWorker::Adopt {
            batch: 9,
            conns: handed(),
        },
        ToWorker::AdoptOutcome {
            batch: 9,
            commit: true,
        },
        ToWorker::HandoffResult {
            batch: 2,
            accepted: vec![true, false],
        },
    ] {
        round_trip(&master, &worker, &msg).await;
    }
    for msg in [
        FromResolver::Resolved {
            service: "Api".into(),
            name: "_http._tcp.api".into(),
            backends: vec![],
            ttl_ms: 1000,
        },
        FromResolver::Failed {
            service: "Api".into(),
            name: "api.internal:8080".into(),
            error: "NXDOMAIN".into(),
            retry_ms: 2000,
        },
        FromResolver::FirstPassDone,
    ] {
        round_trip(&worker, &master, &msg).await;
    }
    for msg in [
        FromWorker::Ready { pid: 4242 },
        FromWorker::Failed {
            error: "bind: \"quoted\"\nnewline".into(),
        },
        FromWorker::Load {
            connections: u64::MAX,
        },
        FromWorker::Handoff {
            batch: 1,
            conns: handed(),
        },
        FromWorker::Adopted {
            batch: 1,
            accepted: vec![false, true],
        },
    ] {
        round_trip(&worker, &master, &msg).await;
    }
    for msg in [
        ControlRequest::Reload { wait: true },
        ControlRequest::Reload { wait: false },
        ControlRequest::Status,
        ControlRequest::Stop { graceful: true },
        ControlRequest::ReopenLogs,
        ControlRequest::History,
    ] {
        round_trip(&worker, &master, &msg).await;
    }
    let record = ReloadRecord {
        number: 3,
        trigger: ReloadTrigger::Riverctl { uid: 0, pid: 77 },
        started_unix_secs: 1.8e9,
        outcome: ReloadOutcome::Ok,
        generation: Some(4),
        retired: Some(3),
        phases: ReloadPhases {
            validate_ms: Some(1.5),
            room_ms: Some(0.0),
            spawn_ms: Some(3.0),
            ready_ms: Some(40.0),
            drain_start_ms: None,
        },
        duration_ms: Some(44.5),
        error: None,
        drain: Some(DrainResult {
            seconds: 1.0,
            connections_cut: 2,
            killed_by: Some(KillReason::Deadline),
        }),
    };
    let status = StatusReport {
        master_pid: 1,
        master: river_ipc::MasterIdentity {
            pid: 1,
            version: "0.1.0".into(),
            binary: "/usr/sbin/river".into(),
        },
        retiring: Vec::new(),
        generations: vec![
            GenerationStatus {
                generation: 2,
                state: GenerationState::Serving,
                workers: vec![WorkerStatus {
                    pid: 10,
                    rss_bytes: 1 << 20,
                    connections: 5,
                }],
                drain_deadline_secs: None,
                discovery: vec![DiscoveryStatus {
                    service: "Api".into(),
                    name: "_http._tcp.api.service.consul".into(),
                    backends: vec![DiscoveredBackend {
                        address: "10.0.0.7:8080".parse().unwrap(),
                        weight: 3,
                    }],
                    ttl_left_ms: Some(900),
                    last_error: Some("no answer within 2000 ms".into()),
                    inherited: false,
                }],
                handed_over_in: 312,
                handed_over_out: 0,
            },
            GenerationStatus {
                generation: 1,
                state: GenerationState::Draining,
                workers: vec![],
                drain_deadline_secs: Some(12),
                discovery: vec![],
                handed_over_in: 0,
                handed_over_out: 312,
            },
        ],
        reloads: vec![record.clone()],
    };
    for msg in [
        ControlResponse::Reloaded {
            generation: 2,
            workers: 4,
            millis: 35,
            handed_over: None,
            draining: None,
        },
        ControlResponse::Reloaded {
            generation: 7,
            workers: 2,
            millis: 14,
            handed_over: Some(312),
            draining: Some(3),
        },
        ControlResponse::ReloadFailed {
            error: "nope".into(),
        },
        ControlResponse::Accepted,
        ControlResponse::Status(status),
        ControlResponse::History(vec![
            record.clone(),
            ReloadRecord {
                trigger: ReloadTrigger::Sighup,
                outcome: ReloadOutcome::Rejected,
                error: Some("line 3: \"bad\"".into()),
                ..record
            },
        ]),
        ControlResponse::Error {
            message: "bad".into(),
        },
    ] {
        round_trip(&master, &worker, &msg).await;
    }
}

/// An idle connection and a tunnel, as a draining worker hands them over.
fn handed() -> Vec<river_ipc::HandedConn> {
    vec![
        river_ipc::HandedConn::Idle(river_ipc::HandedIdle {
            service: "Example".into(),
            client: Some("192.0.2.1:40000".parse().unwrap()),
            tls: false,
        }),
        river_ipc::HandedConn::Tunnel(Box::new(river_ipc::HandedTunnel {
            service: "Example".into(),
            client: None,
            upstream: "10.0.0.5:8000".parse().unwrap(),
            method: "GET".into(),
            path: "/chat".into(),
            started_unix_micros: 1_800_000_000_000_000,
            to_client_bytes: 10,
            to_upstream_bytes: 20,
            client_done: false,
            upstream_done: false,
            to_client: vec![],
            to_upstream: b"\x81\x05hello".to_vec(),
        })),
    ]
}

/// Issue 12: a handoff batch fills a frame (64 descriptors: 32 tunnels), and
/// each descriptor arrives as the same socket.
#[tokio::test]
async fn a_full_handoff_batch_carries_64_sockets() {
    let (master, worker) = pair();
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for _ in 0..64 {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        ours.push(OwnedFd::from(a));
        theirs.push(b);
    }
    let tunnel = handed().pop().unwrap();
    let conns = vec![tunnel; 32];
    river_ipc::handoff::check_batch(&conns, ours.len()).unwrap();
    let fds: Vec<_> = ours.iter().map(|fd| fd.as_fd()).collect();
    worker
        .send(&FromWorker::Handoff { batch: 5, conns }, &fds)
        .await
        .unwrap();
    let (msg, got): (FromWorker, _) = master.recv().await.unwrap().unwrap();
    let FromWorker::Handoff { batch: 5, conns } = msg else {
        panic!("{msg:?}");
    };
    river_ipc::handoff::check_batch(&conns, got.len()).unwrap();
    for (got, ours) in got.iter().zip(&ours) {
        assert!(same_file(got, ours));
    }
    // A 65th descriptor does not fit in a frame.
    let (extra, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
    let mut fds: Vec<_> = ours.iter().map(|fd| fd.as_fd()).collect();
    fds.push(extra.as_fd());
    assert!(worker
        .send(
            &FromWorker::Handoff {
                batch: 6,
                conns: handed()
            },
            &fds
        )
        .await
        .is_err());
    drop(theirs);
}

#[tokio::test]
async fn fds_arrive_as_the_same_open_files() {
    let (master, worker) = pair();
    let mut file = tempfile::tempfile().unwrap();
    let (pipe_r, pipe_w) = nix::unistd::pipe().unwrap();

    master
        .send(&ToWorker::ReopenLogs, &[file.as_fd(), pipe_w.as_fd()])
        .await
        .unwrap();
    let (msg, fds): (ToWorker, _) = worker.recv().await.unwrap().unwrap();
    assert_eq!(msg, ToWorker::ReopenLogs);
    let [got_file, got_pipe_w]: [OwnedFd; 2] = fds.try_into().unwrap();

    // Same (st_dev, st_ino), but a new descriptor number, close-on-exec.
    assert!(same_file(&got_file, &file));
    assert_ne!(got_file.as_raw_fd(), file.as_raw_fd());
    let flags = nix::fcntl::fcntl(&got_file, nix::fcntl::FcntlArg::F_GETFD).unwrap();
    assert_ne!(flags & libc::FD_CLOEXEC, 0);

    // Write through the received descriptor, read through the original.
    File::from(got_file)
        .write_all(b"through the socket")
        .unwrap();
    let mut s = String::new();
    file.seek(SeekFrom::Start(0)).unwrap();
    file.read_to_string(&mut s).unwrap();
    assert_eq!(s, "through the socket");

    drop(pipe_w);
    File::from(got_pipe_w).write_all(b"pipe!").unwrap(); // last writer closes here
    let mut s = String::new();
    File::from(pipe_r).read_to_string(&mut s).unwrap();
    assert_eq!(s, "pipe!");
}

#[tokio::test]
async fn back_to_back_frames_with_interleaved_fds() {
    let (master, worker) = pair();
    let files: Vec<File> = (0..6).map(|_| tempfile::tempfile().unwrap()).collect();
    // Frame i carries i % 3 descriptors, taken in order from `files`.
    let mut plan = Vec::new();
    let mut next = 0;
    for i in 0..10u64 {
        let n = (i % 3) as usize;
        let idx: Vec<usize> = (next..next + n).map(|k| k % files.len()).collect();
        next += n;
        plan.push((i, idx));
    }
    // Send everything before receiving anything: all of it is queued in the socket.
    for (i, idx) in &plan {
        let fds: Vec<BorrowedFd<'_>> = idx.iter().map(|&k| files[k].as_fd()).collect();
        master
            .send(&ToWorker::Drain { deadline_secs: *i }, &fds)
            .await
            .unwrap();
    }
    drop(master);
    for (i, idx) in &plan {
        let (msg, fds): (ToWorker, Vec<OwnedFd>) = worker.recv().await.unwrap().unwrap();
        assert_eq!(msg, ToWorker::Drain { deadline_secs: *i });
        assert_eq!(fds.len(), idx.len());
        for (fd, &k) in fds.iter().zip(idx) {
            assert!(same_file(fd, &files[k]), "frame {i}: wrong file");
        }
    }
    assert!(worker.recv::<ToWorker>().await.unwrap().is_none());
}

#[tokio::test]
async fn frame_larger_than_the_socket_buffer() {
    let (a, b) = pair();
    let file = tempfile::tempfile().unwrap();
    let big = FromWorker::Failed {
        error: "x".repeat(1 << 20),
    };
    let (sent, received) = tokio::join!(
        async {
            a.send(&big, &[file.as_fd()]).await?;
            a.send(&FromWorker::Ready { pid: 1 }, &[]).await
        },
        async {
            let first = b.recv::<FromWorker>().await?;
            let second = b.recv::<FromWorker>().await?;
            Ok::<_, IpcError>((first, second))
        }
    );
    sent.unwrap();
    let (first, second) = received.unwrap();
    let (msg, fds) = first.unwrap();
    assert_eq!(msg, big);
    assert_eq!(fds.len(), 1);
    assert!(same_file(&fds[0], &file));
    assert_eq!(second.unwrap().0, FromWorker::Ready { pid: 1 });
}

#[tokio::test]
async fn clean_eof_is_none() {
    let (a, b) = pair();
    a.send(&FromWorker::Ready { pid: 7 }, &[]).await.unwrap();
    drop(a);
    let got = b.recv::<FromWorker>().await.unwrap().unwrap().0;
    assert_eq!(got, FromWorker::Ready { pid: 7 });
    assert!(b.recv::<FromWorker>().await.unwrap().is_none());
    assert!(b.recv::<FromWorker>().await.unwrap().is_none());
}

#[tokio::test]
async fn eof_mid_frame_is_closed() {
    let (chan, peer) = raw_pair();
    let frame = encode(&FromWorker::Ready { pid: 7 }, 0).unwrap();
    raw_send(&peer, &frame[..frame.len() - 3], &[]);
    drop(peer);
    assert!(matches!(
        chan.recv::<FromWorker>().await,
        Err(IpcError::Closed)
    ));
    assert!(matches!(
        chan.recv::<FromWorker>().await,
        Err(IpcError::Poisoned)
    ));

    // EOF inside the header, too.
    let (chan, peer) = raw_pair();
    raw_send(&peer, &frame[..3], &[]);
    drop(peer);
    assert!(matches!(
        chan.recv::<FromWorker>().await,
        Err(IpcError::Closed)
    ));
}

#[tokio::test]
async fn missing_fds() {
    let (chan, peer) = raw_pair();
    let mut frame = encode(&ToWorker::ReopenLogs, 0).unwrap();
    frame[6..8].copy_from_slice(&2u16.to_be_bytes());
    let file = tempfile::tempfile().unwrap();
    raw_send(&peer, &frame, &[file.as_raw_fd()]);
    assert!(matches!(
        chan.recv::<ToWorker>().await,
        Err(IpcError::MissingFds {
            expected: 2,
            got: 1
        })
    ));
    assert!(matches!(
        chan.recv::<ToWorker>().await,
        Err(IpcError::Poisoned)
    ));
}

#[tokio::test]
async fn bad_headers_over_the_socket() {
    // Oversized length: refused from the header alone.
    let (chan, peer) = raw_pair();
    raw_send(&peer, &header(u32::MAX, PROTOCOL_VERSION, 0), &[]);
    assert!(matches!(
        chan.recv::<ToWorker>().await,
        Err(IpcError::FrameTooLarge { len }) if len == u32::MAX as usize
    ));

    // Wrong version.
    let (chan, peer) = raw_pair();
    let mut frame = header(2, 9, 0);
    frame.extend_from_slice(b"{}");
    raw_send(&peer, &frame, &[]);
    assert!(matches!(
        chan.recv::<ToWorker>().await,
        Err(IpcError::VersionMismatch { got: 9 })
    ));

    // Garbage.
    let (chan, peer) = raw_pair();
    let mut garbage = vec![0, 0, 0, 2];
    garbage.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    garbage.extend_from_slice(b"\xff\xffzz");
    raw_send(&peer, &garbage, &[]);
    assert!(matches!(
        chan.recv::<ToWorker>().await,
        Err(IpcError::TooManyFds { count: 0xffff })
    ));
}

#[tokio::test]
async fn malformed_payload_is_skipped() {
    let (chan, peer) = raw_pair();
    let file = tempfile::tempfile().unwrap();
    let mut wire = header(7, PROTOCOL_VERSION, 1);
    wire.extend_from_slice(b"\"Nope\"!");
    raw_send(&peer, &wire, &[file.as_raw_fd()]);
    raw_send(&peer, &encode(&ControlRequest::Status, 0).unwrap(), &[]);
    assert!(matches!(
        chan.recv::<ControlRequest>().await,
        Err(IpcError::Malformed(_))
    ));
    let (msg, fds) = chan.recv::<ControlRequest>().await.unwrap().unwrap();
    assert_eq!(msg, ControlRequest::Status);
    assert!(fds.is_empty());
}

#[tokio::test]
async fn truncated_control_data_is_an_error() {
    let (chan, peer) = raw_pair();
    let file = tempfile::tempfile().unwrap();
    let fds = vec![file.as_raw_fd(); MAX_FDS_PER_FRAME + 6];
    raw_send(&peer, &encode(&ToWorker::ReopenLogs, 0).unwrap(), &fds);
    assert!(matches!(
        chan.recv::<ToWorker>().await,
        Err(IpcError::FdsTruncated)
    ));
}

#[tokio::test]
async fn send_refuses_too_many_fds() {
    let (a, _b) = pair();
    let file = tempfile::tempfile().unwrap();
    let fds = vec![file.as_fd(); MAX_FDS_PER_FRAME + 1];
    assert!(matches!(
        a.send(&ToWorker::ReopenLogs, &fds).await,
        Err(IpcError::TooManyFds { count: 65 })
    ));
    // Nothing was written: the channel is still usable.
    a.send(&ToWorker::ReopenLogs, &[]).await.unwrap();
}

#[tokio::test]
async fn recv_is_cancel_safe() {
    let (chan, peer) = raw_pair();
    let file = tempfile::tempfile().unwrap();
    let frame = encode(&ToWorker::Drain { deadline_secs: 5 }, 1).unwrap();
    // First half with the descriptor, then a cancelled recv, then the rest.
    raw_send(&peer, &frame[..frame.len() / 2], &[file.as_raw_fd()]);
    let cancelled = tokio::time::timeout(Duration::from_millis(50), chan.recv::<ToWorker>()).await;
    assert!(cancelled.is_err(), "recv completed on half a frame");
    // And cancelled inside a select!, too.
    tokio::select! {
        _ = chan.recv::<ToWorker>() => panic!("recv completed on half a frame"),
        _ = tokio::time::sleep(Duration::from_millis(20)) => {}
    }
    raw_send(&peer, &frame[frame.len() / 2..], &[]);
    let (msg, fds) = chan.recv::<ToWorker>().await.unwrap().unwrap();
    assert_eq!(msg, ToWorker::Drain { deadline_secs: 5 });
    assert_eq!(fds.len(), 1);
    assert!(same_file(&fds[0], &file));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_senders_and_select_receiver() {
    let (a, b) = pair();
    let a = Arc::new(a);
    let b = Arc::new(b);
    let mut tasks = Vec::new();
    for t in 0..4u32 {
        let a = a.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..25u32 {
                let error = "e".repeat(((t * 25 + i) as usize * 4099) % 300_000);
                a.send(&FromWorker::Failed { error }, &[]).await.unwrap();
            }
        }));
    }
    // `a` reads concurrently with its own sends, as a worker does: a peer that
    // never reads would fill b's send buffer and stall b's receive loop.
    let pings = {
        let a = a.clone();
        tokio::spawn(async move {
            let mut pings = 0;
            while let Some((msg, _)) = a.recv::<ToWorker>().await.unwrap() {
                assert_eq!(msg, ToWorker::ReopenLogs);
                pings += 1;
            }
            pings
        })
    };
    // The receiving side selects between recv and its own sends on the same channel.
    let mut received = 0;
    let mut ticks = tokio::time::interval(Duration::from_millis(1));
    while received < 100 {
        tokio::select! {
            got = b.recv::<FromWorker>() => {
                let (msg, _) = got.unwrap().unwrap();
                assert!(matches!(msg, FromWorker::Failed { ref error } if error.bytes().all(|c| c == b'e')));
                received += 1;
            }
            _ = ticks.tick() => b.send(&ToWorker::ReopenLogs, &[]).await.unwrap(),
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    // The other direction arrived intact too.
    drop(b);
    assert!(pings.await.unwrap() > 0);
}

#[tokio::test]
async fn control_socket_request_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("river.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let server = tokio::spawn(async move {
        // First client: answered. Second: never answered. Third: hung up on.
        let (stream, _) = listener.accept().await.unwrap();
        let chan = Channel::from_unix_stream(stream).unwrap();
        let (req, _) = chan.recv::<ControlRequest>().await.unwrap().unwrap();
        assert_eq!(req, ControlRequest::Status);
        chan.send(&ControlResponse::Accepted, &[]).await.unwrap();
        assert!(chan.recv::<ControlRequest>().await.unwrap().is_none());

        let (silent, _) = listener.accept().await.unwrap();
        let (rude, _) = listener.accept().await.unwrap();
        drop(rude);
        tokio::time::sleep(Duration::from_millis(500)).await;
        drop(silent);
    });
    let client = tokio::task::spawn_blocking(move || {
        let mut s = StdUnixStream::connect(&path).unwrap();
        let resp: ControlResponse = request_blocking(
            &mut s,
            &ControlRequest::Status,
            Some(Duration::from_secs(5)),
        )
        .unwrap();
        assert_eq!(resp, ControlResponse::Accepted);
        drop(s);

        let mut silent = StdUnixStream::connect(&path).unwrap();
        let t0 = std::time::Instant::now();
        let r = request_blocking::<_, ControlResponse>(
            &mut silent,
            &ControlRequest::Status,
            Some(Duration::from_millis(100)),
        );
        assert!(matches!(r, Err(IpcError::Timeout)), "{r:?}");
        assert!(t0.elapsed() < Duration::from_millis(450));

        let mut rude = StdUnixStream::connect(&path).unwrap();
        let r = request_blocking::<_, ControlResponse>(&mut rude, &ControlRequest::Status, None);
        assert!(
            matches!(r, Err(IpcError::Closed) | Err(IpcError::Io(_))),
            "{r:?}"
        );
    });
    client.await.unwrap();
    server.await.unwrap();
}
