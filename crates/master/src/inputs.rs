//! What a generation hands each of its workers: the config, the listening
//! sockets, and what the master reads or opens with its privileges (TLS keys,
//! the access log) so that workers never need access to those files.

use std::fs::{File, OpenOptions};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use river_config::{Config, ListenAddress};
use river_ipc::stats::{StatsBoard, StatsLayout};
use river_ipc::TlsMaterial;

use crate::listeners::{ListenerSet, SharedSocket};

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error(transparent)]
    Bind(#[from] crate::listeners::BindError),
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not PEM (no -----BEGIN line)", path.display())]
    NotPem { path: PathBuf },
    #[error("cannot create the connection balance board: {0}")]
    BalanceBoard(std::io::Error),
    #[error("cannot create the stats board: {0}")]
    StatsBoard(river_ipc::stats::StatsError),
    #[error("cannot open access log {}: {source}", path.display())]
    AccessLog {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub struct GenerationInputs {
    pub config: Arc<Config>,
    pub sockets: Vec<(ListenAddress, SharedSocket)>,
    pub tls: Vec<TlsMaterial>,
    pub access_log: Option<Arc<File>>,
    /// Shared by the generation's workers to spread connections (see
    /// river_worker's `balance`); none with a single worker.
    pub balance: Option<Arc<OwnedFd>>,
    /// Where the generation's workers count their requests (metrics): the
    /// master's mapping, and the memfd each worker maps.
    pub stats: Arc<StatsBoard>,
    pub stats_fd: Arc<OwnedFd>,
}

impl GenerationInputs {
    /// Everything or nothing: on error, sockets bound here close again.
    pub fn prepare(config: Config, listeners: &ListenerSet) -> Result<Self, InputError> {
        let tls = read_tls(&config)?;
        let access_log = open_access_log(&config)?;
        let balance = match config.system.workers {
            0 | 1 => None,
            workers => Some(Arc::new(
                river_ipc::balance_board(workers).map_err(InputError::BalanceBoard)?,
            )),
        };
        let (stats, stats_fd) =
            StatsBoard::create(StatsLayout::of(&config)).map_err(InputError::StatsBoard)?;
        let sockets = listeners.prepare(&config)?;
        Ok(GenerationInputs {
            config: Arc::new(config),
            sockets,
            tls,
            access_log,
            balance,
            stats,
            stats_fd: Arc::new(stats_fd),
        })
    }

    /// Keep only the listeners that `sockets` also has: a draining
    /// generation lets go of those the serving one dropped.
    pub fn retain_sockets(&mut self, sockets: &[(ListenAddress, SharedSocket)]) {
        self.sockets
            .retain(|(address, _)| sockets.iter().any(|(kept, _)| kept == address));
    }

    /// Open the access log again (after logrotate moved it away).
    pub fn reopen_access_log(&mut self) -> Result<Option<Arc<File>>, InputError> {
        self.access_log = open_access_log(&self.config)?;
        Ok(self.access_log.clone())
    }
}

/// Largest certificate or key file read (real ones are a few KiB; a chain
/// of dozens of certificates still fits).
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// Read a regular file of at most MAX_PEM_BYTES, never blocking: a FIFO or
/// device named as a certificate must not stall the master's loop.
fn read_pem(path: &Path) -> Result<Vec<u8>, InputError> {
    use std::io::Read;
    let err = |source| InputError::Read {
        path: path.to_owned(),
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(err)?;
    let meta = file.metadata().map_err(err)?;
    if !meta.is_file() || meta.len() > MAX_PEM_BYTES {
        return Err(err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("not a regular file of at most {MAX_PEM_BYTES} bytes"),
        )));
    }
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES)
        .read_to_end(&mut bytes)
        .map_err(err)?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(InputError::NotPem {
            path: path.to_owned(),
        });
    }
    Ok(bytes)
}

fn read_tls(config: &Config) -> Result<Vec<TlsMaterial>, InputError> {
    let mut material = Vec::new();
    for listener in config.services.iter().flat_map(|s| &s.listeners) {
        if let Some(tls) = &listener.tls {
            material.push(TlsMaterial {
                address: listener.address.clone(),
                cert_pem: read_pem(&tls.cert_path)?,
                key_pem: read_pem(&tls.key_path)?,
            });
        }
    }
    Ok(material)
}

fn open_access_log(config: &Config) -> Result<Option<Arc<File>>, InputError> {
    let Some(path) = &config.system.access_log else {
        return Ok(None);
    };
    let err = |source| InputError::AccessLog {
        path: path.clone(),
        source,
    };
    // Non-blocking open: a FIFO without a reader fails (ENXIO) instead of
    // stalling the master; then blocking again, as the workers' writer expects.
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(err)?;
    let flags =
        nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_GETFL).map_err(|e| err(e.into()))?;
    let blocking = nix::fcntl::OFlag::from_bits_truncate(flags) & !nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETFL(blocking)).map_err(|e| err(e.into()))?;
    Ok(Some(Arc::new(file)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_files_are_read_and_garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("cert.pem");
        std::fs::write(
            &good,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        assert!(read_pem(&good).unwrap().starts_with(b"-----BEGIN"));

        let bad = dir.path().join("key.pem");
        std::fs::write(&bad, "not a key").unwrap();
        let err = read_pem(&bad).unwrap_err().to_string();
        assert!(err.contains("key.pem"), "{err}");

        let missing = dir.path().join("missing.pem");
        let err = read_pem(&missing).unwrap_err().to_string();
        assert!(err.contains("missing.pem"), "{err}");
    }
}
