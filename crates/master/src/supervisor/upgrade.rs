//! Binary upgrade as the supervisor runs it, from both sides.
//!
//! Old master: `riverctl upgrade` or SIGUSR2 starts the new binary with this
//! master's sockets ([`crate::upgrade::spawn_new_master`]), then waits. When
//! the new master says Ready (its first generation serves), the old one
//! answers the caller, hands over the control socket and the listeners, and
//! retires: its generations drain under the usual rules and it exits when
//! they are gone. When the new master fails, exits, or is not ready in time,
//! it is killed and the old master serves on as if nothing happened.
//!
//! New master: it serves the control socket, writes the pid file and tells
//! systemd `MAINPID` only once its first generation serves; until then the
//! old master is in charge. It shows what the retiring master still runs in
//! `riverctl status`, from the notes that master sends while it drains.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use river_ipc::{ControlResponse, MasterStatus, UpgradeNote};
use tokio::sync::mpsc;

use super::*;
use crate::config_source::LOAD_TIMEOUT;
use crate::pidfile::PidFile;
use crate::upgrade::{spawn_new_master, Handover, Link, LinkReader};

/// Beyond config loading and worker start-up, what a new master may take.
const UPGRADE_GRACE: Duration = Duration::from_secs(5);
/// How often a retiring master tells the new one what it still runs.
const STATUS_PUSH_EVERY: Duration = Duration::from_millis(500);

const LINK_CLOSED: &str = "it closed the link";

/// What arrives on the supervisor's loop about an upgrade.
pub(super) enum UpgradeEvent {
    /// From the new master this one started.
    Successor(UpgradeNote),
    /// The new master closed the link or exited.
    SuccessorGone(String),
    /// From the old master that started this one.
    Predecessor(UpgradeNote),
    /// The old master is gone (exited after draining, or died).
    PredecessorGone,
}

/// An upgrade this master started and waits for.
pub(super) struct PendingUpgrade {
    pid: u32,
    binary: PathBuf,
    waiters: Vec<Reply>,
    deadline: Instant,
    /// Notes to the new master (status pushes once retiring).
    notes: mpsc::UnboundedSender<UpgradeNote>,
}

/// The new master this one retired for.
pub(super) struct Successor {
    pid: u32,
    notes: mpsc::UnboundedSender<UpgradeNote>,
    last_push: Instant,
}

/// The old master that started this one.
pub(super) struct Predecessor {
    notes: mpsc::UnboundedSender<UpgradeNote>,
    /// Until this master's first generation serves: the pid file to write.
    takeover: Option<Option<PathBuf>>,
    /// What the old master last said it runs.
    last_status: Option<MasterStatus>,
}

impl Predecessor {
    /// The new master's side, from the link it inherited.
    pub fn new(
        link: Link,
        pid_file: Option<PathBuf>,
        events: mpsc::UnboundedSender<UpgradeEvent>,
    ) -> Predecessor {
        let (reader, writer) = link.split();
        let notes = spawn_writer(writer);
        tokio::spawn(read_notes(
            reader,
            events,
            UpgradeEvent::Predecessor,
            || UpgradeEvent::PredecessorGone,
        ));
        Predecessor {
            notes,
            takeover: Some(pid_file),
            last_status: None,
        }
    }
}

/// A task that sends the notes it is given, in order, until the link breaks.
fn spawn_writer(mut writer: crate::upgrade::LinkWriter) -> mpsc::UnboundedSender<UpgradeNote> {
    let (tx, mut rx) = mpsc::unbounded_channel::<UpgradeNote>();
    tokio::spawn(async move {
        while let Some(note) = rx.recv().await {
            if let Err(err) = writer.send(&note).await {
                tracing::debug!(error = %err, "link between masters closed");
                return;
            }
        }
    });
    tx
}

async fn read_notes(
    mut reader: LinkReader,
    events: mpsc::UnboundedSender<UpgradeEvent>,
    wrap: fn(UpgradeNote) -> UpgradeEvent,
    gone: impl Fn() -> UpgradeEvent,
) {
    loop {
        match reader.next().await {
            Ok(Some(note)) => {
                if events.send(wrap(note)).is_err() {
                    return;
                }
            }
            Ok(None) => break,
            Err(err) => {
                tracing::error!(error = %err, "bad note from the other master: closing the link");
                break;
            }
        }
    }
    let _ = events.send(gone());
}

impl Supervisor {
    /// `riverctl upgrade` or SIGUSR2 (`reply` None): start the new master.
    pub(super) fn request_upgrade(&mut self, binary: Option<PathBuf>, reply: Option<Reply>) {
        let refuse = |reply: Option<Reply>, error: String| {
            tracing::error!("binary upgrade refused: {error}");
            if let Some(reply) = reply {
                let _ = reply.send(ControlResponse::UpgradeFailed { error });
            }
        };
        if let Some(reason) = self.upgrade_refusal() {
            return refuse(reply, reason);
        }
        let binary = binary.unwrap_or_else(|| self.invocation.binary.clone());
        let startup = self
            .generations
            .iter()
            .find(|g| g.state == State::Serving)
            .map_or(10, |g| g.inputs.config.system.worker_startup_timeout_secs);
        tracing::info!(binary = %binary.display(), "binary upgrade: starting the new master");
        let handover = Handover {
            binary: &binary,
            invocation: &self.invocation,
            control: self.control.as_ref().map(|c| c.raw_fd()),
            metrics: self.metrics_service.as_ref().and_then(|m| {
                let address = self
                    .generations
                    .iter()
                    .find(|g| g.state == State::Serving)?
                    .inputs
                    .config
                    .system
                    .metrics
                    .clone()?;
                Some((address, m.raw_fd()))
            }),
            listeners: self.listeners.current(),
            next_generation: self.next_generation,
        };
        let (mut child, link) = match spawn_new_master(handover) {
            Ok(started) => started,
            Err(err) => return refuse(reply, err.to_string()),
        };
        let pid = child.id().unwrap_or(0);
        let (reader, writer) = link.split();
        let notes = spawn_writer(writer);
        tokio::spawn(read_notes(
            reader,
            self.upgrade_tx.clone(),
            UpgradeEvent::Successor,
            || UpgradeEvent::SuccessorGone(LINK_CLOSED.into()),
        ));
        let exits = self.upgrade_tx.clone();
        tokio::spawn(async move {
            let status = match child.wait().await {
                Ok(status) => status.to_string(),
                Err(err) => format!("unknown ({err})"),
            };
            let _ = exits.send(UpgradeEvent::SuccessorGone(format!("it exited: {status}")));
        });
        self.upgrade = Some(PendingUpgrade {
            pid,
            binary,
            waiters: reply.into_iter().collect(),
            deadline: Instant::now() + LOAD_TIMEOUT + Duration::from_secs(startup) + UPGRADE_GRACE,
            notes,
        });
    }

    /// Why an upgrade cannot start now, if it cannot.
    fn upgrade_refusal(&self) -> Option<String> {
        if self.shutdown.is_some() {
            Some("the master is shutting down".into())
        } else if let Some(successor) = &self.successor {
            Some(format!(
                "this master retired after an upgrade: pid {} serves",
                successor.pid
            ))
        } else if self.upgrade.is_some() {
            Some("an upgrade is already in progress".into())
        } else if self
            .predecessor
            .as_ref()
            .is_some_and(|p| p.takeover.is_some())
        {
            Some("this master is still taking over from the previous one".into())
        } else if self.reloading() {
            Some("a reload is in progress: upgrade again once it is done".into())
        } else {
            None
        }
    }

    /// Why a reload cannot start now, if it cannot (it can while this
    /// master only waits to take over: that is a reload of its own start).
    pub(super) fn reload_refusal(&self) -> Option<String> {
        if let Some(successor) = &self.successor {
            Some(format!(
                "this master retired after an upgrade: pid {} serves",
                successor.pid
            ))
        } else if self.upgrade.is_some() {
            Some("a binary upgrade is in progress: reload once it is done".into())
        } else {
            None
        }
    }

    pub(super) async fn on_upgrade_event(&mut self, event: UpgradeEvent) {
        match event {
            UpgradeEvent::Successor(UpgradeNote::Ready {
                master,
                generation,
                workers,
                millis,
            }) => {
                let Some(pending) = self.upgrade.take() else {
                    return;
                };
                if master.pid != pending.pid {
                    tracing::warn!(pid = master.pid, "Ready from an unexpected master");
                }
                tracing::info!(
                    pid = pending.pid,
                    version = %master.version,
                    generation,
                    "binary upgrade: the new master serves; retiring"
                );
                let response = ControlResponse::Upgraded {
                    new: master,
                    generation,
                    workers,
                    millis,
                    old: self.identity.clone(),
                };
                for waiter in pending.waiters {
                    let _ = waiter.send(response.clone());
                }
                self.successor = Some(Successor {
                    pid: pending.pid,
                    notes: pending.notes,
                    last_push: Instant::now(),
                });
                self.retire();
            }
            UpgradeEvent::Successor(UpgradeNote::Failed { error }) => {
                self.fail_upgrade(format!("the new master gave up: {error}"))
            }
            UpgradeEvent::Successor(UpgradeNote::Status(_)) => {}
            // While it starts, its exit (which says how it ended) decides;
            // a link closed by a master that keeps running times out.
            UpgradeEvent::SuccessorGone(why) if why == LINK_CLOSED => {
                if let Some(successor) = &self.successor {
                    tracing::error!(
                        pid = successor.pid,
                        "the new master closed the link after taking over"
                    );
                }
            }
            UpgradeEvent::SuccessorGone(why) => {
                if self.upgrade.is_some() {
                    self.fail_upgrade(format!("the new master failed to start: {why}"));
                } else if let Some(successor) = &self.successor {
                    tracing::error!(
                        pid = successor.pid,
                        "the new master is gone ({why}) after taking over: nothing serves new connections"
                    );
                }
            }
            UpgradeEvent::Predecessor(UpgradeNote::Status(status)) => {
                if let Some(predecessor) = &mut self.predecessor {
                    predecessor.last_status = Some(status);
                }
            }
            UpgradeEvent::Predecessor(_) => {}
            UpgradeEvent::PredecessorGone => {
                if let Some(predecessor) = &mut self.predecessor {
                    predecessor.last_status = None;
                    if predecessor.takeover.is_none() {
                        tracing::info!("the previous master has exited");
                    }
                }
            }
        }
    }

    /// The upgrade failed: kill the newcomer (its workers, never told to
    /// serve, exit with it), tell the caller, serve on.
    pub(super) fn fail_upgrade(&mut self, error: String) {
        let Some(pending) = self.upgrade.take() else {
            return;
        };
        tracing::error!(
            binary = %pending.binary.display(),
            "binary upgrade failed, this master serves on: {error}"
        );
        if let Ok(pid) = i32::try_from(pending.pid) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
        }
        for waiter in pending.waiters {
            let _ = waiter.send(ControlResponse::UpgradeFailed {
                error: error.clone(),
            });
        }
    }

    /// A new master serves: let it have the sockets and systemd, and drain.
    fn retire(&mut self) {
        if let Some(control) = &mut self.control {
            control.hand_over();
        }
        if let Some(metrics) = &mut self.metrics_service {
            metrics.hand_over();
        }
        self.listeners.hand_over();
        self.notify.silence();
        for waiter in self.pending_reload.take().into_iter().flatten() {
            let _ = waiter.send(ControlResponse::ReloadFailed {
                error: "this master retired after a binary upgrade".into(),
            });
        }
        self.abort_all_starting("the master retired after a binary upgrade");
        self.drain_serving();
        self.remove_finished();
    }

    /// Per tick: an upgrade that is late fails; a retiring master tells the
    /// new one what it still runs.
    pub(super) fn upgrade_tick(&mut self, now: Instant) {
        if self.upgrade.as_ref().is_some_and(|u| now >= u.deadline) {
            self.fail_upgrade("the new master was not ready in time".into());
        }
        let due = self
            .successor
            .as_ref()
            .is_some_and(|s| now.duration_since(s.last_push) >= STATUS_PUSH_EVERY);
        if due {
            let status = MasterStatus {
                master: self.identity.clone(),
                generations: self.status().generations,
            };
            if let Some(successor) = &mut self.successor {
                successor.last_push = now;
                let _ = successor.notes.send(UpgradeNote::Status(status));
            }
        }
    }

    /// This master's first generation serves. Started by an upgrade, it now
    /// takes over: pid file, control socket, systemd's main pid, and the
    /// word to the old master to retire. True if it took over (and told
    /// systemd it is ready).
    pub(super) fn take_over_if_due(
        &mut self,
        generation: u64,
        workers: usize,
        millis: u64,
    ) -> bool {
        let Some(predecessor) = &mut self.predecessor else {
            return false;
        };
        let Some(pid_path) = predecessor.takeover.take() else {
            return false;
        };
        if let Some(path) = pid_path {
            match PidFile::take_over(&path) {
                Ok(pid_file) => self.pid_file = Some(pid_file),
                Err(err) => tracing::error!("{err}"),
            }
        }
        if let Some(control) = &mut self.control {
            control.start();
        }
        if let Some(metrics) = &mut self.metrics_service {
            metrics.start();
        }
        self.notify
            .main_pid(&format!("generation {generation} serving (upgraded)"));
        let _ = predecessor.notes.send(UpgradeNote::Ready {
            master: self.identity.clone(),
            generation,
            workers,
            millis,
        });
        tracing::info!(generation, "took over from the previous master");
        true
    }

    /// Started by an upgrade and failing before serving: tell the old
    /// master, which serves on, and give it a moment to read it.
    pub(super) async fn tell_predecessor_failed(&mut self, error: &str) {
        if let Some(predecessor) = &self.predecessor {
            let _ = predecessor.notes.send(UpgradeNote::Failed {
                error: error.to_owned(),
            });
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Masters retiring after an upgrade, for `riverctl status`.
    pub(super) fn retiring_masters(&self) -> Vec<MasterStatus> {
        self.predecessor
            .as_ref()
            .and_then(|p| p.last_status.clone())
            .into_iter()
            .collect()
    }
}
