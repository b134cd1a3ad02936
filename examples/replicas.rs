//! Three replicas of one service over one table, with ownership: each id is live in one
//! replica at a time. A replica asked for an id another one owns answers `OwnedElsewhere`
//! naming the owner, and the application forwards the command there (here a map from replica
//! name to registry stands in for the HTTP or gRPC call). Then one replica stops, and its ids
//! move to the others at once.
//!
//! Each replica is what a process of its own would be: its own actix system on its own
//! thread, its own store (pool) and registry.
//!
//! ```sh
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo run --example replicas
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use actix::Message;
use durablestore_postgres::testkit::TestDatabase;
use durablestore_postgres::{
    CommandError, Config, DurableStateBehavior, DurableStore, Effect, EntityRegistry,
    HandleCommand, Ownership,
};

#[derive(Clone, PartialEq, prost::Message)]
struct Balance {
    #[prost(int64, tag = "1")]
    cents: i64,
}

impl prost::Name for Balance {
    const NAME: &'static str = "Balance";
    const PACKAGE: &'static str = "replicas.v1";
}

struct Account {
    id: String,
}

impl DurableStateBehavior for Account {
    type State = Balance;
    fn persistence_id(&self) -> &str {
        &self.id
    }
}

#[derive(Clone, Message)]
#[rtype(result = "Result<i64, CommandError<String>>")]
struct Deposit(i64);

impl HandleCommand<Deposit> for Account {
    type Reply = i64;
    type Error = String;
    fn handle_command(
        &mut self,
        Deposit(cents): Deposit,
        state: &Balance,
        _: u64,
    ) -> Result<Effect<Balance, i64>, String> {
        let cents = state.cents + cents;
        Ok(Effect::persist(Balance { cents }, cents))
    }
}

/// The replicas by name: what the application's routing (its service discovery and HTTP
/// client) would be.
type Directory = Arc<Mutex<HashMap<String, EntityRegistry<Account>>>>;

/// Sends `command` to `id` on `here`; if another replica owns the id, forwards it there
/// once: the few lines an application adds to use ownership.
async fn send(
    directory: &Directory,
    here: &EntityRegistry<Account>,
    id: &str,
    command: Deposit,
) -> Result<(i64, Option<String>), CommandError<String>> {
    match here.send(id, command.clone()).await {
        Err(CommandError::OwnedElsewhere { owner }) => {
            let Some(there) = directory
                .lock()
                .map_err(|_| CommandError::LeaseLost)?
                .get(&owner)
                .cloned()
            else {
                return Err(CommandError::OwnedElsewhere { owner });
            };
            let cents = there.send(id, command).await?;
            Ok((cents, Some(owner)))
        }
        other => other.map(|cents| (cents, None)),
    }
}

/// Starts a replica named `name` on its own thread and actix system; it stays up until the
/// sender it returns is dropped or sent to.
fn replica(
    name: &str,
    config: Config,
    directory: Directory,
) -> (mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    let (stop, stopped) = mpsc::channel::<()>();
    let (ready, is_ready) = mpsc::channel();
    let name = name.to_owned();
    let thread = std::thread::spawn(move || {
        actix::System::new().block_on(async move {
            let store = DurableStore::new(config).expect("valid config");
            let registry = EntityRegistry::builder(store, |id: &str| Account { id: id.into() })
                .ownership(Ownership::leased(name.clone(), Duration::from_secs(3)))
                .start()
                .expect("on an arbiter");
            directory
                .lock()
                .expect("directory")
                .insert(name.clone(), registry.clone());
            let _ = ready.send(());
            // Serves until told to stop (the registry's entities run on this system).
            while stopped.try_recv() == Err(mpsc::TryRecvError::Empty) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            directory.lock().expect("directory").remove(&name);
            registry.stop().await;
            println!("{name} stopped: its ids are free");
        })
    });
    let _ = is_ready.recv();
    (stop, thread)
}

#[actix::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let db = TestDatabase::new().await?;
    let directory: Directory = Arc::default();
    let mut replicas: Vec<_> = ["replica-a", "replica-b", "replica-c"]
        .iter()
        .map(|name| {
            (
                name.to_string(),
                replica(name, db.config(), directory.clone()),
            )
        })
        .collect();
    let registry = |name: &str| directory.lock().ok().and_then(|d| d.get(name).cloned());
    let (a, b, c) = (
        registry("replica-a").ok_or("a is up")?,
        registry("replica-b").ok_or("b is up")?,
        registry("replica-c").ok_or("c is up")?,
    );

    // Each replica claims a few ids by serving them first.
    for (i, here) in [&a, &b, &c].into_iter().enumerate() {
        for n in 0..3 {
            let id = format!("acct-{i}-{n}");
            here.send(&id, Deposit(100)).await?;
        }
    }
    // Commands for every id arrive at replica b: the ids of a and c are forwarded to them.
    for i in 0..3 {
        for n in 0..3 {
            let id = format!("acct-{i}-{n}");
            let (cents, forwarded) = send(&directory, &b, &id, Deposit(1)).await?;
            match forwarded {
                Some(owner) => println!("{id}: owned by {owner}, forwarded there: {cents}"),
                None => println!("{id}: served by replica-b: {cents}"),
            }
        }
    }

    // Replica a stops: it gives its ids up at once, and b takes them over.
    let (_, (stop_a, thread_a)) = replicas.remove(0);
    stop_a.send(())?;
    thread_a.join().map_err(|_| "replica a panicked")?;
    for n in 0..3 {
        let id = format!("acct-0-{n}");
        let (cents, forwarded) = send(&directory, &b, &id, Deposit(1)).await?;
        println!(
            "{id}: now served by {}: {cents}",
            forwarded.as_deref().unwrap_or("replica-b")
        );
    }

    for (_, (stop, thread)) in replicas {
        stop.send(())?;
        thread.join().map_err(|_| "a replica panicked")?;
    }
    db.cleanup().await?;
    Ok(())
}
