//! The statements prepared on one connection: each statement of the store at most once per
//! connection, so that later calls neither prepare nor plan it again.

use std::sync::Mutex;

use tokio_postgres::Statement;

use crate::sql::Stmt;

/// The statements prepared on one connection, by [`Stmt`].
#[derive(Default)]
pub(super) struct Prepared {
    statements: Mutex<[Option<Statement>; Stmt::COUNT]>,
}

impl Prepared {
    pub(super) fn get(&self, which: Stmt) -> Option<Statement> {
        // A poisoned lock only means a thread panicked while assigning an Option: still valid.
        self.statements
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())[which as usize]
            .clone()
    }

    pub(super) fn set(&self, which: Stmt, statement: Statement) {
        self.statements
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())[which as usize] = Some(statement);
    }

    pub(super) fn clear(&self) {
        *self
            .statements
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Default::default();
    }
}
