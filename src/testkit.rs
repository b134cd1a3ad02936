//! Test harness: a fresh PostgreSQL schema per test, for this crate's tests and its users'.
//!
//! The Rust counterpart of eGo's `TestContainer`/`SchemaUtils`. [`TestDatabase::new`] finds a
//! server, creates a uniquely named schema with the store's table in it, and hands out a
//! [`Config`] pointing at it; the schema is dropped by [`TestDatabase::cleanup`] or, failing
//! that, when the value is dropped (also when the test panics). Tests using it run in parallel
//! without seeing each other's rows.
//!
//! The server is, in order of preference:
//! 1. `DATABASE_URL`, when set;
//! 2. a PostgreSQL container started with testcontainers, when a Docker engine is reachable
//!    (`DOCKER_HOST` or `/var/run/docker.sock`); one per test process;
//! 3. the conventional local server `postgres://postgres@127.0.0.1:5432/postgres`, if it
//!    answers;
//! 4. a [`TempCluster`]: when PostgreSQL's server binaries are installed (`initdb` on `PATH`
//!    or under `/usr/lib/postgresql/<version>/bin`), a throwaway cluster in a temporary
//!    directory, one per test process, stopped and removed when the process ends.
//!
//! Otherwise [`TestDatabase::new`] fails with a message that says how to provide one.
//!
//! ```no_run
//! use actix::Actor;
//! use durablestore_postgres::{DurableStoreActor, Ping, testkit::TestDatabase};
//!
//! #[actix::test]
//! async fn store_answers() {
//!     let db = TestDatabase::new().await.unwrap();
//!     let store = DurableStoreActor::new(db.config()).unwrap().start();
//!     store.send(Ping).await.unwrap().unwrap();
//!     assert_eq!(db.count_rows().await.unwrap(), 0);
//!     db.cleanup().await.unwrap();
//! }
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use testcontainers_modules::postgres::Postgres;
use testcontainers_modules::testcontainers::ContainerAsync;
use testcontainers_modules::testcontainers::runners::AsyncRunner;
use tokio::sync::OnceCell;
use tokio_postgres::{Client, NoTls};

use crate::config::Config;
use crate::error::Error;
use crate::sql::{DETECT_CITUS, Identifier, Sql};

mod temp_cluster;

pub use temp_cluster::TempCluster;

/// The local server tried when neither `DATABASE_URL` nor Docker is available.
pub const LOCAL_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The server every test of this process uses, found once; a started container or cluster is
/// kept alive here for the life of the process.
static SERVER: OnceCell<(String, Started)> = OnceCell::const_new();

/// What the harness started for the process, if anything, held to keep it alive. Never
/// dropped (it lives in a `static`); [`TempCluster`]'s watchdog removes a cluster when the
/// process ends.
#[expect(dead_code, reason = "the values are held, never read")]
enum Started {
    Nothing,
    Container(Box<ContainerAsync<Postgres>>),
    Cluster(TempCluster),
}

static NEXT_SCHEMA: AtomicU64 = AtomicU64::new(0);

/// The URL of the test server (see the [module docs](self) for how it is chosen).
///
/// # Errors
/// [`Error::InvalidConfig`] explaining how to provide a database when none is found.
pub async fn database_url() -> Result<String, Error> {
    let (url, _) = SERVER.get_or_try_init(find_server).await?;
    Ok(url.clone())
}

async fn find_server() -> Result<(String, Started), Error> {
    if let Ok(url) = std::env::var("DATABASE_URL") {
        return Ok((url, Started::Nothing));
    }
    if docker_available() {
        match start_container().await {
            Ok(found) => return Ok(found),
            Err(error) => tracing::warn!(%error, "testcontainers could not start PostgreSQL"),
        }
    }
    if connect(LOCAL_DATABASE_URL).await.is_ok() {
        return Ok((LOCAL_DATABASE_URL.to_owned(), Started::Nothing));
    }
    if TempCluster::binaries_installed() {
        let cluster = tokio::task::spawn_blocking(TempCluster::start)
            .await
            .map_err(|e| Error::InvalidConfig(format!("throwaway PostgreSQL cluster: {e}")))??;
        return Ok((cluster.url(), Started::Cluster(cluster)));
    }
    Err(Error::InvalidConfig(format!(
        "no PostgreSQL for tests: set DATABASE_URL (e.g. {LOCAL_DATABASE_URL}), \
         run a Docker engine for testcontainers, start a local server on 127.0.0.1:5432, \
         or install PostgreSQL's server binaries (initdb) for a throwaway cluster"
    )))
}

fn docker_available() -> bool {
    std::env::var_os("DOCKER_HOST").is_some()
        || std::path::Path::new("/var/run/docker.sock").exists()
}

async fn start_container() -> Result<(String, Started), String> {
    let container = Postgres::default()
        .start()
        .await
        .map_err(|e| e.to_string())?;
    let host = container.get_host().await.map_err(|e| e.to_string())?;
    let port = container
        .get_host_port_ipv4(5432)
        .await
        .map_err(|e| e.to_string())?;
    let url = format!("postgres://postgres:postgres@{host}:{port}/postgres");
    Ok((url, Started::Container(Box::new(container))))
}

/// Opens one plain connection (no pool) for setup and assertions.
async fn connect(url: &str) -> Result<Client, Error> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|_| Error::InvalidConfig("DATABASE_URL does not parse".to_owned()))?;
    config.connect_timeout(Duration::from_secs(5));
    let (client, connection) =
        config
            .connect(NoTls)
            .await
            .map_err(|source| Error::Unavailable {
                source: source.into(),
            })?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// A uniquely named schema, with the store's table created, on the test server.
pub struct TestDatabase {
    url: String,
    schema: Identifier,
    config: Config,
    cleaned: bool,
}

impl std::fmt::Debug for TestDatabase {
    /// Shows the connection through [`Config`]'s `Debug`, which hides the password (the URL
    /// would not).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDatabase")
            .field("schema", &self.schema)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl TestDatabase {
    /// Creates a fresh schema named `dstest_<pid>_<n>_<time>` holding an empty `states_store`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when no server is found; database errors from the DDL.
    pub async fn new() -> Result<Self, Error> {
        Self::new_at(&database_url().await?).await
    }

    /// Like [`TestDatabase::new`], on the server at `url` (a second server, such as a Citus
    /// coordinator named by `CITUS_URL`).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a URL that does not parse; database errors from the DDL.
    pub async fn new_at(url: &str) -> Result<Self, Error> {
        let url = url.to_owned();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "dstest_{}_{}_{}",
            std::process::id(),
            NEXT_SCHEMA.fetch_add(1, Ordering::Relaxed),
            nanos
        );
        let schema = Identifier::parse("schema", &name)?;
        let config = url.parse::<Config>()?.schema(&name);
        let db = TestDatabase {
            url,
            schema,
            config,
            cleaned: false,
        };
        db.create_table(Config::DEFAULT_TABLE).await?;
        Ok(db)
    }

    /// A config for this schema: the server's connection settings, this schema, every other
    /// setting at its default. Each call returns a fresh copy to adjust.
    pub fn config(&self) -> Config {
        self.config.clone()
    }

    /// The schema's name.
    pub fn schema(&self) -> &str {
        self.schema.as_str()
    }

    /// The server's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A plain connection to the server, for raw SQL in assertions.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the server does not answer.
    pub async fn client(&self) -> Result<Client, Error> {
        connect(&self.url).await
    }

    /// Creates `table` (with the store's DDL) in this schema; where the `citus` extension is
    /// installed, distributed by `persistence_id`, as `CreateSchema` does there.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a name that is not a plain identifier; database errors.
    pub async fn create_table(&self, table: &str) -> Result<(), Error> {
        let table = Identifier::parse("table", table)?;
        let sql = Sql::for_names(&self.schema, &table);
        let client = self.client().await?;
        let citus: bool = client
            .query_one(DETECT_CITUS, &[])
            .await
            .and_then(|row| row.try_get(0))
            .map_err(Error::database)?;
        let ddl = if citus {
            &sql.create_distributed
        } else {
            &sql.create
        };
        client.batch_execute(ddl).await.map_err(Error::database)
    }

    /// Number of rows in `states_store` of this schema.
    ///
    /// # Errors
    /// Database errors (e.g. the table was dropped).
    pub async fn count_rows(&self) -> Result<i64, Error> {
        self.count_rows_in(Config::DEFAULT_TABLE).await
    }

    /// Number of rows in `table` of this schema.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a name that is not a plain identifier; database errors.
    pub async fn count_rows_in(&self, table: &str) -> Result<i64, Error> {
        let table = Identifier::parse("table", table)?;
        let sql = format!(
            "SELECT count(*) FROM {}.{}",
            self.schema.quoted(),
            table.quoted()
        );
        let row = self
            .client()
            .await?
            .query_one(&sql, &[])
            .await
            .map_err(Error::database)?;
        row.try_get(0).map_err(Error::database)
    }

    /// Whether `table` exists in this schema.
    ///
    /// # Errors
    /// Database errors.
    pub async fn table_exists(&self, table: &str) -> Result<bool, Error> {
        let row = self
            .client()
            .await?
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = $1 AND tablename = $2)",
                &[&self.schema.as_str(), &table],
            )
            .await
            .map_err(Error::database)?;
        row.try_get(0).map_err(Error::database)
    }

    /// Whether a schema of that name exists on the server.
    ///
    /// # Errors
    /// Database errors.
    pub async fn schema_exists(&self, schema: &str) -> Result<bool, Error> {
        let row = self
            .client()
            .await?
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
                &[&schema],
            )
            .await
            .map_err(Error::database)?;
        row.try_get(0).map_err(Error::database)
    }

    /// Drops `table` from this schema, if it exists.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a name that is not a plain identifier; database errors.
    pub async fn drop_table(&self, table: &str) -> Result<(), Error> {
        let table = Identifier::parse("table", table)?;
        let sql = format!(
            "DROP TABLE IF EXISTS {}.{}",
            self.schema.quoted(),
            table.quoted()
        );
        self.client()
            .await?
            .batch_execute(&sql)
            .await
            .map_err(Error::database)
    }

    /// Drops the schema and everything in it.
    ///
    /// # Errors
    /// Database errors; the drop is then retried when the value is dropped.
    pub async fn cleanup(mut self) -> Result<(), Error> {
        drop_schema(&self.url, &self.schema).await?;
        self.cleaned = true;
        Ok(())
    }
}

async fn drop_schema(url: &str, schema: &Identifier) -> Result<(), Error> {
    connect(url)
        .await?
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {} CASCADE",
            schema.quoted()
        ))
        .await
        .map_err(Error::database)
}

impl Drop for TestDatabase {
    /// Drops the schema when [`TestDatabase::cleanup`] was not called (e.g. the test panicked).
    /// Runs on its own thread and runtime, since the test's runtime may be shutting down.
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        let url = self.url.clone();
        let schema = self.schema.clone();
        let dropper = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            if let Err(error) = runtime.block_on(drop_schema(&url, &schema)) {
                tracing::warn!(%error, schema = schema.as_str(), "could not drop test schema");
            }
        });
        let _ = dropper.join();
    }
}
