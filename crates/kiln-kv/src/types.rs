use std::path::PathBuf;

use bytes::Bytes;

/// A stored value with its expiration and metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub value: Bytes,
    /// Absolute expiration time in Unix seconds; the entry reads as missing from then on.
    pub expiration: Option<i64>,
    pub metadata: Option<serde_json::Value>,
}

/// Options of `put`, as numbers arrive from JS.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PutOptions {
    /// Absolute expiration in Unix seconds: an integer at least 60 s after the clock's time.
    pub expiration: Option<f64>,
    /// Expiration relative to the clock's time, in seconds: an integer of at least 60. It takes
    /// precedence over `expiration` when both are given (both are still validated).
    pub expiration_ttl: Option<f64>,
    /// JSON metadata of at most 1024 bytes serialised. `Some(Value::Null)` stores none.
    pub metadata: Option<serde_json::Value>,
}

/// Options of `list`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListOptions {
    /// Only keys that start with this string; send the same prefix with every page.
    pub prefix: Option<String>,
    /// Maximum number of keys on the page: an integer from 1 to 1000, default 1000.
    pub limit: Option<f64>,
    /// The `cursor` of the previous page.
    pub cursor: Option<String>,
}

/// One key in a list page.
#[derive(Debug, Clone, PartialEq)]
pub struct ListKey {
    pub name: String,
    /// Absolute expiration in Unix seconds, present only when the key has one.
    pub expiration: Option<i64>,
    /// Metadata, present only when the key has some.
    pub metadata: Option<serde_json::Value>,
}

/// One page of a `list` call.
#[derive(Debug, Clone, PartialEq)]
pub struct ListPage {
    /// Keys in UTF-8 byte order. The page may hold fewer keys than the limit, even none, while
    /// `list_complete` is false, so callers must check `list_complete`.
    pub keys: Vec<ListKey>,
    pub list_complete: bool,
    /// Opaque cursor for the next page; present only when `list_complete` is false.
    pub cursor: Option<String>,
}

impl ListPage {
    /// The page as the binding's `list()` returns it and the admin API sends it:
    /// `{keys: [{name, expiration?, metadata?}], list_complete, cursor?, cacheStatus}`.
    pub fn to_json(&self) -> serde_json::Value {
        let keys: Vec<serde_json::Value> = self
            .keys
            .iter()
            .map(|key| {
                let mut item = serde_json::json!({ "name": key.name });
                if let Some(expiration) = key.expiration {
                    item["expiration"] = expiration.into();
                }
                if let Some(metadata) = &key.metadata {
                    item["metadata"] = metadata.clone();
                }
                item
            })
            .collect();
        let mut page = serde_json::json!({
            "keys": keys,
            "list_complete": self.list_complete,
            "cacheStatus": null,
        });
        if let Some(cursor) = &self.cursor {
            page["cursor"] = cursor.as_str().into();
        }
        page
    }
}

/// Storage backend of a [`crate::Kv`], with the location of its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendConfig {
    /// A redb database file, created if missing. One process at a time may open it.
    Embedded { path: PathBuf },
    /// A Redis server, for example `redis://127.0.0.1:6379/0` or
    /// `redis://:password@host:6379`. Kiln's keys start with `kiln:kv:`.
    Redis { url: String },
}
