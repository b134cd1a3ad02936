//! [`StateRow`]: a state laid out as a row of the table, and read back from one.

use prost::Message;
use prost_types::Any;

use super::type_url::{encode_any_in_place, remember_validated, validated};
use super::{
    ANY_MANIFEST, DurableState, MAX_MANIFEST_LEN, RowFormat, TOMBSTONE_MANIFEST, TYPE_URL_PREFIX,
    is_full_name, is_json_name, now_millis, type_name, validate_persistence_id,
};
use crate::error::{Error, InvalidInput, truncate};
use crate::messages::Revision;

/// One row of the table, as bound to or read from SQL.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StateRow {
    pub persistence_id: String,
    pub version_number: i64,
    pub state_payload: Vec<u8>,
    pub state_manifest: String,
    pub timestamp: i64,
    pub shard_number: i64,
}

impl StateRow {
    /// Validates `state` and lays it out as a row in `format` (see [`RowFormat`]).
    pub(crate) fn encode(state: DurableState, format: RowFormat) -> Result<Self, InvalidInput> {
        let DurableState {
            persistence_id,
            version_number,
            resulting_state,
            timestamp,
            shard,
        } = state;
        validate_persistence_id(&persistence_id)?;
        if version_number == 0 {
            return Err(InvalidInput::VersionZero { persistence_id });
        }
        let version_number = match i64::try_from(version_number) {
            Ok(v) => v,
            Err(_) => {
                return Err(InvalidInput::OutOfRange {
                    persistence_id,
                    field: "version_number",
                    value: version_number,
                });
            }
        };
        let shard_number = match i64::try_from(shard) {
            Ok(s) => s,
            Err(_) => {
                return Err(InvalidInput::OutOfRange {
                    persistence_id,
                    field: "shard",
                    value: shard,
                });
            }
        };
        let Some(any) = resulting_state else {
            return Err(InvalidInput::MissingState { persistence_id });
        };
        // No JSON name has a `/`, so a standard type URL needs no JSON check.
        let json = !any.type_url.starts_with(TYPE_URL_PREFIX) && is_json_name(&any.type_url);
        let (state_manifest, state_payload) = if json {
            // A JSON state, laid out alike in both formats: no Go reader could decode its
            // payload anyway, and its name cannot be mistaken for a protobuf manifest.
            (any.type_url, any.value)
        } else {
            // A URL validated before on this thread is not split and checked again.
            let plain = match validated(&any.type_url) {
                Some(plain) => plain,
                None => {
                    let name = type_name(&any.type_url);
                    if !is_full_name(name)
                        || any.type_url.len() > MAX_MANIFEST_LEN + TYPE_URL_PREFIX.len()
                    {
                        return Err(InvalidInput::InvalidTypeUrl {
                            persistence_id,
                            type_url: truncate(&any.type_url, 300),
                        });
                    }
                    let plain = any.type_url.strip_prefix(TYPE_URL_PREFIX) == Some(name)
                        && name != ANY_MANIFEST;
                    remember_validated(&any.type_url, plain);
                    plain
                }
            };
            if format == RowFormat::Typed && plain {
                // The name is the URL's tail: moved to the front, not copied.
                let mut manifest = any.type_url;
                manifest.drain(..TYPE_URL_PREFIX.len());
                (manifest, any.value)
            } else {
                // The URL's string, emptied, holds the manifest (shorter than any URL).
                let (payload, mut manifest) = encode_any_in_place(any);
                manifest.push_str(ANY_MANIFEST);
                (manifest, payload)
            }
        };
        Ok(StateRow {
            persistence_id,
            version_number,
            state_payload,
            state_manifest,
            timestamp,
            shard_number,
        })
    }

    /// The tombstone of `persistence_id` at `version`: no payload, no shard, stamped now.
    pub(crate) fn tombstone(persistence_id: String, version: u64) -> Result<Self, InvalidInput> {
        validate_persistence_id(&persistence_id)?;
        if version == 0 {
            return Err(InvalidInput::VersionZero { persistence_id });
        }
        let Ok(version_number) = i64::try_from(version) else {
            return Err(InvalidInput::OutOfRange {
                persistence_id,
                field: "version_number",
                value: version,
            });
        };
        Ok(StateRow {
            persistence_id,
            version_number,
            state_payload: Vec::new(),
            state_manifest: TOMBSTONE_MANIFEST.to_owned(),
            timestamp: now_millis(),
            shard_number: 0,
        })
    }

    /// True for the row of a deleted entity.
    pub(crate) fn is_tombstone(&self) -> bool {
        self.state_manifest == TOMBSTONE_MANIFEST
    }

    /// The stored version and, unless the row is a tombstone, the state.
    pub(crate) fn into_revision(self) -> Result<Revision, Error> {
        if self.is_tombstone() {
            let version = u64::try_from(self.version_number).map_err(|_| Error::CorruptState {
                persistence_id: self.persistence_id.clone(),
                reason: format!("negative version_number {}", self.version_number),
            })?;
            return Ok(Revision {
                version,
                state: None,
            });
        }
        let state = self.decode()?;
        Ok(Revision {
            version: state.version_number,
            state: Some(state),
        })
    }

    /// Rejects a row whose payload is larger than `max` bytes.
    pub(crate) fn check_size(self, max: usize) -> Result<Self, InvalidInput> {
        if self.state_payload.len() > max {
            return Err(InvalidInput::StateTooLarge {
                persistence_id: self.persistence_id,
                len: self.state_payload.len(),
                max,
            });
        }
        Ok(self)
    }

    /// True when `self` and `other` hold the same version of the same state, whichever
    /// [`RowFormat`] each was laid out in (the timestamp and shard are not compared).
    pub(crate) fn same_state(&self, other: &StateRow) -> bool {
        if self.version_number != other.version_number {
            return false;
        }
        if self.state_manifest == other.state_manifest {
            return self.state_payload == other.state_payload;
        }
        match (self.any(), other.any()) {
            (Some(a), Some(b)) => a == b,
            _ => false,
        }
    }

    /// The state as an `Any`, from any layout; `None` for a tombstone or a row that does not
    /// decode.
    fn any(&self) -> Option<Any> {
        if self.is_tombstone() {
            None
        } else if self.state_manifest == ANY_MANIFEST {
            Any::decode(self.state_payload.as_slice()).ok()
        } else if is_json_name(&self.state_manifest) {
            Some(Any {
                type_url: self.state_manifest.clone(),
                value: self.state_payload.clone(),
            })
        } else {
            Some(Any {
                type_url: format!("{TYPE_URL_PREFIX}{}", self.state_manifest),
                value: self.state_payload.clone(),
            })
        }
    }

    /// Turns a stored row back into a state; accepts both [`RowFormat`]s and JSON rows. A JSON
    /// payload is not parsed here: like protobuf bytes, it is checked when it is decoded.
    pub(crate) fn decode(self) -> Result<DurableState, Error> {
        let corrupt = |reason: String| Error::CorruptState {
            persistence_id: self.persistence_id.clone(),
            reason,
        };
        let version_number = u64::try_from(self.version_number)
            .map_err(|_| corrupt(format!("negative version_number {}", self.version_number)))?;
        let shard = u64::try_from(self.shard_number)
            .map_err(|_| corrupt(format!("negative shard_number {}", self.shard_number)))?;
        let resulting_state = if self.state_manifest == ANY_MANIFEST {
            let any = Any::decode(self.state_payload.as_slice())
                .map_err(|e| corrupt(format!("payload is not a valid google.protobuf.Any: {e}")))?;
            if !is_full_name(type_name(&any.type_url)) {
                return Err(corrupt(format!(
                    "stored Any has an invalid type URL `{}`",
                    truncate(&any.type_url, 300)
                )));
            }
            any
        } else if is_full_name(&self.state_manifest) {
            Any {
                type_url: format!("{TYPE_URL_PREFIX}{}", self.state_manifest),
                value: self.state_payload,
            }
        } else if is_json_name(&self.state_manifest) {
            Any {
                type_url: self.state_manifest,
                value: self.state_payload,
            }
        } else {
            return Err(corrupt(format!(
                "invalid state_manifest `{}`",
                truncate(&self.state_manifest, 300)
            )));
        };
        Ok(DurableState {
            persistence_id: self.persistence_id,
            version_number,
            resulting_state: Some(resulting_state),
            timestamp: self.timestamp,
            shard,
        })
    }
}
