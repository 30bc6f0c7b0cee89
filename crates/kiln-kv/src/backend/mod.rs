//! The storage backends behind [`crate::Kv`].

pub(crate) mod embedded;
mod record;
pub(crate) mod redis;

use async_trait::async_trait;

use crate::error::KvError;
use crate::types::{Entry, ListKey};

/// A storage backend. [`crate::Kv`] validates every input before it calls one, so backends
/// check nothing but their own storage. Every read takes `now`, the [`crate::Clock`]'s time in
/// Unix seconds, and treats entries whose expiration is at or before it as missing.
///
/// Writing to a namespace that does not exist creates it; reading from one finds no keys.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Reads one entry.
    async fn get(&self, namespace: &str, key: &str, now: i64) -> Result<Option<Entry>, KvError>;

    /// Reads several entries, returning them in the order of `keys`.
    async fn get_many(
        &self,
        namespace: &str,
        keys: &[String],
        now: i64,
    ) -> Result<Vec<Option<Entry>>, KvError>;

    /// Stores an entry, replacing any earlier one. Returns only once the write is durable (for
    /// Redis: once the server has applied it; Redis's own persistence settings decide the rest).
    async fn put(&self, namespace: &str, key: &str, entry: Entry, now: i64) -> Result<(), KvError>;

    /// Removes a key; removing a missing key succeeds.
    async fn delete(&self, namespace: &str, key: &str) -> Result<(), KvError>;

    /// Returns up to `query.limit` live keys in UTF-8 byte order.
    async fn list(&self, namespace: &str, query: ListQuery, now: i64) -> Result<KeyPage, KvError>;

    /// Creates an empty namespace; returns false if it already existed.
    async fn create_namespace(&self, namespace: &str) -> Result<bool, KvError>;

    /// Returns the namespace ids in byte order.
    async fn list_namespaces(&self) -> Result<Vec<String>, KvError>;

    /// Removes a namespace and all its keys; returns false if it did not exist.
    async fn delete_namespace(&self, namespace: &str) -> Result<bool, KvError>;

    /// Removes the entries that expired at or before `now` from storage and returns how many
    /// it removed. Reads already skip them, so this only reclaims space.
    async fn purge_expired(&self, now: i64) -> Result<u64, KvError>;
}

/// A list request in backend terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    /// Only keys that start with this string (empty for all).
    pub prefix: String,
    /// Maximum number of keys to return, at least 1.
    pub limit: usize,
    /// Only keys after this one in byte order: the last key of the previous page.
    pub start_after: Option<String>,
}

/// A page of keys from a backend.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyPage {
    pub keys: Vec<ListKey>,
    /// Key after which the next page starts, or `None` when no live keys remain.
    pub next_after: Option<String>,
}
