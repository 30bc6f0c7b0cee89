use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;

use crate::backend::embedded::EmbeddedBackend;
use crate::backend::redis::RedisBackend;
use crate::backend::{Backend, ListQuery};
use crate::clock::{Clock, SystemClock};
use crate::error::{op, KvError};
use crate::types::{BackendConfig, Entry, ListOptions, ListPage, PutOptions};
use crate::validate;

/// The KV store that the node and the CLI use: a backend, the Workers KV argument checks and a
/// clock that decides expiration. Cloning is cheap and clones share the backend.
#[derive(Clone)]
pub struct Kv {
    backend: Arc<dyn Backend>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Kv {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Kv").finish_non_exhaustive()
    }
}

impl Kv {
    /// Opens the backend with the system clock. An embedded file is created if missing, and
    /// repaired first if the last process using it was killed. A Redis server must be
    /// reachable, or this fails with [`KvError::Unavailable`].
    pub async fn open(config: &BackendConfig) -> Result<Kv, KvError> {
        let backend: Arc<dyn Backend> = match config {
            BackendConfig::Embedded { path } => Arc::new(EmbeddedBackend::open(path).await?),
            BackendConfig::Redis { url } => Arc::new(RedisBackend::open(url).await?),
        };
        Ok(Kv::from_backend(backend))
    }

    /// Wraps a backend of the caller's own, with the system clock.
    pub fn from_backend(backend: Arc<dyn Backend>) -> Kv {
        Kv {
            backend,
            clock: Arc::new(SystemClock),
        }
    }

    /// Replaces the clock. Namespace handles made before keep the old one.
    pub fn with_clock(self, clock: Arc<dyn Clock>) -> Kv {
        Kv { clock, ..self }
    }

    /// Returns a handle on a namespace without any I/O; the id is checked by each operation.
    pub fn namespace(&self, id: &str) -> Namespace {
        Namespace {
            kv: self.clone(),
            id: Arc::from(id),
        }
    }

    /// Creates an empty namespace; returns false if it already existed.
    pub async fn create_namespace(&self, id: &str) -> Result<bool, KvError> {
        validate::check_namespace_id(id)?;
        self.backend.create_namespace(id).await
    }

    /// Returns the namespace ids in byte order, including those created by a write.
    pub async fn list_namespaces(&self) -> Result<Vec<String>, KvError> {
        self.backend.list_namespaces().await
    }

    /// Deletes a namespace and all its keys, or returns [`KvError::NoSuchNamespace`].
    pub async fn delete_namespace(&self, id: &str) -> Result<(), KvError> {
        validate::check_namespace_id(id)?;
        if self.backend.delete_namespace(id).await? {
            Ok(())
        } else {
            Err(KvError::NoSuchNamespace(id.to_string()))
        }
    }

    /// Removes expired entries from storage and returns how many it removed. Reads skip expired
    /// entries anyway, so this only reclaims space; the node may call it now and then.
    pub async fn purge_expired(&self) -> Result<u64, KvError> {
        self.backend.purge_expired(self.clock.now()).await
    }
}

/// A handle on one namespace.
#[derive(Clone, Debug)]
pub struct Namespace {
    kv: Kv,
    id: Arc<str>,
}

impl Namespace {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Reads a key; `None` when it is missing or expired. `cache_ttl` is validated (an integer
    /// of at least 30) and otherwise ignored, because reads are never cached.
    pub async fn get(&self, key: &str, cache_ttl: Option<f64>) -> Result<Option<Entry>, KvError> {
        let result = async {
            validate::check_cache_ttl(op::GET, cache_ttl)?;
            validate::check_namespace_id(&self.id)?;
            validate::check_key(op::GET, key)?;
            let now = self.kv.clock.now();
            self.kv.backend.get(&self.id, key, now).await
        }
        .await;
        observe(op::GET, result)
    }

    /// Reads up to 100 keys, returning the entries in the order of `keys`.
    pub async fn get_many(
        &self,
        keys: &[String],
        cache_ttl: Option<f64>,
    ) -> Result<Vec<Option<Entry>>, KvError> {
        let result = async {
            validate::check_cache_ttl(op::GET_BULK, cache_ttl)?;
            validate::check_namespace_id(&self.id)?;
            validate::check_bulk_get_count(keys.len())?;
            for key in keys {
                validate::check_key(op::GET_BULK, key)?;
            }
            let now = self.kv.clock.now();
            self.kv.backend.get_many(&self.id, keys, now).await
        }
        .await;
        observe(op::GET_BULK, result)
    }

    /// Writes a key, creating the namespace if needed. Nothing is written when a check fails.
    /// On the embedded backend the write is on disk when this returns.
    pub async fn put(&self, key: &str, value: Bytes, options: PutOptions) -> Result<(), KvError> {
        let result = async {
            let now = self.kv.clock.now();
            let expiration = validate::resolve_expiration(now, &options)?;
            validate::check_namespace_id(&self.id)?;
            validate::check_key(op::PUT, key)?;
            let metadata = validate::check_metadata(options.metadata)?;
            validate::check_value_size(value.len())?;

            let entry = Entry {
                value,
                expiration,
                metadata,
            };
            self.kv.backend.put(&self.id, key, entry, now).await
        }
        .await;
        observe(op::PUT, result)
    }

    /// Deletes a key; deleting a missing key succeeds.
    pub async fn delete(&self, key: &str) -> Result<(), KvError> {
        let result = async {
            validate::check_namespace_id(&self.id)?;
            validate::check_key(op::DELETE, key)?;
            self.kv.backend.delete(&self.id, key).await
        }
        .await;
        observe(op::DELETE, result)
    }

    /// Lists live keys in UTF-8 byte order, one page at a time.
    pub async fn list(&self, options: ListOptions) -> Result<ListPage, KvError> {
        let result = async {
            let limit = validate::resolve_list_limit(options.limit)?;
            validate::check_namespace_id(&self.id)?;
            let start_after = options.cursor.as_deref().map(decode_cursor).transpose()?;
            let query = ListQuery {
                prefix: options.prefix.unwrap_or_default(),
                limit,
                start_after,
            };

            let now = self.kv.clock.now();
            let page = self.kv.backend.list(&self.id, query, now).await?;
            Ok(ListPage {
                keys: page.keys,
                list_complete: page.next_after.is_none(),
                cursor: page.next_after.as_deref().map(encode_cursor),
            })
        }
        .await;
        observe(op::LIST, result)
    }
}

/// Counts a namespace operation, and its failure, for the node's metrics.
fn observe<T>(op: &'static str, result: Result<T, KvError>) -> Result<T, KvError> {
    metrics::counter!("kiln_kv_operations_total", "op" => op).increment(1);
    if result.is_err() {
        metrics::counter!("kiln_kv_errors_total", "op" => op).increment(1);
    }
    result
}

/// Encodes a cursor: the last key name of the page, in URL-safe base64. Callers treat it as
/// opaque.
fn encode_cursor(after: &str) -> String {
    URL_SAFE_NO_PAD.encode(after.as_bytes())
}

fn decode_cursor(cursor: &str) -> Result<String, KvError> {
    let invalid = || {
        let message =
            format!("Invalid cursor \"{cursor}\". Pass the cursor of the previous page unchanged.");
        KvError::rejected(op::LIST, 400, message)
    };
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| invalid())?;
    String::from_utf8(bytes).map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trip() {
        for name in ["a", "key/with spaces", "Ünïcødé~", "\u{10FFFF}"] {
            assert_eq!(decode_cursor(&encode_cursor(name)).unwrap(), name);
        }
    }

    #[test]
    fn invalid_cursor_rejected() {
        let error = decode_cursor("not base64!").unwrap_err();
        assert_eq!(error.status(), 400);
        assert!(
            error
                .to_string()
                .starts_with("KV LIST failed: 400 Invalid cursor"),
            "{error}"
        );
        // Valid base64 of bytes that are not UTF-8.
        assert!(decode_cursor(&URL_SAFE_NO_PAD.encode([0xff, 0xfe])).is_err());
    }
}
