//! The production TLS backend: rustls with the ring provider over tokio-rustls.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;

use super::{ClientIdentity, ClientStream, MaybeTls, ServerStream, TlsFiles, PEER_ALPN};
use super::{TcpStream, TLS_FILE_BYTES_MAX};

/// An accepted TLS stream.
pub type ServerTlsStream = tokio_rustls::server::TlsStream<TcpStream>;
/// An outgoing TLS stream.
pub type ClientTlsStream = tokio_rustls::client::TlsStream<TcpStream>;

/// The ALPN protocol of the client API.
const HTTP1_ALPN: &[u8] = b"http/1.1";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

async fn read_pem(path: &Path) -> Result<Vec<u8>, String> {
    let bytes = crate::env::fs::read(path)
        .await
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() > TLS_FILE_BYTES_MAX {
        return Err(format!(
            "{} is over {TLS_FILE_BYTES_MAX} bytes; not a certificate or key file",
            path.display()
        ));
    }
    Ok(bytes)
}

async fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_pem(path).await?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: bad PEM certificate: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
            path.display()
        ));
    }
    Ok(certs)
}

async fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = read_pem(path).await?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| format!("{}: no usable PEM private key: {e}", path.display()))
}

async fn load_roots(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path).await? {
        roots
            .add(cert)
            .map_err(|e| format!("{}: not a CA certificate: {e}", path.display()))?;
    }
    Ok(roots)
}

/// A certificate chain and its key, checked to belong together.
async fn load_identity(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, String> {
    let chain = load_certs(cert).await?;
    let key_der = load_key(key).await?;
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&key_der)
        .map_err(|e| format!("{}: unsupported private key: {e}", key.display()))?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified
        .keys_match()
        .map_err(|e| format!("{} and {} do not match: {e}", cert.display(), key.display()))?;
    Ok(Arc::new(certified))
}

/// Shows the peer certificate to peers (who offer [`PEER_ALPN`]), the client-API one to the
/// rest; either when the node has only one.
#[derive(Debug)]
struct CertResolver {
    client: Option<Arc<CertifiedKey>>,
    peer: Option<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let peer = hello
            .alpn()
            .is_some_and(|mut offered| offered.any(|p| p == PEER_ALPN));
        if peer {
            self.peer.clone().or_else(|| self.client.clone())
        } else {
            self.client.clone().or_else(|| self.peer.clone())
        }
    }
}

/// One loaded server configuration.
struct ServerState {
    acceptor: tokio_rustls::TlsAcceptor,
    /// Verifies a client chain against the peer CA alone.
    peer_verifier: Option<Arc<dyn ClientCertVerifier>>,
}

async fn load_server(files: &TlsFiles) -> Result<ServerState, String> {
    files.validate()?;
    let client = match (&files.cert_file, &files.key_file) {
        (Some(cert), Some(key)) => Some(load_identity(cert, key).await?),
        _ => None,
    };
    let peer = match (&files.peer_cert_file, &files.peer_key_file) {
        (Some(cert), Some(key)) => Some(load_identity(cert, key).await?),
        _ => None,
    };
    let mut all_roots = RootCertStore::empty();
    if let Some(path) = &files.trusted_ca_file {
        all_roots.roots.extend(load_roots(path).await?.roots);
    }
    let mut peer_verifier = None;
    if let Some(path) = &files.peer_trusted_ca_file {
        let peer_roots = load_roots(path).await?;
        all_roots.roots.extend(peer_roots.roots.iter().cloned());
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(peer_roots), provider())
                .build()
                .map_err(|e| format!("{}: {e}", path.display()))?;
        peer_verifier = Some(verifier);
    }
    let verifier = if all_roots.is_empty() {
        WebPkiClientVerifier::no_client_auth()
    } else {
        let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(all_roots), provider());
        let builder = if files.client_cert_auth {
            builder
        } else {
            builder.allow_unauthenticated()
        };
        builder
            .build()
            .map_err(|e| format!("trusted CA files: {e}"))?
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(CertResolver { client, peer }));
    config.alpn_protocols = vec![HTTP1_ALPN.to_vec(), PEER_ALPN.to_vec()];
    Ok(ServerState {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        peer_verifier,
    })
}

/// The listener's TLS: the files it came from and the configuration in force.
pub struct ServerTls {
    files: TlsFiles,
    current: Mutex<Arc<ServerState>>,
}

impl ServerTls {
    /// Loads the files; `None` when they configure no TLS (plain HTTP).
    pub async fn load(files: &TlsFiles) -> Result<Option<ServerTls>, String> {
        if !files.enabled() {
            files.validate()?;
            return Ok(None);
        }
        let state = load_server(files).await?;
        Ok(Some(ServerTls {
            files: files.clone(),
            current: Mutex::new(Arc::new(state)),
        }))
    }

    /// Re-reads the files; on any error the configuration in force stays. New connections use
    /// the new one; open ones keep theirs.
    pub async fn reload(&self) -> Result<(), String> {
        let state = load_server(&self.files).await?;
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Arc::new(state);
        Ok(())
    }

    /// Runs the TLS handshake on an accepted connection and tells what its certificate proves.
    pub async fn accept(
        &self,
        stream: TcpStream,
    ) -> std::io::Result<(ServerStream, ClientIdentity)> {
        let state = self
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let tls = state.acceptor.accept(stream).await?;
        let identity = match tls.get_ref().1.peer_certificates() {
            None | Some([]) => ClientIdentity::Anonymous,
            Some([end_entity, intermediates @ ..]) => match &state.peer_verifier {
                Some(peer) => {
                    if peer
                        .verify_client_cert(end_entity, intermediates, UnixTime::now())
                        .is_ok()
                    {
                        ClientIdentity::Peer
                    } else {
                        ClientIdentity::Client
                    }
                }
                None => ClientIdentity::Client,
            },
        };
        Ok((MaybeTls::Tls(Box::new(tls)), identity))
    }
}

/// Where a client's configuration comes from.
#[derive(Clone, Debug)]
struct ClientFiles {
    ca: PathBuf,
    identity: Option<(PathBuf, PathBuf)>,
    peer: bool,
}

async fn load_client(files: &ClientFiles) -> Result<tokio_rustls::TlsConnector, String> {
    let roots = load_roots(&files.ca).await?;
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| format!("{}: {e}", files.ca.display()))?;
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_webpki_verifier(verifier);
    let mut config = match &files.identity {
        Some((cert, key)) => {
            // Checks that the pair belongs together, as the server side does.
            let identity = load_identity(cert, key).await?;
            let key_der = load_key(key).await?;
            builder
                .with_client_auth_cert(identity.cert.clone(), key_der)
                .map_err(|e| format!("{}: {e}", cert.display()))?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = if files.peer {
        vec![PEER_ALPN.to_vec()]
    } else {
        vec![HTTP1_ALPN.to_vec()]
    };
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// A client's TLS: verifies servers against a CA, shows a certificate when it has one.
pub struct ClientTls {
    files: ClientFiles,
    current: Mutex<tokio_rustls::TlsConnector>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// A client trusting servers signed by `ca`, showing `identity` (certificate, key) if given
    /// (etcdctl's `--cacert`, `--cert`, `--key`).
    pub async fn load(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<ClientTls, String> {
        let files = ClientFiles {
            ca: ca.to_path_buf(),
            identity: identity.map(|(c, k)| (c.to_path_buf(), k.to_path_buf())),
            peer: false,
        };
        ClientTls::from_files(files).await
    }

    /// The client a node calls its peers with: the peer CA and the peer certificate; `None`
    /// without peer TLS.
    pub async fn for_peers(files: &TlsFiles) -> Result<Option<ClientTls>, String> {
        let (Some(ca), Some(cert), Some(key)) = (
            &files.peer_trusted_ca_file,
            &files.peer_cert_file,
            &files.peer_key_file,
        ) else {
            return Ok(None);
        };
        let files = ClientFiles {
            ca: ca.clone(),
            identity: Some((cert.clone(), key.clone())),
            peer: true,
        };
        ClientTls::from_files(files).await.map(Some)
    }

    async fn from_files(files: ClientFiles) -> Result<ClientTls, String> {
        let connector = load_client(&files).await?;
        Ok(ClientTls {
            files,
            current: Mutex::new(connector),
        })
    }

    /// Re-reads the files; on any error the configuration in force stays.
    pub async fn reload(&self) -> Result<(), String> {
        let connector = load_client(&self.files).await?;
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = connector;
        Ok(())
    }

    /// Runs the TLS handshake to `addr` (`host:port`; the host is the name checked against the
    /// server's certificate, an IP address against its IP SANs).
    pub async fn connect(&self, addr: &str, stream: TcpStream) -> std::io::Result<ClientStream> {
        let host = addr
            .rsplit_once(':')
            .map_or(addr, |(host, _)| host)
            .trim_matches(['[', ']']);
        let name = ServerName::try_from(host.to_string()).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{host:?} is not a server name: {e}"),
            )
        })?;
        let connector = self
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let tls = connector.connect(name, stream).await?;
        Ok(MaybeTls::Tls(Box::new(tls)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devcerts::{Authority, Usage};

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        #[allow(clippy::disallowed_methods)] // test setup, outside the node
        std::fs::write(&path, text).expect("write a test file");
        path
    }

    /// Peer-TLS files from fresh certificates, with `mutate` applied to the file texts
    /// (certificate, key, CA) before they are written.
    fn peer_files(dir: &Path, mutate: impl FnOnce(&mut [String; 3])) -> TlsFiles {
        let ca = Authority::new("unit CA").unwrap();
        let issued = ca
            .issue("n", &["127.0.0.1"], Usage::ServerAndClient)
            .unwrap();
        let mut texts = [issued.cert_pem, issued.key_pem, ca.cert_pem().to_string()];
        mutate(&mut texts);
        TlsFiles {
            peer_cert_file: Some(write(dir, "peer.crt", &texts[0])),
            peer_key_file: Some(write(dir, "peer.key", &texts[1])),
            peer_trusted_ca_file: Some(write(dir, "ca.crt", &texts[2])),
            ..TlsFiles::default()
        }
    }

    async fn load_error(files: &TlsFiles) -> String {
        match ServerTls::load(files).await {
            Ok(_) => panic!("{files:?} loaded"),
            Err(error) => error,
        }
    }

    #[tokio::test]
    async fn good_files_load_for_the_listener_and_the_peer_client() {
        let dir = tempfile::tempdir().unwrap();
        let files = peer_files(dir.path(), |_| {});
        assert!(ServerTls::load(&files).await.unwrap().is_some());
        assert!(ClientTls::for_peers(&files).await.unwrap().is_some());
        assert!(ServerTls::load(&TlsFiles::default())
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn a_key_of_another_certificate_is_refused_naming_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let other = Authority::new("other")
            .unwrap()
            .issue("x", &[], Usage::Client)
            .unwrap();
        let files = peer_files(dir.path(), |texts| texts[1] = other.key_pem.clone());
        let error = load_error(&files).await;
        assert!(
            error.contains("peer.crt") && error.contains("peer.key") && error.contains("match"),
            "{error}"
        );
        assert!(ClientTls::for_peers(&files).await.is_err());
    }

    #[tokio::test]
    async fn files_that_are_not_pem_are_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let files = peer_files(dir.path(), |texts| texts[0] = "not a certificate".into());
        let error = load_error(&files).await;
        assert!(
            error.contains("peer.crt") && error.contains("no PEM certificate"),
            "{error}"
        );
        let files = peer_files(dir.path(), |texts| texts[1] = "not a key".into());
        let error = load_error(&files).await;
        assert!(error.contains("peer.key"), "{error}");
        let files = peer_files(dir.path(), |texts| texts[2] = String::new());
        let error = load_error(&files).await;
        assert!(error.contains("ca.crt"), "{error}");
        let missing = TlsFiles {
            peer_cert_file: Some(dir.path().join("absent.crt")),
            ..peer_files(dir.path(), |_| {})
        };
        let error = load_error(&missing).await;
        assert!(
            error.contains("cannot read") && error.contains("absent.crt"),
            "{error}"
        );
    }
}
