//! The change feed's settings (see the [`feed`](crate::feed) chapter).

use std::time::Duration;

use super::Config;

impl Config {
    /// Whether the store keeps a change feed of its table ([`DurableStore::changes`]): then
    /// `CreateSchema` also applies `resources/changes.sql` to the table, new or existing (a
    /// log table and three statement-level triggers; the table itself is not altered), and
    /// the feed's reads are allowed. See the [`feed`](crate::feed) chapter.
    ///
    /// Refused with a Citus distributed table ([`Distribution::Citus`](crate::Distribution::Citus) here, or the `citus`
    /// extension found by `CreateSchema` under [`Distribution::Detect`](crate::Distribution::Detect)): transaction ids are
    /// per node there, so no snapshot can say which commits are complete.
    ///
    /// Defaults to false: a store and a table without the feed pay nothing for it.
    ///
    /// [`DurableStore::changes`]: crate::DurableStore::changes
    #[must_use]
    pub fn change_feed(mut self, on: bool) -> Self {
        self.change_feed = on;
        self
    }

    /// How often a waiting change stream asks for new changes when no notification came: the
    /// latency of the feed behind a transaction-mode pooler (where `LISTEN` cannot work, see
    /// [`Config::transaction_pooling`]) or after an unrelated transaction held the feed back.
    ///
    /// Defaults to [`Config::DEFAULT_CHANGE_POLL_INTERVAL`] (500 ms).
    #[must_use]
    pub fn change_poll_interval(mut self, interval: Duration) -> Self {
        self.change_poll_interval = interval;
        self
    }

    /// Whether the store keeps a change feed ([`Config::change_feed`]).
    pub fn get_change_feed(&self) -> bool {
        self.change_feed
    }
}
