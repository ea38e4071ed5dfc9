//! TLS for both ends (rustls with the ring provider).
//!
//! - Client: [`ClientTls`] says which certificate authorities an [`crate::HttpClient`]
//!   trusts for `https://` endpoints (HTTP calls and `wss://` subscriptions): the
//!   operating system's store (read once per process) and any CA the app supplies as
//!   PEM. A certificate that chains to neither fails the call with
//!   [`TransportError::Tls`], which is not retried.
//! - Server: [`ServerTls`] (a certificate chain and its key, PEM) on
//!   [`crate::ServerConfig::tls`] makes the node speak TLS only. A client that speaks
//!   plain HTTP to it gets one plain 400 reply that says to use `https://`, so the
//!   mistake reads as what it is instead of a closed connection.
//!
//! Limits: a TLS handshake must finish within the node's `header_read_time_ms_max`
//! (client side: within `connect_time_ms_max`); PEM inputs are local files, read by the
//! operator, and at most [`PEM_BYTES_MAX`] each.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::error::TransportError;
use crate::proto::{ErrorCode, ErrorReply};

/// Largest PEM input (a certificate chain, a key, a CA bundle) accepted.
pub const PEM_BYTES_MAX: usize = 1 << 20;

/// The first byte of a TLS record carrying a handshake (a ClientHello starts with it).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
/// The message of the `BadRequest` error frame a TLS-only node answers a plain HTTP
/// request with; a client that gets it over `http://` reports
/// [`TransportError::Tls`] (the node is there, the scheme
/// is wrong), not a refused request.
pub const TLS_ONLY_MESSAGE: &str = "this node speaks TLS only: use an https:// endpoint";

/// A TLS setting could not be used (unreadable PEM, no certificate, a key that does not
/// match).
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[error("tls: {0}")]
pub struct TlsError(String);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    if pem.len() > PEM_BYTES_MAX {
        return Err(TlsError(format!(
            "{what} is {} bytes, more than {PEM_BYTES_MAX}",
            pem.len()
        )));
    }
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError(format!("{what} is not readable PEM: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError(format!("{what} holds no certificate")));
    }
    Ok(certs)
}

/// Which certificate authorities a client trusts for `https://` and `wss://`
/// endpoints.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ClientTls {
    /// Trust the operating system's certificate store. Default true.
    pub system_roots: bool,
    /// More trusted authorities, PEM (one or more certificates), for a node whose
    /// certificate a private CA issued. Default none.
    pub ca_pem: Option<Vec<u8>>,
}

impl Default for ClientTls {
    fn default() -> Self {
        Self {
            system_roots: true,
            ca_pem: None,
        }
    }
}

impl ClientTls {
    /// Trusts only the authorities in `ca_pem` (not the system store).
    pub fn with_ca_only(ca_pem: impl Into<Vec<u8>>) -> Self {
        Self {
            system_roots: false,
            ca_pem: Some(ca_pem.into()),
        }
    }

    /// The rustls configuration; `https` says whether roots are needed at all (a plain
    /// `http://` client gets an empty store and never loads the system's).
    pub(crate) fn rustls_config(
        &self,
        https: bool,
    ) -> Result<Arc<rustls::ClientConfig>, TransportError> {
        let mut roots = RootCertStore::empty();
        if https {
            if self.system_roots {
                for cert in system_roots() {
                    // A certificate of the system store rustls cannot use is skipped.
                    let _ = roots.add(cert.clone());
                }
            }
            if let Some(pem) = &self.ca_pem {
                for cert in certificates(pem, "the CA file").map_err(tls_setting)? {
                    roots
                        .add(cert)
                        .map_err(|e| tls_setting(format!("the CA file: {e}")))?;
                }
            }
            if roots.is_empty() {
                return Err(tls_setting(
                    "no trusted certificate authority: the system store is empty and no CA \
                     was given",
                ));
            }
        }
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(tls_setting)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }
}

fn tls_setting(e: impl std::fmt::Display) -> TransportError {
    TransportError::Endpoint(format!("tls: {e}"))
}

fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| rustls_native_certs::load_native_certs().certs)
}

/// A node's certificate chain and private key.
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

impl ServerTls {
    /// From PEM: `cert_chain_pem` holds the node's certificate first, then any
    /// intermediates; `key_pem` its private key (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem(cert_chain_pem: &[u8], key_pem: &[u8]) -> Result<Self, TlsError> {
        let chain = certificates(cert_chain_pem, "the certificate file")?;
        if key_pem.len() > PEM_BYTES_MAX {
            return Err(TlsError(format!(
                "the key file is {} bytes, more than {PEM_BYTES_MAX}",
                key_pem.len()
            )));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| TlsError(format!("the key file holds no usable private key: {e}")))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| TlsError(format!("the certificate and key do not fit: {e}")))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            config: Arc::new(config),
        })
    }

    /// Accepts a TLS connection on `tcp` within `limit`. A peer that speaks plain HTTP
    /// is answered with a 400 that says to use TLS; `None` then, and on a failed
    /// handshake.
    pub(crate) async fn accept(
        &self,
        tcp: TcpStream,
        limit: Duration,
    ) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
        let mut first = [0u8; 1];
        if !matches!(tcp.peek(&mut first).await, Ok(1)) {
            return None;
        }
        if first[0] != TLS_HANDSHAKE_RECORD {
            let reply = ErrorReply::new(ErrorCode::BadRequest, TLS_ONLY_MESSAGE);
            crate::limits::write_refusal(tcp, "400 Bad Request", &reply).await;
            return None;
        }
        let acceptor = tokio_rustls::TlsAcceptor::from(self.config.clone());
        match tokio::time::timeout(limit, acceptor.accept(tcp)).await {
            Ok(Ok(stream)) => Some(stream),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "tls handshake failed");
                None
            }
            Err(_) => None,
        }
    }
}

/// A client's connection for a subscription: plain TCP or TLS over it.
pub(crate) enum ClientStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Connects to `authority` (host:port), with TLS when `tls` is set, within `limit`.
pub(crate) async fn connect(
    authority: &str,
    tls: Option<&Arc<rustls::ClientConfig>>,
    limit: Duration,
) -> Result<ClientStream, TransportError> {
    let limit_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
    tokio::time::timeout(limit, async {
        let tcp = TcpStream::connect(authority)
            .await
            .map_err(|e| TransportError::Unreachable(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let Some(config) = tls else {
            return Ok(ClientStream::Plain(tcp));
        };
        let host = authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host)
            .trim_start_matches('[')
            .trim_end_matches(']');
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| TransportError::Endpoint(format!("{host}: {e}")))?;
        let stream = tokio_rustls::TlsConnector::from(config.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| classify_io(&e))?;
        Ok(ClientStream::Tls(Box::new(stream)))
    })
    .await
    .unwrap_or(Err(TransportError::timeout(limit_ms)))
}

/// Turns a connection error into a [`TransportError`]: a TLS failure anywhere in its
/// chain becomes [`TransportError::Tls`] (permanent: a certificate does not become
/// trusted by retrying), anything else [`TransportError::Unreachable`] with the whole
/// chain of causes.
pub(crate) fn classify(e: &(dyn std::error::Error + 'static)) -> TransportError {
    let mut chain = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(tls) = tls_cause(err) {
            return TransportError::Tls(describe(tls));
        }
        chain.push(err.to_string());
        cur = err.source();
    }
    chain.dedup();
    TransportError::Unreachable(chain.join(": "))
}

fn classify_io(e: &io::Error) -> TransportError {
    classify(e)
}

fn tls_cause<'a>(mut err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    // `io::Error::source` skips the error it wraps (which may be another `io::Error`);
    // look inside, level by level.
    for _ in 0..8 {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        err = err.downcast_ref::<io::Error>()?.get_ref()?;
    }
    None
}

fn describe(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InvalidCertificate(why) => {
            format!("the node's certificate is not trusted ({why:?}); give the CA that issued it")
        }
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            format!("the node did not answer in TLS ({e}); is it serving plain http://?")
        }
        other => other.to_string(),
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
