//! Load for the reload tests: clients that keep requesting until stopped and
//! record every failure, since "no request fails during a reload" is the claim.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::client::{Connection, Response};

/// Shared by the client threads of one load.
#[derive(Default)]
struct Tally {
    stop: AtomicBool,
    succeeded: AtomicUsize,
    failures: Mutex<Vec<String>>,
    last: Mutex<Option<Response>>,
    /// Every `x-gen` value a response carried (see `tagged_proxy`).
    generations: Mutex<std::collections::BTreeSet<String>>,
}

impl Tally {
    fn fail(&self, what: String) {
        self.failures.lock().unwrap().push(what);
    }

    fn succeed(&self, response: Response) {
        self.succeeded.fetch_add(1, Ordering::AcqRel);
        if let Some(generation) = response.header("x-gen") {
            let mut seen = self.generations.lock().unwrap();
            if !seen.contains(generation) {
                seen.insert(generation.to_owned());
            }
        }
        *self.last.lock().unwrap() = Some(response);
    }
}

/// What a finished load saw.
#[derive(Debug)]
pub struct LoadReport {
    pub succeeded: usize,
    pub failures: Vec<String>,
}

impl LoadReport {
    /// Panics, with the first failures, unless none failed and at least
    /// `min_succeeded` requests succeeded.
    pub fn assert_clean(&self, min_succeeded: usize) {
        assert!(
            self.failures.is_empty(),
            "{} failed of {}: {:?}",
            self.failures.len(),
            self.succeeded + self.failures.len(),
            &self.failures[..self.failures.len().min(10)]
        );
        assert!(
            self.succeeded >= min_succeeded,
            "only {} requests succeeded, wanted at least {min_succeeded}",
            self.succeeded
        );
    }
}

/// Client threads sending requests until [`finish`](Load::finish). A response
/// other than 200, or a request without a complete response, is a failure.
pub struct Load {
    tally: Arc<Tally>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    /// `clients` keep-alive connections to `addr`, each sending `GET path` in a
    /// loop. A response saying `Connection: close` (a draining worker's
    /// goodbye) is a success, after which the client reconnects, as browsers do.
    pub fn keep_alive(addr: std::net::SocketAddr, clients: usize, path: &'static str) -> Load {
        Load::spawn(clients, move |tally| {
            let mut connection = match Connection::open(addr) {
                Ok(c) => c,
                Err(err) => return tally.fail(format!("connect: {err}")),
            };
            while !tally.stop.load(Ordering::Acquire) {
                let reconnect = match connection.get(path, &[]) {
                    Ok(response) if response.status == 200 => {
                        let closes = response.closes();
                        tally.succeed(response);
                        closes
                    }
                    Ok(response) => {
                        tally.fail(format!("status {}", response.status));
                        response.closes()
                    }
                    Err(err) => {
                        tally.fail(format!("request: {err}"));
                        true
                    }
                };
                if reconnect {
                    connection = match Connection::open(addr) {
                        Ok(c) => c,
                        Err(err) => return tally.fail(format!("reconnect: {err}")),
                    };
                }
            }
        })
    }

    /// `clients` threads each calling `request` in a loop, for clients that
    /// are not plain HTTP/1.1 (TLS, Unix sockets): one fresh connection each.
    pub fn repeat(
        clients: usize,
        request: impl Fn() -> std::io::Result<Response> + Send + Sync + 'static,
    ) -> Load {
        let request = Arc::new(request);
        Load::spawn(clients, move |tally| {
            while !tally.stop.load(Ordering::Acquire) {
                match request() {
                    Ok(response) if response.status == 200 => tally.succeed(response),
                    Ok(response) => tally.fail(format!("status {}", response.status)),
                    Err(err) => tally.fail(format!("request: {err}")),
                }
            }
        })
    }

    fn spawn(clients: usize, client: impl Fn(&Tally) + Send + Sync + Clone + 'static) -> Load {
        let tally = Arc::new(Tally::default());
        let threads = (0..clients)
            .map(|_| {
                let (tally, client) = (tally.clone(), client.clone());
                std::thread::spawn(move || client(&tally))
            })
            .collect();
        Load { tally, threads }
    }

    /// The most recent successful response of any client.
    pub fn last_response(&self) -> Option<Response> {
        self.tally.last.lock().unwrap().clone()
    }

    /// Every `x-gen` header value seen so far.
    pub fn generations_seen(&self) -> std::collections::BTreeSet<String> {
        self.tally.generations.lock().unwrap().clone()
    }

    pub fn succeeded(&self) -> usize {
        self.tally.succeeded.load(Ordering::Acquire)
    }

    /// Stop the clients and say what they saw.
    pub fn finish(self) -> LoadReport {
        self.tally.stop.store(true, Ordering::Release);
        for thread in self.threads {
            thread.join().expect("load client panicked");
        }
        let failures = std::mem::take(&mut *self.tally.failures.lock().unwrap());
        LoadReport {
            succeeded: self.tally.succeeded.load(Ordering::Acquire),
            failures,
        }
    }
}
