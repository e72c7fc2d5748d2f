//! Every signal the master can be sent has a defined action: the ones River
//! uses (nginx's set), and every other one whose default action would end or
//! stop the master, which it logs and ignores. An operator's `kill -USR2`
//! (nginx's binary upgrade) or a stray `SIGALRM` must never take down the
//! process that owns the listening sockets.
//!
//! Handlers, not `SIG_IGN`: a handled signal goes back to its default in the
//! workers and children at exec, an ignored one would be inherited.

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

/// What the master does on a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// HUP
    Reload,
    /// QUIT
    GracefulStop,
    /// TERM, INT
    FastStop,
    /// USR1
    ReopenLogs,
    /// USR2
    Upgrade,
    /// Anything else that would end or stop the master: logged, ignored.
    Ignore(&'static str),
}

/// The signals River acts on.
const USED: &[(i32, Action)] = &[
    (libc::SIGHUP, Action::Reload),
    (libc::SIGQUIT, Action::GracefulStop),
    (libc::SIGTERM, Action::FastStop),
    (libc::SIGINT, Action::FastStop),
    (libc::SIGUSR1, Action::ReopenLogs),
    (libc::SIGUSR2, Action::Upgrade),
];

/// Signals whose default action ends or stops the process, and that no fault
/// of the master's own raises (SEGV, BUS, FPE, ILL, ABRT, TRAP and SYS stay as
/// they are: ignoring a real fault would loop on it). TSTP stays too: Ctrl-Z in
/// a terminal is an operator's deliberate act.
const IGNORED: &[(i32, &str)] = &[
    (libc::SIGPIPE, "SIGPIPE"),
    (libc::SIGALRM, "SIGALRM"),
    (libc::SIGVTALRM, "SIGVTALRM"),
    (libc::SIGPROF, "SIGPROF"),
    (libc::SIGWINCH, "SIGWINCH"),
    (libc::SIGTTIN, "SIGTTIN"),
    (libc::SIGTTOU, "SIGTTOU"),
    (libc::SIGXCPU, "SIGXCPU"),
    (libc::SIGXFSZ, "SIGXFSZ"),
    (libc::SIGIO, "SIGIO"),
    (libc::SIGPWR, "SIGPWR"),
    (libc::SIGSTKFLT, "SIGSTKFLT"),
];

/// Real-time signals, whose default action is to terminate.
const REALTIME: &str = "a real-time signal (SIGRTMIN..SIGRTMAX)";

/// The master's signals as one stream of actions.
pub struct Signals {
    actions: mpsc::UnboundedReceiver<Action>,
}

impl Signals {
    /// Install a handler for every signal above (within a tokio runtime).
    pub fn install() -> std::io::Result<Signals> {
        let (tx, actions) = mpsc::unbounded_channel();
        let ignored = IGNORED
            .iter()
            .map(|&(number, name)| (number, Action::Ignore(name)));
        let realtime = (libc::SIGRTMIN()..=libc::SIGRTMAX()).map(|n| (n, Action::Ignore(REALTIME)));
        for (number, action) in USED.iter().copied().chain(ignored).chain(realtime) {
            let mut stream = signal(SignalKind::from_raw(number))?;
            let tx = tx.clone();
            tokio::spawn(async move {
                while stream.recv().await.is_some() {
                    if tx.send(action).is_err() {
                        return;
                    }
                }
            });
        }
        Ok(Signals { actions })
    }

    /// The next signal's action (signals of one kind that arrive together
    /// count once, as the kernel delivers them).
    pub async fn recv(&mut self) -> Option<Action> {
        self.actions.recv().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_signal_is_listed_twice() {
        let mut all: Vec<i32> = USED.iter().map(|(n, _)| *n).collect();
        all.extend(IGNORED.iter().map(|(n, _)| *n));
        let count = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), count);
    }

    #[tokio::test]
    async fn a_stray_signal_is_reported_and_does_not_kill() {
        let mut signals = Signals::install().unwrap();
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGWINCH).unwrap();
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGALRM).unwrap();
        let mut seen = Vec::new();
        while seen.len() < 2 {
            let action = tokio::time::timeout(std::time::Duration::from_secs(5), signals.recv())
                .await
                .unwrap();
            seen.push(action.unwrap());
        }
        seen.sort_by_key(|a| format!("{a:?}"));
        assert_eq!(
            seen,
            vec![Action::Ignore("SIGALRM"), Action::Ignore("SIGWINCH")]
        );
    }
}
