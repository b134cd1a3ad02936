//! TLS via rustls against a throwaway cluster with a test CA and server certificate made here.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use actix::Actor;
use common::cluster::{self, Cluster};
use common::state;
use durablestore_postgres::{
    Config, CreateSchema, DurableStoreActor, Error, GetLatestState, Ping, SslMode, WriteState,
};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, KeyUsagePurpose};

struct Pki {
    dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
    ca_pem: String,
    other_ca_pem: String,
}

/// A CA, a server certificate for `localhost` signed by it, and an unrelated CA.
fn pki() -> Pki {
    let ca = |name: &str| {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
    };
    let root = ca("durablestore test CA");
    let other = ca("some other CA");
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&server_key, &root)
        .unwrap();

    let dir = Cluster::new_dir("pki");
    let write = |name: &str, contents: &str| {
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        Command::new("chown")
            .arg("postgres:postgres")
            .arg(&path)
            .status()
            .unwrap();
        Command::new("chmod")
            .arg("600")
            .arg(&path)
            .status()
            .unwrap();
    };
    write("server.crt", &server.pem());
    write("server.key", &server_key.serialize_pem());
    write("ca.crt", &root.pem());
    Pki {
        dir,
        ca_pem: root.pem(),
        ca: root,
        other_ca_pem: other.pem(),
    }
}

impl Pki {
    /// A client certificate with common name `cn`, signed by the test CA: (certificate PEM,
    /// key PEM).
    fn client_cert(&self, cn: &str) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let cert = params.signed_by(&key, &self.ca).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn tls_cluster(pki: &Pki) -> Cluster {
    Cluster::start_new(
        &format!(
            "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
            pki.dir.join("server.crt").display(),
            pki.dir.join("server.key").display()
        ),
        None,
    )
}

fn config(host: &str, port: u16, app: &str) -> Config {
    Config::new(host, port, "postgres", "", "postgres")
        .application_name(app)
        .schema("tls")
        .checkout_timeout(Duration::from_secs(3))
}

async fn ping(config: Config) -> Result<(), Error> {
    let store = DurableStoreActor::new(config)?.start();
    tokio::time::timeout(Duration::from_secs(20), store.send(Ping))
        .await
        .expect("no hang")
        .expect("mailbox")
}

/// Whether the server sees an encrypted connection from `app`.
fn encrypted(cluster: &Cluster, app: &str) -> bool {
    cluster.psql(&format!(
        "SELECT bool_or(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.application_name = '{app}'"
    )) == "t"
}

#[actix::test]
async fn verify_full_connects_with_the_right_ca_and_host_name() {
    if let Some(why) = cluster::unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let pki = pki();
    let cluster = tls_cluster(&pki);
    let config = config("localhost", cluster.port, "tls-full")
        .ssl_mode(SslMode::VerifyFull)
        .ssl_root_cert_pem(pki.ca_pem.as_bytes());
    let store = DurableStoreActor::new(config).unwrap().start();
    store.send(CreateSchema).await.unwrap().unwrap();
    store
        .send(WriteState(state("a", 1, 1)))
        .await
        .unwrap()
        .unwrap();
    let read = store
        .send(GetLatestState("a".into()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read, Some(state("a", 1, 1)));
    assert!(encrypted(&cluster, "tls-full"), "the session is TLS");
}

#[actix::test]
async fn verification_failures_are_clear_errors() {
    if let Some(why) = cluster::unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let pki = pki();
    let cluster = tls_cluster(&pki);

    // Wrong host name: the certificate names `localhost`, not 127.0.0.1.
    let wrong_host = config("127.0.0.1", cluster.port, "tls-wrong-host")
        .ssl_mode(SslMode::VerifyFull)
        .ssl_root_cert_pem(pki.ca_pem.as_bytes());
    let err = ping(wrong_host).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    assert!(err.to_string().contains("certificate"), "{err}");

    // Wrong CA. Reported as soon as the handshake fails, not after the (here 60 s) checkout
    // timeout: `ping` gives up after 20 s.
    let wrong_ca = config("localhost", cluster.port, "tls-wrong-ca")
        .checkout_timeout(Duration::from_secs(60))
        .ssl_mode(SslMode::VerifyFull)
        .ssl_root_cert_pem(pki.other_ca_pem.as_bytes());
    let err = ping(wrong_ca).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    assert!(err.to_string().contains("certificate"), "{err}");

    // verify-ca checks the chain but not the name: 127.0.0.1 is fine there.
    let ca_only = config("127.0.0.1", cluster.port, "tls-ca")
        .ssl_mode(SslMode::VerifyCa)
        .ssl_root_cert_pem(pki.ca_pem.as_bytes());
    ping(ca_only).await.unwrap();
    assert!(encrypted(&cluster, "tls-ca"));

    // require encrypts without checking the certificate.
    ping(config("127.0.0.1", cluster.port, "tls-require").ssl_mode(SslMode::Require))
        .await
        .unwrap();
    // ... unless a root certificate is given: then, as in libpq, the chain is checked.
    let require_wrong_root = config("127.0.0.1", cluster.port, "tls-require-root")
        .ssl_mode(SslMode::Require)
        .ssl_root_cert_pem(pki.other_ca_pem.as_bytes());
    assert!(matches!(
        ping(require_wrong_root).await,
        Err(Error::Unavailable { .. })
    ));

    // verify modes without a root certificate are a configuration error, up front.
    let no_root = config("localhost", cluster.port, "x").ssl_mode(SslMode::VerifyFull);
    assert!(matches!(
        DurableStoreActor::new(no_root),
        Err(Error::InvalidConfig(_))
    ));
}

#[actix::test]
async fn require_refuses_a_server_without_tls() {
    if let Some(why) = cluster::unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let cluster = Cluster::start_new("", None);
    let err = ping(config("127.0.0.1", cluster.port, "tls-none").ssl_mode(SslMode::Require))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    assert!(err.to_string().contains("TLS"), "{err}");
}

#[actix::test]
async fn connection_strings_carry_libpq_ssl_options() {
    if let Some(why) = cluster::unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let pki = pki();
    let cluster = tls_cluster(&pki);
    let ca = pki.dir.join("ca.crt");
    assert!(Path::new(&ca).exists());
    let url = format!(
        "postgres://postgres@localhost:{}/postgres?application_name=tls-url&sslmode=verify-full&sslrootcert={}",
        cluster.port,
        ca.display()
    );
    let config: Config = url.parse().unwrap();
    assert_eq!(config.get_ssl_mode(), SslMode::VerifyFull);
    ping(config).await.unwrap();
    assert!(encrypted(&cluster, "tls-url"));

    let kv = format!(
        "host=localhost port={} user=postgres dbname=postgres application_name=tls-kv sslmode=verify-ca sslrootcert={}",
        cluster.port,
        ca.display()
    );
    let config: Config = kv.parse().unwrap();
    assert_eq!(config.get_ssl_mode(), SslMode::VerifyCa);
    ping(config).await.unwrap();
    assert!(encrypted(&cluster, "tls-kv"));

    let missing = "postgres://postgres@localhost/postgres?sslmode=verify-full&sslrootcert=/nonexistent/ca.crt";
    assert!(matches!(
        missing.parse::<Config>(),
        Err(Error::InvalidConfig(_))
    ));
    let bogus = "postgres://postgres@localhost/postgres?sslmode=sometimes";
    assert!(matches!(
        bogus.parse::<Config>(),
        Err(Error::InvalidConfig(_))
    ));
}

/// A TLS cluster that admits TCP clients only with a certificate from the test CA whose common
/// name is the user name (`cert` authentication); the test's psql uses the Unix socket.
fn client_cert_cluster(pki: &Pki) -> Cluster {
    Cluster::start_new(
        &format!(
            "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\nssl_ca_file = '{}'\n",
            pki.dir.join("server.crt").display(),
            pki.dir.join("server.key").display(),
            pki.dir.join("ca.crt").display()
        ),
        Some(
            "local all all trust\n\
             hostssl all all 127.0.0.1/32 cert\n\
             hostssl all all ::1/128 cert\n",
        ),
    )
}

/// The client certificate's subject the server saw for `app`'s sessions.
fn client_dn(cluster: &Cluster, app: &str) -> String {
    cluster.psql(&format!(
        "SELECT max(s.client_dn) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.application_name = '{app}'"
    ))
}

#[actix::test]
async fn client_certificates_authenticate_to_a_server_that_requires_them() {
    if let Some(why) = cluster::unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let pki = pki();
    let cluster = client_cert_cluster(&pki);
    let verified = |app: &str| {
        config("localhost", cluster.port, app)
            .ssl_mode(SslMode::VerifyFull)
            .ssl_root_cert_pem(pki.ca_pem.as_bytes())
    };

    // Set with the builder: the store connects, writes and reads as `postgres`.
    let (cert, key) = pki.client_cert("postgres");
    let with_cert =
        verified("tls-client-cert").ssl_client_cert_pem(cert.as_bytes(), key.as_bytes());
    let store = DurableStoreActor::new(with_cert).unwrap().start();
    store.send(CreateSchema).await.unwrap().unwrap();
    store
        .send(WriteState(state("c", 1, 7)))
        .await
        .unwrap()
        .unwrap();
    let read = store
        .send(GetLatestState("c".into()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read, Some(state("c", 1, 7)));
    assert_eq!(client_dn(&cluster, "tls-client-cert"), "/CN=postgres");

    // Given as files in a connection string, as libpq's sslcert and sslkey.
    let (cert_path, key_path) = (pki.dir.join("client.crt"), pki.dir.join("client.key"));
    std::fs::write(&cert_path, &cert).unwrap();
    std::fs::write(&key_path, &key).unwrap();
    let url = format!(
        "postgres://postgres@localhost:{}/postgres?application_name=tls-client-url\
         &sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
        cluster.port,
        pki.dir.join("ca.crt").display(),
        cert_path.display(),
        key_path.display()
    );
    let from_url: Config = url.parse().unwrap();
    ping(from_url).await.unwrap();
    assert_eq!(client_dn(&cluster, "tls-client-url"), "/CN=postgres");

    // Without a certificate the server refuses, and says why.
    let err = ping(verified("tls-no-client-cert")).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    assert!(err.to_string().contains("client certificate"), "{err}");

    // A valid certificate for another user is refused too: the common name must be the user.
    let (cert, key) = pki.client_cert("alice");
    let wrong_user = verified("tls-wrong-cn").ssl_client_cert_pem(cert.as_bytes(), key.as_bytes());
    let err = ping(wrong_user).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("certificate authentication failed"),
        "{err}"
    );
}

#[cfg(feature = "system-roots")]
#[actix::test]
async fn system_roots_reject_a_server_with_a_private_ca() {
    if let Some(why) = cluster::unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let pki = pki();
    let cluster = tls_cluster(&pki);
    // What a managed service with a public CA is configured with; this server's CA is private.
    let url = format!(
        "postgres://postgres@localhost:{}/postgres?application_name=tls-system&sslrootcert=system",
        cluster.port
    );
    let config: Config = url.parse().unwrap();
    assert_eq!(config.get_ssl_mode(), SslMode::VerifyFull);
    let err = ping(config.checkout_timeout(Duration::from_secs(60)))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    assert!(err.to_string().contains("certificate"), "{err}");
}

/// Citus generates a version 1 (no extensions) certificate for each node, and so do older
/// tools; libpq accepts it with `prefer` and `require`, which check no certificate.
#[actix::test]
async fn an_x509_v1_certificate_is_accepted_where_no_certificate_is_checked() {
    if let Some(why) = cluster::unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let dir = Cluster::new_dir("v1cert");
    // `openssl x509 -req` without an extension file signs a version 1 certificate.
    let made = Command::new("sh")
        .current_dir(&dir)
        .arg("-c")
        .arg(
            "openssl req -new -newkey rsa:2048 -nodes -keyout server.key -subj /CN=localhost \
             -out server.csr && openssl x509 -req -in server.csr -signkey server.key -days 2 \
             -out server.crt && chown postgres:postgres server.key server.crt \
             && chmod 600 server.key server.crt",
        )
        .output();
    if !made.as_ref().is_ok_and(|out| out.status.success()) {
        eprintln!("skipped: openssl could not make a certificate: {made:?}");
        return;
    }
    let version = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(dir.join("server.crt"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).contains("Version: 1 (0x0)"));
    let cluster = Cluster::start_new(
        &format!(
            "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
            dir.join("server.crt").display(),
            dir.join("server.key").display()
        ),
        None,
    );
    for (mode, app) in [
        (SslMode::Prefer, "tls-v1-prefer"),
        (SslMode::Require, "tls-v1-require"),
    ] {
        let store = DurableStoreActor::new(config("127.0.0.1", cluster.port, app).ssl_mode(mode))
            .unwrap()
            .start();
        store.send(Ping).await.unwrap().unwrap();
        assert!(encrypted(&cluster, app), "{app}: the session is TLS");
    }
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}
