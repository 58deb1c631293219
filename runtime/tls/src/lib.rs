//! A cluster's credentials and the TLS sessions that use them.
//!
//! One certificate authority per cluster signs one certificate per role: the broker's, and the
//! workers', clients' and admins' (each shared by every peer of that role). A certificate's
//! role is the one name it is valid for, `<role>.maelstrom.invalid` (a name no real host can
//! have): the broker proves to its peers that it is the broker, and each peer proves its role
//! to the broker, which lets it act only as that role. TLS 1.3 only, mutual, through rustls
//! with the ring provider.
//!
//! A [`Session`] is driven over bytes its caller moves (`receive` what was read, `send` what is
//! to be written), so an io_uring loop carries it with its own reads and writes.
//!
//! A credential is a directory holding `ca.pem` (the cluster's CA certificate), `cert.pem` and
//! `key.pem`; [`generate::cluster`] (feature `generate`) makes them.

use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ClientConnection, Connection, RootCertStore, ServerConfig, ServerConnection};

#[cfg(any(test, feature = "generate"))]
pub mod generate;

pub use rustls;

/// What a peer may do in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Broker,
    Worker,
    Client,
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Broker, Role::Worker, Role::Client, Role::Admin];

    /// Its directory in a cluster's credentials, and its name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Role::Broker => "broker",
            Role::Worker => "worker",
            Role::Client => "client",
            Role::Admin => "admin",
        }
    }

    /// The one name its certificates are valid for.
    pub fn host(self) -> &'static str {
        match self {
            Role::Broker => "broker.maelstrom.invalid",
            Role::Worker => "worker.maelstrom.invalid",
            Role::Client => "client.maelstrom.invalid",
            Role::Admin => "admin.maelstrom.invalid",
        }
    }

    fn server_name(self) -> ServerName<'static> {
        ServerName::try_from(self.host()).expect("INVARIANT: the role names are valid DNS names")
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why credentials could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: {what}", path.display())]
    Bad { path: PathBuf, what: String },
    #[error("{}: {what}", dir.display())]
    Tls { dir: PathBuf, what: String },
}

/// One peer's credentials: the cluster's CA, its certificate and its key.
pub struct Credentials {
    role: Role,
    dir: PathBuf,
    ca: Vec<CertificateDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("role", &self.role)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, CredentialsError> {
    let read =
        std::fs::read(path).map_err(|source| CredentialsError::Read { path: path.to_owned(), source })?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&read).collect::<Result<_, _>>().map_err(|e| {
        CredentialsError::Bad { path: path.to_owned(), what: format!("not PEM certificates: {e}") }
    })?;
    if certs.is_empty() {
        return Err(CredentialsError::Bad { path: path.to_owned(), what: "holds no certificate".into() });
    }
    Ok(certs)
}

/// The role a certificate is for, if any: the role whose name it is valid for.
pub fn role_of(certificate: &CertificateDer<'_>) -> Option<Role> {
    let cert = webpki::EndEntityCert::try_from(certificate).ok()?;
    Role::ALL.into_iter().find(|role| cert.verify_is_valid_for_subject_name(&role.server_name()).is_ok())
}

#[expect(
    deprecated,
    reason = "ring: lean to build; it lacks only post-quantum key exchange, which aws-lc-rs brings at a far heavier build"
)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::ring::kx_group;
    let mut provider = rustls::crypto::ring::default_provider();
    // X25519 first: ring's default order now leads with P-384, whose key exchange (ring has no
    // assembly for it) took 70 % of the broker's CPU for each handshake, about 1.3 ms.
    provider.kx_groups = vec![kx_group::X25519, kx_group::SECP256R1];
    // AES-128-GCM first (TLS 1.3's mandatory suite): four fewer rounds per block than
    // AES-256's, on every record of every message.
    provider
        .cipher_suites
        .sort_by_key(|suite| suite.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(provider)
}

impl Credentials {
    /// Loads `dir/ca.pem`, `dir/cert.pem` and `dir/key.pem`, which must be `role`'s.
    pub fn load(dir: &Path, role: Role) -> Result<Self, CredentialsError> {
        let ca = certificates(&dir.join("ca.pem"))?;
        let cert_path = dir.join("cert.pem");
        let chain = certificates(&cert_path)?;
        match role_of(&chain[0]) {
            Some(found) if found == role => {}
            Some(found) => {
                return Err(CredentialsError::Bad {
                    path: cert_path,
                    what: format!(
                        "is the {found} role's certificate, not the {role} role's (use the {role} directory)"
                    ),
                });
            }
            None => {
                return Err(CredentialsError::Bad {
                    path: cert_path,
                    what: "is not a maelstrom cluster certificate (make them with `maelstrom-admin credentials`)"
                        .into(),
                });
            }
        }
        let key_path = dir.join("key.pem");
        let read = std::fs::read(&key_path)
            .map_err(|source| CredentialsError::Read { path: key_path.clone(), source })?;
        let key = PrivateKeyDer::from_pem_slice(&read).map_err(|e| CredentialsError::Bad {
            path: key_path,
            what: format!("not a PEM private key: {e}"),
        })?;
        Ok(Self { role, dir: dir.to_owned(), ca, chain, key })
    }

    pub fn role(&self) -> Role {
        self.role
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, CredentialsError> {
        let mut roots = RootCertStore::empty();
        for ca in &self.ca {
            roots.add(ca.clone()).map_err(|e| self.tls(format!("ca.pem: {e}")))?;
        }
        Ok(Arc::new(roots))
    }

    fn tls(&self, what: String) -> CredentialsError {
        CredentialsError::Tls { dir: self.dir.clone(), what }
    }

    /// The broker's side: peers must present a certificate from the cluster's CA.
    pub fn server(&self) -> Result<Arc<ServerConfig>, CredentialsError> {
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots()?, provider())
            .build()
            .map_err(|e| self.tls(e.to_string()))?;
        let config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| self.tls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| self.tls(format!("cert.pem and key.pem: {e}")))?;
        // No resumption: every connection shows, and has checked, a certificate valid now.
        let mut config = config;
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(Arc::new(config))
    }

    /// A peer's side: the broker must present the cluster's broker certificate.
    pub fn client(&self) -> Result<Arc<ClientConfig>, CredentialsError> {
        let config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| self.tls(e.to_string()))?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| self.tls(format!("cert.pem and key.pem: {e}")))?;
        let mut config = config;
        config.resumption = rustls::client::Resumption::disabled();
        Ok(Arc::new(config))
    }
}

/// A peer's TLS configuration from its credentials in `dir`, which must be `role`'s.
pub fn peer_config(dir: &Path, role: Role) -> Result<Arc<ClientConfig>, CredentialsError> {
    Credentials::load(dir, role)?.client()
}

/// Why a session ended: during its handshake (a certificate refused, garbage) or after.
#[derive(Debug, thiserror::Error)]
#[error("{}: {error}", if *.handshaking { "TLS handshake" } else { "TLS" })]
pub struct SessionError {
    pub handshaking: bool,
    pub error: rustls::Error,
}

/// A TLS session over bytes the caller moves.
#[derive(Debug)]
pub struct Session {
    conn: Connection,
}

impl Session {
    /// The broker's end of a new connection.
    pub fn server(config: &Arc<ServerConfig>) -> Result<Self, rustls::Error> {
        let mut conn = ServerConnection::new(Arc::clone(config))?;
        conn.set_buffer_limit(None);
        Ok(Self { conn: conn.into() })
    }

    /// A peer's end of a new connection to the broker.
    pub fn client(config: &Arc<ClientConfig>) -> Result<Self, rustls::Error> {
        let mut conn = ClientConnection::new(Arc::clone(config), Role::Broker.server_name())?;
        conn.set_buffer_limit(None);
        Ok(Self { conn: conn.into() })
    }

    /// Takes bytes read from the peer; appends the plaintext they carried to `plaintext`. An
    /// error (a bad record, a failed handshake, a certificate refused) ends the session.
    pub fn receive(&mut self, ciphertext: &[u8], plaintext: &mut Vec<u8>) -> Result<(), SessionError> {
        self.decrypt(ciphertext, plaintext)
            .map_err(|error| SessionError { handshaking: self.conn.is_handshaking(), error })
    }

    fn decrypt(&mut self, mut ciphertext: &[u8], plaintext: &mut Vec<u8>) -> Result<(), rustls::Error> {
        while !ciphertext.is_empty() {
            self.conn.read_tls(&mut ciphertext).map_err(|e| rustls::Error::General(e.to_string()))?;
            let state = self.conn.process_new_packets()?;
            let ready = state.plaintext_bytes_to_read();
            if ready > 0 {
                let start = plaintext.len();
                plaintext.resize(start + ready, 0);
                self.conn
                    .reader()
                    .read_exact(&mut plaintext[start..])
                    .map_err(|e| rustls::Error::General(e.to_string()))?;
            }
            if state.peer_has_closed() {
                break;
            }
        }
        Ok(())
    }

    /// Encrypts `plaintext` (held until the handshake is done), and appends what is to be
    /// written to the peer to `out`. Fails only once the session has failed; what it still has
    /// to say (an alert) is in `out` all the same.
    pub fn send(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
        // With no buffer limit, writing plaintext only queues it.
        let written = self.conn.writer().write_all(plaintext);
        self.pending(out);
        written
    }

    /// Appends what the session has to write to the peer (handshake messages, alerts, records)
    /// to `out`.
    pub fn pending(&mut self, out: &mut Vec<u8>) {
        while self.conn.wants_write() {
            if self.conn.write_tls(out).is_err() {
                break;
            }
        }
    }

    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// The role of the certificate the peer presented, once the handshake is done.
    pub fn peer_role(&self) -> Option<Role> {
        self.conn.peer_certificates().and_then(|certs| certs.first()).and_then(role_of)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::{Validity, cluster, issue};

    /// Runs a handshake between two sessions in memory, then sends `message` from the client.
    fn talk(server: &mut Session, client: &mut Session, message: &[u8]) -> Result<Vec<u8>, SessionError> {
        let (mut to_server, mut to_client, mut got, mut ignored) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        client.send(message, &mut to_server).unwrap();
        for _ in 0..10 {
            server.receive(&std::mem::take(&mut to_server), &mut got)?;
            server.pending(&mut to_client);
            client.receive(&std::mem::take(&mut to_client), &mut ignored)?;
            client.pending(&mut to_server);
            if !got.is_empty() {
                break;
            }
        }
        Ok(got)
    }

    /// Runs a handshake until one side fails; the errors each side saw (`Ok` if none).
    fn talk_both(
        server: &mut Session,
        client: &mut Session,
    ) -> (Result<(), SessionError>, Result<(), SessionError>) {
        let (mut to_server, mut to_client, mut ignored) = (Vec::new(), Vec::new(), Vec::new());
        let (mut server_result, mut client_result) = (Ok(()), Ok(()));
        let _ = client.send(b"hello", &mut to_server);
        for _ in 0..10 {
            if server_result.is_ok() {
                server_result = server.receive(&std::mem::take(&mut to_server), &mut ignored);
                server.pending(&mut to_client);
            }
            if client_result.is_ok() {
                client_result = client.receive(&std::mem::take(&mut to_client), &mut ignored);
                client.pending(&mut to_server);
            }
        }
        (server_result, client_result)
    }

    fn setup(dir: &Path) -> (Arc<ServerConfig>, impl Fn(&Path, Role) -> Session) {
        let broker = Credentials::load(&dir.join("broker"), Role::Broker).unwrap().server().unwrap();
        (broker, |dir: &Path, role| {
            Session::client(&Credentials::load(dir, role).unwrap().client().unwrap()).unwrap()
        })
    }

    #[test]
    fn peers_prove_their_roles_and_strangers_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        cluster(dir.path(), Validity::days(30)).unwrap();
        let (broker, peer) = setup(dir.path());
        for role in [Role::Worker, Role::Client, Role::Admin] {
            let mut server = Session::server(&broker).unwrap();
            let mut client = peer(&dir.path().join(role.name()), role);
            assert_eq!(talk(&mut server, &mut client, b"hello").unwrap(), b"hello");
            assert_eq!(server.peer_role(), Some(role));
            // The cheap key exchange, not ring's default first choice (P-384, ten times dearer).
            let group = server.conn.negotiated_key_exchange_group().map(|g| g.name());
            assert_eq!(group, Some(rustls::NamedGroup::X25519));
            let suite = server.conn.negotiated_cipher_suite().map(|s| s.suite());
            assert_eq!(suite, Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256));
        }

        // A credential loaded as another role's is refused with the reason.
        let error = Credentials::load(&dir.path().join("worker"), Role::Client).unwrap_err().to_string();
        assert!(error.contains("is the worker role's certificate, not the client role's"), "{error}");

        // Another cluster's client (which trusts this broker), and this cluster's client whose
        // certificate expired: the broker refuses them.
        let other = tempfile::tempdir().unwrap();
        cluster(other.path(), Validity::days(30)).unwrap();
        let foreign = dir.path().join("foreign");
        std::fs::create_dir(&foreign).unwrap();
        std::fs::copy(dir.path().join("client/ca.pem"), foreign.join("ca.pem")).unwrap();
        for file in ["cert.pem", "key.pem"] {
            std::fs::copy(other.path().join("client").join(file), foreign.join(file)).unwrap();
        }
        let expired = dir.path().join("expired");
        issue(&dir.path().join("ca"), Role::Client, &expired, Validity { from: 1_000_000_000, days: 1 })
            .unwrap();
        for (credential, why) in [(foreign, "UnknownIssuer"), (expired, "Expired")] {
            let mut server = Session::server(&broker).unwrap();
            let mut client = peer(&credential, Role::Client);
            let (server_error, _) = talk_both(&mut server, &mut client);
            assert!(format!("{server_error:?}").contains(why), "{server_error:?}");
        }

        // A client with no certificate at all, and the broker's certificate used as a client's.
        let roots = Credentials::load(&dir.path().join("client"), Role::Client).unwrap().roots().unwrap();
        let anonymous = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut server = Session::server(&broker).unwrap();
        let mut client = Session::client(&Arc::new(anonymous)).unwrap();
        let (server_error, _) = talk_both(&mut server, &mut client);
        assert!(format!("{server_error:?}").contains("NoCertificatesPresented"), "{server_error:?}");
        let as_client =
            Credentials::load(&dir.path().join("broker"), Role::Broker).unwrap().client().unwrap();
        let mut server = Session::server(&broker).unwrap();
        let mut client = Session::client(&as_client).unwrap();
        let (server_error, _) = talk_both(&mut server, &mut client);
        assert!(format!("{server_error:?}").contains("Purpose"), "{server_error:?}");

        // A client's certificate used as the broker's: the peer refuses it.
        let impostor = Credentials::load(&dir.path().join("client"), Role::Client).unwrap().server().unwrap();
        let mut server = Session::server(&impostor).unwrap();
        let mut client = peer(&dir.path().join("worker"), Role::Worker);
        let (_, client_error) = talk_both(&mut server, &mut client);
        assert!(format!("{client_error:?}").contains("InvalidCertificate"), "{client_error:?}");

        // Garbage instead of a handshake.
        let mut server = Session::server(&broker).unwrap();
        assert!(server.receive(b"GET / HTTP/1.1\r\n\r\n", &mut Vec::new()).is_err());

        // Making credentials twice in one place is refused.
        assert!(cluster(dir.path(), Validity::days(1)).unwrap_err().to_string().contains("already holds"));
    }
}
