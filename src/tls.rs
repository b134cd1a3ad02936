//! TLS to the server with rustls, in libpq's `sslmode`s.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, ServerName, SubjectPublicKeyInfoDer, UnixTime,
};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::Socket;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::Error;

/// How the connection to the server is protected, as libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SslMode {
    /// Plain TCP, as eGo's Go store connects ([`Config::new`](crate::Config::new)'s default).
    Disable,
    /// TLS if the server offers it, plain TCP otherwise; the certificate is not checked. The
    /// default of connection strings without `sslmode`, as in libpq.
    #[default]
    Prefer,
    /// TLS or no connection; the certificate is not checked (encryption without
    /// authentication: it defeats eavesdroppers, not an active man in the middle) — unless a
    /// root certificate is configured, in which case it is `VerifyCa`, as in libpq.
    Require,
    /// TLS, and the server's certificate must chain to the configured root certificate.
    VerifyCa,
    /// As `VerifyCa`, and the certificate must also name the host connected to.
    VerifyFull,
}

impl SslMode {
    /// Parses libpq's names: `disable`, `prefer`, `require`, `verify-ca`, `verify-full`.
    pub(crate) fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    /// libpq's name of the mode.
    pub(crate) fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// What tokio-postgres negotiates; verification is the connector's job.
    pub(crate) fn negotiation(self) -> tokio_postgres::config::SslMode {
        match self {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        }
    }
}

/// Parses PEM root certificates.
pub(crate) fn parse_roots(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| Error::InvalidConfig(format!("root certificate: {e}")))?;
    if certs.is_empty() {
        return Err(Error::InvalidConfig(
            "root certificate: no PEM certificate found".to_owned(),
        ));
    }
    Ok(certs)
}

/// The value of libpq's `sslrootcert` that selects the system's roots instead of a file.
pub(crate) const SYSTEM_ROOTS: &str = "system";

/// The trusted roots of the platform (what libpq's `sslrootcert=system` means: the store that
/// OpenSSL, curl and browsers on this machine use), read now. Certificates of the store that
/// rustls cannot use are skipped, as libpq skips them; an empty result is an error, since
/// every server would then be rejected.
#[cfg(feature = "system-roots")]
pub(crate) fn system_roots() -> Result<Vec<CertificateDer<'static>>, Error> {
    let found = rustls_native_certs::load_native_certs();
    let mut usable = Vec::with_capacity(found.certs.len());
    let mut check = RootCertStore::empty();
    for cert in found.certs {
        if check.add(cert.clone()).is_ok() {
            usable.push(cert);
        }
    }
    if usable.is_empty() {
        let reasons: Vec<String> = found.errors.iter().map(|e| e.to_string()).collect();
        return Err(Error::InvalidConfig(format!(
            "sslrootcert=system: no usable root certificate found on this system{}; \
             install the CA bundle (Debian: ca-certificates), point SSL_CERT_FILE at one, \
             or give sslrootcert=<path>",
            if reasons.is_empty() {
                String::new()
            } else {
                format!(" ({})", reasons.join("; "))
            }
        )));
    }
    Ok(usable)
}

/// Without the `system-roots` feature there is no way to read the platform's store.
#[cfg(not(feature = "system-roots"))]
pub(crate) fn system_roots() -> Result<Vec<CertificateDer<'static>>, Error> {
    Err(Error::InvalidConfig(
        "sslrootcert=system needs durablestore-postgres's `system-roots` feature (on by \
         default); give sslrootcert=<path> instead"
            .to_owned(),
    ))
}

/// A client certificate chain with its private key, checked to belong together. Cloning
/// shares the key; `Debug` shows the certificate count, never the key.
#[derive(Clone)]
pub(crate) struct ClientIdentity(Arc<CertifiedKey>);

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("certificates", &self.0.cert.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Parses a PEM certificate chain (the client's certificate first, then any intermediates)
/// and its PEM private key (PKCS#8, PKCS#1 or SEC1, unencrypted), as libpq's `sslcert` and
/// `sslkey` files.
pub(crate) fn parse_client_identity(
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<ClientIdentity, Error> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| Error::InvalidConfig(format!("client certificate: {e}")))?;
    if chain.is_empty() {
        return Err(Error::InvalidConfig(
            "client certificate: no PEM certificate found".to_owned(),
        ));
    }
    // The parse error of a key file could quote it: say only what kind of problem it is.
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
        Error::InvalidConfig(match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "client key: no PEM private key found (encrypted keys are not supported)".to_owned()
            }
            _ => "client key: malformed PEM private key".to_owned(),
        })
    })?;
    let provider = rustls::crypto::ring::default_provider();
    let certified = CertifiedKey::from_der(chain, key, &provider)
        .map_err(|e| Error::InvalidConfig(format!("client certificate and key: {e}")))?;
    Ok(ClientIdentity(Arc::new(certified)))
}

/// The rustls connector for a TLS mode, its roots and client identity, or `None` for
/// [`SslMode::Disable`]. The client certificate, if any, is presented to servers that ask for
/// one.
pub(crate) fn connector(
    mode: SslMode,
    roots: &[CertificateDer<'static>],
    client: Option<&ClientIdentity>,
) -> Result<Option<MakeRustlsConnect>, Error> {
    // Explicit provider: never depend on (or panic for lack of) a process-wide default.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::InvalidConfig(format!("TLS: {e}")))?;
    // As in libpq, `require` with a root certificate configured verifies the chain.
    let mode = if mode == SslMode::Require && !roots.is_empty() {
        SslMode::VerifyCa
    } else {
        mode
    };
    let verifier: Arc<dyn ServerCertVerifier> = match mode {
        SslMode::Disable => return Ok(None),
        SslMode::Prefer | SslMode::Require => Arc::new(PartialVerification {
            chain: None,
            algorithms: provider.signature_verification_algorithms,
        }),
        SslMode::VerifyCa | SslMode::VerifyFull => {
            if roots.is_empty() {
                return Err(Error::InvalidConfig(
                    "sslmode verify-ca and verify-full need a root certificate (ssl_root_cert)"
                        .to_owned(),
                ));
            }
            let mut store = RootCertStore::empty();
            for root in roots {
                store
                    .add(root.clone())
                    .map_err(|e| Error::InvalidConfig(format!("root certificate: {e}")))?;
            }
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone())
                    .build()
                    .map_err(|e| Error::InvalidConfig(format!("TLS: {e}")))?;
            if mode == SslMode::VerifyFull {
                webpki
            } else {
                Arc::new(PartialVerification {
                    chain: Some(webpki),
                    algorithms: provider.signature_verification_algorithms,
                })
            }
        }
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match client {
        Some(identity) => {
            builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(identity.0.clone())))
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Some(MakeRustlsConnect::new(config)))
}

/// The checks of the modes rustls's own verifier does not offer. `prefer` and `require`
/// (`chain: None`): libpq checks no certificate; `verify-ca`: the chain must verify against the
/// roots, but the host name is not checked. Either way the handshake's signatures are verified,
/// so the session is encrypted to whoever holds the presented key.
#[derive(Debug)]
struct PartialVerification {
    chain: Option<Arc<WebPkiServerVerifier>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PartialVerification {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify_signature(Handshake::Tls12, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify_signature(Handshake::Tls13, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The handshake a signature belongs to: TLS 1.2 and 1.3 sign and verify differently.
#[derive(Clone, Copy)]
enum Handshake {
    Tls12,
    Tls13,
}

impl PartialVerification {
    /// A handshake's signature: with a chain, as rustls checks it against the verified end
    /// entity; without one, against the certificate's bare public key ([`public_key_of`]).
    fn verify_signature(
        &self,
        handshake: Handshake,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.algorithms;
        if self.chain.is_some() {
            return match handshake {
                Handshake::Tls12 => {
                    rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
                }
                Handshake::Tls13 => {
                    rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
                }
            };
        }
        let spki = public_key_of(cert)?;
        match handshake {
            Handshake::Tls12 => verify_tls12_with_raw_key(message, &spki, dss, algorithms),
            Handshake::Tls13 => {
                rustls::crypto::verify_tls13_signature_with_raw_key(message, &spki, dss, algorithms)
            }
        }
    }
}

/// A TLS 1.2 handshake's signature against a bare public key, as rustls checks one against a
/// certificate: each algorithm of the scheme, until one fits the key.
fn verify_tls12_with_raw_key(
    message: &[u8],
    spki: &SubjectPublicKeyInfoDer<'_>,
    dss: &DigitallySignedStruct,
    algorithms: &WebPkiSupportedAlgorithms,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    let key = webpki::RawPublicKeyEntity::try_from(spki).map_err(bad_key)?;
    let candidates = algorithms
        .mapping
        .iter()
        .find(|(scheme, _)| *scheme == dss.scheme)
        .map(|(_, algorithms)| *algorithms)
        .ok_or(rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme)?;
    let mut last = None;
    for algorithm in candidates {
        match key.verify_signature(*algorithm, message, dss.signature()) {
            Ok(()) => return Ok(HandshakeSignatureValid::assertion()),
            Err(error @ webpki::Error::UnsupportedSignatureAlgorithmForPublicKeyContext(_)) => {
                last = Some(error);
            }
            Err(error) => return Err(bad_key(error)),
        }
    }
    Err(last.map_or(
        rustls::Error::InvalidCertificate(CertificateError::BadSignature),
        bad_key,
    ))
}

/// The public key of a certificate, of any X.509 version. Where no certificate is checked
/// (`prefer`, `require`), the handshake's signature is verified against this key alone, as
/// libpq does with OpenSSL: rustls's own certificate parser accepts only X.509 v3, and servers
/// with a generated v1 certificate (Citus makes one for each node) would be refused.
fn public_key_of(
    cert: &CertificateDer<'_>,
) -> Result<SubjectPublicKeyInfoDer<'static>, rustls::Error> {
    use x509_cert::der::{Decode, Encode};
    let invalid = |_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding);
    let parsed = x509_cert::Certificate::from_der(cert.as_ref()).map_err(invalid)?;
    let spki = parsed
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(invalid)?;
    Ok(SubjectPublicKeyInfoDer::from(spki))
}

/// A key or signature webpki refused, as a rustls error.
fn bad_key(error: webpki::Error) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(error))))
}

/// The TLS connectors a caller's pool may use: any tokio-postgres [`MakeTlsConnect`] whose
/// streams and futures can move between threads — `NoTls`, tokio-postgres-rustls's
/// `MakeRustlsConnect`, postgres-native-tls, postgres-openssl. Implemented for every such
/// type; there is nothing to implement by hand.
///
/// [`MakeTlsConnect`]: tokio_postgres::tls::MakeTlsConnect
pub trait PoolTls:
    MakeTlsConnect<Socket, Stream: Send + Sync, TlsConnect: Send + TlsConnect<Socket, Future: Send>>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<T> PoolTls for T
where
    T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
    T::Stream: Send + Sync,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
}
