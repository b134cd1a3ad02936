//! The change feed: every change of a store's table, to any process, from a stored offset,
//! never skipping a commit.
//!
//! A read model in another service, a search index, a cache in another replica: each follows
//! the table's changes with [`DurableStore::changes`], a [`Stream`] of [`Change`]s, or page by
//! page with [`DurableStore::changes_page`]. Each change carries its [`Offset`]; a consumer
//! stores the offset of what it processed and resumes from it after a restart.
//!
//! # Turning it on
//!
//! The feed is opt-in per store: [`Config::change_feed`]`(true)`. [`CreateSchema`] then also
//! applies `resources/changes.sql` (an additive migration, to a new table or an existing one
//! with its rows): a log table `{table}_changes`, and triggers on the table for the writers
//! that are not this crate. A store without it pays nothing, and its table is not touched.
//!
//! The feed belongs to the table, not to a store: every store writing a table that has it
//! logs its writes, also one configured without `change_feed` or started before another
//! process installed the feed. Such a store's first write on each connection is refused by
//! the triggers before it touches a row (SQLSTATE `DSF01`), and the store sends it again, and
//! every later write, in the form that logs itself: no write is lost, and none fails.
//!
//! ```no_run
//! use durablestore_postgres::futures_util::StreamExt;
//! use durablestore_postgres::{Config, DurableState, DurableStore, Offset};
//!
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let config: Config = "postgres://postgres@127.0.0.1:5432/postgres".parse()?;
//!     let store = DurableStore::new(config.schema("feed_example").change_feed(true))?;
//!     store.create_schema().await?;
//!     store
//!         .write(DurableState::new("account-1", 1, &prost_types::Duration::default()))
//!         .await?;
//!
//!     // Where the consumer stopped last time (stored with what it did, as text or bytes).
//!     let stored = Offset::BEGINNING.to_string();
//!     let mut changes = store.changes(stored.parse()?);
//!     while let Some(change) = changes.next().await {
//!         let change = change?;
//!         match &change.state {
//!             Some(state) => println!("{} is at version {}", change.persistence_id, state.version_number),
//!             None => println!("{} was deleted", change.persistence_id),
//!         }
//!         let _resume_from_here: String = change.offset.to_string();
//!         # break;
//!     }
//!     Ok(())
//! }
//! ```
//!
//! `examples/projection.rs` keeps a read model in PostgreSQL with the offset in the same
//! transaction as the read model's update: a crash between the two cannot happen, so each
//! change counts exactly once.
//!
//! Removing the feed is the migration backwards, by hand: drop the triggers
//! `durablestore_changes_start`, `_row`, `_scan` and `_delete` of the table, then the function
//! `{table}_changes_log()` and the log `{table}_changes`, then restart the stores that wrote it
//! (a store that logs its writes keeps doing so until it restarts, and its writes fail while
//! the log is gone).
//!
//! # What a consumer may rely on
//!
//! - **Nothing committed after the offset is skipped.** Every change committed after the
//!   offset is delivered at least once, also when transactions commit in another order than
//!   they started, and after the consumer crashed and resumed from a stored offset.
//! - **Latest wins, intermediate versions may be coalesced.** Of an entity changed several
//!   times since the offset, at least its latest version is delivered; versions in between
//!   may not be. A change carries the entity's row as it is when the feed reads it.
//! - **Per entity, versions never go backwards** within a stream, and across a resume from
//!   any offset the stream delivered.
//! - **Deletions are delivered**, as a change whose `state` is `None` and whose `version` is
//!   the tombstone's. Purging tombstones ([`PurgeDeleted`]) never makes a deleted id come
//!   back for a consumer, however far behind: the purge is a deletion too.
//! - **Any writer is followed**: this crate's write statements log the ids they wrote in the
//!   same statement; triggers catch every other client's inserts (row by row, also each row of
//!   eGo's Go store's upsert of its six columns, `INSERT … ON CONFLICT DO UPDATE`), plain
//!   `UPDATE`s (at the statement's end, one scan of the table finds the rows its transaction
//!   wrote, also in savepoints) and every `DELETE`.
//! - Delivery is at least once: a change may come again (after a resume, or when the feed read
//!   an entity's row before the entry of its latest write became deliverable). A consumer
//!   ignores a version it already has.
//!
//! # How the offset is made
//!
//! An offset is never a time: the `timestamp` column is whatever the writer put there (eGo v3
//! writes seconds, v4.2 nanoseconds, this crate milliseconds) and two commits can share one. A
//! sequence taken before commit does not work either: a transaction that took number 10 and
//! commits after number 11 was read is skipped by a consumer already past 11.
//!
//! Each write statement of this crate appends one log row holding the ids it wrote (up to
//! 1,000 per log row; another client's insert one per row, its plain update one per
//! statement), stamped with the writing transaction's id (`pg_current_xact_id()`, a
//! 64-bit `xid8`, which never wraps around) and numbered by an identity column (`seq`). An
//! offset is (transaction id, log row, position of the id in it). The feed reads the entries
//! in that order and delivers only those of transactions below the `xmin` of its statement's
//! snapshot (`pg_snapshot_xmin(pg_current_snapshot())`): every transaction below it has
//! ended, so no entry can ever appear below a delivered offset again (the `seq` of a
//! transaction's rows orders them only among that transaction's, which are all visible at
//! once). A transaction still running holds the feed back at its id, until it commits or
//! aborts, instead of being skipped.
//!
//! Each entry is delivered with the entity's row as the same statement reads it, not with a
//! copy of the state that was written. That is what keeps versions in order: two
//! transactions writing one row can get their ids in the other order than their writes
//! (transaction 100 starts, transaction 101 writes version 2 and commits, then 100, which
//! waited, writes version 3). Delivering each entry's own write would deliver version 3 (at
//! 100) then version 2 (at 101). But neither entry is deliverable while 100 runs, and once it
//! ended both are read with the row as it is then: version 3 both times. The row's stored
//! version only grows (the version rule of [`VersionCheck::Sequential`]), and the pages of a
//! stream are read one after the other, so a later page never reads an older row. An entry
//! whose row is gone delivers nothing unless it is the deletion itself: every deletion has an
//! entry of its own, with the deleted (latest) version.
//!
//! Limits of the technique, all of them held back, none of them skipped:
//! - any long transaction that was given an id (any write, to any table of the cluster)
//!   holds the feed back until it ends, as long-running transactions hold back vacuum;
//! - a purged id written again starts over at version 1, and is delivered as such;
//! - with [`VersionCheck::Unchecked`] (and eGo's last-writer-wins store) the versions are the
//!   writers': a stream delivers rows in commit order, which is not version order if a writer
//!   went back;
//! - the feed runs on the primary: transaction ids of a standby's snapshots are not the ones
//!   to resume from there.
//!
//! On Citus transaction ids are per node, so no snapshot says which distributed commits are
//! complete: the feed refuses a distributed table with [`Error::InvalidConfig`] (at
//! [`Config`] check with [`Distribution::Citus`], at [`CreateSchema`] when the `citus`
//! extension is found). A table Citus keeps local works with [`Distribution::SingleServer`].
//!
//! # What it costs
//!
//! The table is not altered: no column and no index is added, so its updates stay HOT
//! (an index on a column that changes on every write makes every update a non-HOT one).
//! A write statement of this crate pays one insert into the append-only log (a batch is one
//! statement, its ids in one array), one index entry, and a notification from at most one
//! transaction at a time (a notifying commit takes a database-wide lock, so only the holder
//! of a try-lock notifies). It logs itself, in the statement, because any trigger that sees
//! updates costs every update: PostgreSQL fetches the old row for each one before it looks
//! at a row trigger's `WHEN`, and copies each row into a transition table. On a two-core test
//! machine at 1,000 writers, the feed cost 6–8 % of the write rate (0.94×, 0.92×, 0.93×, medians
//! of three runs; 8–10 % more CPU per state, 3 % more WAL); the statement triggers with
//! transition tables of the previous version cost 10–11 % in the same runs, a log of one row
//! per written row (the first design) 25 %. Other clients pay for being caught: an insert
//! adds a log row per row (a bulk `INSERT … SELECT` as many), and a plain `UPDATE` statement
//! one scan of the whole table at its end (to find the rows its transaction wrote); eGo's Go
//! store writes one row per statement, an upsert, so it pays a log row per write.
//! `BENCHMARKS.md` ("Change feed") has the measurements, the designs compared and the plan of
//! a resuming read (index range scans, only the changed entries). The log keeps each write's
//! entry until [`DurableStore::compact_changes`] removes the entries that a later one of the
//! same id made redundant (blanked in place, so that no offset moves; a log row left with
//! none is deleted). Run it periodically; consumers lose nothing by it.
//!
//! # Waking up: notifications and polling
//!
//! A stream that has delivered everything waits for a notification (`LISTEN` on a dedicated
//! connection per stream; writes `pg_notify` at most once per writing transaction) or for
//! [`Config::change_poll_interval`], whichever comes first, then reads again. Notifications
//! only shorten the wait (under load a committing transaction may leave the notifying to a
//! concurrent one, whose notification or the next poll picks its changes up): a lost one (a dropped listening connection, which is reopened) costs
//! at most one poll interval, never a change. Behind a transaction-mode pooler (pgBouncer's
//! `pool_mode = transaction`, [`Config::transaction_pooling`]) `LISTEN` cannot work, as the
//! server connection changes between transactions: the stream polls only.
//!
//! # In an actix system
//!
//! A [`Changes`] stream is a `Stream`: an actor consumes it with
//! `ctx.add_stream(store.changes(from))` and a [`StreamHandler`](actix::StreamHandler):
//!
//! ```no_run
//! use actix::{Actor, AsyncContext, Context, StreamHandler};
//! use durablestore_postgres::{Change, DurableStore, Error, Offset};
//!
//! struct Projector {
//!     store: DurableStore,
//!     from: Offset,
//! }
//!
//! impl Actor for Projector {
//!     type Context = Context<Self>;
//!
//!     fn started(&mut self, ctx: &mut Context<Self>) {
//!         ctx.add_stream(self.store.changes(self.from.clone()));
//!     }
//! }
//!
//! impl StreamHandler<Result<Change, Error>> for Projector {
//!     fn handle(&mut self, change: Result<Change, Error>, _ctx: &mut Context<Self>) {
//!         match change {
//!             Ok(change) => self.from = change.offset,
//!             // The stream retries by itself after a poll interval.
//!             Err(error) => eprintln!("change feed: {error}"),
//!         }
//!     }
//! }
//! ```
//!
//! # The registry's publishers and the feed
//!
//! Both stay. The [`EntityRegistry`]'s state publishers ([`StateChanged`]) tell actors of the
//! same process about a state its entities just persisted: no database round trip, but
//! in-process only, lost on restart, and a slow subscriber may miss some under load. The feed
//! is for every other process and for anything that must not miss a change: it reads the
//! table, whoever wrote it, resumes from an offset, and never skips.
//!
//! [`DurableStore::changes`]: crate::DurableStore::changes
//! [`DurableStore::changes_page`]: crate::DurableStore::changes_page
//! [`DurableStore::compact_changes`]: crate::DurableStore::compact_changes
//! [`Stream`]: futures_util::Stream
//! [`Config`]: crate::Config
//! [`Config::change_feed`]: crate::Config::change_feed
//! [`Config::change_poll_interval`]: crate::Config::change_poll_interval
//! [`Config::transaction_pooling`]: crate::Config::transaction_pooling
//! [`CreateSchema`]: crate::CreateSchema
//! [`PurgeDeleted`]: crate::PurgeDeleted
//! [`VersionCheck::Sequential`]: crate::VersionCheck::Sequential
//! [`VersionCheck::Unchecked`]: crate::VersionCheck::Unchecked
//! [`Distribution::Citus`]: crate::Distribution::Citus
//! [`Distribution::SingleServer`]: crate::Distribution::SingleServer
//! [`Error::InvalidConfig`]: crate::Error::InvalidConfig
//! [`EntityRegistry`]: crate::EntityRegistry
//! [`StateChanged`]: crate::StateChanged

mod change;
mod offset;
mod reader;
mod stream;

pub use self::change::{Change, ChangePage};
pub use self::offset::{Offset, OffsetParseError};
pub(crate) use self::reader::Feed;
pub use self::stream::Changes;
