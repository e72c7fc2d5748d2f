//! A generation: the workers started from one validated config, and its state.

use std::time::Instant;

use nix::sys::signal::Signal;
use river_ipc::ToWorker;

use super::Reply;
use crate::discovery::GenerationDiscovery;
use crate::inputs::GenerationInputs;
use crate::process::WorkerHandle;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    Starting,
    Serving,
    Draining,
}

pub(super) struct Slot {
    pub(super) handle: Option<WorkerHandle>,
    pub(super) ready: bool,
    /// Between Ready and its Draining acknowledgement (or exit).
    pub(super) accepting: bool,
    pub(super) connections: u64,
    pub(super) rss_bytes: u64,
    pub(super) started_at: Instant,
    pub(super) failures: u32,
    pub(super) restart_at: Option<Instant>,
}

impl Slot {
    pub(super) fn new(handle: WorkerHandle) -> Slot {
        Slot {
            handle: Some(handle),
            ready: false,
            accepting: false,
            connections: 0,
            rss_bytes: 0,
            started_at: Instant::now(),
            failures: 0,
            restart_at: None,
        }
    }
}

pub(super) struct Generation {
    pub(super) number: u64,
    pub(super) inputs: GenerationInputs,
    pub(super) state: State,
    pub(super) slots: Vec<Slot>,
    pub(super) started: Instant,
    /// Starting: when to give up waiting for Ready. Draining: when to kill.
    pub(super) deadline: Option<Instant>,
    /// Set once SIGTERM went out: when to send SIGKILL.
    pub(super) kill_at: Option<Instant>,
    pub(super) drain_started: Option<Instant>,
    /// Callers waiting for this generation's reload outcome.
    pub(super) waiters: Vec<Reply>,
    /// With `discovery "Dns"`: its resolver and discovered sets.
    pub(super) discovery: Option<GenerationDiscovery>,
    /// Connections its workers adopted from draining ones, and handed to a
    /// newer generation (connection handoff).
    pub(super) handed_in: u64,
    pub(super) handed_out: u64,
}

impl Generation {
    pub(super) fn alive(&self) -> impl Iterator<Item = &WorkerHandle> {
        self.slots.iter().filter_map(|slot| slot.handle.as_ref())
    }

    pub(super) fn connections(&self) -> u64 {
        self.slots.iter().map(|slot| slot.connections).sum()
    }

    pub(super) fn rss_bytes(&self) -> u64 {
        self.slots.iter().map(|slot| slot.rss_bytes).sum()
    }

    pub(super) fn signal_all(&self, signal: Signal) {
        for worker in self.alive() {
            worker.signal(signal);
        }
    }

    pub(super) fn send_all(&self, message: &ToWorker) {
        for worker in self.alive() {
            worker.send(message.clone());
        }
    }
}
