//! Workers KV namespaces for Kiln, on an embedded redb file or a Redis server.
//!
//! [`Kv`] applies the Workers KV rules (key, value and metadata limits, expiration checks,
//! list paging and their error texts) in front of a [`Backend`], and a [`Clock`] decides which
//! entries have expired. [`Namespace`] is the handle that a worker's KV binding uses.
//!
//! Reads are strongly consistent: a read after a write, from any clone of a `Kv` on the same
//! backend, returns that write. Workers KV promises only eventual consistency, so this is
//! stricter than callers may rely on.

mod backend;
mod clock;
mod error;
mod kv;
mod types;
mod validate;

#[cfg(feature = "test-support")]
pub mod test_support;

pub use backend::{Backend, KeyPage, ListQuery};
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::KvError;
pub use kv::{Kv, Namespace};
pub use types::{BackendConfig, Entry, ListKey, ListOptions, ListPage, PutOptions};
pub use validate::{
    is_reserved_namespace, MAX_BULK_GET_KEYS, MAX_KEY_BYTES, MAX_LIST_LIMIT, MAX_METADATA_BYTES,
    MAX_NAMESPACE_ID_BYTES, MAX_VALUE_BYTES, MIN_CACHE_TTL, MIN_EXPIRATION_TTL,
    RESERVED_NAMESPACE_PREFIX,
};
