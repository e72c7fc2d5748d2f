//! Clients and servers for the proxy-feature tests: TLS and h2 clients, test
//! certificates, a WebSocket echo upstream, HTTP over a Unix socket.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

use crate::client::Response;

/// A self-signed certificate for `localhost`, written as PEM into `dir`
/// under `name.crt` / `name.key`. Returns (cert path, key path, cert DER).
pub fn write_test_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf, Vec<u8>) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("rcgen");
    let cert_path = dir.join(format!("{name}.crt"));
    let key_path = dir.join(format!("{name}.key"));
    std::fs::write(&cert_path, certified.cert.pem()).expect("write cert");
    std::fs::write(&key_path, certified.key_pair.serialize_pem()).expect("write key");
    (cert_path, key_path, certified.cert.der().to_vec())
}

/// Accepts any server certificate: the tests check which one was served.
#[derive(Debug)]
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client config that offers `alpn` and trusts any certificate.
pub fn tls_client_config(alpn: &[&str]) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(config)
}

/// What an HTTPS request saw.
pub struct TlsResponse {
    pub response: Response,
    /// DER of the certificate the server presented.
    pub cert: Vec<u8>,
    /// The protocol agreed by ALPN, if any.
    pub alpn: Option<String>,
}

/// `GET path` over TLS and HTTP/1.1 on a fresh connection.
pub fn https_get(addr: SocketAddr, path: &str) -> std::io::Result<TlsResponse> {
    let config = tls_client_config(&["http/1.1"]);
    let name = ServerName::try_from("localhost").expect("server name");
    let mut conn = rustls::ClientConnection::new(config, name).map_err(std::io::Error::other)?;
    let mut sock = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock)?;
    }
    let cert = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .unwrap_or_default();
    let alpn = conn
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n"
    )?;
    tls.flush()?;
    let mut raw = Vec::new();
    match tls.read_to_end(&mut raw) {
        Ok(_) => {}
        // A server may close without close_notify after a complete response.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(e) => return Err(e),
    }
    Ok(TlsResponse {
        response: parse_response(&raw)?,
        cert,
        alpn,
    })
}

/// Parse a complete HTTP/1.1 response (content-length or read-to-close body).
pub fn parse_response(raw: &[u8]) -> std::io::Result<Response> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if let Some(len) = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        body.truncate(len);
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// What an h2 request saw.
pub struct H2Response {
    pub status: u16,
    pub body: Vec<u8>,
    pub headers: http::HeaderMap,
    pub alpn: Option<String>,
}

/// `GET path` over TLS with ALPN offering only h2, using the `h2` crate.
pub fn h2_get(addr: SocketAddr, path: &str) -> Result<H2Response, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let connector = tokio_rustls::TlsConnector::from(tls_client_config(&["h2"]));
        let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let alpn = tls
            .get_ref()
            .1
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        let (client, connection) = h2::client::handshake(tls)
            .await
            .map_err(|e| format!("h2 handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut client = client.ready().await.map_err(|e| e.to_string())?;
        let request = http::Request::builder()
            .method("GET")
            .uri(format!("https://localhost{path}"))
            .body(())
            .map_err(|e| e.to_string())?;
        let (response, _) = client
            .send_request(request, true)
            .map_err(|e| format!("send: {e}"))?;
        let response = response.await.map_err(|e| format!("response: {e}"))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let mut body = response.into_body();
        let mut bytes = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(|e| format!("body: {e}"))?;
            let _ = body.flow_control().release_capacity(chunk.len());
            bytes.extend_from_slice(&chunk);
        }
        Ok(H2Response {
            status,
            body: bytes,
            headers,
            alpn,
        })
    })
}

/// A WebSocket upstream that echoes every message back.
pub struct WsEcho {
    pub addr: SocketAddr,
}

impl WsEcho {
    pub fn start() -> WsEcho {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind ws upstream");
        let addr = listener.local_addr().expect("ws addr");
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                std::thread::spawn(move || {
                    let Ok(mut ws) = tungstenite::accept(stream) else {
                        return;
                    };
                    while let Ok(message) = ws.read() {
                        if message.is_close() {
                            break;
                        }
                        if (message.is_text() || message.is_binary()) && ws.send(message).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        WsEcho { addr }
    }
}

/// Open a WebSocket to `ws://addr/path`, send each of `messages` and return
/// the echoes.
pub fn ws_round_trip(
    addr: SocketAddr,
    path: &str,
    messages: &[&str],
) -> Result<Vec<String>, String> {
    let stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let (mut ws, response) = tungstenite::client(format!("ws://{addr}{path}"), stream)
        .map_err(|e| format!("websocket handshake: {e}"))?;
    if response.status() != 101 {
        return Err(format!("status {}", response.status()));
    }
    let mut echoes = Vec::new();
    for message in messages {
        ws.send(tungstenite::Message::text(*message))
            .map_err(|e| format!("send: {e}"))?;
        let echo = ws.read().map_err(|e| format!("read: {e}"))?;
        echoes.push(echo.into_text().map_err(|e| e.to_string())?.to_string());
    }
    let _ = ws.close(None);
    Ok(echoes)
}

/// One request over a Unix socket, `connection: close`.
pub fn unix_get(path: &Path, uri: &str) -> std::io::Result<Response> {
    let mut stream = std::os::unix::net::UnixStream::connect(path)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {uri} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw)
}

/// `riverctl reload`, which must succeed.
pub fn reload_ok(river: &crate::river::River) {
    let output = river.riverctl(&["reload"]);
    assert!(
        output.status.success(),
        "riverctl reload failed: {}{}\nlog:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        river.log()
    );
}

/// `riverctl reload`, which must fail; its stderr.
pub fn reload_fails(river: &crate::river::River) -> String {
    let output = river.riverctl(&["reload"]);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(
        output.status.code(),
        Some(1),
        "reload should fail: {stderr}"
    );
    stderr
}

/// What a TLS client offered in its ClientHello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub sni: Option<String>,
    pub alpn: Vec<String>,
}

/// A TLS "upstream" that records each ClientHello and hangs up: enough to
/// see what River's connector offers (SNI, ALPN).
pub struct TlsHelloRecorder {
    pub addr: SocketAddr,
    hellos: Arc<std::sync::Mutex<Vec<Hello>>>,
}

impl TlsHelloRecorder {
    pub fn start() -> TlsHelloRecorder {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind tls upstream");
        let addr = listener.local_addr().expect("addr");
        let hellos: Arc<std::sync::Mutex<Vec<Hello>>> = Arc::default();
        let record = hellos.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut acceptor = rustls::server::Acceptor::default();
                loop {
                    match acceptor.read_tls(&mut stream) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    match acceptor.accept() {
                        Ok(Some(accepted)) => {
                            let hello = accepted.client_hello();
                            record.lock().unwrap().push(Hello {
                                sni: hello.server_name().map(str::to_owned),
                                alpn: hello
                                    .alpn()
                                    .map(|protocols| {
                                        protocols
                                            .map(|p| String::from_utf8_lossy(p).into_owned())
                                            .collect()
                                    })
                                    .unwrap_or_default(),
                            });
                            break;
                        }
                        Ok(None) => {}
                        Err(_) => break,
                    }
                }
            }
        });
        TlsHelloRecorder { addr, hellos }
    }

    pub fn hellos(&self) -> Vec<Hello> {
        self.hellos.lock().unwrap().clone()
    }
}
