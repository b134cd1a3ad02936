//! The TLS settings of a [`Config`]: libpq's `sslmode`, `sslrootcert`, `sslcert` and `sslkey`.
//! They are kept as given and parsed when the config is checked.

use std::sync::Arc;

use super::Config;
use crate::tls::SslMode;

/// The root certificates the server's certificate must chain to.
#[derive(Clone, Default)]
pub(crate) enum Roots {
    #[default]
    None,
    /// PEM text, parsed when the config is checked.
    Pem(Arc<[u8]>),
    /// The platform's CA bundle, read when the config is checked.
    System,
}

/// A client certificate chain and key, PEM, parsed when the config is checked.
#[derive(Clone)]
pub(crate) struct ClientPem {
    pub(crate) cert: Arc<[u8]>,
    pub(crate) key: Arc<[u8]>,
}

impl Config {
    /// How the connection is protected (TLS through rustls), as libpq's `sslmode`.
    /// `verify-ca` and `verify-full` need root certificates ([`Config::ssl_root_cert_pem`] or
    /// [`Config::ssl_system_roots`]).
    ///
    /// Defaults to what the connection string's `sslmode` says, and without one to
    /// [`SslMode::Prefer`], as in libpq (`sslrootcert` alone does not change the mode);
    /// [`Config::new`] defaults to [`SslMode::Disable`], as eGo's `NewConfig`.
    #[must_use]
    pub fn ssl_mode(mut self, mode: SslMode) -> Self {
        self.ssl_mode = mode;
        self
    }

    /// The root certificate(s), PEM-encoded, that the server's certificate must chain to in
    /// `verify-ca` and `verify-full` modes (libpq's `sslrootcert`; a connection string's
    /// `sslrootcert=<path>` is read into this). When the store is built, a PEM holding no
    /// certificate is an [`Error::InvalidConfig`](crate::Error::InvalidConfig).
    ///
    /// Defaults to none. Replaces roots set before.
    #[must_use]
    pub fn ssl_root_cert_pem(mut self, pem: impl AsRef<[u8]>) -> Self {
        self.ssl_roots = Roots::Pem(pem.as_ref().into());
        self
    }

    /// Trusts the platform's root certificates (the CA bundle of the operating system, as
    /// OpenSSL and curl use it) and sets [`SslMode::VerifyFull`]: what libpq's
    /// `sslrootcert=system` does, and what managed PostgreSQL services whose certificates come
    /// from a public CA need. A connection string's `sslrootcert=system` calls this. The roots
    /// are read when the store is built; `SSL_CERT_FILE` and `SSL_CERT_DIR` override where
    /// they are read from. Building the store fails with [`Error::InvalidConfig`](crate::Error::InvalidConfig) when the
    /// platform has no usable root certificate, or when the crate was built without its
    /// `system-roots` feature (on by default).
    ///
    /// Defaults to off (see [`Config::ssl_root_cert_pem`]). Replaces roots set before.
    #[must_use]
    pub fn ssl_system_roots(mut self) -> Self {
        self.ssl_roots = Roots::System;
        self.ssl_mode = SslMode::VerifyFull;
        self
    }

    /// A client certificate, presented to a server that asks for one (`hostssl … cert` in
    /// `pg_hba.conf`, or `clientcert=verify-full`): libpq's `sslcert` and `sslkey`, which a
    /// connection string may give as file paths. `cert_pem` holds the client's certificate
    /// first, then any intermediates; `key_pem` its private key (PKCS#8, PKCS#1 or SEC1 PEM,
    /// unencrypted). For `cert` authentication the server also requires the certificate's
    /// common name to equal the user name. Used in every mode but [`SslMode::Disable`].
    ///
    /// When the store is built, a PEM holding nothing usable, or a key that does not belong to
    /// the certificate, is an [`Error::InvalidConfig`](crate::Error::InvalidConfig) whose message never quotes the key.
    ///
    /// Defaults to none: no certificate is presented.
    #[must_use]
    pub fn ssl_client_cert_pem(
        mut self,
        cert_pem: impl AsRef<[u8]>,
        key_pem: impl AsRef<[u8]>,
    ) -> Self {
        self.ssl_client_pem = Some(ClientPem {
            cert: cert_pem.as_ref().into(),
            key: key_pem.as_ref().into(),
        });
        self
    }

    /// The TLS mode.
    pub fn get_ssl_mode(&self) -> SslMode {
        self.ssl_mode
    }
}
