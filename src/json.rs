//! States that are serde types, stored as JSON under a name the user chooses (feature `serde`).
//!
//! A JSON state's row holds its [`JsonState::NAME`] in `state_manifest` and its serde_json
//! bytes in `state_payload`, whatever the [`RowFormat`](crate::RowFormat). In a
//! [`DurableState`], `resulting_state` holds the bare name as its type URL and the JSON as its
//! value: that `Any` is exactly what a read rebuilds from the row, so a state reads back equal
//! to the one written, and an identical retry has identical bytes. A JSON state name is never a
//! protobuf name nor a type URL (see [`JsonState::NAME`]), which is how reads tell the two kinds
//! of row and of `Any` apart.

use std::ops::{Deref, DerefMut};

use prost_types::Any;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::behavior::EntityState;
use crate::error::{Error, InvalidInput, JsonError, truncate};
use crate::state::{DurableState, json_name_error, now_millis, type_name};

/// A serde type that can be a durable state, stored as JSON under a stable name.
///
/// Build a [`DurableState`] from it with [`DurableState::from_json`] and read it back with
/// [`DurableState::decode_json`]; make it an entity's state with [`Json`]. Protobuf stays the
/// default and the only format eGo's Go store reads: **a Go service cannot read JSON rows.**
///
/// ```
/// use durablestore_postgres::{DurableState, Error, JsonState};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, PartialEq, Serialize, Deserialize)]
/// struct Cart {
///     items: Vec<String>,
/// }
///
/// impl JsonState for Cart {
///     // Stored with every row: never change it once rows exist.
///     const NAME: &'static str = "shop.cart-v1";
/// }
///
/// let cart = Cart { items: vec!["book".into()] };
/// let state = DurableState::from_json("cart-7", 1, &cart)?;
/// assert_eq!(state.state_type(), Some("shop.cart-v1"));
/// assert_eq!(state.decode_json::<Cart>()?, cart);
/// // A protobuf type is not a `Cart`, and the other way round.
/// assert!(matches!(
///     state.decode_state::<prost_types::Duration>(),
///     Err(Error::StateTypeMismatch { .. })
/// ));
/// # Ok::<(), Error>(())
/// ```
pub trait JsonState: Serialize + DeserializeOwned {
    /// The state's stable name, stored as the row's `state_manifest`; the state is recognized
    /// by it when read, so it must never change once rows exist, and no two types may share it.
    ///
    /// It must be 1 to 255 ASCII letters, digits and `_ . - : @ +`, start with a letter, and
    /// **contain at least one of `-`, `:`, `@` or `+`**: protobuf names never do, so a JSON
    /// state can never be taken for a protobuf one (e.g. `acme.billing.account-v1`,
    /// `acme:Account`, `Account@2`). Names without one (`acme.Account`), with a `/` (a type
    /// URL such as `type.googleapis.com/...`) or other characters are refused with
    /// [`InvalidInput::InvalidStateName`] when a state is encoded or decoded.
    const NAME: &'static str;
}

/// The state of an entity whose state is a [`JsonState`]: `type State = Json<MyState>;`.
///
/// It derefs to the inner value, so a behavior reads `state.field` and builds new states with
/// `Json(MyState { .. })`. (A blanket impl of [`EntityState`] already covers every prost
/// message, so serde types get this wrapper rather than a second blanket impl.)
///
/// ```
/// use actix::Message;
/// use durablestore_postgres::{
///     BehaviorTest, CommandError, DurableStateBehavior, Effect, HandleCommand, Json, JsonState,
/// };
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
/// pub struct CartState {
///     pub items: Vec<String>,
/// }
/// impl JsonState for CartState {
///     const NAME: &'static str = "shop.cart-v1";
/// }
///
/// pub struct Cart {
///     id: String,
/// }
/// impl DurableStateBehavior for Cart {
///     type State = Json<CartState>;
///     fn persistence_id(&self) -> &str {
///         &self.id
///     }
/// }
///
/// /// Adds an item; replies with the number of items.
/// #[derive(Clone, Message)]
/// #[rtype(result = "Result<usize, CommandError<String>>")]
/// pub struct AddItem(pub String);
///
/// impl HandleCommand<AddItem> for Cart {
///     type Reply = usize;
///     type Error = String;
///     fn handle_command(
///         &mut self,
///         AddItem(item): AddItem,
///         state: &Json<CartState>,
///         _version: u64,
///     ) -> Result<Effect<Json<CartState>, usize>, String> {
///         if state.items.contains(&item) {
///             return Err(format!("{item} is already in the cart"));
///         }
///         let mut items = state.items.clone();
///         items.push(item);
///         let count = items.len();
///         Ok(Effect::persist(Json(CartState { items }), count))
///     }
/// }
///
/// BehaviorTest::new(Cart { id: "cart-1".into() })
///     .when(AddItem("book".into()))
///     .then_expect_reply(1)
///     .then_expect_state(Json(CartState { items: vec!["book".into()] }))
///     .and()
///     .when(AddItem("book".into()))
///     .then_expect_rejection("book is already in the cart".to_string());
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Json<T>(pub T);

impl<T> Json<T> {
    /// The wrapped state.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> Deref for Json<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> DerefMut for Json<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

impl<T> From<T> for Json<T> {
    fn from(state: T) -> Self {
        Json(state)
    }
}

/// JSON states, stored under their [`JsonState::NAME`].
impl<T: JsonState> EntityState for Json<T> {
    fn to_durable_state(
        &self,
        persistence_id: &str,
        version_number: u64,
    ) -> Result<DurableState, Error> {
        DurableState::from_json(persistence_id, version_number, &self.0)
    }

    fn from_durable_state(state: &DurableState) -> Result<Self, Error> {
        state.decode_json().map(Json)
    }
}

impl DurableState {
    /// A state of `persistence_id` at `version_number` holding `state` as JSON under
    /// [`S::NAME`](JsonState::NAME), stamped with the current time and shard 0 (see
    /// [`DurableState::with_shard`], [`DurableState::with_timestamp`]).
    ///
    /// Writing the same `DurableState` again is an identical retry
    /// ([`WriteOutcome::AlreadyStored`](crate::WriteOutcome::AlreadyStored)): states are
    /// compared by their JSON bytes. Serializing a value again gives the same bytes unless it
    /// holds a `HashMap` or `HashSet` (their order varies; use a `BTreeMap`).
    ///
    /// # Errors
    /// - [`Error::InvalidInput`] ([`InvalidInput::InvalidStateName`]) when `S::NAME` breaks the
    ///   rule of [`JsonState::NAME`];
    /// - [`Error::EncodeJson`] when serde_json cannot serialize `state`.
    pub fn from_json<S: JsonState>(
        persistence_id: impl Into<String>,
        version_number: u64,
        state: &S,
    ) -> Result<Self, Error> {
        let persistence_id = persistence_id.into();
        check_name::<S>()?;
        let value = serde_json::to_vec(state).map_err(|source| Error::EncodeJson {
            persistence_id: persistence_id.clone(),
            type_name: S::NAME.to_owned(),
            source: JsonError::encoding(source),
        })?;
        Ok(DurableState {
            persistence_id,
            version_number,
            resulting_state: Some(Any {
                type_url: S::NAME.to_owned(),
                value,
            }),
            timestamp: now_millis(),
            shard: 0,
        })
    }

    /// Decodes the held state as the JSON state `S`.
    ///
    /// # Errors
    /// - [`Error::StateTypeMismatch`] when the held state is not an `S`: a protobuf state, or
    ///   a JSON state of another name;
    /// - [`Error::DecodeJson`] when its bytes are not JSON of `S`'s shape;
    /// - [`Error::InvalidInput`]: [`InvalidInput::MissingState`] when there is no state,
    ///   [`InvalidInput::InvalidStateName`] when `S::NAME` breaks the rule of
    ///   [`JsonState::NAME`].
    pub fn decode_json<S: JsonState>(&self) -> Result<S, Error> {
        check_name::<S>()?;
        let any = self.held()?;
        // The exact type URL, not its last segment: `x/shop.cart-v1` is not a JSON state.
        if any.type_url != S::NAME {
            return Err(Error::StateTypeMismatch {
                persistence_id: self.persistence_id.clone(),
                expected: S::NAME.to_owned(),
                found: type_name(&any.type_url).to_owned(),
            });
        }
        serde_json::from_slice(&any.value).map_err(|source| Error::DecodeJson {
            persistence_id: self.persistence_id.clone(),
            type_name: S::NAME.to_owned(),
            source: JsonError::decoding(source),
        })
    }
}

/// Refuses a [`JsonState::NAME`] that could be mistaken for a protobuf name or type URL.
fn check_name<S: JsonState>() -> Result<(), InvalidInput> {
    match json_name_error(S::NAME) {
        None => Ok(()),
        Some(reason) => Err(InvalidInput::InvalidStateName {
            name: truncate(S::NAME, 300),
            reason,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use prost::Message;
    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::config::VersionCheck;
    use crate::state::{RowFormat, StateRow};
    use crate::version::{self, Verdict};

    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    struct Cart {
        items: Vec<String>,
        total_cents: i64,
    }

    impl JsonState for Cart {
        const NAME: &'static str = "shop.cart-v1";
    }

    fn cart(n: i64) -> Cart {
        Cart {
            items: vec!["book".into(), "pen".into()],
            total_cents: n,
        }
    }

    fn sample() -> DurableState {
        DurableState::from_json("cart-1", 3, &cart(1250))
            .unwrap()
            .with_timestamp(1_700_000_000_000)
            .with_shard(5)
    }

    /// A `JsonState` with a name of the caller's choosing.
    macro_rules! named {
        ($ty:ident, $name:expr) => {
            #[derive(Debug, PartialEq, Serialize, Deserialize)]
            struct $ty(i32);
            impl JsonState for $ty {
                const NAME: &'static str = $name;
            }
        };
    }

    #[test]
    fn row_holds_the_name_and_the_json_in_both_formats() {
        let state = sample();
        for format in [RowFormat::Any, RowFormat::Typed] {
            let row = StateRow::encode(state.clone(), format).unwrap();
            assert_eq!(row.state_manifest, "shop.cart-v1");
            assert_eq!(
                row.state_payload,
                br#"{"items":["book","pen"],"total_cents":1250}"#
            );
            assert_eq!((row.version_number, row.shard_number), (3, 5));
            // Read back byte for byte, `Any` included.
            let back = row.decode().unwrap();
            assert_eq!(back, state);
            assert_eq!(back.encode_to_vec(), state.encode_to_vec());
            assert_eq!(back.decode_json::<Cart>().unwrap(), cart(1250));
        }
    }

    #[test]
    fn the_any_holds_the_bare_name_and_the_json() {
        let any = sample().resulting_state.unwrap();
        assert_eq!(any.type_url, "shop.cart-v1");
        assert_eq!(
            serde_json::from_slice::<Cart>(&any.value).unwrap(),
            cart(1250)
        );
        assert_eq!(sample().state_type(), Some("shop.cart-v1"));
    }

    #[test]
    fn identical_retries_and_conflicts_follow_the_version_rule() {
        let check = VersionCheck::Sequential;
        let row = |version: u64, total: i64| {
            let state = DurableState::from_json("cart-1", version, &cart(total)).unwrap();
            StateRow::encode(state, RowFormat::Any).unwrap()
        };
        assert_eq!(version::judge(None, &row(1, 1), check), Verdict::Apply);
        assert_eq!(
            version::judge(Some(&row(1, 1)), &row(2, 5), check),
            Verdict::Apply
        );
        // A retry is identical whichever row format wrote the stored row.
        let typed = StateRow::encode(
            DurableState::from_json("cart-1", 2, &cart(5)).unwrap(),
            RowFormat::Typed,
        )
        .unwrap();
        assert_eq!(
            version::judge(Some(&typed), &row(2, 5), check),
            Verdict::AlreadyStored
        );
        assert_eq!(
            version::judge(Some(&row(2, 5)), &row(2, 6), check),
            Verdict::Conflict { stored: 2 }
        );
        // The same version as protobuf is another state.
        let proto = StateRow::encode(
            DurableState::new("cart-1", 2, &prost_types::Duration::default()),
            RowFormat::Typed,
        )
        .unwrap();
        assert!(!proto.same_state(&row(2, 5)) && !row(2, 5).same_state(&proto));
    }

    #[test]
    fn json_and_protobuf_states_never_decode_as_each_other() {
        let json = sample();
        assert!(matches!(
            json.decode_state::<prost_types::Duration>(),
            Err(Error::StateTypeMismatch { ref found, ref expected, .. })
                if found == "shop.cart-v1" && expected == "google.protobuf.Duration"
        ));
        let proto = DurableState::new("cart-1", 1, &prost_types::Duration::default());
        assert!(matches!(
            proto.decode_json::<Cart>(),
            Err(Error::StateTypeMismatch { ref found, ref expected, .. })
                if found == "google.protobuf.Duration" && expected == "shop.cart-v1"
        ));
        named!(Other, "shop.other-v1");
        assert!(matches!(
            json.decode_json::<Other>(),
            Err(Error::StateTypeMismatch { .. })
        ));
        // Only the exact name counts, not the part after a `/`.
        let mut prefixed = json.clone();
        prefixed.resulting_state.as_mut().unwrap().type_url = "x.com/shop.cart-v1".into();
        assert!(matches!(
            prefixed.decode_json::<Cart>(),
            Err(Error::StateTypeMismatch { .. })
        ));
        let mut empty = json;
        empty.resulting_state = None;
        assert!(matches!(
            empty.decode_json::<Cart>(),
            Err(Error::InvalidInput(InvalidInput::MissingState { .. }))
        ));
    }

    #[test]
    fn undecodable_json_is_a_typed_error_without_the_payload() {
        let mut state = sample();
        let secret = r#"{"items":"SECRET-VALUE","total_cents":1}"#;
        state.resulting_state.as_mut().unwrap().value = secret.as_bytes().to_vec();
        let err = state.decode_json::<Cart>().unwrap_err();
        let Error::DecodeJson {
            persistence_id,
            type_name,
            source,
        } = &err
        else {
            panic!("{err:?}");
        };
        assert_eq!(
            (persistence_id.as_str(), type_name.as_str()),
            ("cart-1", "shop.cart-v1")
        );
        assert_eq!(source.category(), serde_json::error::Category::Data);
        for text in [err.to_string(), format!("{err:?}")] {
            assert!(!text.contains("SECRET"), "{text}");
        }
        state.resulting_state.as_mut().unwrap().value = vec![0xff, 0x00];
        assert!(matches!(
            state.decode_json::<Cart>(),
            Err(Error::DecodeJson { ref source, .. })
                if source.category() == serde_json::error::Category::Syntax
        ));
        state.resulting_state.as_mut().unwrap().value = br#"{"items":["#.to_vec();
        assert!(matches!(
            state.decode_json::<Cart>(),
            Err(Error::DecodeJson { ref source, .. })
                if source.category() == serde_json::error::Category::Eof
        ));
    }

    #[test]
    fn unserializable_states_are_a_typed_error() {
        #[derive(Serialize, Deserialize)]
        struct Keyed(BTreeMap<(i32, i32), i32>);
        impl JsonState for Keyed {
            const NAME: &'static str = "keyed-v1";
        }
        let keyed = Keyed(BTreeMap::from([((1, 2), 3)]));
        let err = DurableState::from_json("k", 1, &keyed).unwrap_err();
        assert!(
            matches!(&err, Error::EncodeJson { persistence_id, type_name, .. }
                if persistence_id == "k" && type_name == "keyed-v1"),
            "{err:?}"
        );
        assert!(err.to_string().contains("key must be a string"), "{err}");
    }

    #[test]
    fn names_that_could_be_protobuf_or_type_urls_are_refused() {
        named!(Proto, "acme.Account");
        named!(Any, "google.protobuf.Any");
        named!(Url, "type.googleapis.com/acme.account-v1");
        named!(Slash, "acme/account-v1");
        named!(Empty, "");
        named!(Space, "acme account-v1");
        named!(Digit, "1acme-v1");
        named!(Unicode, "acmé-v1");
        fn refused<S: JsonState>(state: &S) {
            let err = DurableState::from_json("id", 1, state).unwrap_err();
            assert!(
                matches!(
                    &err,
                    Error::InvalidInput(InvalidInput::InvalidStateName { name, .. })
                        if name == S::NAME
                ),
                "{}: {err:?}",
                S::NAME
            );
            let decoded = DurableState::new("id", 1, &prost_types::Duration::default())
                .decode_json::<S>()
                .err();
            assert!(
                matches!(
                    decoded,
                    Some(Error::InvalidInput(InvalidInput::InvalidStateName { .. }))
                ),
                "{}",
                S::NAME
            );
        }
        refused(&Proto(1));
        refused(&Any(1));
        refused(&Url(1));
        refused(&Slash(1));
        refused(&Empty(1));
        refused(&Space(1));
        refused(&Digit(1));
        refused(&Unicode(1));
        // 255 bytes is the limit, inclusive.
        assert!(json_name_error(&format!("{}a", "a-".repeat(127))).is_none());
        assert!(json_name_error(&"a-".repeat(128)).is_some());
        for name in [
            "a-b",
            "acme:Account",
            "Account@2",
            "acme.Account+json",
            "a_b.c-D9",
        ] {
            assert!(json_name_error(name).is_none(), "{name}");
        }
    }

    #[test]
    fn rows_of_each_kind_are_read_as_that_kind() {
        let base = StateRow::encode(sample(), RowFormat::Any).unwrap();
        // A protobuf manifest with a JSON payload is a protobuf state (that fails to decode).
        let proto = StateRow {
            state_manifest: "shop.Cart".into(),
            ..base.clone()
        }
        .decode()
        .unwrap();
        assert_eq!(proto.state_type(), Some("shop.Cart"));
        assert!(matches!(
            proto.decode_json::<Cart>(),
            Err(Error::StateTypeMismatch { .. })
        ));
        // A manifest that is neither kind is corrupt.
        for manifest in ["shop/cart-v1", "-cart", "cart v1"] {
            let err = StateRow {
                state_manifest: manifest.into(),
                ..base.clone()
            }
            .decode()
            .unwrap_err();
            assert!(
                matches!(err, Error::CorruptState { .. }),
                "{manifest}: {err:?}"
            );
        }
        // A JSON row is read whatever its payload; decoding it is what checks the JSON.
        let garbage = StateRow {
            state_payload: vec![0xff],
            ..base
        }
        .decode()
        .unwrap();
        assert!(matches!(
            garbage.decode_json::<Cart>(),
            Err(Error::DecodeJson { .. })
        ));
    }

    #[test]
    fn the_wrapper_is_an_entity_state() {
        let state = Json(cart(7)).to_durable_state("cart-9", 4).unwrap();
        assert_eq!((state.version_number, state.shard), (4, 0));
        assert_eq!(state.decode_json::<Cart>().unwrap(), cart(7));
        assert_eq!(
            Json::<Cart>::from_durable_state(&state).unwrap(),
            Json(cart(7))
        );
        assert_eq!(Json::from(cart(7)).into_inner().total_cents, 7);
        assert!(matches!(
            Json::<Cart>::from_durable_state(&DurableState::new(
                "cart-9",
                4,
                &prost_types::Duration::default()
            )),
            Err(Error::StateTypeMismatch { .. })
        ));
    }
}
