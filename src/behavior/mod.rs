//! What a user writes to make an entity durable: its state, its commands, its decisions.

mod command_error;
pub(crate) mod harness;

pub use self::command_error::CommandError;

use crate::error::Error;
use crate::state::DurableState;

/// What an entity's state must be: something that becomes a [`DurableState`] and back.
///
/// Two kinds of state implement it, so a [`DurableStateBehavior::State`] is one of:
/// - any prost message with a `prost::Name` and a `Default` (a blanket impl), stored as
///   protobuf: the default, and the format eGo's Go store reads;
/// - with the `serde` feature, `Json<T>` of any `JsonState` `T` (a serde type with a stable
///   name), stored as JSON, which the Go store cannot read.
///
/// Implement it yourself for a format of your own, or to keep a domain type apart from its
/// stored form, on a type of your own that is not a prost message (those have the blanket
/// impl); delegate to [`DurableState::new`] and [`DurableState::decode_state`] (or
/// `DurableState::from_json` and `DurableState::decode_json`):
///
/// ```
/// use durablestore_postgres::{DurableState, EntityState, Error};
///
/// /// The stored form: a protobuf message.
/// #[derive(Clone, PartialEq, prost::Message)]
/// pub struct BalanceRecord {
///     #[prost(int64, tag = "1")]
///     pub cents: i64,
/// }
/// impl prost::Name for BalanceRecord {
///     const NAME: &'static str = "BalanceRecord";
///     const PACKAGE: &'static str = "bank.v1";
/// }
///
/// /// The domain type, free of protobuf attributes.
/// #[derive(Debug, Clone, Default, PartialEq)]
/// pub struct Balance {
///     pub cents: i64,
/// }
///
/// impl EntityState for Balance {
///     fn to_durable_state(&self, id: &str, version: u64) -> Result<DurableState, Error> {
///         let record = BalanceRecord { cents: self.cents };
///         Ok(DurableState::new(id, version, &record))
///     }
///     fn from_durable_state(state: &DurableState) -> Result<Self, Error> {
///         let record: BalanceRecord = state.decode_state()?;
///         Ok(Balance { cents: record.cents })
///     }
/// }
///
/// let state = Balance { cents: 250 }.to_durable_state("account-1", 1)?;
/// assert_eq!(state.state_type(), Some("bank.v1.BalanceRecord"));
/// assert_eq!(Balance::from_durable_state(&state)?, Balance { cents: 250 });
/// # Ok::<(), Error>(())
/// ```
pub trait EntityState: Sized {
    /// This state as version `version_number` of `persistence_id`, stamped with the current
    /// time and shard 0.
    ///
    /// # Errors
    /// When the state cannot be encoded (never for a protobuf state): for a JSON state,
    /// `Error::EncodeJson` or an invalid `JsonState::NAME`
    /// ([`Error::InvalidInput`]); nothing is written then.
    fn to_durable_state(
        &self,
        persistence_id: &str,
        version_number: u64,
    ) -> Result<DurableState, Error>;

    /// The state held by `state`.
    ///
    /// # Errors
    /// [`Error::StateTypeMismatch`] when `state` holds another type (or another kind of state),
    /// [`Error::Decode`] (`Error::DecodeJson` for JSON) when its bytes do not decode, and
    /// [`Error::InvalidInput`] when it holds no state.
    fn from_durable_state(state: &DurableState) -> Result<Self, Error>;
}

/// Protobuf states, stored under `type.googleapis.com/<full name>` as the Go store does.
impl<M: prost::Message + prost::Name + Default> EntityState for M {
    fn to_durable_state(
        &self,
        persistence_id: &str,
        version_number: u64,
    ) -> Result<DurableState, Error> {
        Ok(DurableState::new(persistence_id, version_number, self))
    }

    fn from_durable_state(state: &DurableState) -> Result<Self, Error> {
        state.decode_state()
    }
}

/// An entity whose state survives restarts: the Rust counterpart of eGo's and Akka's
/// `DurableStateBehavior`.
///
/// Implement this trait for your entity type (it may carry any fields of its own), and
/// [`HandleCommand`] (or [`HandleCommandAsync`]) once per command type; then run the entities
/// by id with an [`EntityRegistry`](crate::EntityRegistry), or start one with
/// [`DurableEntity::new`](crate::DurableEntity::new). The entity actor does the rest: it
/// recovers the latest state from the store before handling the first command, persists each
/// new state (version + 1) before replying, and never lets two commands interleave.
///
/// ```
/// use actix::Message;
/// use durablestore_postgres::{CommandError, DurableStateBehavior, Effect, HandleCommand};
///
/// #[derive(Clone, PartialEq, prost::Message)]
/// pub struct CounterState {
///     #[prost(int64, tag = "1")]
///     pub value: i64,
/// }
/// impl prost::Name for CounterState {
///     const NAME: &'static str = "CounterState";
///     const PACKAGE: &'static str = "demo";
/// }
///
/// pub struct Counter {
///     id: String,
/// }
///
/// impl DurableStateBehavior for Counter {
///     type State = CounterState;
///     fn persistence_id(&self) -> &str {
///         &self.id
///     }
/// }
///
/// /// Add `0` to the counter; replies with the new value.
/// #[derive(Clone, Message)]
/// #[rtype(result = "Result<i64, CommandError<String>>")]
/// pub struct Add(pub i64);
///
/// impl HandleCommand<Add> for Counter {
///     type Reply = i64;
///     type Error = String;
///     fn handle_command(
///         &mut self,
///         Add(n): Add,
///         state: &CounterState,
///         _version: u64,
///     ) -> Result<Effect<CounterState, i64>, String> {
///         if n == 0 {
///             return Ok(Effect::none(state.value)); // nothing changes, nothing is written
///         }
///         let value = state.value.checked_add(n).ok_or("overflow")?;
///         Ok(Effect::persist(CounterState { value }, value))
///     }
/// }
/// ```
pub trait DurableStateBehavior: Unpin + 'static {
    /// The entity's state, stored as the row's payload: a protobuf message with a
    /// `prost::Name` or, with the `serde` feature, `Json<T>` of a serde type with a stable
    /// name (see [`EntityState`]).
    type State: EntityState + Default + Clone + PartialEq + std::fmt::Debug + Unpin + 'static;

    /// The entity's id, its primary key in the store (1 to 255 characters, as the
    /// `VARCHAR(255)` column counts them; no NUL).
    fn persistence_id(&self) -> &str;

    /// The state of an entity that has never been persisted, at version 0.
    ///
    /// Defaults to `Self::State::default()`.
    fn initial_state(&self) -> Self::State {
        Self::State::default()
    }
}

/// How a [`DurableStateBehavior`] decides on the command `C`.
///
/// `C` must be an actix message replying `Result<Self::Reply, CommandError<Self::Error>>`, and
/// `Clone`: a decision whose write conflicts is made again on the reloaded state, from a clone
/// of the command (see [`ConflictPolicy`](crate::ConflictPolicy)). A decision that must wait
/// (for another service) implements [`HandleCommandAsync`] instead.
pub trait HandleCommand<C>: DurableStateBehavior {
    /// What a successful command replies.
    type Reply;
    /// The domain error that rejects the command (e.g. insufficient funds).
    type Error;

    /// Decides from the command, the current state and its version (0 before the first
    /// persisted state) what happens: a new state to persist and the reply, only a reply, or
    /// a domain error. Called with no command in flight; the state passed is always the last
    /// persisted one.
    ///
    /// **A decision may run more than once.** When its write conflicts (another replica wrote
    /// this entity first), the entity reloads the stored state and decides the same command
    /// (a clone of it) again, as its [`ConflictPolicy`](crate::ConflictPolicy) allows. So a
    /// decision must have no effect outside the [`Effect`] it returns: send emails, charge
    /// cards or publish events from what the command's reply or a
    /// [`StateChanged`](crate::StateChanged) tells once it is stored, never from here.
    fn handle_command(
        &mut self,
        command: C,
        state: &Self::State,
        version: u64,
    ) -> Result<Effect<Self::State, Self::Reply>, Self::Error>;
}

/// How a [`DurableStateBehavior`] decides on the command `C` when deciding needs to wait, e.g.
/// for another service (a fraud check, a price, another entity's answer).
///
/// The entity still handles **one command at a time, in mailbox order**: the next command is not
/// looked at until this decision has finished and its effect is persisted (the whole of it runs
/// inside actix's [`AtomicResponse`](actix::AtomicResponse)). So a slow decision holds up the
/// entity's later commands, not other entities.
///
/// Like a synchronous decision, an asynchronous one may run more than once (after a conflict,
/// on the reloaded state): what it asks of other services must be safe to ask again (a
/// read, a check, another entity's answer to an idempotent query), and it must change nothing
/// outside the [`Effect`] it returns.
///
/// The decision is a `'static` future: it cannot borrow `self` or `state` across an `.await`.
/// Take what it needs (a client handle, the fields of the state it reads) before the `async`
/// block. `C` must be an actix message replying
/// `Result<Self::Reply, CommandError<Self::Error>>`, as for [`HandleCommand`].
///
/// Every [`HandleCommand`] is also a `HandleCommandAsync` whose future is ready at once (a
/// blanket impl), so a behavior implements either trait for a given command, never both; an
/// entity and an [`EntityRegistry`](crate::EntityRegistry) accept both kinds alike.
///
/// ```
/// use std::future::Future;
///
/// use actix::Message;
/// use durablestore_postgres::{CommandError, DurableStateBehavior, Effect, HandleCommandAsync};
///
/// #[derive(Clone, PartialEq, prost::Message)]
/// pub struct AccountState {
///     #[prost(int64, tag = "1")]
///     pub balance_cents: i64,
/// }
/// impl prost::Name for AccountState {
///     const NAME: &'static str = "AccountState";
///     const PACKAGE: &'static str = "bank.v1";
/// }
///
/// /// Another service; any cloneable client works.
/// #[derive(Clone)]
/// pub struct FraudCheck;
/// impl FraudCheck {
///     pub async fn allows(&self, _cents: i64) -> bool {
///         true
///     }
/// }
///
/// pub struct Account {
///     pub id: String,
///     pub fraud: FraudCheck,
/// }
/// impl DurableStateBehavior for Account {
///     type State = AccountState;
///     fn persistence_id(&self) -> &str {
///         &self.id
///     }
/// }
///
/// #[derive(Clone, Message)]
/// #[rtype(result = "Result<i64, CommandError<String>>")]
/// pub struct Withdraw(pub i64);
///
/// impl HandleCommandAsync<Withdraw> for Account {
///     type Reply = i64;
///     type Error = String;
///     fn handle_command_async(
///         &mut self,
///         Withdraw(cents): Withdraw,
///         state: &AccountState,
///         _version: u64,
///     ) -> impl Future<Output = Result<Effect<AccountState, i64>, String>> + 'static {
///         let (fraud, balance_cents) = (self.fraud.clone(), state.balance_cents);
///         async move {
///             if !fraud.allows(cents).await {
///                 return Err("refused by the fraud check".to_owned());
///             }
///             let balance_cents = balance_cents - cents;
///             Ok(Effect::persist(AccountState { balance_cents }, balance_cents))
///         }
///     }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not decide on `{C}`",
    label = "no decision for this command",
    note = "implement `HandleCommand<{C}>` (or `HandleCommandAsync<{C}>`) for `{Self}`"
)]
pub trait HandleCommandAsync<C>: DurableStateBehavior {
    /// What a successful command replies.
    type Reply: 'static;
    /// The domain error that rejects the command.
    type Error: 'static;

    /// Decides, as [`HandleCommand::handle_command`] does, but may wait before answering. Called
    /// with no command in flight, with the last persisted state and its version; nothing else
    /// reaches the entity until the returned future is done and its effect persisted.
    fn handle_command_async(
        &mut self,
        command: C,
        state: &Self::State,
        version: u64,
    ) -> impl Future<Output = Result<Effect<Self::State, Self::Reply>, Self::Error>> + 'static;

    /// The decision made at once, when this behavior decides without waiting; otherwise the
    /// command back, to be decided by [`HandleCommandAsync::handle_command_async`]. Every
    /// [`HandleCommand`] decides at once (the entity then runs its decision with no future of
    /// its own); keep the default for an asynchronous decision.
    #[doc(hidden)]
    // A decision, or the command given back: clippy counts the nesting, not its meaning.
    #[allow(clippy::type_complexity)]
    fn decide_at_once(
        &mut self,
        command: C,
        _state: &Self::State,
        _version: u64,
    ) -> Result<Decision<Self::State, Self::Reply, Self::Error>, C> {
        Err(command)
    }
}

/// A synchronous decision is an asynchronous one that is ready at once.
impl<B, C> HandleCommandAsync<C> for B
where
    B: HandleCommand<C>,
    B::Reply: 'static,
    B::Error: 'static,
{
    type Reply = B::Reply;
    type Error = B::Error;

    fn handle_command_async(
        &mut self,
        command: C,
        state: &Self::State,
        version: u64,
    ) -> impl Future<Output = Result<Effect<Self::State, Self::Reply>, Self::Error>> + 'static {
        std::future::ready(self.handle_command(command, state, version))
    }

    fn decide_at_once(
        &mut self,
        command: C,
        state: &Self::State,
        version: u64,
    ) -> Result<Decision<Self::State, Self::Reply, Self::Error>, C> {
        Ok(self.handle_command(command, state, version))
    }
}

/// A decision made: the effect to apply, or the domain error that rejects the command.
#[doc(hidden)]
pub type Decision<S, R, E> = Result<Effect<S, R>, E>;

/// What a command does to the entity.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Effect<S, R> {
    /// Persist `state` as the next version, then reply.
    Persist {
        /// The new state.
        state: S,
        /// The reply, sent once the state is stored.
        reply: R,
    },
    /// Change nothing, write nothing, reply at once.
    None {
        /// The reply.
        reply: R,
    },
    /// Delete the entity's state (a tombstone at the next version, see
    /// [`DeleteState`](crate::DeleteState)), then reply. The entity goes on from its initial
    /// state at that version: its next persisted state starts it again.
    Delete {
        /// The reply, sent once the tombstone is stored.
        reply: R,
    },
}

impl<S, R> Effect<S, R> {
    /// Persist `state` as the next version, then reply `reply`.
    pub fn persist(state: S, reply: R) -> Self {
        Effect::Persist { state, reply }
    }

    /// Reply `reply` without changing the state.
    pub fn none(reply: R) -> Self {
        Effect::None { reply }
    }

    /// Delete the state, then reply `reply`.
    pub fn delete(reply: R) -> Self {
        Effect::Delete { reply }
    }
}
