//! Given/when/then tests of a behavior's decisions, with no actor and no store.

use std::fmt;

use crate::behavior::{DurableStateBehavior, Effect, HandleCommand};

/// A given/when/then harness for a [`DurableStateBehavior`], in the spirit of cqrs-es's
/// `TestFramework`: it calls [`HandleCommand::handle_command`] directly, so domain rules are
/// tested in microseconds. The assertions panic with a readable message, like `assert_eq!`.
///
/// ```
/// # use actix::Message;
/// # use durablestore_postgres::*;
/// # #[derive(Clone, PartialEq, prost::Message)] pub struct CounterState { #[prost(int64, tag = "1")] pub value: i64 }
/// # impl prost::Name for CounterState { const NAME: &'static str = "CounterState"; const PACKAGE: &'static str = "demo"; }
/// # pub struct Counter;
/// # impl DurableStateBehavior for Counter { type State = CounterState; fn persistence_id(&self) -> &str { "c" } }
/// # #[derive(Clone, Message)] #[rtype(result = "Result<i64, CommandError<String>>")] pub struct Add(pub i64);
/// # impl HandleCommand<Add> for Counter {
/// #     type Reply = i64; type Error = String;
/// #     fn handle_command(&mut self, Add(n): Add, s: &CounterState, _: u64) -> Result<Effect<CounterState, i64>, String> {
/// #         if n < 0 { return Err("negative".into()) }
/// #         Ok(Effect::persist(CounterState { value: s.value + n }, s.value + n))
/// #     }
/// # }
/// BehaviorTest::new(Counter)
///     .given(CounterState { value: 40 }, 3)
///     .when(Add(2))
///     .then_expect_reply(42)
///     .then_expect_state(CounterState { value: 42 })
///     .and()
///     .when(Add(-1))
///     .then_expect_rejection("negative".to_string());
/// ```
pub struct BehaviorTest<B: DurableStateBehavior> {
    behavior: B,
    state: B::State,
    version: u64,
}

impl<B: DurableStateBehavior> fmt::Debug for BehaviorTest<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BehaviorTest")
            .field("persistence_id", &self.behavior.persistence_id())
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl<B: DurableStateBehavior> BehaviorTest<B> {
    /// Starts from the behavior's initial state at version 0, as a new entity does.
    pub fn new(behavior: B) -> Self {
        let state = behavior.initial_state();
        BehaviorTest {
            behavior,
            state,
            version: 0,
        }
    }

    /// Given this persisted state at this version.
    #[must_use]
    pub fn given(mut self, state: B::State, version: u64) -> Self {
        self.state = state;
        self.version = version;
        self
    }

    /// When this command arrives.
    pub fn when<C>(mut self, command: C) -> Then<B, B::Reply, B::Error>
    where
        B: HandleCommand<C>,
    {
        let result = self
            .behavior
            .handle_command(command, &self.state, self.version);
        Then { test: self, result }
    }

    /// The current state and version.
    pub fn state(&self) -> (&B::State, u64) {
        (&self.state, self.version)
    }
}

/// What a command decided, with assertions on it.
pub struct Then<B: DurableStateBehavior, R, E> {
    test: BehaviorTest<B>,
    result: Result<Effect<B::State, R>, E>,
}

impl<B: DurableStateBehavior, R: fmt::Debug, E: fmt::Debug> fmt::Debug for Then<B, R, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Then")
            .field("test", &self.test)
            .field("result", &self.result)
            .finish()
    }
}

impl<B, R, E> Then<B, R, E>
where
    B: DurableStateBehavior,
    B::State: fmt::Debug,
    R: fmt::Debug + PartialEq,
    E: fmt::Debug + PartialEq,
{
    /// Asserts the command succeeded with this reply.
    #[track_caller]
    pub fn then_expect_reply(self, expected: R) -> Self {
        match &self.result {
            Ok(Effect::Persist { reply, .. })
            | Ok(Effect::None { reply })
            | Ok(Effect::Delete { reply }) => {
                assert_eq!(reply, &expected, "reply");
            }
            Err(e) => panic!("expected reply {expected:?}, the command was rejected: {e:?}"),
        }
        self
    }

    /// Asserts the command persists exactly this state (as the next version).
    #[track_caller]
    pub fn then_expect_state(self, expected: B::State) -> Self {
        match &self.result {
            Ok(Effect::Persist { state, .. }) => assert_eq!(state, &expected, "persisted state"),
            other => panic!("expected state {expected:?} to be persisted, got {other:?}"),
        }
        self
    }

    /// Asserts the command succeeded without changing the state.
    #[track_caller]
    pub fn then_expect_no_change(self) -> Self {
        match &self.result {
            Ok(Effect::None { .. }) => {}
            other => panic!("expected no state change, got {other:?}"),
        }
        self
    }

    /// Asserts the command deletes the entity's state.
    #[track_caller]
    pub fn then_expect_deleted(self) -> Self {
        match &self.result {
            Ok(Effect::Delete { .. }) => {}
            other => panic!("expected the state to be deleted, got {other:?}"),
        }
        self
    }

    /// Asserts the command was rejected with this domain error.
    #[track_caller]
    pub fn then_expect_rejection(self, expected: E) -> Self {
        match &self.result {
            Err(e) => assert_eq!(e, &expected, "rejection"),
            Ok(effect) => panic!("expected rejection {expected:?}, got {effect:?}"),
        }
        self
    }

    /// The raw decision, for assertions of your own.
    pub fn result(&self) -> &Result<Effect<B::State, R>, E> {
        &self.result
    }

    /// Continues from the state after this command: the persisted state at version + 1, the
    /// initial state at version + 1 after [`Effect::Delete`], or the unchanged state after a
    /// rejection or [`Effect::None`].
    pub fn and(self) -> BehaviorTest<B> {
        let mut test = self.test;
        match self.result {
            Ok(Effect::Persist { state, .. }) => {
                test.state = state;
                test.version += 1;
            }
            Ok(Effect::Delete { .. }) => {
                test.state = test.behavior.initial_state();
                test.version += 1;
            }
            _ => {}
        }
        test
    }
}
