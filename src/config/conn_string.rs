//! Connection strings: `postgres://` URLs and libpq `key=value` strings, read by
//! tokio-postgres, plus the libpq TLS parameters it does not know (`sslmode=verify-ca|verify-full`,
//! `sslrootcert`, `sslcert`, `sslkey`).
//!
//! The parameters are taken out of the string by tokio-postgres's own reading rules before
//! the rest is handed to it, so that text inside another parameter (a password holding
//! `sslmode=disable`, say) can never be taken for one of them: that is where a TLS downgrade
//! would hide.

use std::str::FromStr;

use super::Config;
use crate::error::{Error, truncate};
use crate::tls::{self, SslMode};

impl FromStr for Config {
    type Err = Error;

    /// Parses a `postgres://` URL or a libpq `key=value` string as [`tokio_postgres::Config`]
    /// does, plus libpq's `sslmode=verify-ca|verify-full` and `sslrootcert=<path>` (the file
    /// is read here, and checked when the store is built), which tokio-postgres does not know. Store and pool settings take their
    /// defaults.
    ///
    /// Also libpq's `sslrootcert=system` (see [`Config::ssl_system_roots`]; verify-full, and
    /// a weaker explicit `sslmode` is an error) and `sslcert=<path>` with `sslkey=<path>`
    /// (see [`Config::ssl_client_cert_pem`]; both or neither).
    fn from_str(s: &str) -> Result<Self, Error> {
        let (s, client_cert, client_key) = client_cert_options(s)?;
        let s = s.as_str();
        let (rest, ssl_mode, root_cert) = tls_options(s)?;
        // tokio-postgres's parse error says only "invalid connection string"; its source says
        // what is wrong, and neither echoes the input, which could hold a password.
        let pg = tokio_postgres::Config::from_str(&rest).map_err(|e| {
            let reason = std::error::Error::source(&e)
                .map(|s| s.to_string())
                .unwrap_or_else(|| e.to_string());
            Error::InvalidConfig(format!("connection string: {reason}"))
        })?;
        let mut config = Self::from_pg_config(pg);
        if let Some(mode) = ssl_mode {
            config.ssl_mode = mode;
        }
        // libpq: `system` selects the platform's roots and implies verify-full; an explicitly
        // weaker mode would silently trust less than asked, so it is refused.
        let root_cert = match root_cert {
            Some(value) if value == tls::SYSTEM_ROOTS => {
                if let Some(mode) = ssl_mode.filter(|m| *m != SslMode::VerifyFull) {
                    return Err(Error::InvalidConfig(format!(
                        "sslmode {} may not be used with sslrootcert=system (use verify-full)",
                        mode.name()
                    )));
                }
                config = config.ssl_system_roots();
                None
            }
            other => other,
        };
        if let Some(path) = root_cert {
            let pem = std::fs::read(&path).map_err(|e| {
                Error::InvalidConfig(format!("sslrootcert {}: {e}", truncate(&path, 200)))
            })?;
            config = config.ssl_root_cert_pem(pem);
        }
        match (client_cert, client_key) {
            (Some(cert), Some(key)) => {
                let read = |what: &str, path: &str| {
                    std::fs::read(path).map_err(|e| {
                        Error::InvalidConfig(format!("{what} {}: {e}", truncate(path, 200)))
                    })
                };
                config = config.ssl_client_cert_pem(read("sslcert", &cert)?, read("sslkey", &key)?);
            }
            (None, None) => {}
            // libpq would look for the other in ~/.postgresql; a half-given pair is more
            // likely a mistake than a wish to use those files.
            (Some(_), None) => {
                return Err(Error::InvalidConfig(
                    "sslcert given without sslkey".to_owned(),
                ));
            }
            (None, Some(_)) => {
                return Err(Error::InvalidConfig(
                    "sslkey given without sslcert".to_owned(),
                ));
            }
        }
        Ok(config)
    }
}

/// Takes `sslmode` and `sslrootcert` out of a connection string, for the modes tokio-postgres
/// does not parse. The string is read by tokio-postgres's own rules — a URL's query starts at the
/// first `?` after the credentials, keys and values percent-decoded; key=value pairs with quoted
/// values and backslash escapes — so text inside another parameter (a password, say) is never
/// taken for one of these two.
fn tls_options(s: &str) -> Result<(String, Option<SslMode>, Option<String>), Error> {
    let mut mode = None;
    let mut root = None;
    let rest = take_options(s, |key, value| match key {
        "sslmode" => {
            mode = Some(SslMode::parse(value).ok_or_else(|| {
                Error::InvalidConfig(format!("unknown sslmode `{}`", truncate(value, 40)))
            })?);
            Ok(true)
        }
        "sslrootcert" => {
            root = Some(value.to_owned());
            Ok(true)
        }
        _ => Ok(false),
    })?;
    Ok((rest, mode, root))
}

/// Takes libpq's `sslcert` and `sslkey` (file paths) out of a connection string, as
/// [`tls_options`] does for its two.
fn client_cert_options(s: &str) -> Result<(String, Option<String>, Option<String>), Error> {
    let mut cert = None;
    let mut key = None;
    let rest = take_options(s, |name, value| {
        let slot = match name {
            "sslcert" => &mut cert,
            "sslkey" => &mut key,
            _ => return Ok(false),
        };
        *slot = Some(value.to_owned());
        Ok(true)
    })?;
    Ok((rest, cert, key))
}

/// The connection string without the parameters `take` accepts (returns `true` for), each
/// key and value handed to `take` decoded. The rest is re-assembled for tokio-postgres.
fn take_options(
    s: &str,
    mut take: impl FnMut(&str, &str) -> Result<bool, Error>,
) -> Result<String, Error> {
    Ok(
        match ["postgres://", "postgresql://"]
            .iter()
            .find_map(|prefix| s.strip_prefix(prefix).map(|after| (prefix.len(), after)))
        {
            Some((prefix_len, after)) => {
                // Credentials end at the first `@`; the query starts at the first `?` after them.
                let credentials = after.find('@').map_or(0, |at| at + 1);
                let Some(question) = after[credentials..].find('?') else {
                    return Ok(s.to_owned());
                };
                let query_start = prefix_len + credentials + question;
                let (base, query) = (&s[..query_start], &s[query_start + 1..]);
                let decode = |part: &str| {
                    percent_encoding::percent_decode_str(part)
                        .decode_utf8()
                        .map(|c| c.into_owned())
                        .map_err(|_| {
                            Error::InvalidConfig("connection string: invalid UTF-8".into())
                        })
                };
                let mut kept = Vec::new();
                for pair in query.split('&') {
                    let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                    if !take(&decode(key)?, &decode(value)?)? {
                        kept.push(pair);
                    }
                }
                if kept.is_empty() {
                    base.to_owned()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
            None => {
                let mut kept = Vec::new();
                for (key, value) in key_value_pairs(s)? {
                    if !take(&key, &value)? {
                        kept.push(format!(
                            "{key}='{}'",
                            value.replace('\\', "\\\\").replace('\'', "\\'")
                        ));
                    }
                }
                kept.join(" ")
            }
        },
    )
}

/// The pairs of a libpq `key=value` string, by the rules tokio-postgres parses them with:
/// whitespace around `=`, values bare or single-quoted, `\` escaping the next character.
fn key_value_pairs(s: &str) -> Result<Vec<(String, String)>, Error> {
    let invalid = || Error::InvalidConfig("connection string: malformed key=value pair".into());
    let mut chars = s.chars().peekable();
    let mut pairs = Vec::new();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        if key.is_empty() {
            if chars.peek().is_some() {
                return Err(invalid());
            }
            return Ok(pairs);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(invalid());
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                    None => return Err(invalid()),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
            if value.is_empty() {
                return Err(invalid());
            }
        }
        pairs.push((key, value));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::VersionCheck;
    use crate::config::{PoolOwner, Roots};
    use crate::state::RowFormat;

    #[test]
    fn parses_url_and_keeps_defaults() {
        let c: Config = "postgres://alice:s3cret@db.example:6543/shop"
            .parse()
            .unwrap();
        assert_eq!(c.pg.get_user(), Some("alice"));
        assert_eq!(c.pg.get_dbname(), Some("shop"));
        assert_eq!(c.pg.get_ports(), &[6543]);
        // libpq's default.
        assert_eq!(c.ssl_mode, SslMode::Prefer);
        assert_eq!(c.statement_timeout, Some(Config::DEFAULT_STATEMENT_TIMEOUT));
        assert_eq!(
            c.pg.get_tcp_user_timeout(),
            Some(&Config::DEFAULT_NETWORK_TIMEOUT)
        );
        assert_eq!(
            c.pg.get_connect_timeout(),
            Some(&Config::DEFAULT_NETWORK_TIMEOUT)
        );
        assert_eq!(c.pg.get_keepalives_idle(), Config::DEFAULT_NETWORK_TIMEOUT);
        assert_eq!(c.row_format, RowFormat::Any);
        assert_eq!(c.get_schema(), Config::DEFAULT_SCHEMA);
        assert_eq!(c.get_table(), Config::DEFAULT_TABLE);
        assert_eq!(c.max_connections, Config::DEFAULT_MAX_CONNECTIONS);
        assert_eq!(c.min_idle_connections, 0);
        assert_eq!(c.max_connection_lifetime, Some(Duration::from_secs(3600)));
        assert_eq!(c.max_connection_idle_time, Some(Duration::from_secs(1800)));
        assert_eq!(c.health_check_period, Duration::from_secs(60));
        assert_eq!(c.version_check, VersionCheck::Sequential);
        assert!(c.check(PoolOwner::Store).is_ok());
    }

    #[test]
    fn parses_key_value_and_multi_host() {
        let c: Config = "host=a,b port=5432,5433 user=u dbname=d target_session_attrs=read-write"
            .parse()
            .unwrap();
        assert_eq!(c.pg.get_hosts().len(), 2);
        assert_eq!(c.pg.get_ports(), &[5432, 5433]);
    }

    #[test]
    fn bad_connection_string_is_typed_and_does_not_echo_password() {
        let err = "postgres://u:hunter2@h:notaport/d"
            .parse::<Config>()
            .unwrap_err();
        assert!(matches!(err, Error::InvalidConfig(_)), "{err:?}");
        assert!(!err.to_string().contains("hunter2"));
        assert!(!format!("{err:?}").contains("hunter2"));
    }

    #[test]
    fn libpq_ssl_options_are_taken_out_of_connection_strings() {
        let url = "postgres://u:p@h/d?application_name=a&sslmode=verify-full&sslrootcert=/x/ca.pem&connect_timeout=3";
        let (rest, mode, root) = tls_options(url).unwrap();
        assert_eq!(
            rest,
            "postgres://u:p@h/d?application_name=a&connect_timeout=3"
        );
        assert_eq!(mode, Some(SslMode::VerifyFull));
        assert_eq!(root.as_deref(), Some("/x/ca.pem"));
        let kv = "host=h password='a  b' sslmode=require user=u";
        let (rest, mode, root) = tls_options(kv).unwrap();
        assert_eq!(mode, Some(SslMode::Require));
        assert_eq!(root, None);
        assert!(
            rest.contains("password='a  b'"),
            "quoted values untouched: {rest}"
        );
        assert!(!rest.contains("sslmode"));
        let parsed: Config = kv.parse().unwrap();
        assert_eq!(parsed.get_ssl_mode(), SslMode::Require);
        assert!("host=h user=u sslmode=bogus".parse::<Config>().is_err());
        let plain: Config = "postgres://u@h/d".parse().unwrap();
        assert_eq!(plain.get_ssl_mode(), SslMode::Prefer);
        let disabled: Config = "postgres://u@h/d?sslmode=disable".parse().unwrap();
        assert_eq!(disabled.get_ssl_mode(), SslMode::Disable);
        assert_eq!(
            Config::new("h", 1, "u", "", "d").get_ssl_mode(),
            SslMode::Disable
        );
        let explicit: Config = "host=h user=u tcp_user_timeout=3 connect_timeout=4"
            .parse()
            .unwrap();
        assert_eq!(
            explicit.pg.get_tcp_user_timeout(),
            Some(&Duration::from_secs(3))
        );
        assert_eq!(
            explicit.pg.get_connect_timeout(),
            Some(&Duration::from_secs(4))
        );
    }

    #[test]
    #[cfg(feature = "system-roots")]
    fn sslrootcert_system_means_verify_full_with_the_platform_roots() {
        for s in [
            "postgres://u@h/d?sslrootcert=system",
            "postgres://u@h/d?sslmode=verify-full&sslrootcert=system",
            "host=h user=u sslrootcert=system",
        ] {
            let c: Config = s.parse().unwrap();
            assert_eq!(c.get_ssl_mode(), SslMode::VerifyFull, "{s}");
            assert!(matches!(c.ssl_roots, Roots::System), "{s}");
            assert!(
                c.check(PoolOwner::Store).is_ok(),
                "{s}: the platform has roots"
            );
        }
        let built = Config::new("h", 5432, "u", "", "d").ssl_system_roots();
        assert_eq!(built.get_ssl_mode(), SslMode::VerifyFull);
        assert!(built.check(PoolOwner::Store).is_ok());
    }

    #[test]
    fn sslrootcert_system_refuses_weaker_modes() {
        for mode in ["disable", "prefer", "require", "verify-ca"] {
            let err = format!("postgres://u@h/d?sslmode={mode}&sslrootcert=system")
                .parse::<Config>()
                .unwrap_err();
            assert!(matches!(err, Error::InvalidConfig(_)), "{err:?}");
            assert!(err.to_string().contains("verify-full"), "{err}");
        }
    }

    #[test]
    fn client_certificate_options_are_taken_out_and_must_come_in_pairs() {
        let url = "postgres://u@h/d?sslcert=/x/c.crt&application_name=a&sslkey=/x/c.key";
        let (rest, cert, key) = client_cert_options(url).unwrap();
        assert_eq!(rest, "postgres://u@h/d?application_name=a");
        assert_eq!(cert.as_deref(), Some("/x/c.crt"));
        assert_eq!(key.as_deref(), Some("/x/c.key"));
        let (rest, cert, key) = client_cert_options("host=h sslkey='/a b/k' user=u").unwrap();
        assert_eq!(rest, "host='h' user='u'");
        assert_eq!(cert, None);
        assert_eq!(key.as_deref(), Some("/a b/k"));

        for half in [
            "postgres://u@h/d?sslcert=/x/c.crt",
            "postgres://u@h/d?sslkey=/x/c.key",
        ] {
            assert!(matches!(
                half.parse::<Config>(),
                Err(Error::InvalidConfig(_))
            ));
        }
        let missing = "host=h user=u sslcert=/nonexistent/c.crt sslkey=/nonexistent/c.key";
        let err = missing.parse::<Config>().unwrap_err();
        assert!(err.to_string().contains("sslcert"), "{err}");
    }

    #[test]
    fn parameters_inside_other_values_are_never_taken_for_tls_options() {
        // Each string asks for `require` (or says nothing); a downgrade hidden in a password,
        // an application name or a host must not turn TLS off.
        for (s, mode) in [
            (
                "postgres://u:pa%26sslmode%3Ddisable@h/d?sslmode=require",
                SslMode::Require,
            ),
            ("postgres://u:x?sslmode=disable@h/d", SslMode::Prefer),
            (
                "postgres://u:x@h/d?application_name=a%26sslmode%3Ddisable&sslmode=require",
                SslMode::Require,
            ),
            (
                "host=h user=u password='x sslmode=disable' sslmode=require",
                SslMode::Require,
            ),
            (
                r"host=h user=u password='it\'s sslmode=disable'",
                SslMode::Prefer,
            ),
            (
                "host=h user=u application_name=sslmode=disable",
                SslMode::Prefer,
            ),
        ] {
            let c: Config = s.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(c.get_ssl_mode(), mode, "{s}");
        }
    }

    #[test]
    fn hostile_strings_fail_typed_without_echoing_secrets() {
        let long = format!("postgres://u:hunter2@h/d?{}", "a=b&".repeat(10_000));
        let nul = "host=h user=u password=hunter2\0 port=\0".to_owned();
        for s in [
            "",
            "   ",
            "=",
            "host",
            "host=",
            "host='h user=u password=hunter2",
            "host=h password=hunter2 user='u",
            "postgres://u:hunter2@h/d?sslmode=bogus",
            "postgres://u:hunter2@h/d?sslmode=%FF",
            "postgres://u:hunter2@h:99999/d",
            "postgres://u:hunter2@[::1/d",
            "postgres://u:hunter2@h/d?sslcert=/nonexistent/c.crt&sslkey=/nonexistent/c.key",
            "postgres://u:hunter2@h/d?sslrootcert=/nonexistent/x&sslmode=verify-full",
            "\\\'",
            "ßß=ßß ∂=∂",
            long.as_str(),
            nul.as_str(),
        ] {
            // Parsing or building never panics; whatever fails says so without the password.
            let result = s
                .parse::<Config>()
                .and_then(|c| c.check(PoolOwner::Store).map(|_| ()));
            if let Err(err) = result {
                assert!(matches!(err, Error::InvalidConfig(_)), "{s:.60}: {err:?}");
                let text = format!("{err} {err:?}");
                assert!(!text.contains("hunter2"), "{s:.60}: {text}");
            }
        }
    }

    #[test]
    fn the_last_of_repeated_tls_options_wins_as_in_libpq() {
        let c: Config = "postgres://u@h/d?sslmode=disable&sslmode=require"
            .parse()
            .unwrap();
        assert_eq!(c.get_ssl_mode(), SslMode::Require);
    }
}
