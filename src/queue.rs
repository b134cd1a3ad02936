//! The batching queue, generic over the kind of request: admission with backpressure, and the
//! workers that turn whatever is queued into batches.
//!
//! Each kind of request has its own bounded queue served by `max_connections` workers. A
//! worker takes whatever is queued (at least one request, at most `max_batch_size`, at most
//! [`MAX_BATCH_BYTES`]) and hands it to the kind's batch function as one batch. A lone request
//! goes out at once; batches form only from requests that queued up while every worker was
//! busy — natural group commit, with no timer and no linger. When a queue is full, the
//! submitter waits for room (backpressure) instead of the store growing. A worker skips a
//! queued request whose caller stopped waiting.
//!
//! The queue knows nothing of SQL: what a batch does is the [`Kind`]'s business
//! (see [`crate::repository`]).

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc::error::{SendError, TrySendError};
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::error::Error;
use crate::telemetry::pending_requests;

/// Where a request's answer goes: the caller's reply channel (actix hands its own to the store
/// actor), or nowhere for a caller that does not wait (`do_send`).
pub(crate) type Reply<T> = Option<oneshot::Sender<Result<T, Error>>>;

/// The wait of a request for room in a full queue; the submitter must await it before
/// submitting anything else. Boxed: it exists only while the queue is full.
pub(crate) type Admission = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Most bytes one batch carries, whatever `max_batch_size` allows: PostgreSQL refuses messages
/// over 1 GiB, and a smaller statement keeps any one batch's latency in check.
const MAX_BATCH_BYTES: usize = 64 * 1024 * 1024;

/// A kind of request the store batches: what it carries and what it answers.
pub(crate) trait Kind: Send + 'static {
    /// The `kind` label of the `durablestore_pending_requests` gauge.
    const NAME: &'static str;
    /// What a request carries (already validated).
    type Input: Send + 'static;
    /// What a request is answered on success.
    type Output: Send + 'static;
    /// Where its answer goes: usually a [`Reply`] of [`Kind::Output`].
    type Reply: Respond<Self::Output>;

    /// The bytes a request adds to a batch.
    fn bytes(input: &Self::Input) -> usize;

    /// Called with each answer before it is sent, e.g. to record it: the request was queued
    /// at `queued`. A batch may record its answers itself instead, looking its metrics up
    /// once ([`Pending::answer_recorded`]).
    fn answered(_input: &Self::Input, _result: &Result<Self::Output, Error>, _queued: Instant) {}
}

/// Where an answer goes.
pub(crate) trait Respond<T>: Send + 'static {
    /// Sends the answer, if the caller still waits.
    fn respond(self, result: Result<T, Error>);
    /// True when the caller stopped waiting: the request need not be sent.
    fn is_closed(&self) -> bool;
}

impl<T: Send + 'static> Respond<T> for Reply<T> {
    fn respond(self, result: Result<T, Error>) {
        answer(self, result);
    }

    fn is_closed(&self) -> bool {
        self.as_ref().is_some_and(|reply| reply.is_closed())
    }
}

/// A request admitted into a queue, with the caller's reply channel.
pub(crate) struct Pending<K: Kind> {
    pub(crate) input: K::Input,
    reply: K::Reply,
    queued: Instant,
    _slot: Slot<K>,
}

impl<K: Kind> Pending<K> {
    pub(crate) fn new(input: K::Input, reply: K::Reply) -> Self {
        Pending {
            input,
            reply,
            queued: Instant::now(),
            _slot: Slot::new(),
        }
    }

    /// Answers the caller, if it still waits.
    pub(crate) fn answer(self, result: Result<K::Output, Error>) {
        K::answered(&self.input, &result, self.queued);
        self.reply.respond(result);
    }

    /// Answers the caller as [`Pending::answer`] does, without [`Kind::answered`]: the batch
    /// recorded this answer itself.
    pub(crate) fn answer_recorded(self, result: Result<K::Output, Error>) {
        self.reply.respond(result);
    }

    /// When the request was admitted.
    pub(crate) fn queued(&self) -> Instant {
        self.queued
    }

    /// True when the caller stopped waiting for the answer: the request need not be sent.
    fn abandoned(&self) -> bool {
        self.reply.is_closed()
    }
}

/// One admitted request of kind `K`, counted in the `durablestore_pending_requests` gauge
/// (label `kind`) for as long as it is alive (queued, in a batch, or waiting for room): the
/// memory the store holds for callers. The gauge is looked up once, at admission: its
/// decrement then goes where its increment went, and costs no second lookup.
struct Slot<K: Kind>(metrics::Gauge, PhantomData<fn() -> K>);

impl<K: Kind> Slot<K> {
    fn new() -> Self {
        let gauge = pending_requests(K::NAME);
        gauge.increment(1.0);
        Slot(gauge, PhantomData)
    }
}

impl<K: Kind> Drop for Slot<K> {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// The waiting end of a submitted request: its admission into a full queue first, then its
/// answer. A small future that owns nothing else, for callers that submit at once and wait
/// later (an entity's write). An answer that never comes (the runtime shut the workers down)
/// is [`Error::Interrupted`]: a write's outcome is then unknown.
pub(crate) struct Answer<T> {
    admission: Option<Admission>,
    answer: oneshot::Receiver<Result<T, Error>>,
}

impl<T> Answer<T> {
    /// Submits a request with a fresh reply channel now.
    pub(crate) fn submit(submit: impl FnOnce(Reply<T>) -> Option<Admission>) -> Self {
        let (reply, answer) = oneshot::channel();
        Answer {
            admission: submit(Some(reply)),
            answer,
        }
    }
}

impl<T> Future for Answer<T> {
    type Output = Result<T, Error>;

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        // Both fields are `Unpin`.
        let this = self.get_mut();
        if let Some(admission) = &mut this.admission {
            std::task::ready!(admission.as_mut().poll(cx));
            this.admission = None;
        }
        Pin::new(&mut this.answer)
            .poll(cx)
            .map(|answer| answer.unwrap_or(Err(Error::Interrupted)))
    }
}

/// Sends `result` to the caller, if it waits.
pub(crate) fn answer<T>(reply: Reply<T>, result: Result<T, Error>) {
    if let Some(reply) = reply {
        // The caller may have given up; the result stands all the same.
        let _ = reply.send(result);
    }
}

/// The submitting end of one kind's queue. Dropping it closes the queue: workers finish what
/// is queued, then exit.
pub(crate) struct Queue<K: Kind> {
    sender: mpsc::Sender<Pending<K>>,
}

impl<K: Kind> std::fmt::Debug for Queue<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("kind", &K::NAME)
            .field("room", &self.sender.capacity())
            .finish()
    }
}

impl<K: Kind> Queue<K> {
    /// A queue of `capacity` requests served by `workers` workers on the current Tokio runtime,
    /// each running batches of at most `max_batch_size` requests with `run`.
    pub(crate) fn start<F, Fut>(
        capacity: usize,
        workers: u32,
        max_batch_size: usize,
        run: F,
    ) -> Self
    where
        F: Fn(Vec<Pending<K>>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (sender, receiver) = mpsc::channel(capacity);
        let receiver = Arc::new(Mutex::new(Receiver {
            receiver,
            held: None,
        }));
        let run = Arc::new(run);
        for _ in 0..workers {
            tokio::spawn(work(receiver.clone(), max_batch_size, run.clone()));
        }
        Queue { sender }
    }

    /// Queues a request now, or returns the [`Admission`] that queues it once there is room:
    /// the submitter must wait for that future before submitting anything else, so the store holds
    /// at most `capacity` queued requests however they are sent. A closed queue (a
    /// disconnected store) answers [`Error::NotConnected`].
    pub(crate) fn submit(&self, input: K::Input, reply: K::Reply) -> Option<Admission> {
        match self.sender.try_send(Pending::new(input, reply)) {
            Ok(()) => None,
            Err(TrySendError::Closed(request)) => {
                request.answer(Err(Error::NotConnected));
                None
            }
            Err(TrySendError::Full(request)) => {
                let sender = self.sender.clone();
                Some(Box::pin(async move {
                    if let Err(SendError(request)) = sender.send(request).await {
                        request.answer(Err(Error::NotConnected));
                    }
                }))
            }
        }
    }
}

/// The receiving end shared by a queue's workers, with room for one request taken from the
/// channel but left for the next batch because it did not fit in this one.
struct Receiver<K: Kind> {
    receiver: mpsc::Receiver<Pending<K>>,
    held: Option<Pending<K>>,
}

/// A worker: takes at least one queued request and at most a batch of them (by count and by
/// bytes), runs the batch, repeats until the queue is closed and empty. Requests whose caller
/// stopped waiting are dropped unsent.
async fn work<K, F, Fut>(queue: Arc<Mutex<Receiver<K>>>, max_batch_size: usize, run: Arc<F>)
where
    K: Kind,
    F: Fn(Vec<Pending<K>>) -> Fut,
    Fut: Future<Output = ()>,
{
    loop {
        let batch = {
            // One worker at a time waits on the queue; the others are running batches.
            let mut queue = queue.lock().await;
            let first = match queue.held.take() {
                Some(held) => held,
                None => loop {
                    match queue.receiver.recv().await {
                        Some(first) if first.abandoned() => continue,
                        Some(first) => break first,
                        None => return,
                    }
                },
            };
            let mut bytes = K::bytes(&first.input);
            let mut batch = Vec::with_capacity(max_batch_size.min(64));
            batch.push(first);
            while batch.len() < max_batch_size {
                match queue.receiver.try_recv() {
                    Ok(next) if next.abandoned() => continue,
                    Ok(next) if bytes + K::bytes(&next.input) > MAX_BATCH_BYTES => {
                        queue.held = Some(next);
                        break;
                    }
                    Ok(next) => {
                        bytes += K::bytes(&next.input);
                        batch.push(next);
                    }
                    Err(_) => break,
                }
            }
            batch
        };
        run(batch).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;

    use super::*;

    /// A kind with no database: a batch answers each request with the batch's size.
    struct Echo;

    impl Kind for Echo {
        const NAME: &'static str = "echo";
        type Input = usize;
        type Output = usize;
        type Reply = Reply<usize>;

        fn bytes(input: &usize) -> usize {
            *input
        }
    }

    /// The batches a queue ran, by their inputs.
    type Batches = Arc<StdMutex<Vec<Vec<usize>>>>;

    fn echo_queue(capacity: usize, max_batch_size: usize) -> (Queue<Echo>, Batches) {
        let seen = Arc::new(StdMutex::new(Vec::new()));
        let record = seen.clone();
        let queue = Queue::start(
            capacity,
            1,
            max_batch_size,
            move |batch: Vec<Pending<Echo>>| {
                let record = record.clone();
                async move {
                    let len = batch.len();
                    record
                        .lock()
                        .unwrap()
                        .push(batch.iter().map(|p| p.input).collect());
                    for pending in batch {
                        pending.answer(Ok(len));
                    }
                }
            },
        );
        (queue, seen)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn queued_requests_go_out_together_up_to_the_batch_size() {
        let (queue, seen) = echo_queue(100, 4);
        let mut replies = Vec::new();
        // The worker cannot run before this task yields: all ten queue up first.
        for i in 0..10 {
            let (tx, rx) = oneshot::channel();
            assert!(queue.submit(i, Some(tx)).is_none());
            replies.push(rx);
        }
        let sizes: Vec<usize> = futures_util::future::join_all(replies)
            .await
            .into_iter()
            .map(|r| r.unwrap().unwrap())
            .collect();
        assert_eq!(sizes, [4, 4, 4, 4, 4, 4, 4, 4, 2, 2]);
        assert_eq!(
            *seen.lock().unwrap(),
            vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9]]
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn abandoned_requests_are_skipped_and_a_full_queue_admits_later() {
        let (queue, seen) = echo_queue(2, 10);
        let (gone, rx) = oneshot::channel();
        drop(rx);
        assert!(queue.submit(1, Some(gone)).is_none());
        let (tx, kept) = oneshot::channel();
        assert!(queue.submit(2, Some(tx)).is_none());
        let (tx, late) = oneshot::channel();
        let admission = queue.submit(3, Some(tx)).expect("the queue is full");
        admission.await;
        assert_eq!(kept.await.unwrap().unwrap(), 1);
        assert_eq!(late.await.unwrap().unwrap(), 1);
        assert_eq!(*seen.lock().unwrap(), vec![vec![2], vec![3]]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_closed_queue_answers_not_connected() {
        let (sender, receiver) = mpsc::channel(1);
        drop(receiver);
        let closed = Queue::<Echo> { sender };
        let (tx, rx) = oneshot::channel();
        assert!(closed.submit(7, Some(tx)).is_none());
        assert!(matches!(rx.await.unwrap(), Err(Error::NotConnected)));
    }
}
