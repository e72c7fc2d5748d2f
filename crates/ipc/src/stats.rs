//! The stats board: a generation's request counters in shared memory.
//!
//! The master creates one memfd per generation and sends it with `Hello`
//! (`stats: true`); each worker maps it and, on its request path, bumps the
//! counters of its own slots with relaxed atomic adds: no lock, no syscall, no
//! message. The master maps the same memory and reads it when scraped. There
//! is one slot per (worker index, service index), a whole number of cache
//! lines, so workers never write to the same line.
//!
//! Who writes what: a worker only adds to its slots (and moves its gauges);
//! only the master clears a slot, once the worker that filled it has exited and
//! its values were folded into the master's totals (see the master's
//! `metrics::boards`). So counters never go backwards across crashes and
//! reloads.
//!
//! This file owns the layout and the meaning of each word; it does not own
//! folding (master) or when a request counts (worker's `stats`).

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use nix::sys::mman::{mmap, mmap_anonymous, munmap, MapFlags, ProtFlags};
use river_config::{Config, Service, ServiceKind};

/// `code_class` label values of `river_requests_total`, in slot order.
/// "other": no response was sent (the client or the upstream went away
/// mid-exchange), as HAProxy's `code="other"`.
pub const CODE_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];

/// Upper bounds (seconds) of `river_request_duration_seconds`: 0.5 ms to 60 s.
/// Slot order; one more word counts what is slower than the last bound.
pub const DURATION_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];
/// The same bounds in microseconds, what the request path compares against.
const BUCKET_MICROS: [u64; 16] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000, 30_000_000, 60_000_000,
];

/// Why a request failed at its upstream: the `kind` label of
/// `river_upstream_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    /// The connection was refused or failed.
    Connect = 0,
    /// Connecting, reading or writing took too long.
    Timeout = 1,
    /// The upstream closed or reset the connection mid-exchange.
    Reset = 2,
    /// The response was not valid HTTP.
    InvalidResponse = 3,
}

/// `kind` label values, in slot order (as [`UpstreamErrorKind`]).
pub const UPSTREAM_ERROR_KINDS: [&str; 4] = ["connect", "timeout", "reset", "invalid_response"];

// Word offsets in a slot.
const REQUESTS: usize = 0;
const DURATION: usize = REQUESTS + CODE_CLASSES.len();
const DURATION_SUM_MICROS: usize = DURATION + DURATION_BUCKETS.len() + 1;
const UPSTREAM_ERRORS: usize = DURATION_SUM_MICROS + 1;
const BYTES_SENT: usize = UPSTREAM_ERRORS + UPSTREAM_ERROR_KINDS.len();
const BYTES_RECEIVED: usize = BYTES_SENT + 1;
const RATE_LIMITED: usize = BYTES_RECEIVED + 1;
const BLOCKED: usize = RATE_LIMITED + 1;
/// A gauge: this worker's open connections on the service's listeners.
const CONNECTIONS: usize = BLOCKED + 1;
/// Then `health_words` words of bits, one per upstream: set = down.
const HEALTH: usize = CONNECTIONS + 1;
/// Words per cache line: slots are a whole number of them.
const LINE_WORDS: usize = 8;

/// The shape of one generation's board, computed from its config by the
/// master and by each worker alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatsLayout {
    pub workers: usize,
    pub services: usize,
    /// Words of upstream health bits per slot: 64 upstreams per word.
    pub health_words: usize,
}

impl StatsLayout {
    pub fn of(config: &Config) -> StatsLayout {
        let most_upstreams = config
            .services
            .iter()
            .map(|s| upstream_addresses(s).len())
            .max()
            .unwrap_or(0);
        StatsLayout {
            workers: config.system.workers.max(1),
            services: config.services.len(),
            health_words: most_upstreams.div_ceil(64),
        }
    }

    fn slot_words(&self) -> usize {
        (HEALTH + self.health_words).div_ceil(LINE_WORDS) * LINE_WORDS
    }

    fn slots(&self) -> usize {
        self.workers.saturating_mul(self.services)
    }

    /// The board's size; never zero, so that it can always be mapped.
    pub fn bytes(&self) -> Option<NonZeroUsize> {
        self.slots()
            .checked_mul(self.slot_words())?
            .checked_mul(8)?
            .max(LINE_WORDS * 8)
            .try_into()
            .ok()
    }
}

/// A service's upstreams in health-bit order: config order, each address
/// once (the first entry for an address wins, as in the worker's selection).
pub fn upstream_addresses(service: &Service) -> Vec<SocketAddr> {
    let ServiceKind::Proxy(proxy) = &service.kind else {
        return Vec::new();
    };
    let mut addresses: Vec<SocketAddr> = Vec::with_capacity(proxy.upstreams.len());
    for upstream in &proxy.upstreams {
        if !addresses.contains(&upstream.address) {
            addresses.push(upstream.address);
        }
    }
    addresses
}

#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("the stats board for {layout:?} would be too large")]
    TooLarge { layout: StatsLayout },
    #[error("the stats board has {bytes} bytes, {needed} needed for {layout:?}")]
    TooSmall {
        bytes: u64,
        needed: usize,
        layout: StatsLayout,
    },
    #[error("stats board: {0}")]
    Sys(#[from] nix::Error),
    #[error("stats board: {0}")]
    Io(#[from] std::io::Error),
}

/// A mapped board.
pub struct StatsBoard {
    base: NonNull<AtomicU64>,
    bytes: NonZeroUsize,
    layout: StatsLayout,
}

// SAFETY: the mapping lives as long as the StatsBoard and is only accessed
// through atomics, which may be shared between threads and processes.
unsafe impl Send for StatsBoard {}
unsafe impl Sync for StatsBoard {}

impl std::fmt::Debug for StatsBoard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatsBoard")
            .field("layout", &self.layout)
            .finish()
    }
}

impl StatsBoard {
    /// A new zeroed board in a memfd (the master's side): the board, mapped,
    /// and the descriptor to send to the workers.
    pub fn create(layout: StatsLayout) -> Result<(Arc<StatsBoard>, OwnedFd), StatsError> {
        let bytes = layout.bytes().ok_or(StatsError::TooLarge { layout })?;
        let fd =
            nix::sys::memfd::memfd_create("river-stats", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)?;
        let file = std::fs::File::from(fd);
        file.set_len(bytes.get() as u64)?;
        let fd = OwnedFd::from(file);
        let board = StatsBoard::map(&fd, layout)?;
        Ok((board, fd))
    }

    /// Map a board received from the master (a worker's side).
    pub fn map(fd: &OwnedFd, layout: StatsLayout) -> Result<Arc<StatsBoard>, StatsError> {
        let bytes = layout.bytes().ok_or(StatsError::TooLarge { layout })?;
        let size = u64::try_from(nix::sys::stat::fstat(fd)?.st_size).unwrap_or(0);
        if size < bytes.get() as u64 {
            return Err(StatsError::TooSmall {
                bytes: size,
                needed: bytes.get(),
                layout,
            });
        }
        // SAFETY: a fresh shared mapping of a file at least `bytes` long; its
        // memory is only reached through atomics of this type.
        let base = unsafe {
            mmap(
                None,
                bytes,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                fd.as_fd(),
                0,
            )?
        };
        Ok(Arc::new(StatsBoard {
            base: base.cast(),
            bytes,
            layout,
        }))
    }

    /// A board no other process sees, for a worker whose board is missing or
    /// unusable: it counts as usual, and nobody reads it.
    pub fn private(layout: StatsLayout) -> Result<Arc<StatsBoard>, StatsError> {
        let bytes = layout.bytes().ok_or(StatsError::TooLarge { layout })?;
        // SAFETY: a fresh private anonymous mapping, owned by the returned board.
        let base = unsafe {
            mmap_anonymous(
                None,
                bytes,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_PRIVATE,
            )?
        };
        Ok(Arc::new(StatsBoard {
            base: base.cast(),
            bytes,
            layout,
        }))
    }

    pub fn layout(&self) -> StatsLayout {
        self.layout
    }

    /// The slot of worker `worker` for service `service`; None if out of range.
    pub fn slot(self: &Arc<Self>, worker: usize, service: usize) -> Option<Slot> {
        if worker >= self.layout.workers || service >= self.layout.services {
            return None;
        }
        Some(Slot {
            board: self.clone(),
            first: (worker * self.layout.services + service) * self.layout.slot_words(),
            health_words: self.layout.health_words,
        })
    }

    fn word(&self, index: usize) -> &AtomicU64 {
        debug_assert!((index + 1) * 8 <= self.bytes.get());
        // SAFETY: every caller stays within its slot, and slots lie within
        // the mapping (checked in `slot`); the mapping is page-aligned, so
        // every word is aligned for u64.
        unsafe { &*self.base.as_ptr().add(index) }
    }
}

impl Drop for StatsBoard {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`/`private`, of this length, unmapped once.
        unsafe {
            let _ = munmap(self.base.cast(), self.bytes.get());
        }
    }
}

/// One worker's counters for one service. Cheap to clone; every method is a
/// relaxed atomic operation on shared memory.
#[derive(Clone)]
pub struct Slot {
    board: Arc<StatsBoard>,
    first: usize,
    health_words: usize,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot").field("first", &self.first).finish()
    }
}

impl Slot {
    fn word(&self, offset: usize) -> &AtomicU64 {
        self.board.word(self.first + offset)
    }

    fn add(&self, offset: usize, n: u64) {
        self.word(offset).fetch_add(n, Ordering::Relaxed);
    }

    /// A request answered with `status` (0: no response sent) after `micros`,
    /// with `received` request body bytes and `sent` response body bytes.
    pub fn request_done(&self, status: u16, micros: u64, received: u64, sent: u64) {
        let class = match status {
            100..=599 => usize::from(status / 100 - 1),
            _ => CODE_CLASSES.len() - 1,
        };
        self.add(REQUESTS + class, 1);
        let bucket = BUCKET_MICROS
            .iter()
            .position(|&bound| micros <= bound)
            .unwrap_or(BUCKET_MICROS.len());
        self.add(DURATION + bucket, 1);
        self.add(DURATION_SUM_MICROS, micros);
        if received > 0 {
            self.add(BYTES_RECEIVED, received);
        }
        if sent > 0 {
            self.add(BYTES_SENT, sent);
        }
    }

    pub fn upstream_error(&self, kind: UpstreamErrorKind) {
        self.add(UPSTREAM_ERRORS + kind as usize, 1);
    }

    pub fn rate_limited(&self) {
        self.add(RATE_LIMITED, 1);
    }

    pub fn blocked(&self) {
        self.add(BLOCKED, 1);
    }

    pub fn connection_opened(&self) {
        self.add(CONNECTIONS, 1);
    }

    pub fn connection_closed(&self) {
        // Never below zero.
        let _ = self
            .word(CONNECTIONS)
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Upstream number `index` (in [`upstream_addresses`] order) turned
    /// healthy or unhealthy. Out of range: ignored.
    pub fn upstream_health(&self, index: usize, healthy: bool) {
        if index / 64 >= self.health_words {
            return;
        }
        let word = self.word(HEALTH + index / 64);
        let bit = 1u64 << (index % 64);
        if healthy {
            word.fetch_and(!bit, Ordering::Relaxed);
        } else {
            word.fetch_or(bit, Ordering::Relaxed);
        }
    }

    /// What the slot holds now.
    pub fn read(&self) -> SlotValues {
        let load = |offset| self.word(offset).load(Ordering::Relaxed);
        let mut values = SlotValues::default();
        for (i, n) in values.counters.requests.iter_mut().enumerate() {
            *n = load(REQUESTS + i);
        }
        for (i, n) in values.counters.duration.iter_mut().enumerate() {
            *n = load(DURATION + i);
        }
        values.counters.duration_sum_micros = load(DURATION_SUM_MICROS);
        for (i, n) in values.counters.upstream_errors.iter_mut().enumerate() {
            *n = load(UPSTREAM_ERRORS + i);
        }
        values.counters.bytes_sent = load(BYTES_SENT);
        values.counters.bytes_received = load(BYTES_RECEIVED);
        values.counters.rate_limited = load(RATE_LIMITED);
        values.counters.blocked = load(BLOCKED);
        values.connections = load(CONNECTIONS);
        values.upstreams_down = (0..self.health_words).map(|i| load(HEALTH + i)).collect();
        values
    }

    /// Zero the whole slot, for its next worker. Only the master calls this,
    /// once the slot's worker has exited and its values were folded.
    pub fn clear(&self) {
        for offset in 0..self.board.layout.slot_words() {
            self.word(offset).store(0, Ordering::Relaxed);
        }
    }
}

/// A slot's counters: they only grow while a worker lives, and are folded into
/// the master's totals when it exits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// By [`CODE_CLASSES`].
    pub requests: [u64; CODE_CLASSES.len()],
    /// By [`DURATION_BUCKETS`], not cumulative; the last one is slower than
    /// every bound.
    pub duration: [u64; DURATION_BUCKETS.len() + 1],
    pub duration_sum_micros: u64,
    /// By [`UPSTREAM_ERROR_KINDS`].
    pub upstream_errors: [u64; UPSTREAM_ERROR_KINDS.len()],
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub rate_limited: u64,
    pub blocked: u64,
}

impl Counters {
    pub fn add(&mut self, other: &Counters) {
        let sum = |a: &mut [u64], b: &[u64]| {
            for (a, b) in a.iter_mut().zip(b) {
                *a = a.wrapping_add(*b);
            }
        };
        sum(&mut self.requests, &other.requests);
        sum(&mut self.duration, &other.duration);
        sum(&mut self.upstream_errors, &other.upstream_errors);
        self.duration_sum_micros = self
            .duration_sum_micros
            .wrapping_add(other.duration_sum_micros);
        self.bytes_sent = self.bytes_sent.wrapping_add(other.bytes_sent);
        self.bytes_received = self.bytes_received.wrapping_add(other.bytes_received);
        self.rate_limited = self.rate_limited.wrapping_add(other.rate_limited);
        self.blocked = self.blocked.wrapping_add(other.blocked);
    }

    /// Requests counted, all classes.
    pub fn requests_total(&self) -> u64 {
        self.requests.iter().sum()
    }
}

/// A slot read at one moment: counters, and gauges that die with the worker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotValues {
    pub counters: Counters,
    /// Open connections.
    pub connections: u64,
    /// Health bits, 64 upstreams a word: set = down.
    pub upstreams_down: Vec<u64>,
}

impl SlotValues {
    /// Whether upstream number `index` is down in this worker's view.
    pub fn upstream_down(&self, index: usize) -> bool {
        self.upstreams_down
            .get(index / 64)
            .is_some_and(|word| word & (1 << (index % 64)) != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(workers: usize, services: usize, health_words: usize) -> StatsLayout {
        StatsLayout {
            workers,
            services,
            health_words,
        }
    }

    #[test]
    fn slots_are_whole_cache_lines() {
        assert_eq!(layout(1, 1, 0).slot_words() % LINE_WORDS, 0);
        assert!(layout(1, 1, 0).slot_words() > HEALTH);
        let big = layout(4, 100, 3);
        assert!(big.slot_words() >= HEALTH + 3);
        assert_eq!(big.bytes().unwrap().get(), 400 * big.slot_words() * 8);
        assert!(layout(usize::MAX, 2, 0).bytes().is_none());
        assert_eq!(layout(1, 0, 0).bytes().unwrap().get(), 64, "never empty");
    }

    #[test]
    fn a_worker_writes_and_the_master_reads_the_same_memory() {
        let layout = layout(2, 3, 1);
        let (master, fd) = StatsBoard::create(layout).unwrap();
        let worker = StatsBoard::map(&fd, layout).unwrap();
        let mine = worker.slot(1, 2).unwrap();
        mine.request_done(200, 400, 10, 20);
        mine.request_done(404, 3_000, 0, 5);
        mine.request_done(502, 61_000_000, 0, 0);
        mine.request_done(0, 1, 0, 0);
        mine.upstream_error(UpstreamErrorKind::Timeout);
        mine.rate_limited();
        mine.blocked();
        mine.blocked();
        mine.connection_opened();
        mine.connection_opened();
        mine.connection_closed();
        mine.upstream_health(1, false);

        let seen = master.slot(1, 2).unwrap().read();
        assert_eq!(seen.counters.requests, [0, 1, 0, 1, 1, 1]);
        assert_eq!(seen.counters.requests_total(), 4);
        assert_eq!(seen.counters.duration[0], 2, "0.4 ms and 1 us: <= 0.5 ms");
        assert_eq!(seen.counters.duration[3], 1, "3 ms: <= 5 ms");
        assert_eq!(seen.counters.duration[DURATION_BUCKETS.len()], 1, "> 60 s");
        assert_eq!(seen.counters.duration.iter().sum::<u64>(), 4);
        assert_eq!(seen.counters.duration_sum_micros, 61_003_401);
        assert_eq!(seen.counters.upstream_errors, [0, 1, 0, 0]);
        assert_eq!(
            (seen.counters.bytes_received, seen.counters.bytes_sent),
            (10, 25)
        );
        assert_eq!((seen.counters.rate_limited, seen.counters.blocked), (1, 2));
        assert_eq!(seen.connections, 1);
        assert!(seen.upstream_down(1) && !seen.upstream_down(0));
        mine.upstream_health(1, true);
        assert!(!master.slot(1, 2).unwrap().read().upstream_down(1));

        // Other slots untouched.
        for (w, s) in [(0, 0), (0, 2), (1, 1)] {
            assert_eq!(
                master.slot(w, s).unwrap().read(),
                SlotValues {
                    upstreams_down: vec![0],
                    ..SlotValues::default()
                }
            );
        }
        assert!(master.slot(2, 0).is_none() && master.slot(0, 3).is_none());

        master.slot(1, 2).unwrap().clear();
        assert_eq!(mine.read().counters, Counters::default());
        assert_eq!(mine.read().connections, 0);
    }

    #[test]
    fn gauges_never_go_below_zero_and_health_beyond_range_is_ignored() {
        let board = StatsBoard::private(layout(1, 1, 1)).unwrap();
        let slot = board.slot(0, 0).unwrap();
        slot.connection_closed();
        assert_eq!(slot.read().connections, 0);
        slot.upstream_health(64, false);
        assert_eq!(slot.read().upstreams_down, vec![0]);
    }

    #[test]
    fn a_board_too_small_for_the_layout_is_refused() {
        let (_, fd) = StatsBoard::create(layout(1, 1, 0)).unwrap();
        assert!(matches!(
            StatsBoard::map(&fd, layout(2, 1, 0)),
            Err(StatsError::TooSmall { .. })
        ));
    }

    #[test]
    fn counters_add_up() {
        let mut a = Counters::default();
        let mut b = Counters::default();
        b.requests[1] = 3;
        b.duration[2] = 3;
        b.bytes_sent = 7;
        a.add(&b);
        a.add(&b);
        assert_eq!(a.requests_total(), 6);
        assert_eq!(a.duration[2], 6);
        assert_eq!(a.bytes_sent, 14);
    }

    #[test]
    fn the_layout_follows_the_config() {
        let config = river_config::parse(
            "system { workers 3; }\nservices {\n    A {\n        listeners { \"127.0.0.1:1\" }\n        connectors { \"127.0.0.1:2\"; \"127.0.0.1:3\"; \"127.0.0.1:2\" }\n    }\n    B {\n        listeners { \"127.0.0.1:4\" }\n        welcome-page\n    }\n}\n",
            "test.kdl",
        )
        .unwrap();
        assert_eq!(StatsLayout::of(&config), layout(3, 2, 1));
        assert_eq!(
            upstream_addresses(&config.services[0]),
            [
                "127.0.0.1:2".parse().unwrap(),
                "127.0.0.1:3".parse().unwrap()
            ]
        );
        assert!(upstream_addresses(&config.services[1]).is_empty());
    }
}
