//! The one place a [`Config`] is validated: when a store is built. Every problem is collected,
//! so one error lists them all.

use std::time::Duration;

use tokio_postgres_rustls::MakeRustlsConnect;

use super::{Config, Distribution, Roots};
use crate::error::Error;
use crate::sql::Identifier;
use crate::tls::{self, SslMode};

/// Upper bounds that keep the queues and statements of a store allocatable.
const MAX_BATCH_SIZE_LIMIT: usize = 100_000;
const MAX_PENDING_REQUESTS_LIMIT: usize = 10_000_000;

/// Who owns the pool a store runs on: the connection and pool settings are checked (and used)
/// only for a pool the store builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PoolOwner {
    /// The store builds its pool from the config.
    Store,
    /// The caller gave a pool of its own.
    Caller,
}

/// A [`Config`] that passed validation, with what validation produced: quoted-ready
/// identifiers and the TLS connector.
#[derive(Clone)]
pub(crate) struct Checked {
    pub(crate) config: Config,
    pub(crate) schema: Identifier,
    pub(crate) table: Identifier,
    /// `None` for [`SslMode::Disable`].
    pub(crate) tls: Option<MakeRustlsConnect>,
}

impl std::fmt::Debug for Checked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checked")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The longest duration a setting that reaches bb8's or tokio's clock arithmetic may have.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

impl Config {
    /// Checks everything that would otherwise fail later (or make bb8 panic).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming every problem found, separated by `; `.
    pub(crate) fn check(self, owner: PoolOwner) -> Result<Checked, Error> {
        let mut problems: Vec<String> = Vec::new();
        let mut require = |ok: bool, problem: &str| {
            if !ok {
                problems.push(problem.to_owned());
            }
        };
        if owner == PoolOwner::Store {
            require(!self.pg.get_hosts().is_empty(), "no host given");
            require(self.pg.get_user().is_some(), "no user given");
        }
        require(
            self.min_idle_connections <= self.max_connections,
            "min_idle_connections must not exceed max_connections",
        );
        require(
            !self.health_check_period.is_zero(),
            "health_check_period must be greater than zero",
        );
        require(
            !self.checkout_timeout.is_zero(),
            "checkout_timeout must be greater than zero",
        );
        for (name, value) in [
            ("max_connection_lifetime", self.max_connection_lifetime),
            ("max_connection_idle_time", self.max_connection_idle_time),
        ] {
            require(
                value.is_none_or(|d| !d.is_zero()),
                &format!("{name} must be greater than zero (None turns it off)"),
            );
        }
        // bb8 and tokio add these to `Instant::now()`, which panics past the clock's range.
        for (name, value) in [
            ("health_check_period", Some(self.health_check_period)),
            ("checkout_timeout", Some(self.checkout_timeout)),
            ("max_connection_lifetime", self.max_connection_lifetime),
            ("max_connection_idle_time", self.max_connection_idle_time),
        ] {
            require(
                value.is_none_or(|d| d <= MAX_DURATION),
                &format!("{name} must be at most 365 days"),
            );
        }
        require(
            self.max_connections > 0,
            "max_connections must be at least 1",
        );
        require(
            (1..=MAX_BATCH_SIZE_LIMIT).contains(&self.max_batch_size),
            "max_batch_size must be between 1 and 100,000",
        );
        require(
            (1..=MAX_PENDING_REQUESTS_LIMIT).contains(&self.max_pending_requests),
            "max_pending_requests must be between 1 and 10,000,000",
        );
        if let Some(timeout) = self.statement_timeout {
            require(
                !timeout.is_zero(),
                "statement_timeout must be greater than zero (None turns it off)",
            );
            require(
                timeout <= Duration::from_millis(i32::MAX as u64),
                "statement_timeout must be at most i32::MAX milliseconds (~24 days)",
            );
        }
        if self.change_feed {
            require(
                self.distribution != Distribution::Citus,
                "the change feed cannot follow a Citus distributed table: transaction ids are \
                 per node there (use Distribution::SingleServer for a table Citus keeps local)",
            );
            require(
                !self.change_poll_interval.is_zero(),
                "change_poll_interval must be greater than zero",
            );
            // The feed's log function is named `{table}_changes_log`.
            require(
                self.table.len() + "_changes_log".len() <= 63,
                "with the change feed, the table name must be at most 51 bytes (its log \
                 function is named `{table}_changes_log`)",
            );
        }
        let mut identifier = |kind, name: &str| {
            Identifier::parse(kind, name)
                .map_err(|invalid| problems.push(invalid.to_string()))
                .ok()
        };
        let schema = identifier("schema", &self.schema);
        let table = identifier("table", &self.table);
        let tls = self.tls_connector().map_err(|e| problems.push(e));
        match (schema, table, tls) {
            (Some(schema), Some(table), Ok(tls)) if problems.is_empty() => Ok(Checked {
                config: self,
                schema,
                table,
                tls,
            }),
            _ => Err(Error::InvalidConfig(problems.join("; "))),
        }
    }

    /// The TLS connector the settings describe; the problem with them otherwise.
    fn tls_connector(&self) -> Result<Option<MakeRustlsConnect>, String> {
        let problem = |error: Error| match error {
            Error::InvalidConfig(problem) => problem,
            other => other.to_string(),
        };
        let roots = match &self.ssl_roots {
            Roots::None => Vec::new(),
            Roots::Pem(pem) => tls::parse_roots(pem).map_err(problem)?,
            Roots::System => tls::system_roots().map_err(problem)?,
        };
        if matches!(self.ssl_mode, SslMode::VerifyCa | SslMode::VerifyFull) && roots.is_empty() {
            return Err("sslmode verify-ca and verify-full need a root certificate".to_owned());
        }
        let identity = match &self.ssl_client_pem {
            Some(pem) => Some(tls::parse_client_identity(&pem.cert, &pem.key).map_err(problem)?),
            None => None,
        };
        tls::connector(self.ssl_mode, &roots, identity.as_ref()).map_err(problem)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Config {
        Config::new("h", 5432, "u", "", "d")
    }

    fn problems(config: Config) -> String {
        match config.check(PoolOwner::Store) {
            Err(Error::InvalidConfig(problems)) => problems,
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    #[test]
    fn identifiers_are_validated_when_the_store_is_built() {
        for bad in [
            "",
            "x\"; DROP TABLE y; --",
            "a.b",
            "with space",
            "1abc",
            &"a".repeat(64),
            "a\0b",
        ] {
            assert!(
                problems(base().table(bad)).contains("invalid table name"),
                "{bad:?}"
            );
            assert!(
                problems(base().schema(bad)).contains("invalid schema name"),
                "{bad:?}"
            );
        }
        for good in ["states_store", "Tenant_1", "_x$", &"a".repeat(63), "état"] {
            let checked = base().table(good).check(PoolOwner::Store).unwrap();
            assert_eq!(checked.table.as_str(), good);
        }
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let all = problems(
            base()
                .schema("a.b")
                .max_connections(0)
                .min_idle_connections(5)
                .checkout_timeout(Duration::ZERO)
                .health_check_period(Duration::ZERO)
                .statement_timeout(Duration::ZERO)
                .max_connection_lifetime(Duration::ZERO)
                .max_batch_size(0)
                .ssl_mode(SslMode::VerifyFull),
        );
        for expected in [
            "schema",
            "max_connections",
            "min_idle_connections",
            "checkout_timeout",
            "health_check_period",
            "statement_timeout",
            "max_connection_lifetime",
            "max_batch_size",
            "root certificate",
        ] {
            assert!(all.contains(expected), "{expected} missing from: {all}");
        }
        let no_host: Config = "user=u dbname=d".parse().unwrap();
        assert!(problems(no_host.clone()).contains("no host"));
        // A caller's pool brings its own hosts.
        assert!(no_host.check(PoolOwner::Caller).is_ok());
    }

    #[test]
    fn durations_beyond_the_clock_are_refused_not_a_panic() {
        let all = problems(
            base()
                .health_check_period(Duration::MAX)
                .checkout_timeout(Duration::MAX)
                .max_connection_lifetime(Duration::MAX)
                .max_connection_idle_time(Duration::from_secs(366 * 24 * 3600)),
        );
        for expected in [
            "health_check_period must be at most",
            "checkout_timeout must be at most",
            "max_connection_lifetime must be at most",
            "max_connection_idle_time must be at most",
        ] {
            assert!(all.contains(expected), "{expected} missing from: {all}");
        }
        assert!(
            base()
                .health_check_period(MAX_DURATION)
                .check(PoolOwner::Store)
                .is_ok()
        );
    }

    #[test]
    fn off_is_none() {
        let c = base()
            .statement_timeout(None)
            .max_connection_lifetime(None)
            .max_connection_idle_time(None)
            .check(PoolOwner::Store)
            .unwrap();
        assert_eq!(c.config.statement_timeout, None);
        assert_eq!(c.config.max_connection_lifetime, None);
    }

    #[test]
    fn transaction_pooling_is_off_by_default_and_shown_by_debug() {
        assert!(!base().transaction_pooling);
        let on = base()
            .transaction_pooling(true)
            .check(PoolOwner::Store)
            .unwrap();
        assert!(on.config.transaction_pooling);
        assert!(format!("{:?}", on.config).contains("transaction_pooling: true"));
    }

    #[test]
    fn client_certificate_pem_is_checked_and_never_printed() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["u".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap()
            .pem();
        let with = base()
            .ssl_mode(SslMode::Require)
            .ssl_client_cert_pem(&cert, key.serialize_pem());
        let dbg = format!("{with:?}");
        assert!(dbg.contains("ssl_client_cert: true"), "{dbg}");
        assert!(!dbg.contains("PRIVATE"), "{dbg}");
        assert!(with.check(PoolOwner::Store).is_ok());

        let other_key = rcgen::KeyPair::generate().unwrap().serialize_pem();
        let not_a_key = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n";
        for key in [other_key.as_str(), not_a_key, ""] {
            let text = problems(base().ssl_client_cert_pem(&cert, key));
            assert!(
                !text.contains("c2VjcmV0") && !text.contains("PRIVATE"),
                "{text}"
            );
        }
        problems(base().ssl_client_cert_pem("", ""));
        assert!(format!("{:?}", base()).contains("ssl_client_cert: false"));
    }
}
