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
/// transaction and a position among that transaction's entries, so two commits never share
/// one and none is skipped.
///
/// The text of an earlier version of this crate (`{xid}/{persistence_id}`) is still read, as
/// the start of that transaction: resuming from it delivers that transaction's changes again,
/// and skips nothing.
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Offset {
    /// The writing transaction's id (`xid8`); 0 before every transaction.
    xid: u64,
    /// The log row's `seq` within the transaction (0: before its first).
    seq: u64,
    /// The position in that log row's ids, from 1 (0: before its first).
    pos: u64,
}

impl Offset {
    /// Before every change: a stream from here delivers all that the feed holds.
    pub const BEGINNING: Offset = Offset {
        xid: 0,
        seq: 0,
        pos: 0,
    };

    /// [`Offset::BEGINNING`].
    pub fn beginning() -> Self {
        Self::BEGINNING
    }

    pub(crate) fn new(xid: u64, seq: u64, pos: u64) -> Self {
        Offset { xid, seq, pos }
    }

    /// The writing transaction's id, as text for a bind parameter cast to `xid8`.
    pub(crate) fn xid_text(&self) -> String {
        self.xid.to_string()
    }

    /// The log row and position, as the bind parameters of `int8` columns.
    pub(crate) fn seq_and_pos(&self) -> (i64, i64) {
        let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        (clamp(self.seq), clamp(self.pos))
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

/// `{xid}.{seq}.{pos}`, e.g. `748.12.3`; the beginning is `0.0.0`.
impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.xid, self.seq, self.pos)
    }
}

impl FromStr for Offset {
    type Err = OffsetParseError;

    /// Parses the text of `Display`, or of an earlier version (`{xid}/{persistence_id}`, read
    /// as the start of that transaction).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let reject = |reason| OffsetParseError {
            input: truncate(text, 100),
            reason,
        };
        let number = |digits: &str, what| -> Result<u64, OffsetParseError> {
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(reject(what));
            }
            digits
                .parse()
                .map_err(|_| reject("a number is out of range"))
        };
        // The earlier text: the transaction id, `/`, the id (which may hold anything).
        if let Some((xid, id)) = text.split_once('/') {
            let xid = number(xid, "the transaction id before `/` is not a number")?;
            if id.len() > MAX_PERSISTENCE_ID_LEN * 4 || id.contains('\0') {
                return Err(reject("the id after `/` cannot be a persistence id"));
            }
            if xid == 0 && !id.is_empty() {
                return Err(reject("only the beginning (`0/`) has transaction id 0"));
            }
            return Ok(Offset::new(xid, 0, 0));
        }
        let mut parts = text.split('.');
        let (Some(xid), Some(seq), Some(pos), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(reject("it is not three numbers joined by `.`"));
        };
        let offset = Offset::new(
            number(xid, "the transaction id is not a number")?,
            number(seq, "the log row is not a number")?,
            number(pos, "the position is not a number")?,
        );
        if offset.xid == 0 && offset != Offset::BEGINNING {
            return Err(reject("only the beginning (`0.0.0`) has transaction id 0"));
        }
        Ok(offset)
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
            Offset::new(748, 12, 3),
            Offset::new(u64::MAX, u64::MAX, u64::MAX),
        ] {
            assert_eq!(offset.to_string().parse::<Offset>(), Ok(offset));
            assert_eq!(Offset::from_bytes(&offset.to_bytes()), Ok(offset));
        }
        assert_eq!(Offset::BEGINNING.to_string(), "0.0.0");
    }

    #[test]
    fn an_earlier_versions_offset_reads_as_the_start_of_its_transaction() {
        assert_eq!("0/".parse::<Offset>(), Ok(Offset::BEGINNING));
        assert_eq!(
            "748/account-1".parse::<Offset>(),
            Ok(Offset::new(748, 0, 0))
        );
        // An id holding `/` or `.` is still the earlier text's id.
        assert_eq!("748/a/b.c.d".parse::<Offset>(), Ok(Offset::new(748, 0, 0)));
    }

    #[test]
    fn offsets_order_by_transaction_then_log_row_then_position() {
        let o = Offset::new;
        let mut offsets = vec![
            o(2, 1, 1),
            o(1, 9, 2),
            o(1, 9, 1),
            Offset::BEGINNING,
            o(1, 10, 1),
        ];
        offsets.sort();
        assert_eq!(
            offsets,
            vec![
                Offset::BEGINNING,
                o(1, 9, 1),
                o(1, 9, 2),
                o(1, 10, 1),
                o(2, 1, 1)
            ]
        );
    }

    #[test]
    fn malformed_offsets_are_refused_with_a_reason() {
        for bad in [
            "",
            "12",
            "1.2",
            "1.2.3.4",
            "x.1.1",
            "-1.1.1",
            "1..1",
            "0.1.1",
            "99999999999999999999.1.1",
            "x/a",
            "/a",
            "0/a",
            "1/a\0",
        ] {
            let error = bad.parse::<Offset>().unwrap_err();
            assert!(
                error.to_string().contains("invalid change feed offset"),
                "{bad:?}"
            );
        }
        assert!(Offset::from_bytes(&[0xff, b'.']).is_err());
    }
}
