//! A batch's column as one PostgreSQL array parameter, encoded in one pass: the binary array
//! format that `postgres-types` writes for a slice (one dimension, no nulls), with the room
//! for the whole column reserved once instead of element by element.

use std::error::Error as StdError;

use bytes::{BufMut, BytesMut};
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

type EncodeError = Box<dyn StdError + Sync + Send>;

/// An element type of a [`Column`].
pub(super) trait Element: std::fmt::Debug + Sync {
    /// The array type the column is bound as.
    const ARRAY: Type;
    /// The type of its elements, whose oid the array's header carries.
    const ELEMENT: Type;
    /// The bytes of the element's binary encoding.
    fn encoded_len(&self) -> usize;
    /// Writes the element's binary encoding (without its length).
    fn put(&self, out: &mut BytesMut);
}

impl Element for &str {
    const ARRAY: Type = Type::TEXT_ARRAY;
    const ELEMENT: Type = Type::TEXT;
    fn encoded_len(&self) -> usize {
        self.len()
    }
    fn put(&self, out: &mut BytesMut) {
        out.put_slice(self.as_bytes());
    }
}

impl Element for &[u8] {
    const ARRAY: Type = Type::BYTEA_ARRAY;
    const ELEMENT: Type = Type::BYTEA;
    fn encoded_len(&self) -> usize {
        self.len()
    }
    fn put(&self, out: &mut BytesMut) {
        out.put_slice(self);
    }
}

impl Element for i64 {
    const ARRAY: Type = Type::INT8_ARRAY;
    const ELEMENT: Type = Type::INT8;
    fn encoded_len(&self) -> usize {
        8
    }
    fn put(&self, out: &mut BytesMut) {
        out.put_i64(*self);
    }
}

/// The values of one column of a batch, bound as a one-dimensional array without nulls.
#[derive(Debug)]
pub(super) struct Column<T>(pub(super) Vec<T>);

impl<T> Column<T> {
    /// The column `of` of `rows`.
    pub(super) fn of<R>(rows: &[R], of: impl Fn(&R) -> T) -> Self {
        Column(rows.iter().map(of).collect())
    }
}

impl<T: Element> ToSql for Column<T> {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, EncodeError> {
        let count = i32::try_from(self.0.len())?;
        // Header (dimensions, null flag, element oid, length and lower bound of the one
        // dimension), then each element's length and bytes.
        let bytes = 20 + self.0.iter().map(|e| 4 + e.encoded_len()).sum::<usize>();
        out.reserve(bytes);
        out.put_i32(1);
        out.put_i32(0);
        out.put_u32(T::ELEMENT.oid());
        out.put_i32(count);
        out.put_i32(1);
        for element in &self.0 {
            out.put_i32(i32::try_from(element.encoded_len())?);
            element.put(out);
        }
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == T::ARRAY
    }

    to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `postgres-types` writes for the same values as a slice.
    fn theirs<T: ToSql>(values: &[T], ty: &Type) -> BytesMut {
        let mut out = BytesMut::new();
        values.to_sql(ty, &mut out).unwrap();
        out
    }

    fn ours<T: Element>(values: Vec<T>) -> BytesMut {
        let mut out = BytesMut::new();
        Column(values).to_sql(&T::ARRAY, &mut out).unwrap();
        out
    }

    #[test]
    fn each_column_is_byte_for_byte_what_postgres_types_writes() {
        let ids = ["a", "", "entity-é-1", "x"];
        assert_eq!(ours(ids.to_vec()), theirs(&ids, &Type::TEXT_ARRAY));
        let payloads: [&[u8]; 3] = [b"", b"\x00\x01\xff", &[7; 400]];
        assert_eq!(
            ours(payloads.to_vec()),
            theirs(&payloads, &Type::BYTEA_ARRAY)
        );
        let versions = [1_i64, -1, i64::MAX, 0];
        assert_eq!(
            ours(versions.to_vec()),
            theirs(&versions, &Type::INT8_ARRAY)
        );
        let empty: [i64; 0] = [];
        assert_eq!(ours(empty.to_vec()), theirs(&empty, &Type::INT8_ARRAY));
    }

    #[test]
    fn a_column_is_bound_only_as_its_array_type() {
        assert!(<Column<&str> as ToSql>::accepts(&Type::TEXT_ARRAY));
        assert!(!<Column<&str> as ToSql>::accepts(&Type::TEXT));
        assert!(!<Column<i64> as ToSql>::accepts(&Type::TEXT_ARRAY));
        let mut out = BytesMut::new();
        assert!(
            Column(vec![1_i64])
                .to_sql_checked(&Type::BYTEA_ARRAY, &mut out)
                .is_err()
        );
    }
}
