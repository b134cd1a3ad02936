//! [`Offset`]: a position in the change feed, to resume from.

use std::fmt;
use std::str::FromStr;

use crate::error::truncate;
use crate::state::MAX_PERSISTENCE_ID_LEN;

/// A position in a store's change feed: the changes after it are the ones still to deliver.
///
/// Every [`Change`](crate::Change) carries the offset just past it; store the offset of the
/// last change you processed (with what you did with it, see the [`feed`](crate::feed)
/// chapter) and resume from it with [`DurableStore::changes`](crate::DurableStore::changes).
///
/// Offsets are opaque but totally ordered: a later change has a greater offset, and the order
/// of `Ord` is the order of delivery. They are stable text (`Display` and [`FromStr`], or
/// [`Offset::to_bytes`] and [`Offset::from_bytes`]), the same for every process and version of
/// this crate that reads the table. An offset is never a time: it is the id of the writing
/// transaction and the entity's id, so two commits never share one and none is skipped.
///
/// ```
/// use durablestore_postgres::Offset;
///
/// let stored = Offset::beginning().to_string();
/// let resumed: Offset = stored.parse()?;
/// assert_eq!(resumed, Offset::BEGINNING);
/// assert!("not an offset".parse::<Offset>().is_err());
/// # Ok::<(), durablestore_postgres::OffsetParseError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Offset {
    /// The writing transaction's id (`xid8`); 0 before every transaction.
    xid: u64,
    /// The entity's id, compared as bytes (the log's `COLLATE "C"`).
    persistence_id: String,
}

impl Offset {
    /// Before every change: a stream from here delivers all that the feed holds.
    pub const BEGINNING: Offset = Offset {
        xid: 0,
        persistence_id: String::new(),
    };

    /// [`Offset::BEGINNING`].
    pub fn beginning() -> Self {
        Self::BEGINNING
    }

    pub(crate) fn new(xid: u64, persistence_id: String) -> Self {
        Offset {
            xid,
            persistence_id,
        }
    }

    /// The writing transaction's id, as text for a bind parameter cast to `xid8`.
    pub(crate) fn xid_text(&self) -> String {
        self.xid.to_string()
    }

    pub(crate) fn persistence_id(&self) -> &str {
        &self.persistence_id
    }

    /// The offset as bytes, to store in a `bytea` column or a file: its text, UTF-8.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.to_string().into_bytes()
    }

    /// Reads an offset written by [`Offset::to_bytes`].
    ///
    /// # Errors
    /// [`OffsetParseError`] when the bytes are not an offset.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, OffsetParseError> {
        let text = std::str::from_utf8(bytes).map_err(|_| OffsetParseError {
            input: truncate(&String::from_utf8_lossy(bytes), 100),
            reason: "it is not UTF-8",
        })?;
        text.parse()
    }
}

impl Default for Offset {
    fn default() -> Self {
        Self::BEGINNING
    }
}

/// `{xid}/{persistence_id}`, e.g. `748/account-1`; the beginning is `0/`.
impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.xid, self.persistence_id)
    }
}

impl FromStr for Offset {
    type Err = OffsetParseError;

    /// Parses the text of `Display`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let reject = |reason| OffsetParseError {
            input: truncate(text, 100),
            reason,
        };
        // The transaction id is digits: the first `/` ends it, the id may hold more.
        let (xid, persistence_id) = text
            .split_once('/')
            .ok_or_else(|| reject("it has no `/` between the transaction id and the id"))?;
        if xid.is_empty() || !xid.bytes().all(|b| b.is_ascii_digit()) {
            return Err(reject("the transaction id before `/` is not a number"));
        }
        let xid: u64 = xid
            .parse()
            .map_err(|_| reject("the transaction id is out of range"))?;
        if persistence_id.len() > MAX_PERSISTENCE_ID_LEN * 4 || persistence_id.contains('\0') {
            return Err(reject("the id after `/` cannot be a persistence id"));
        }
        if xid == 0 && !persistence_id.is_empty() {
            return Err(reject("only the beginning (`0/`) has transaction id 0"));
        }
        Ok(Offset::new(xid, persistence_id.to_owned()))
    }
}

/// Text or bytes that are not an [`Offset`]: what was given (shortened) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid change feed offset `{input}`: {reason}")]
pub struct OffsetParseError {
    input: String,
    reason: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_round_trip_as_text_and_bytes() {
        for offset in [
            Offset::BEGINNING,
            Offset::new(748, "account-1".to_owned()),
            Offset::new(u64::MAX, "a/b:c é".to_owned()),
        ] {
            assert_eq!(offset.to_string().parse::<Offset>(), Ok(offset.clone()));
            assert_eq!(Offset::from_bytes(&offset.to_bytes()), Ok(offset));
        }
        assert_eq!(Offset::BEGINNING.to_string(), "0/");
    }

    #[test]
    fn offsets_order_by_transaction_then_id_bytes() {
        let o = |xid, id: &str| Offset::new(xid, id.to_owned());
        let mut offsets = vec![
            o(2, "a"),
            o(1, "b"),
            o(1, "B"),
            Offset::BEGINNING,
            o(1, "é"),
        ];
        offsets.sort();
        assert_eq!(
            offsets,
            vec![
                Offset::BEGINNING,
                o(1, "B"),
                o(1, "b"),
                o(1, "é"),
                o(2, "a")
            ]
        );
    }

    #[test]
    fn malformed_offsets_are_refused_with_a_reason() {
        for bad in [
            "",
            "12",
            "x/a",
            "-1/a",
            "/a",
            "0/a",
            "99999999999999999999/a",
            "1/a\0",
        ] {
            let error = bad.parse::<Offset>().unwrap_err();
            assert!(
                error.to_string().contains("invalid change feed offset"),
                "{bad:?}"
            );
        }
        assert!(Offset::from_bytes(&[0xff, b'/']).is_err());
    }
}
