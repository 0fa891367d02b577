//! The one error type of the datastore layer.
//!
//! Every backend maps its own failures onto these variants, so callers can decide what to do
//! (retry a [`Error::Conflict`], report an [`Error::Unavailable`]) without knowing which
//! backend they talk to.

use crate::resource::ValidationError;
use crate::store::KeyValue;

/// A datastore or IPAM failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The key or resource does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// A create found the key already present.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// A compare-and-swap lost: the stored revision is not the one the caller read.
    #[error("conflict on {key}: expected revision {expected}, the store has {actual}")]
    Conflict {
        /// The key that was written.
        key: String,
        /// The revision the caller expected.
        expected: i64,
        /// The revision in the store.
        actual: i64,
        /// The value in the store, when the backend returned it with the refusal (saves the
        /// caller a read before retrying).
        current: Option<Box<KeyValue>>,
    },
    /// The backend cannot be reached or did not answer in time.
    #[error("datastore unavailable: {0}")]
    Unavailable(String),
    /// The request or a stored value is malformed.
    #[error("invalid: {0}")]
    Invalid(String),
    /// A resource failed validation.
    #[error(transparent)]
    Validation(#[from] ValidationError),
    /// IPAM found no address to give.
    #[error("{0}")]
    Exhausted(String),
    /// IPAM was asked for an address that another holder has.
    #[error("{0}")]
    AddressTaken(String),
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
