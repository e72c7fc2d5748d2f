//! systemd's readiness protocol (sd_notify), for `Type=notify-reload` units: a
//! datagram per state change to $NOTIFY_SOCKET. Without that variable every
//! call is a no-op.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    pub fn from_env() -> Notifier {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|path| {
            let bytes = path.as_encoded_bytes();
            // A leading '@' names a socket in the abstract namespace.
            let address = match bytes.strip_prefix(b"@") {
                Some(name) => SocketAddr::from_abstract_name(name),
                None => SocketAddr::from_pathname(&path),
            };
            match (UnixDatagram::unbound(), address) {
                (Ok(socket), Ok(address)) => Some((socket, address)),
                (Err(err), _) | (_, Err(err)) => {
                    tracing::warn!(error = %err, "NOTIFY_SOCKET unusable: not notifying systemd");
                    None
                }
            }
        });
        Notifier { target }
    }

    fn send(&self, message: &str) {
        if let Some((socket, address)) = &self.target {
            if let Err(err) = socket.send_to_addr(message.as_bytes(), address) {
                tracing::debug!(error = %err, "sd_notify failed");
            }
        }
    }

    /// The serving generation is up (after start-up, and after each reload,
    /// whether it succeeded or was rolled back).
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}\n"));
    }

    pub fn reloading(&self) {
        let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC);
        let usec = now.map_or(0, |t| {
            t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000
        });
        self.send(&format!(
            "RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS=reloading\n"
        ));
    }

    /// A new master taking over after a binary upgrade: it is the service's
    /// main process from now on (needs `NotifyAccess=all`: it is not yet).
    pub fn main_pid(&self, status: &str) {
        self.send(&format!(
            "MAINPID={}\nREADY=1\nSTATUS={status}\n",
            std::process::id()
        ));
    }

    /// A master that retired after an upgrade no longer speaks for the
    /// service: the new master does.
    pub fn silence(&mut self) {
        self.target = None;
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=stopping\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let receiver = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier {
            target: Some((
                UnixDatagram::unbound().unwrap(),
                SocketAddr::from_pathname(&path).unwrap(),
            )),
        };
        let mut buf = [0u8; 256];
        notifier.reloading();
        let n = receiver.recv(&mut buf).unwrap();
        let text = std::str::from_utf8(&buf[..n]).unwrap();
        assert!(text.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{text}");
        notifier.ready("generation 2 serving");
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=generation 2 serving\n");
    }
}
