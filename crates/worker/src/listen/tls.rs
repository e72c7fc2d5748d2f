//! TLS termination on inherited listeners. The master read the PEM files (the
//! worker may not be allowed to); the worker builds a rustls config from the
//! bytes and handshakes each connection in that connection's own task, so a
//! slow or failed handshake costs only that connection.

use std::sync::Arc;
use std::time::Duration;

use pingora_core::apps::ServerApp;
use pingora_core::listeners::tls::Acceptor;
use pingora_core::protocols::Stream;

use crate::listen::buffered::WriteBuffered;
use pingora_core::server::ShutdownWatch;
use pingora_core::tls::{version, ServerConfig};
use river_config::ListenAddress;
use river_ipc::TlsMaterial;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A client that has not finished its handshake by then is dropped, so it
/// cannot hold a draining worker open.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS listener {listener}: no certificate or key was sent by the master")]
    MissingMaterial { listener: ListenAddress },
    #[error("TLS listener {listener}: certificate: {reason}")]
    Certificate {
        listener: ListenAddress,
        reason: String,
    },
    #[error("TLS listener {listener}: private key: {reason}")]
    Key {
        listener: ListenAddress,
        reason: String,
    },
    #[error("TLS listener {listener}: {reason}")]
    Config {
        listener: ListenAddress,
        reason: String,
    },
}

/// Build the acceptor of one TLS listener from the master's PEM bytes.
/// `offer_h2` advertises h2 before http/1.1 by ALPN.
pub fn acceptor(
    listener: &ListenAddress,
    material: &[TlsMaterial],
    offer_h2: bool,
) -> Result<Arc<Acceptor>, TlsError> {
    let material = material
        .iter()
        .find(|m| &m.address == listener)
        .ok_or_else(|| TlsError::MissingMaterial {
            listener: listener.clone(),
        })?;
    let config = server_config(listener, &material.cert_pem, &material.key_pem, offer_h2)?;
    Ok(Arc::new(Acceptor::from_server_config(Arc::new(config))))
}

fn server_config(
    listener: &ListenAddress,
    cert_pem: &[u8],
    key_pem: &[u8],
    offer_h2: bool,
) -> Result<ServerConfig, TlsError> {
    pingora_core::tls::install_default_crypto_provider();
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Certificate {
            listener: listener.clone(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Certificate {
            listener: listener.clone(),
            reason: "no PEM certificate found".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Key {
        listener: listener.clone(),
        reason: e.to_string(),
    })?;
    let mut config =
        ServerConfig::builder_with_protocol_versions(&[&version::TLS12, &version::TLS13])
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| TlsError::Config {
                listener: listener.clone(),
                reason: e.to_string(),
            })?;
    config.alpn_protocols = if offer_h2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(config)
}

/// The TLS handshake of one connection, within [`HANDSHAKE_TIMEOUT`]: the
/// encrypted stream, or `None` (logged at debug level) when it failed.
async fn handshake(acceptor: &Acceptor, buffered: WriteBuffered) -> Option<Stream> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.tls_handshake(buffered)).await {
        Ok(Ok(tls)) => Some(Box::new(tls)),
        Ok(Err(err)) => {
            tracing::debug!(error = %err, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!("TLS handshake timed out");
            None
        }
    }
}

/// What an accept loop hands connections to: the service's app, behind a TLS
/// handshake on TLS listeners.
pub struct Endpoint<A> {
    app: Arc<A>,
    tls: Option<Arc<Acceptor>>,
}

impl<A> Endpoint<A> {
    pub fn new(app: Arc<A>, tls: Option<Arc<Acceptor>>) -> Self {
        Endpoint { app, tls }
    }
}

impl<A> Endpoint<A>
where
    A: ServerApp + Send + Sync + 'static,
{
    /// Serve one accepted connection to its end: the TLS handshake on TLS
    /// listeners, then the app.
    pub async fn serve(&self, stream: Box<WriteBuffered>, shutdown: &ShutdownWatch) {
        let stream: Stream = match &self.tls {
            None => stream,
            // Boxed, and only the boxed stream kept: a connection's future is
            // as large as its largest state for as long as it lives, and the
            // handshake's (a whole rustls connection) is kilobytes.
            Some(acceptor) => match Box::pin(handshake(acceptor, *stream)).await {
                Some(tls) => tls,
                None => return,
            },
        };
        self.app.process_new(stream, shutdown).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> ListenAddress {
        ListenAddress::Tcp("127.0.0.1:4443".parse().unwrap())
    }

    #[test]
    fn garbage_pem_names_the_listener() {
        let material = [TlsMaterial {
            address: addr(),
            cert_pem: b"not a certificate".to_vec(),
            key_pem: b"not a key".to_vec(),
        }];
        let err = acceptor(&addr(), &material, true).err().expect("must fail");
        assert!(err.to_string().contains("127.0.0.1:4443"), "{err}");
    }

    #[test]
    fn missing_material_is_an_error() {
        let err = acceptor(&addr(), &[], true).err().expect("must fail");
        assert!(matches!(err, TlsError::MissingMaterial { .. }));
    }
}
