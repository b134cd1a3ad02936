//! [`Changes`]: the feed as a `Stream` that follows it forever, woken by notifications and
//! polling when none come.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::stream::{BoxStream, Stream, StreamExt};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_postgres::AsyncMessage;

use super::reader::{Feed, ListenTo};
use super::{Change, Offset};
use crate::error::Error;

/// How many log entries a stream reads per statement.
const STREAM_PAGE: usize = 1_000;

/// The changes after an offset, as a [`Stream`] that never ends: when it has delivered all
/// there is, it waits for more (see [`DurableStore::changes`](crate::DurableStore::changes)).
///
/// An error (the database unreachable, a row that does not decode) is yielded as an item; the
/// stream then waits one poll interval and reads again from the same offset, so a consumer may
/// keep polling it or drop it. Dropping it closes its listening connection.
pub struct Changes {
    inner: BoxStream<'static, Result<Change, Error>>,
}

impl std::fmt::Debug for Changes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Changes").finish_non_exhaustive()
    }
}

impl Stream for Changes {
    type Item = Result<Change, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_next_unpin(cx)
    }
}

impl Changes {
    pub(crate) fn follow(feed: Arc<Feed>, from: Offset) -> Self {
        let state = Follow {
            feed,
            next: from,
            buffer: VecDeque::new(),
            listener: None,
            failed: false,
        };
        Changes {
            inner: futures_util::stream::unfold(state, Follow::step).boxed(),
        }
    }

    /// A stream whose only item is `error`.
    pub(crate) fn failing(error: Error) -> Self {
        Changes {
            inner: futures_util::stream::once(async move { Err(error) }).boxed(),
        }
    }
}

struct Follow {
    feed: Arc<Feed>,
    next: Offset,
    buffer: VecDeque<Change>,
    listener: Option<Listener>,
    /// The last read failed: wait before the next.
    failed: bool,
}

impl Follow {
    async fn step(mut self) -> Option<(Result<Change, Error>, Self)> {
        loop {
            if let Some(change) = self.buffer.pop_front() {
                return Some((Ok(change), self));
            }
            if self.failed {
                tokio::time::sleep(self.feed.poll_interval).await;
                self.failed = false;
            }
            // Listening before reading: a commit after the read still wakes the wait below.
            self.listen().await;
            match self.feed.page(&self.next, STREAM_PAGE).await {
                Ok(page) => {
                    let read_all = page.next == self.next;
                    self.next = page.next;
                    self.buffer.extend(page.changes);
                    if read_all {
                        self.wait().await;
                    }
                }
                Err(error) => {
                    self.failed = true;
                    return Some((Err(error), self));
                }
            }
        }
    }

    /// Opens the listening connection if there is none (or it died); without one the stream
    /// polls.
    async fn listen(&mut self) {
        if self.listener.as_ref().is_some_and(Listener::is_alive) {
            return;
        }
        self.listener = None;
        let Some(to) = &self.feed.listen else {
            return;
        };
        match self.feed.channel().await {
            Ok(channel) => match Listener::start(to, &channel).await {
                Ok(listener) => self.listener = Some(listener),
                Err(error) => tracing::debug!(%error, "change feed: LISTEN failed; polling"),
            },
            Err(error) => tracing::debug!(%error, "change feed: no channel; polling"),
        }
    }

    /// Until a notification or the poll interval, whichever first.
    async fn wait(&self) {
        let interval = self.feed.poll_interval;
        match &self.listener {
            Some(listener) => {
                let _ = tokio::time::timeout(interval, listener.notify.notified()).await;
            }
            None => tokio::time::sleep(interval).await,
        }
    }
}

/// A dedicated connection that `LISTEN`s on the table's channel and turns each notification
/// into a permit of `notify`.
struct Listener {
    /// Kept for the connection's sake: dropping the client closes it.
    _client: tokio_postgres::Client,
    notify: Arc<Notify>,
    task: JoinHandle<()>,
}

impl Listener {
    async fn start(to: &ListenTo, channel: &str) -> Result<Self, Error> {
        let notify = Arc::new(Notify::new());
        let (client, task) = match &to.tls {
            None => {
                let (client, connection) = to
                    .pg
                    .connect(tokio_postgres::NoTls)
                    .await
                    .map_err(Error::unavailable)?;
                (client, tokio::spawn(deliver(connection, notify.clone())))
            }
            Some(tls) => {
                let (client, connection) = to
                    .pg
                    .connect(tls.clone())
                    .await
                    .map_err(Error::unavailable)?;
                (client, tokio::spawn(deliver(connection, notify.clone())))
            }
        };
        // The channel is `durablestore_changes_` and an oid: a plain identifier.
        client
            .batch_execute(&format!("LISTEN \"{channel}\""))
            .await
            .map_err(Error::database)?;
        Ok(Listener {
            _client: client,
            notify,
            task,
        })
    }

    fn is_alive(&self) -> bool {
        !self.task.is_finished()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Drives a connection, waking `notify` at each notification, until it closes.
async fn deliver<S, T>(mut connection: tokio_postgres::Connection<S, T>, notify: Arc<Notify>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    while let Some(message) = messages.next().await {
        match message {
            Ok(AsyncMessage::Notification(_)) => notify.notify_one(),
            Ok(_) => {}
            Err(error) => {
                tracing::debug!(%error, "change feed: the listening connection closed");
                return;
            }
        }
    }
}
