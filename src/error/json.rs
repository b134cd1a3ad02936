//! [`JsonError`]: why a JSON state did not encode or decode, without the payload.

use std::fmt;
use std::sync::Arc;

/// An error of serde_json, as the crate reports it (feature `serde`).
///
/// The `Display`, `Debug` and [`source`](std::error::Error::source) of an error met while
/// **decoding** a stored state say only what kind of error it is and where
/// ([`JsonError::category`], [`JsonError::line`], [`JsonError::column`]), never serde_json's
/// message: that message quotes the offending input (`invalid type: string "…"`), i.e. the
/// stored payload, and errors end up in logs. Read the row to see the JSON itself.
///
/// An error met while **encoding** keeps serde_json's message (e.g. "key must be a string"):
/// it comes from the state's `Serialize` impl, not from stored bytes.
#[derive(Clone)]
pub struct JsonError {
    inner: Arc<serde_json::Error>,
    /// False for decoding errors, whose message may quote the payload.
    show_message: bool,
}

impl JsonError {
    pub(crate) fn encoding(error: serde_json::Error) -> Self {
        JsonError {
            inner: Arc::new(error),
            show_message: true,
        }
    }

    pub(crate) fn decoding(error: serde_json::Error) -> Self {
        JsonError {
            inner: Arc::new(error),
            show_message: false,
        }
    }

    /// What kind of error it is: not JSON at all (`Syntax`), JSON that ends early (`Eof`), or
    /// JSON of another shape than the type (`Data`).
    pub fn category(&self) -> serde_json::error::Category {
        self.inner.classify()
    }

    /// The line (from 1) of the JSON where the error was found; 0 when encoding.
    pub fn line(&self) -> usize {
        self.inner.line()
    }

    /// The column (from 1) of the JSON where the error was found; 0 when encoding.
    pub fn column(&self) -> usize {
        self.inner.column()
    }
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use serde_json::error::Category;
        if self.show_message {
            return write!(f, "{}", self.inner);
        }
        let what = match self.category() {
            Category::Syntax => "not valid JSON",
            Category::Eof => "the JSON ends early",
            Category::Data => "the JSON does not match the type",
            Category::Io => "I/O error",
        };
        write!(f, "{what} at line {} column {}", self.line(), self.column())
    }
}

impl fmt::Debug for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JsonError")
            .field("category", &self.category())
            .field("line", &self.line())
            .field("column", &self.column())
            .field("message", &self.to_string())
            .finish()
    }
}

impl std::error::Error for JsonError {}
