//! The durable state message and its mapping to a table row.

use std::time::{SystemTime, UNIX_EPOCH};

use prost::{Message, Name};
use prost_types::Any;

use crate::error::{Error, InvalidInput};

mod row;
mod type_url;

pub(crate) use self::row::StateRow;

/// Longest persistence id, in characters: the column is `VARCHAR(255)`, which PostgreSQL counts
/// in characters, so an id of 200 non-ASCII characters written by the Go store is valid here too.
pub const MAX_PERSISTENCE_ID_LEN: usize = 255;

/// Longest manifest (fully qualified protobuf name or JSON state name) the `state_manifest`
/// column holds.
const MAX_MANIFEST_LEN: usize = 255;

/// The type URL prefix protobuf uses for `Any`.
const TYPE_URL_PREFIX: &str = "type.googleapis.com/";

/// Manifest of rows in eGo's Go store format: the payload is a serialized `Any`.
const ANY_MANIFEST: &str = "google.protobuf.Any";

/// Manifest of a tombstone: the row of a deleted entity, with an empty payload, kept so its
/// version sequence goes on. Neither a protobuf name nor a JSON state name (both exclude `/`),
/// so no state can be mistaken for it; eGo's Go reader finds no such message type and fails
/// with "proto: not found".
pub(crate) const TOMBSTONE_MANIFEST: &str = "durablestore/deleted";

/// Characters no protobuf full name contains. A JSON state name needs at least one, so a
/// row's manifest alone tells a JSON payload from a protobuf one, and no JSON name can be
/// taken for a protobuf type (or for `google.protobuf.Any`).
const JSON_NAME_MARKERS: [char; 4] = ['-', ':', '@', '+'];

/// How a state is laid out in `state_manifest` and `state_payload`.
///
/// Reading accepts both layouts whatever this says, so rows written in either stay readable
/// and a table can hold a mix of them.
///
/// JSON states (`DurableState::from_json`, feature `serde`) have one layout whatever this
/// says: their JSON state name in `state_manifest` and their JSON in `state_payload`. **eGo's
/// Go store cannot read those rows**; this crate reads them, with or without the feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RowFormat {
    /// eGo's Go store format: `state_manifest` is `google.protobuf.Any` and `state_payload` the
    /// serialized `Any` (type URL and state bytes). The Go store's reader accepts only this
    /// layout, so a Go service and a Rust service can share the table. This is the default.
    #[default]
    Any,
    /// `state_manifest` is the state's fully qualified protobuf name and `state_payload` its
    /// bytes alone: a few bytes smaller per row and readable with SQL by manifest, but **a Go
    /// service using eGo's store fails to read these rows**. Use it only for tables no Go
    /// service reads. A state whose type URL does not start with `type.googleapis.com/` is still
    /// stored as an `Any`, so its type URL reads back exactly.
    Typed,
}

/// The latest state of one entity, wire-compatible with eGo's `ego.v1.DurableState`
/// (fields 1, 2, 3, 5 and 6).
///
/// Build one with [`DurableState::new`] from any prost message that implements
/// [`prost::Name`], and read it back with [`DurableState::decode_state`]: neither touches
/// `Any` by hand.
///
/// ```
/// use durablestore_postgres::DurableState;
///
/// // Any prost message with a `prost::Name` works; a well-known type keeps the example short.
/// let balance = prost_types::Duration { seconds: 42, nanos: 0 };
/// let state = DurableState::new("account-1", 1, &balance).with_shard(3);
/// assert_eq!(state.state_type(), Some("google.protobuf.Duration"));
/// let back: prost_types::Duration = state.decode_state()?;
/// assert_eq!(back, balance);
/// # Ok::<(), durablestore_postgres::Error>(())
/// ```
#[derive(Clone, PartialEq, Message)]
pub struct DurableState {
    /// The entity's unique id (1 to 255 characters, as the `VARCHAR(255)` column counts them; no NUL).
    #[prost(string, tag = "1")]
    pub persistence_id: String,
    /// The state's version: 1 for the first state, then +1 per change.
    #[prost(uint64, tag = "2")]
    pub version_number: u64,
    /// The state itself, as a protobuf `Any`: a protobuf state under its type URL, or a JSON
    /// state (feature `serde`) under its bare JSON state name with its JSON as the value.
    #[prost(message, optional, tag = "3")]
    pub resulting_state: Option<Any>,
    /// When the state was produced, in Unix milliseconds.
    #[prost(int64, tag = "5")]
    pub timestamp: i64,
    /// The shard the entity belongs to.
    #[prost(uint64, tag = "6")]
    pub shard: u64,
}

impl Name for DurableState {
    const NAME: &'static str = "DurableState";
    const PACKAGE: &'static str = "ego.v1";
}

impl DurableState {
    /// A state of `persistence_id` at `version_number` holding `state` under the type URL
    /// `type.googleapis.com/<full name>`, stamped with the current time and shard 0 (see
    /// [`DurableState::with_shard`], [`DurableState::with_timestamp`]).
    pub fn new<M: Message + Name>(
        persistence_id: impl Into<String>,
        version_number: u64,
        state: &M,
    ) -> Self {
        let type_url = type_url::type_url_of::<M>();
        // Room for the `Any` header before the bytes: a row in eGo's format is then laid out
        // in this same buffer (see `StateRow::encode`).
        let len = state.encoded_len();
        let mut value = Vec::with_capacity(type_url::any_header_len(&type_url, len) + len);
        // As `encode_to_vec` does: `encode` would compute the length a second time.
        state.encode_raw(&mut value);
        DurableState {
            persistence_id: persistence_id.into(),
            version_number,
            resulting_state: Some(Any { type_url, value }),
            timestamp: now_millis(),
            shard: 0,
        }
    }

    /// The held state, or why there is none.
    pub(crate) fn held(&self) -> Result<&Any, InvalidInput> {
        self.resulting_state
            .as_ref()
            .ok_or_else(|| InvalidInput::MissingState {
                persistence_id: self.persistence_id.clone(),
            })
    }

    /// Sets the shard number.
    #[must_use]
    pub fn with_shard(mut self, shard: u64) -> Self {
        self.shard = shard;
        self
    }

    /// Sets the timestamp (Unix milliseconds).
    #[must_use]
    pub fn with_timestamp(mut self, timestamp_millis: i64) -> Self {
        self.timestamp = timestamp_millis;
        self
    }

    /// The fully qualified protobuf name of the held state (e.g. `acme.billing.AccountState`),
    /// the name of a JSON state (e.g. `acme.billing:account-v1`), or `None` when there is no
    /// state.
    pub fn state_type(&self) -> Option<&str> {
        self.resulting_state
            .as_ref()
            .map(|any| type_name(&any.type_url))
    }

    /// Decodes the held state as `M`.
    ///
    /// # Errors
    /// - [`Error::StateTypeMismatch`] when the held state is of another type (a JSON state
    ///   included);
    /// - [`Error::Decode`] when its bytes are not a valid `M`;
    /// - [`Error::InvalidInput`] ([`InvalidInput::MissingState`]) when there is no state.
    pub fn decode_state<M: Message + Name + Default>(&self) -> Result<M, Error> {
        let any = self.held()?;
        let found = type_name(&any.type_url);
        let expected = M::full_name();
        if found != expected {
            return Err(Error::StateTypeMismatch {
                persistence_id: self.persistence_id.clone(),
                expected,
                found: found.to_owned(),
            });
        }
        M::decode(any.value.as_slice()).map_err(|source| Error::Decode {
            persistence_id: self.persistence_id.clone(),
            type_name: expected,
            source,
        })
    }
}

/// The current time in Unix milliseconds (0 if the clock is before 1970).
pub(crate) fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The part of a type URL after its last `/`, which protobuf defines as the type's full name;
/// a JSON state name (which has no `/`) as it is.
pub(crate) fn type_name(type_url: &str) -> &str {
    type_url.rsplit('/').next().unwrap_or(type_url)
}

/// True for a fully qualified protobuf name: dot-separated identifiers.
fn is_full_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_MANIFEST_LEN
        // Bytes, not chars: every allowed character is ASCII, and no byte of a non-ASCII
        // character is; this runs on every write.
        && name.as_bytes().split(|&b| b == b'.').all(|part| {
            part.first()
                .is_some_and(|&b| b.is_ascii_alphabetic() || b == b'_')
                && part.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'_')
        })
}

/// Why `name` is not a JSON state name, or `None` when it is one.
///
/// A JSON state name is 1 to 255 ASCII letters, digits and `_ . - : @ +`, starts with a
/// letter and contains at least one of [`JSON_NAME_MARKERS`]. No protobuf full name (only
/// letters, digits, `_` and `.`) and no type URL (which has a `/`) is one, so neither a row
/// nor an `Any` of one kind can be read as the other.
pub(crate) fn json_name_error(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("it is empty");
    }
    if name.len() > MAX_MANIFEST_LEN {
        return Some("it is longer than 255 bytes");
    }
    // Bytes, not chars, as in `is_full_name`.
    let bytes = name.as_bytes();
    if !bytes.first().is_some_and(u8::is_ascii_alphabetic) {
        return Some("it does not start with an ASCII letter");
    }
    if !bytes
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b':' | b'@' | b'+'))
    {
        return Some("it has a character other than ASCII letters, digits and `_ . - : @ +`");
    }
    if !name.contains(JSON_NAME_MARKERS) {
        return Some(
            "it has none of `- : @ +`, so it could be a protobuf name (e.g. write `acme.account-v1`)",
        );
    }
    None
}

/// True for a JSON state name (see [`json_name_error`]).
fn is_json_name(name: &str) -> bool {
    json_name_error(name).is_none()
}

/// Checks a persistence id against what the column can hold.
pub(crate) fn validate_persistence_id(id: &str) -> Result<(), InvalidInput> {
    if id.is_empty() {
        return Err(InvalidInput::EmptyPersistenceId);
    }
    // No id of at most 255 bytes has more than 255 characters: count only longer ones.
    if id.len() > MAX_PERSISTENCE_ID_LEN && id.chars().count() > MAX_PERSISTENCE_ID_LEN {
        return Err(InvalidInput::PersistenceIdTooLong {
            len: id.chars().count(),
            max: MAX_PERSISTENCE_ID_LEN,
        });
    }
    if id.contains('\0') {
        return Err(InvalidInput::PersistenceIdContainsNul);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> DurableState {
        DurableState::new(
            "acct-1",
            7,
            &prost_types::Timestamp {
                seconds: 5,
                nanos: 6,
            },
        )
        .with_timestamp(1_700_000_000_000)
        .with_shard(9)
    }

    #[test]
    fn wire_compatible_field_numbers() {
        // Hand-encoded ego.v1.DurableState: id (1), version (2), Any (3), timestamp (5), shard (6).
        let state = sample();
        let bytes = state.encode_to_vec();
        assert_eq!(bytes[0], 0x0a); // field 1, length-delimited
        let decoded = DurableState::decode(bytes.as_slice()).unwrap();
        assert_eq!(decoded, state);
        let tags: Vec<u8> = [0x0a, 0x10, 0x1a, 0x28, 0x30].to_vec();
        for tag in tags {
            assert!(bytes.contains(&tag), "tag {tag:#x} missing");
        }
        assert_eq!(DurableState::full_name(), "ego.v1.DurableState");
    }

    #[test]
    fn default_row_is_the_go_stores_any_format() {
        let state = sample();
        let row = StateRow::encode(state.clone(), RowFormat::default()).unwrap();
        assert_eq!(row.state_manifest, ANY_MANIFEST);
        let any = Any::decode(row.state_payload.as_slice()).unwrap();
        assert_eq!(Some(&any), state.resulting_state.as_ref());
        assert_eq!(
            any.type_url,
            "type.googleapis.com/google.protobuf.Timestamp"
        );
        assert_eq!(row.decode().unwrap(), state);
    }

    #[test]
    fn typed_row_round_trip() {
        let state = sample();
        let row = StateRow::encode(state.clone(), RowFormat::Typed).unwrap();
        assert_eq!(row.state_manifest, "google.protobuf.Timestamp");
        assert_eq!(
            row.state_payload,
            state.resulting_state.as_ref().unwrap().value
        );
        assert_eq!(row.decode().unwrap(), state);
    }

    #[test]
    fn same_state_compares_across_formats() {
        let any = StateRow::encode(sample(), RowFormat::Any).unwrap();
        let typed = StateRow::encode(sample(), RowFormat::Typed).unwrap();
        assert!(any.same_state(&typed) && typed.same_state(&any));
        let mut other = sample();
        other.resulting_state.as_mut().unwrap().value.push(1);
        let other = StateRow::encode(other, RowFormat::Any).unwrap();
        assert!(!other.same_state(&typed));
        let mut next = sample();
        next.version_number += 1;
        assert!(
            !StateRow::encode(next, RowFormat::Any)
                .unwrap()
                .same_state(&any)
        );
    }

    #[test]
    fn custom_type_url_prefix_round_trips_exactly() {
        let mut state = sample();
        state.resulting_state.as_mut().unwrap().type_url = "example.com/acme.Thing".into();
        for format in [RowFormat::Any, RowFormat::Typed] {
            let row = StateRow::encode(state.clone(), format).unwrap();
            assert_eq!(row.state_manifest, ANY_MANIFEST);
            assert_eq!(row.decode().unwrap(), state);
        }
    }

    #[test]
    fn a_type_url_is_laid_out_alike_every_time_and_an_invalid_one_is_refused_every_time() {
        // The second encoding of each URL takes the thread's memory of the first.
        for url in [
            "type.googleapis.com/acme.Thing",
            "example.com/acme.Other",
            "type.googleapis.com/google.protobuf.Any",
        ] {
            let mut state = sample();
            state.resulting_state.as_mut().unwrap().type_url = url.into();
            for format in [RowFormat::Any, RowFormat::Typed] {
                let first = StateRow::encode(state.clone(), format).unwrap();
                let again = StateRow::encode(state.clone(), format).unwrap();
                assert_eq!(first, again, "{url} {format:?}");
                assert_eq!(again.decode().unwrap(), state, "{url} {format:?}");
            }
        }
        for url in ["type.googleapis.com/a..b", "type.googleapis.com/1x"] {
            let mut state = sample();
            state.resulting_state.as_mut().unwrap().type_url = url.into();
            for _ in 0..2 {
                assert!(matches!(
                    StateRow::encode(state.clone(), RowFormat::Typed),
                    Err(InvalidInput::InvalidTypeUrl { .. })
                ));
            }
        }
    }

    #[test]
    fn go_store_rows_are_read() {
        let any = Any {
            type_url: "type.googleapis.com/acme.billing.AccountState".into(),
            value: vec![8, 1],
        };
        let row = StateRow {
            persistence_id: "go".into(),
            version_number: 3,
            state_payload: any.encode_to_vec(),
            state_manifest: ANY_MANIFEST.into(),
            timestamp: 11,
            shard_number: 2,
        };
        let state = row.decode().unwrap();
        assert_eq!(state.resulting_state, Some(any));
        assert_eq!(state.state_type(), Some("acme.billing.AccountState"));
    }

    #[test]
    fn corrupt_rows_are_typed_errors() {
        let base = StateRow::encode(sample(), RowFormat::Typed).unwrap();
        let cases = [
            StateRow {
                version_number: -1,
                ..base.clone()
            },
            StateRow {
                shard_number: -5,
                ..base.clone()
            },
            StateRow {
                state_manifest: String::new(),
                ..base.clone()
            },
            StateRow {
                state_manifest: "no spaces allowed".into(),
                ..base.clone()
            },
            StateRow {
                state_manifest: ANY_MANIFEST.into(),
                state_payload: vec![0xff, 0xff, 0xff],
                ..base.clone()
            },
            StateRow {
                state_manifest: ANY_MANIFEST.into(),
                state_payload: Any {
                    type_url: String::new(),
                    value: vec![],
                }
                .encode_to_vec(),
                ..base.clone()
            },
        ];
        for row in cases {
            let err = row.clone().decode().unwrap_err();
            assert!(
                matches!(&err, Error::CorruptState { persistence_id, .. } if persistence_id == "acct-1"),
                "{row:?}: {err:?}"
            );
        }
    }

    #[test]
    fn invalid_states_are_rejected() {
        let ok = sample();
        let with = |f: &dyn Fn(&mut DurableState)| {
            let mut s = ok.clone();
            f(&mut s);
            StateRow::encode(s, RowFormat::default()).unwrap_err()
        };
        assert_eq!(
            with(&|s| s.persistence_id.clear()),
            InvalidInput::EmptyPersistenceId
        );
        assert!(matches!(
            with(&|s| s.persistence_id = "x".repeat(256)),
            InvalidInput::PersistenceIdTooLong { len: 256, max: 255 }
        ));
        assert!(matches!(
            with(&|s| s.persistence_id = "é".repeat(256)),
            InvalidInput::PersistenceIdTooLong { len: 256, max: 255 }
        ));
        assert_eq!(
            with(&|s| s.persistence_id = "a\0b".into()),
            InvalidInput::PersistenceIdContainsNul
        );
        assert!(matches!(
            with(&|s| s.version_number = 0),
            InvalidInput::VersionZero { .. }
        ));
        assert!(matches!(
            with(&|s| s.version_number = 1 << 63),
            InvalidInput::OutOfRange {
                field: "version_number",
                ..
            }
        ));
        assert!(matches!(
            with(&|s| s.shard = u64::MAX),
            InvalidInput::OutOfRange { field: "shard", .. }
        ));
        assert!(matches!(
            with(&|s| s.resulting_state = None),
            InvalidInput::MissingState { .. }
        ));
        for url in ["", "type.googleapis.com/", "garbage url", "x/1abc", "a..b"] {
            assert!(
                matches!(
                    with(&|s| s.resulting_state.as_mut().unwrap().type_url = url.into()),
                    InvalidInput::InvalidTypeUrl { .. }
                ),
                "{url:?}"
            );
        }
        // 255 characters is the limit, inclusive, however many bytes they take.
        let mut max = ok.clone();
        max.persistence_id = "😀".repeat(255);
        assert_eq!(max.persistence_id.len(), 1020);
        assert!(StateRow::encode(max, RowFormat::default()).is_ok());
    }

    #[test]
    fn json_states_have_one_layout_and_read_back_exactly() {
        // What `DurableState::from_json` builds; the layout needs no `serde` feature.
        let mut state = sample();
        state.resulting_state = Some(Any {
            type_url: "shop.cart-v1".into(),
            value: br#"{"items":[]}"#.to_vec(),
        });
        for format in [RowFormat::Any, RowFormat::Typed] {
            let row = StateRow::encode(state.clone(), format).unwrap();
            assert_eq!(row.state_manifest, "shop.cart-v1");
            assert_eq!(row.state_payload, br#"{"items":[]}"#);
            assert!(row.same_state(&StateRow::encode(state.clone(), RowFormat::Any).unwrap()));
            assert_eq!(row.decode().unwrap(), state);
        }
        assert_eq!(state.state_type(), Some("shop.cart-v1"));
        assert!(matches!(
            state.decode_state::<prost_types::Timestamp>(),
            Err(Error::StateTypeMismatch { ref found, .. }) if found == "shop.cart-v1"
        ));
        // An `Any` envelope holding a JSON name is not a layout this crate writes.
        let wrapped = StateRow {
            state_manifest: ANY_MANIFEST.into(),
            state_payload: state.resulting_state.clone().unwrap().encode_to_vec(),
            ..StateRow::encode(state, RowFormat::Any).unwrap()
        };
        assert!(matches!(wrapped.decode(), Err(Error::CorruptState { .. })));
    }

    #[test]
    fn json_names_and_protobuf_names_are_disjoint() {
        for name in ["acme.Account", "google.protobuf.Any", "A", "a_b.C9"] {
            assert!(is_full_name(name) && !is_json_name(name), "{name}");
        }
        for name in ["acme.account-v1", "acme:Account", "Account@2", "a.B+json"] {
            assert!(is_json_name(name) && !is_full_name(name), "{name}");
        }
        for name in [
            "type.googleapis.com/acme.account-v1",
            "x/a-b",
            "-a",
            "a b-c",
            "",
        ] {
            assert!(!is_json_name(name), "{name}");
        }
    }

    #[test]
    fn typed_decode_reports_mismatch_and_garbage() {
        let state = sample();
        let err = state.decode_state::<prost_types::Duration>().unwrap_err();
        assert!(
            matches!(err, Error::StateTypeMismatch { ref found, .. } if found == "google.protobuf.Timestamp")
        );
        let mut garbage = state.clone();
        garbage.resulting_state.as_mut().unwrap().value = vec![0xff];
        assert!(matches!(
            garbage.decode_state::<prost_types::Timestamp>(),
            Err(Error::Decode { .. })
        ));
        assert_eq!(
            state.decode_state::<prost_types::Timestamp>().unwrap(),
            prost_types::Timestamp {
                seconds: 5,
                nanos: 6
            }
        );
    }
}
