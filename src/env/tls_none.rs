//! The simulator's TLS: none. A handshake reads the wall clock (certificate validity) and OS
//! entropy, which would break replaying a seed, so a simulated node refuses certificate files.

use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::{ClientIdentity, ClientStream, ServerStream, TcpStream, TlsFiles};

const NO_TLS: &str = "TLS is not available in the simulator (see src/env/tls.rs)";

/// A TLS stream cannot exist in the simulator.
#[derive(Debug)]
pub enum NoTlsStream {}

/// An accepted TLS stream (none in the simulator).
pub type ServerTlsStream = NoTlsStream;
/// An outgoing TLS stream (none in the simulator).
pub type ClientTlsStream = NoTlsStream;

impl tokio::io::AsyncRead for NoTlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        _buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match *self {}
    }
}

impl tokio::io::AsyncWrite for NoTlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        _buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match *self {}
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match *self {}
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match *self {}
    }
}

/// The listener's TLS: never loaded in the simulator.
pub enum ServerTls {}

impl ServerTls {
    /// `None` without files; an error with them.
    pub async fn load(files: &TlsFiles) -> Result<Option<ServerTls>, String> {
        files.validate()?;
        if files.enabled() {
            return Err(NO_TLS.into());
        }
        Ok(None)
    }

    /// Unreachable: no value exists.
    pub async fn reload(&self) -> Result<(), String> {
        match *self {}
    }

    /// Unreachable: no value exists.
    pub async fn accept(
        &self,
        _stream: TcpStream,
    ) -> std::io::Result<(ServerStream, ClientIdentity)> {
        match *self {}
    }
}

/// A client's TLS: never loaded in the simulator.
#[derive(Debug)]
pub enum ClientTls {}

impl ClientTls {
    /// Always an error.
    pub async fn load(_ca: &Path, _identity: Option<(&Path, &Path)>) -> Result<ClientTls, String> {
        Err(NO_TLS.into())
    }

    /// `None` without peer TLS; an error with it.
    pub async fn for_peers(files: &TlsFiles) -> Result<Option<ClientTls>, String> {
        if files.peer_enabled() {
            return Err(NO_TLS.into());
        }
        Ok(None)
    }

    /// Unreachable: no value exists.
    pub async fn reload(&self) -> Result<(), String> {
        match *self {}
    }

    /// Unreachable: no value exists.
    pub async fn connect(&self, _addr: &str, _stream: TcpStream) -> std::io::Result<ClientStream> {
        match *self {}
    }
}
