//! The access log: one line per request, appended to the file the master
//! opened (the worker may not be allowed to open it). Lines go through a
//! bounded channel to a writer thread, so a slow disk never stalls the
//! runtime; on `ReopenLogs` the writer switches to the freshly opened file.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Lines buffered between the runtime and the writer. Past this, lines are
/// dropped (and counted) rather than making requests wait for the disk.
const QUEUE: usize = 64 * 1024;

enum Message {
    Line(String),
    Reopen(File),
}

/// A handle on this worker's access log.
#[derive(Clone)]
pub struct AccessLog {
    tx: SyncSender<Message>,
    dropped: Arc<AtomicU64>,
}

/// The worker's one access log, for the `ReopenLogs` handler.
static INSTALLED: OnceLock<AccessLog> = OnceLock::new();

/// One request, as logged.
pub struct Entry<'a> {
    pub client: Option<IpAddr>,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub bytes_sent: usize,
    pub upstream: Option<&'a str>,
    pub duration: Duration,
    /// Why the request did not end normally (`upstream-read-timeout`,
    /// `bad-chunk-size`, ...): logged as a ninth field.
    pub error: Option<&'a str>,
}

impl AccessLog {
    /// Start the writer on `file` and make it this process's access log.
    pub fn install(file: File) -> std::io::Result<AccessLog> {
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("river-access-log".into())
            .spawn(move || write_lines(rx, file))?;
        let log = AccessLog {
            tx,
            dropped: Arc::default(),
        };
        // start() runs once per worker process; a second log would be a bug.
        if INSTALLED.set(log.clone()).is_err() {
            tracing::warn!("access log installed twice; the first one gets reopened");
        }
        Ok(log)
    }

    pub fn log(&self, entry: &Entry<'_>) {
        match self
            .tx
            .try_send(Message::Line(format_entry(entry, SystemTime::now())))
        {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if dropped.is_power_of_two() {
                    tracing::warn!(dropped, "access log writer is behind: dropping lines");
                }
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

/// Switch the installed access log (if any) to `file`, after the lines
/// already queued.
pub async fn reopen(file: File) {
    let Some(log) = INSTALLED.get() else {
        tracing::debug!("reopen-logs: no access log configured");
        return;
    };
    let tx = log.tx.clone();
    // A blocking send (the queue may be full), off the runtime's threads.
    let sent = tokio::task::spawn_blocking(move || tx.send(Message::Reopen(file))).await;
    if !matches!(sent, Ok(Ok(()))) {
        tracing::warn!("access log writer is gone; cannot reopen");
    }
}

fn write_lines(rx: Receiver<Message>, file: File) {
    let mut out = BufWriter::new(file);
    let mut failing = false;
    let mut handle = |out: &mut BufWriter<File>, message: Message| match message {
        Message::Line(line) => {
            if let Err(err) = out.write_all(line.as_bytes()) {
                if !failing {
                    tracing::warn!(error = %err, "writing the access log");
                }
                failing = true;
            } else {
                failing = false;
            }
        }
        Message::Reopen(file) => {
            let _ = out.flush();
            *out = BufWriter::new(file);
            tracing::info!("access log reopened");
        }
    };
    while let Ok(message) = rx.recv() {
        handle(&mut out, message);
        // Drain what is queued, then flush once: one write(2) per burst.
        loop {
            match rx.try_recv() {
                Ok(message) => handle(&mut out, message),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    let _ = out.flush();
                    return;
                }
            }
        }
        let _ = out.flush();
    }
}

/// `TIME CLIENT METHOD PATH STATUS BYTES UPSTREAM MILLIS [ERROR]`, space
/// separated; `-` for what is unknown; ERROR only when the request ended
/// abnormally. The path is escaped so a line stays one line.
fn format_entry(entry: &Entry<'_>, now: SystemTime) -> String {
    let mut line = String::with_capacity(128);
    line.push_str(&rfc3339(now));
    line.push(' ');
    match entry.client {
        Some(ip) => {
            let _ = write!(line, "{}", ip.to_canonical());
        }
        None => line.push('-'),
    }
    line.push(' ');
    push_escaped(&mut line, entry.method);
    line.push(' ');
    push_escaped(&mut line, entry.path);
    let _ = write!(
        line,
        " {} {} {} {}",
        entry.status,
        entry.bytes_sent,
        entry.upstream.unwrap_or("-"),
        entry.duration.as_millis()
    );
    if let Some(error) = entry.error {
        line.push(' ');
        push_escaped(&mut line, error);
    }
    line.push('\n');
    line
}

fn push_escaped(line: &mut String, text: &str) {
    if text.is_empty() {
        line.push('-');
    }
    for byte in text.bytes() {
        if byte.is_ascii_graphic() && byte != b'"' && byte != b'\\' {
            line.push(char::from(byte));
        } else {
            let _ = write!(line, "%{byte:02X}");
        }
    }
}

/// UTC, millisecond precision: `2024-05-01T12:00:00.123Z`.
fn rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = river_ipc::civil::civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_251_199_042);
        assert_eq!(rfc3339(t), "2024-02-29T23:59:59.042Z");
    }

    #[test]
    fn entry_line() {
        let entry = Entry {
            client: Some("::ffff:127.0.0.1".parse().unwrap()),
            method: "GET",
            path: "/a b\"\n",
            status: 200,
            bytes_sent: 17,
            upstream: Some("127.0.0.1:8000"),
            duration: Duration::from_millis(12),
            error: None,
        };
        assert_eq!(
            format_entry(&entry, UNIX_EPOCH),
            "1970-01-01T00:00:00.000Z 127.0.0.1 GET /a%20b%22%0A 200 17 127.0.0.1:8000 12\n"
        );
        let entry = Entry {
            client: None,
            upstream: None,
            path: "",
            ..entry
        };
        assert!(format_entry(&entry, UNIX_EPOCH).ends_with(" - GET - 200 17 - 12\n"));
        let entry = Entry {
            status: 504,
            error: Some("upstream-read-timeout"),
            ..entry
        };
        assert!(format_entry(&entry, UNIX_EPOCH)
            .ends_with(" - GET - 504 17 - 12 upstream-read-timeout\n"));
    }

    #[test]
    fn writer_appends_and_switches_files() {
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("first.log");
        let second = dir.path().join("second.log");
        let (tx, rx) = std::sync::mpsc::sync_channel(16);
        let writer = std::thread::spawn({
            let file = File::create(&first).unwrap();
            move || write_lines(rx, file)
        });
        tx.send(Message::Line("one\n".into())).unwrap();
        tx.send(Message::Reopen(File::create(&second).unwrap()))
            .unwrap();
        tx.send(Message::Line("two\n".into())).unwrap();
        drop(tx);
        writer.join().unwrap();
        assert_eq!(std::fs::read_to_string(first).unwrap(), "one\n");
        assert_eq!(std::fs::read_to_string(second).unwrap(), "two\n");
    }
}
