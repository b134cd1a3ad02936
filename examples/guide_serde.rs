//! The serde-state example of the guide's states chapter (`src/guide/states.md`), verbatim
//! below this header (`tests/serde_states.rs` checks that and runs it on an empty schema).
//!
//! ```text
//! cargo run --example guide_serde --features serde
//! ```
use actix::{Actor, Message};
use durablestore_postgres::{
    CommandError, Config, CreateSchema, DurableEntity, DurableStateBehavior, DurableStoreActor,
    Effect, HandleCommand, Json, JsonState,
};
use serde::{Deserialize, Serialize};

/// The state: any serde type with a stable name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CartState {
    pub items: Vec<String>,
}
impl JsonState for CartState {
    // Stored as each row's manifest: never change it once rows exist. It must contain one
    // of `- : @ +`, which no protobuf name does.
    const NAME: &'static str = "shop.cart-v1";
}

pub struct Cart {
    pub id: String,
}
impl DurableStateBehavior for Cart {
    type State = Json<CartState>; // `Json` makes a serde type a state; it derefs to it
    fn persistence_id(&self) -> &str {
        &self.id
    }
}

/// Adds an item; replies with the number of items in the cart.
#[derive(Clone, Message)]
#[rtype(result = "Result<usize, CommandError<String>>")]
pub struct AddItem(pub String);

impl HandleCommand<AddItem> for Cart {
    type Reply = usize;
    type Error = String;
    fn handle_command(
        &mut self,
        AddItem(item): AddItem,
        state: &Json<CartState>,
        _version: u64,
    ) -> Result<Effect<Json<CartState>, usize>, String> {
        if item.is_empty() {
            return Err("an item needs a name".into());
        }
        let mut items = state.items.clone();
        items.push(item);
        let count = items.len();
        Ok(Effect::persist(Json(CartState { items }), count))
    }
}

#[actix::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    run(url.parse()?).await
}

pub async fn run(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let store = DurableStoreActor::new(config)?.start();
    store.send(CreateSchema).await??;
    let id = "cart-1".to_owned();
    let cart = DurableEntity::new(Cart { id }, store).start();
    let count = cart.send(AddItem("book".into())).await??;
    println!("cart-1 holds {count} item(s)"); // run it again: it recovers and adds one more
    Ok(())
}
