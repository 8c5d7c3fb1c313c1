//! TLS for the client API and peer RPCs, with etcd's flags (`--cert-file`, `--key-file`,
//! `--trusted-ca-file`, `--client-cert-auth`, `--peer-cert-file`, `--peer-key-file`,
//! `--peer-trusted-ca-file`).
//!
//! One port serves both the client API and peer RPCs, so one TLS listener serves both:
//! - **Which certificate the node shows.** A peer's client offers the ALPN protocol
//!   [`PEER_ALPN`]; such a connection gets the peer certificate, every other one the client-API
//!   certificate (or the peer certificate when the node has no other).
//! - **Which client certificates it takes.** A certificate chaining to the trusted CA (client
//!   API) or to the peer CA; required with `--client-cert-auth`, optional otherwise.
//! - **Who may call peer RPCs.** With peer TLS on, `POST /v1/raft/messages` and
//!   `POST /v1/raft/snapshot` need a connection whose certificate chains to the peer CA
//!   ([`ClientIdentity::Peer`]): no certificate is 401, any other certificate 403
//!   (see `http::api`).
//!
//! Production runs rustls (ring provider) over tokio-rustls. The simulator has no TLS: a
//! handshake needs the wall clock (certificate validity) and OS entropy, which would break
//! replaying a seed, so there [`ServerTls::load`] and [`ClientTls::load`] refuse; the
//! authentication that does not depend on TLS (tokens, the peer secret) still runs there.

use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::{FlushWhenWritten, TcpStream};

#[cfg(not(madsim))]
#[path = "tls_rustls.rs"]
mod backend;
#[cfg(not(madsim))]
pub use backend::{ClientTls, ServerTls};

#[cfg(madsim)]
#[path = "tls_none.rs"]
mod backend;
#[cfg(madsim)]
pub use backend::{ClientTls, ServerTls};

/// The ALPN protocol a node's peer client offers, so the listener shows its peer certificate.
pub const PEER_ALPN: &[u8] = b"raft-kv-peer";

/// Largest certificate or key file read (a chain of a few certificates is a few KiB).
pub const TLS_FILE_BYTES_MAX: usize = 1 << 20;

/// A node's certificate files (etcd's flags). All empty: plain HTTP.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// `--cert-file`: the certificate (chain) the client API shows.
    pub cert_file: Option<PathBuf>,
    /// `--key-file`: its private key.
    pub key_file: Option<PathBuf>,
    /// `--trusted-ca-file`: CA certificates that sign client certificates.
    pub trusted_ca_file: Option<PathBuf>,
    /// `--client-cert-auth`: a client must show a certificate signed by the trusted CA (or the
    /// peer CA).
    pub client_cert_auth: bool,
    /// `--peer-cert-file`: the certificate peers see, and the one this node shows them.
    pub peer_cert_file: Option<PathBuf>,
    /// `--peer-key-file`: its private key.
    pub peer_key_file: Option<PathBuf>,
    /// `--peer-trusted-ca-file`: the CA that signs every member's peer certificate.
    pub peer_trusted_ca_file: Option<PathBuf>,
}

impl TlsFiles {
    /// Whether the listener speaks TLS.
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some() || self.peer_cert_file.is_some()
    }

    /// Whether peers talk mutual TLS (and peer RPCs need a peer certificate).
    pub fn peer_enabled(&self) -> bool {
        self.peer_cert_file.is_some()
    }

    /// Checks that the flags make a whole configuration, with a message naming what is missing.
    pub fn validate(&self) -> Result<(), String> {
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err("--cert-file and --key-file go together".into());
        }
        let peer = [
            &self.peer_cert_file,
            &self.peer_key_file,
            &self.peer_trusted_ca_file,
        ];
        if peer.iter().any(|f| f.is_some()) && !peer.iter().all(|f| f.is_some()) {
            return Err(
                "peer TLS needs all of --peer-cert-file, --peer-key-file and --peer-trusted-ca-file"
                    .into(),
            );
        }
        if self.client_cert_auth && self.trusted_ca_file.is_none() {
            return Err("--client-cert-auth needs --trusted-ca-file".into());
        }
        if (self.trusted_ca_file.is_some() || self.client_cert_auth) && !self.enabled() {
            return Err("--trusted-ca-file and --client-cert-auth need --cert-file".into());
        }
        if self.cert_file.is_some() && !self.peer_enabled() {
            // One port: peers would have to speak TLS to it without certificates to show.
            return Err(
                "--cert-file needs peer TLS too (--peer-cert-file, --peer-key-file, \
                 --peer-trusted-ca-file): the client API and peer RPCs share one port"
                    .into(),
            );
        }
        Ok(())
    }
}

/// What the client of one accepted connection proved with its certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientIdentity {
    /// Plain HTTP, or TLS without a client certificate.
    Anonymous,
    /// A certificate that chains to the trusted (client) CA but not to the peer CA.
    Client,
    /// A certificate that chains to the peer CA: a member.
    Peer,
}

/// A stream that is plain TCP or TLS over it; `T` is the TLS stream type.
#[derive(Debug)]
pub enum MaybeTls<T> {
    /// Plain TCP (flushing only what was written, see [`FlushWhenWritten`]).
    Plain(FlushWhenWritten<TcpStream>),
    /// TLS.
    Tls(Box<T>),
}

impl<T> MaybeTls<T> {
    /// A plain stream.
    pub fn plain(stream: TcpStream) -> MaybeTls<T> {
        MaybeTls::Plain(super::hyper_io(stream).into_inner())
    }
}

/// An accepted connection.
pub type ServerStream = MaybeTls<backend::ServerTlsStream>;
/// An outgoing connection.
pub type ClientStream = MaybeTls<backend::ClientTlsStream>;

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for MaybeTls<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for MaybeTls<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer_files() -> TlsFiles {
        TlsFiles {
            peer_cert_file: Some("p.crt".into()),
            peer_key_file: Some("p.key".into()),
            peer_trusted_ca_file: Some("ca.crt".into()),
            ..TlsFiles::default()
        }
    }

    #[test]
    fn no_files_is_plain_http_and_valid() {
        let files = TlsFiles::default();
        assert!(!files.enabled());
        assert_eq!(files.validate(), Ok(()));
    }

    #[test]
    fn incomplete_configurations_are_refused_with_the_missing_flag() {
        let mut files = peer_files();
        files.peer_trusted_ca_file = None;
        assert!(files
            .validate()
            .unwrap_err()
            .contains("--peer-trusted-ca-file"));

        let mut files = peer_files();
        files.cert_file = Some("c.crt".into());
        assert!(files.validate().unwrap_err().contains("--key-file"));

        let mut files = peer_files();
        files.client_cert_auth = true;
        assert!(files.validate().unwrap_err().contains("--trusted-ca-file"));

        let files = TlsFiles {
            cert_file: Some("c.crt".into()),
            key_file: Some("c.key".into()),
            ..TlsFiles::default()
        };
        assert!(files.validate().unwrap_err().contains("share one port"));
    }

    #[test]
    fn peer_tls_alone_or_with_client_tls_is_valid() {
        assert_eq!(peer_files().validate(), Ok(()));
        let files = TlsFiles {
            cert_file: Some("c.crt".into()),
            key_file: Some("c.key".into()),
            trusted_ca_file: Some("client-ca.crt".into()),
            client_cert_auth: true,
            ..peer_files()
        };
        assert_eq!(files.validate(), Ok(()));
    }
}
