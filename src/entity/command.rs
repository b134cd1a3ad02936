//! How a command runs in its entity: one at a time, holding the mailbox until its effect is
//! persisted and answered.

use std::fmt;

use actix::dev::{MessageResponse, OneshotSender};
use actix::fut::{self, ActorFutureExt};
use actix::{AsyncContext, Context, Message};

use super::DurableEntity;
use crate::behavior::{CommandError, HandleCommandAsync};

/// What an entity's handler returns for a command: the command itself, run once the context
/// takes it. It waits in the context as one future (an `AtomicResponse` would box the decision
/// and then box it again to wait), so nothing else reaches the entity until the command's
/// effect is persisted and its answer sent.
pub struct RunCommand<C>(pub(super) C);

impl<C> fmt::Debug for RunCommand<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RunCommand")
    }
}

impl<B, C> MessageResponse<DurableEntity<B>, C> for RunCommand<C>
where
    B: HandleCommandAsync<C>,
    C: Message<Result = Result<B::Reply, CommandError<B::Error>>> + Clone + 'static,
{
    fn handle(self, ctx: &mut Context<DurableEntity<B>>, tx: Option<OneshotSender<C::Result>>) {
        let RunCommand(command) = self;
        // Decided when the context first polls it: before any later message, as the
        // context polls what waits before its mailbox.
        ctx.wait(
            fut::ready(())
                .then(move |(), entity: &mut DurableEntity<B>, _| entity.run_command(command, 1))
                .map(move |answer, entity, _| {
                    entity.done();
                    if let Some(tx) = tx {
                        // The caller may have stopped waiting.
                        let _ = tx.send(answer);
                    }
                }),
        );
    }
}
