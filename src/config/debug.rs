//! `Debug` of a [`Config`]: every setting, never the password or a private key.

use std::fmt;

use tokio_postgres::config::Host;

use super::{Config, Roots};

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hosts: Vec<String> = self
            .pg
            .get_hosts()
            .iter()
            .map(|h| match h {
                Host::Tcp(name) => name.clone(),
                #[cfg(unix)]
                Host::Unix(path) => path.display().to_string(),
            })
            .collect();
        let roots = match self.ssl_roots {
            Roots::None => "none",
            Roots::Pem(_) => "pem",
            Roots::System => "system",
        };
        f.debug_struct("Config")
            .field("hosts", &hosts)
            .field("ports", &self.pg.get_ports())
            .field("database", &self.pg.get_dbname())
            .field("user", &self.pg.get_user())
            .field("password", &self.pg.get_password().map(|_| "<redacted>"))
            .field("ssl_mode", &self.ssl_mode)
            .field("ssl_roots", &roots)
            .field("ssl_client_cert", &self.ssl_client_pem.is_some())
            .field("application_name", &self.pg.get_application_name())
            .field("schema", &self.schema)
            .field("table", &self.table)
            .field("max_connections", &self.max_connections)
            .field("min_idle_connections", &self.min_idle_connections)
            .field("max_connection_lifetime", &self.max_connection_lifetime)
            .field("max_connection_idle_time", &self.max_connection_idle_time)
            .field("health_check_period", &self.health_check_period)
            .field("checkout_timeout", &self.checkout_timeout)
            .field("version_check", &self.version_check)
            .field("max_batch_size", &self.max_batch_size)
            .field("max_pending_requests", &self.max_pending_requests)
            .field("statement_timeout", &self.statement_timeout)
            .field("transaction_pooling", &self.transaction_pooling)
            .field("distribution", &self.distribution)
            .field("max_state_bytes", &self.max_state_bytes)
            .field("row_format", &self.row_format)
            .field("change_feed", &self.change_feed)
            .field("change_poll_interval", &self.change_poll_interval)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_password() {
        let c = Config::new("h", 5432, "u", "hunter2", "d");
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(dbg.contains("<redacted>"), "{dbg}");
    }
}
