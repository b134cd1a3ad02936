//! A protobuf state's type URL, and its `Any` laid out in the buffer that already holds the
//! state's bytes: what every write builds, without building it twice.

use std::cell::RefCell;

use prost::Name;
use prost::bytes::BufMut;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use prost_types::Any;

use super::TYPE_URL_PREFIX;

thread_local! {
    /// The type URL of each state type this thread has written, by the address of the type's
    /// `full_name`: `Name::full_name` formats a fresh string on every call. A program has a
    /// handful of state types: a list, searched without hashing.
    static TYPE_URLS: RefCell<Vec<(usize, Box<str>)>> = const { RefCell::new(Vec::new()) };

    /// The protobuf type URLs this thread's writes have already validated, each with whether
    /// it is exactly the prefix and a name other than `Any`'s (see [`validated`]). A program
    /// writes a handful of state types; past [`MAX_VALIDATED`] a URL is validated each time.
    static VALIDATED: RefCell<Vec<(Box<str>, bool)>> = const { RefCell::new(Vec::new()) };
}

/// How many validated type URLs a thread remembers.
const MAX_VALIDATED: usize = 16;

/// What a validation of `type_url` concluded before, on this thread: `None` if it did not
/// run yet (or the URL was refused), else whether the URL is `prefix + name` with a name other
/// than `Any`'s. A write then compares one string instead of splitting and checking the name.
pub(super) fn validated(type_url: &str) -> Option<bool> {
    VALIDATED
        .try_with(|known| {
            let known = known.borrow();
            let found = known.iter().find(|(url, _)| &**url == type_url);
            found.map(|(_, plain)| *plain)
        })
        .ok()
        .flatten()
}

/// Remembers that `type_url` passed validation (see [`validated`]).
pub(super) fn remember_validated(type_url: &str, plain: bool) {
    let _ = VALIDATED.try_with(|known| {
        let mut known = known.borrow_mut();
        if known.len() < MAX_VALIDATED {
            known.push((type_url.into(), plain));
        }
    });
}

/// `type.googleapis.com/<M::full_name()>`, as Go's `anypb.New` writes it (prost's default
/// `Name::type_url` is a bare `/name`).
pub(super) fn type_url_of<M: Name>() -> String {
    // Keyed by the function itself: one that overrides `full_name` has an address of its own,
    // and two that share one (folded as identical code) answer the same name.
    let key = M::full_name as fn() -> String as usize;
    let known = TYPE_URLS
        .try_with(|urls| {
            let urls = urls.borrow();
            let found = urls.iter().find(|(known, _)| *known == key);
            found.map(|(_, url)| String::from(&**url))
        })
        .ok()
        .flatten();
    if let Some(url) = known {
        return url;
    }
    let name = M::full_name();
    let mut url = String::with_capacity(TYPE_URL_PREFIX.len() + name.len());
    url.push_str(TYPE_URL_PREFIX);
    url.push_str(&name);
    // A thread being torn down just builds it again next time.
    let _ = TYPE_URLS.try_with(|urls| urls.borrow_mut().push((key, url.clone().into())));
    url
}

/// How many bytes the `Any` encoding of a `value_len`-byte value under `type_url` puts before
/// the value: the type URL field and the value field's key and length (proto3 leaves out an
/// empty field).
pub(super) fn any_header_len(type_url: &str, value_len: usize) -> usize {
    let url = if type_url.is_empty() {
        0
    } else {
        key_len(1) + encoded_len_varint(type_url.len() as u64) + type_url.len()
    };
    let value = if value_len == 0 {
        0
    } else {
        key_len(2) + encoded_len_varint(value_len as u64)
    };
    url + value
}

/// The `Any` encoding of `any` (byte for byte `any.encode_to_vec()`), made in `any.value`'s
/// own buffer when it has room for the header before the value ([`DurableState::new`] leaves
/// that room), and returned with the emptied type URL string, for reuse.
///
/// [`DurableState::new`]: super::DurableState::new
pub(super) fn encode_any_in_place(any: Any) -> (Vec<u8>, String) {
    let Any {
        mut type_url,
        mut value,
    } = any;
    let len = value.len();
    let header = any_header_len(&type_url, len);
    if value.capacity() - len < header {
        let mut encoded = Vec::with_capacity(header + len);
        put_header(&mut encoded, &type_url, len);
        encoded.extend_from_slice(&value);
        type_url.clear();
        return (encoded, type_url);
    }
    value.resize(len + header, 0);
    value.copy_within(0..len, header);
    put_header(&mut &mut value[..header], &type_url, len);
    type_url.clear();
    (value, type_url)
}

fn put_header(buf: &mut impl BufMut, type_url: &str, value_len: usize) {
    if !type_url.is_empty() {
        encode_key(1, WireType::LengthDelimited, buf);
        encode_varint(type_url.len() as u64, buf);
        buf.put_slice(type_url.as_bytes());
    }
    if value_len != 0 {
        encode_key(2, WireType::LengthDelimited, buf);
        encode_varint(value_len as u64, buf);
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    fn any(type_url: &str, value: Vec<u8>) -> Any {
        Any {
            type_url: type_url.to_owned(),
            value,
        }
    }

    #[test]
    fn the_in_place_encoding_is_byte_for_byte_prosts() {
        let long_url = format!("{TYPE_URL_PREFIX}{}", "a".repeat(200));
        for (url, len) in [
            ("type.googleapis.com/a.B", 0),
            ("type.googleapis.com/a.B", 1),
            ("type.googleapis.com/a.B", 127),
            ("type.googleapis.com/a.B", 128),
            ("type.googleapis.com/a.B", 70_000),
            (long_url.as_str(), 400),
            ("", 5),
            ("", 0),
        ] {
            let value: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let expected = any(url, value.clone()).encode_to_vec();
            // Without room: a new buffer.
            let (encoded, emptied) = encode_any_in_place(any(url, value.clone()));
            assert_eq!(encoded, expected, "no room, {url:?} {len}");
            assert!(emptied.is_empty());
            // With room: the value's own buffer.
            let mut roomy = Vec::with_capacity(any_header_len(url, len) + len);
            roomy.extend_from_slice(&value);
            let before = roomy.as_ptr();
            let (encoded, _) = encode_any_in_place(any(url, roomy));
            assert_eq!(encoded, expected, "room, {url:?} {len}");
            if len > 0 {
                assert_eq!(encoded.as_ptr(), before, "reused the buffer, {url:?} {len}");
            }
        }
    }

    #[test]
    fn a_type_url_is_the_standard_prefix_and_the_full_name_every_time() {
        for _ in 0..3 {
            assert_eq!(
                type_url_of::<prost_types::Duration>(),
                "type.googleapis.com/google.protobuf.Duration"
            );
            assert_eq!(
                type_url_of::<prost_types::Timestamp>(),
                "type.googleapis.com/google.protobuf.Timestamp"
            );
        }
    }
}
