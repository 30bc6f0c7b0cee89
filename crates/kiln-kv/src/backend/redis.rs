//! The Redis backend.
//!
//! Layout, with `{n}` the namespace id's length in bytes so that ids containing `:` cannot
//! collide with another namespace's keys:
//!
//! - `kiln:kv:namespaces`: a set of namespace ids.
//! - `kiln:kv:{n}:{namespace}:keys`: a sorted set of the namespace's key names, all with score
//!   0, so `ZRANGEBYLEX` walks them in byte order for `list`.
//! - `kiln:kv:{n}:{namespace}:value:{key}`: a hash with the fields `value` (bytes),
//!   `expiration` (Unix seconds, when set) and `metadata` (JSON, when set).
//!
//! The [`crate::Clock`] decides expiration. A value hash with an expiration also gets a Redis
//! TTL of the same length, so Redis reclaims the value itself; `list` then drops the key name
//! that is left in the sorted set.

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, RedisResult, Script};

use super::{Backend, KeyPage, ListQuery};
use crate::error::{op, KvError};
use crate::types::{Entry, ListKey};

const NAMESPACES_KEY: &str = "kiln:kv:namespaces";
/// The hard limit on one operation, retries and reconnection included.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(3);
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(1);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Key names fetched per `ZRANGE` when a namespace is deleted or purged.
const SCAN_BATCH: usize = 500;

/// Removes the listed keys whose value hash is gone or expired at `ARGV[1]`, and their names
/// from the sorted set `KEYS[1]`. `KEYS[i]` is the value hash of the key name `ARGV[i]`, for i
/// of 2 and up. Returns how many names it removed. Checking inside the script makes the
/// removal atomic, so a key written again between a scan and the removal is kept.
const REMOVE_STALE_SCRIPT: &str = r"
local removed = 0
local now = tonumber(ARGV[1])
for i = 2, #KEYS do
  local stale = redis.call('EXISTS', KEYS[i]) == 0
  if not stale then
    local expiration = redis.call('HGET', KEYS[i], 'expiration')
    stale = expiration ~= false and tonumber(expiration) <= now
  end
  if stale then
    redis.call('DEL', KEYS[i])
    removed = removed + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return removed
";

/// The fields of a value hash, as `HMGET value expiration metadata` returns them.
type StoredFields = (Option<Vec<u8>>, Option<i64>, Option<Vec<u8>>);
/// Fields that `list` reads for each key: `HMGET expiration metadata`, then `EXISTS` of the hash.
type ListedFields = (Option<i64>, Option<Vec<u8>>, i64);

/// The Redis backend.
pub(crate) struct RedisBackend {
    manager: ConnectionManager,
    /// The server URL with any password replaced, for messages.
    url: String,
    remove_stale: Script,
}

impl RedisBackend {
    /// Connects to the server, failing with `Unavailable` if it cannot be reached within the
    /// operation timeout. Later, the connection manager reconnects on its own when the
    /// connection drops.
    pub(crate) async fn open(url: &str) -> Result<RedisBackend, KvError> {
        let redacted = redact_url(url);
        let fail = |message: String| unavailable(op::OPEN, &redacted, message);

        let client = redis::Client::open(url)
            .map_err(|error| fail(format!("the URL is invalid: {error}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECTION_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let connect = ConnectionManager::new_with_config(client, config);
        let manager = match tokio::time::timeout(OPERATION_TIMEOUT, connect).await {
            Ok(Ok(manager)) => manager,
            Ok(Err(error)) => return Err(fail(error.to_string())),
            Err(_) => return Err(fail(timeout_message())),
        };

        tracing::info!(url = %redacted, "connected to the Redis KV store");
        Ok(RedisBackend {
            manager,
            url: redacted,
            remove_stale: Script::new(REMOVE_STALE_SCRIPT),
        })
    }

    /// Runs one operation under the operation timeout. After a connection error the operation
    /// runs once more, on the connection that the manager re-establishes. Every operation here
    /// is idempotent, so the repeat is safe even if the first attempt reached the server.
    async fn run<T, F, Fut>(&self, op: &'static str, operation: F) -> Result<T, KvError>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let attempts = async {
            match operation(self.manager.clone()).await {
                Err(error) if is_connection_error(&error) => {
                    tracing::warn!(url = %self.url, op, %error, "Redis connection failed; retrying once");
                    operation(self.manager.clone()).await
                }
                result => result,
            }
        };
        match tokio::time::timeout(OPERATION_TIMEOUT, attempts).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(unavailable(op, &self.url, error.to_string())),
            Err(_) => Err(unavailable(op, &self.url, timeout_message())),
        }
    }

    /// Removes stale key names of one namespace; see `REMOVE_STALE_SCRIPT`.
    async fn remove_stale(
        &self,
        op: &'static str,
        namespace: &str,
        names: &[String],
        now: i64,
    ) -> Result<u64, KvError> {
        if names.is_empty() {
            return Ok(0);
        }
        let index = index_key(namespace);
        self.run(op, |mut connection| {
            let mut invocation = self.remove_stale.key(&index);
            invocation.arg(now);
            for name in names {
                invocation.key(value_key(namespace, name)).arg(name);
            }
            async move { invocation.invoke_async(&mut connection).await }
        })
        .await
    }
}

#[async_trait]
impl Backend for RedisBackend {
    async fn get(&self, namespace: &str, key: &str, now: i64) -> Result<Option<Entry>, KvError> {
        let fields: StoredFields = self
            .run(op::GET, |mut connection| {
                let command = hmget_fields(namespace, key);
                async move { command.query_async(&mut connection).await }
            })
            .await?;
        to_entry(fields, now).map_err(|message| unavailable(op::GET, &self.url, message))
    }

    async fn get_many(
        &self,
        namespace: &str,
        keys: &[String],
        now: i64,
    ) -> Result<Vec<Option<Entry>>, KvError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<StoredFields> = self
            .run(op::GET_BULK, |mut connection| {
                let mut pipeline = redis::pipe();
                for key in keys {
                    pipeline.add_command(hmget_fields(namespace, key));
                }
                async move { pipeline.query_async(&mut connection).await }
            })
            .await?;
        rows.into_iter()
            .map(|fields| to_entry(fields, now))
            .collect::<Result<_, _>>()
            .map_err(|message| unavailable(op::GET_BULK, &self.url, message))
    }

    async fn put(&self, namespace: &str, key: &str, entry: Entry, now: i64) -> Result<(), KvError> {
        let metadata = entry
            .metadata
            .as_ref()
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|error| KvError::Type(format!("KV metadata is not serialisable: {error}")))?;
        let value_key = value_key(namespace, key);

        let mut pipeline = redis::pipe();
        pipeline.atomic();
        pipeline.cmd("DEL").arg(&value_key).ignore();
        let mut hset = redis::cmd("HSET");
        hset.arg(&value_key).arg("value").arg(entry.value.as_ref());
        if let Some(expiration) = entry.expiration {
            hset.arg("expiration").arg(expiration);
        }
        if let Some(metadata) = &metadata {
            hset.arg("metadata").arg(metadata.as_slice());
        }
        pipeline.add_command(hset).ignore();
        if let Some(expiration) = entry.expiration {
            // A relative TTL, so a manual clock far from real time does not make Redis drop the
            // value at once. With the system clock, Redis drops it no earlier than reads would
            // treat it as expired.
            let ttl = (expiration - now).max(1);
            pipeline.cmd("EXPIRE").arg(&value_key).arg(ttl).ignore();
        }
        pipeline
            .cmd("ZADD")
            .arg(index_key(namespace))
            .arg(0)
            .arg(key)
            .ignore();
        pipeline
            .cmd("SADD")
            .arg(NAMESPACES_KEY)
            .arg(namespace)
            .ignore();

        self.run(op::PUT, |mut connection| {
            let pipeline = &pipeline;
            async move { pipeline.query_async::<()>(&mut connection).await }
        })
        .await
    }

    async fn delete(&self, namespace: &str, key: &str) -> Result<(), KvError> {
        let mut pipeline = redis::pipe();
        pipeline.atomic();
        pipeline.cmd("DEL").arg(value_key(namespace, key)).ignore();
        pipeline
            .cmd("ZREM")
            .arg(index_key(namespace))
            .arg(key)
            .ignore();
        self.run(op::DELETE, |mut connection| {
            let pipeline = &pipeline;
            async move { pipeline.query_async::<()>(&mut connection).await }
        })
        .await
    }

    async fn list(&self, namespace: &str, query: ListQuery, now: i64) -> Result<KeyPage, KvError> {
        let index = index_key(namespace);
        let end = lex_end(&query.prefix);
        let mut start = lex_start(&query);
        let mut keys: Vec<ListKey> = Vec::new();

        // Fetch names until one live key past the page is found or the range ends. Expired or
        // reclaimed keys are skipped, so this may take more than one round.
        loop {
            let wanted = query.limit + 1 - keys.len();
            let names: Vec<String> = self
                .run(op::LIST, |mut connection| {
                    let mut command = redis::cmd("ZRANGEBYLEX");
                    command
                        .arg(&index)
                        .arg(&start)
                        .arg(&end)
                        .arg("LIMIT")
                        .arg(0)
                        .arg(wanted);
                    async move { command.query_async(&mut connection).await }
                })
                .await?;
            let Some(last) = names.last() else {
                break;
            };
            start = exclusive(last.as_bytes());

            let rows: Vec<ListedFields> = self
                .run(op::LIST, |mut connection| {
                    let mut pipeline = redis::pipe();
                    for name in &names {
                        let value_key = value_key(namespace, name);
                        pipeline
                            .cmd("HMGET")
                            .arg(&value_key)
                            .arg("expiration")
                            .arg("metadata");
                        pipeline.cmd("EXISTS").arg(&value_key);
                    }
                    async move {
                        let flat: Vec<redis::Value> = pipeline.query_async(&mut connection).await?;
                        pair_rows(flat)
                    }
                })
                .await?;

            let mut reclaimed = Vec::new();
            for (name, (expiration, metadata, exists)) in names.iter().zip(rows) {
                if exists == 0 {
                    reclaimed.push(name.clone());
                    continue;
                }
                if expiration.is_some_and(|expiration| expiration <= now) {
                    continue;
                }
                if keys.len() == query.limit {
                    self.remove_stale(op::LIST, namespace, &reclaimed, now)
                        .await?;
                    let next_after = keys.last().map(|key| key.name.clone());
                    return Ok(KeyPage { keys, next_after });
                }
                let metadata = parse_metadata(metadata)
                    .map_err(|message| unavailable(op::LIST, &self.url, message))?;
                keys.push(ListKey {
                    name: name.clone(),
                    expiration,
                    metadata,
                });
            }
            self.remove_stale(op::LIST, namespace, &reclaimed, now)
                .await?;

            if names.len() < wanted {
                break;
            }
        }
        Ok(KeyPage {
            keys,
            next_after: None,
        })
    }

    async fn create_namespace(&self, namespace: &str) -> Result<bool, KvError> {
        let added: u64 = self
            .run(op::CREATE_NAMESPACE, |mut connection| {
                let mut command = redis::cmd("SADD");
                command.arg(NAMESPACES_KEY).arg(namespace);
                async move { command.query_async(&mut connection).await }
            })
            .await?;
        Ok(added == 1)
    }

    async fn list_namespaces(&self) -> Result<Vec<String>, KvError> {
        let mut namespaces: Vec<String> = self
            .run(op::LIST_NAMESPACES, |mut connection| {
                let mut command = redis::cmd("SMEMBERS");
                command.arg(NAMESPACES_KEY);
                async move { command.query_async(&mut connection).await }
            })
            .await?;
        namespaces.sort();
        Ok(namespaces)
    }

    async fn delete_namespace(&self, namespace: &str) -> Result<bool, KvError> {
        let removed: u64 = self
            .run(op::DELETE_NAMESPACE, |mut connection| {
                let mut command = redis::cmd("SREM");
                command.arg(NAMESPACES_KEY).arg(namespace);
                async move { command.query_async(&mut connection).await }
            })
            .await?;
        if removed == 0 {
            return Ok(false);
        }

        // The id is gone from the set first, so the namespace disappears from listings at once;
        // its keys are then removed in batches.
        // NOTE: a put into this namespace that runs while its keys are removed recreates it
        // with that key.
        let index = index_key(namespace);
        loop {
            let names = self.scan_names(op::DELETE_NAMESPACE, &index).await?;
            if names.is_empty() {
                break;
            }
            let mut pipeline = redis::pipe();
            pipeline.atomic();
            for name in &names {
                pipeline.cmd("DEL").arg(value_key(namespace, name)).ignore();
            }
            pipeline.cmd("ZREM").arg(&index).arg(&names).ignore();
            self.run(op::DELETE_NAMESPACE, |mut connection| {
                let pipeline = &pipeline;
                async move { pipeline.query_async::<()>(&mut connection).await }
            })
            .await?;
        }
        Ok(true)
    }

    async fn purge_expired(&self, now: i64) -> Result<u64, KvError> {
        let mut removed = 0;
        for namespace in self.list_namespaces().await? {
            let index = index_key(&namespace);
            let mut start = "-".as_bytes().to_vec();
            loop {
                let names: Vec<String> = self
                    .run(op::PURGE_EXPIRED, |mut connection| {
                        let mut command = redis::cmd("ZRANGEBYLEX");
                        command.arg(&index).arg(&start).arg("+").arg("LIMIT").arg(0);
                        command.arg(SCAN_BATCH);
                        async move { command.query_async(&mut connection).await }
                    })
                    .await?;
                let Some(last) = names.last() else {
                    break;
                };
                start = exclusive(last.as_bytes());
                removed += self
                    .remove_stale(op::PURGE_EXPIRED, &namespace, &names, now)
                    .await?;
                if names.len() < SCAN_BATCH {
                    break;
                }
            }
        }
        Ok(removed)
    }
}

impl RedisBackend {
    async fn scan_names(&self, op: &'static str, index: &str) -> Result<Vec<String>, KvError> {
        self.run(op, |mut connection| {
            let mut command = redis::cmd("ZRANGE");
            command.arg(index).arg(0).arg(SCAN_BATCH - 1);
            async move { command.query_async(&mut connection).await }
        })
        .await
    }
}

fn index_key(namespace: &str) -> String {
    format!("kiln:kv:{}:{namespace}:keys", namespace.len())
}

fn value_key(namespace: &str, key: &str) -> String {
    format!("kiln:kv:{}:{namespace}:value:{key}", namespace.len())
}

fn hmget_fields(namespace: &str, key: &str) -> redis::Cmd {
    let mut command = redis::cmd("HMGET");
    command
        .arg(value_key(namespace, key))
        .arg("value")
        .arg("expiration")
        .arg("metadata");
    command
}

/// Returns the `ZRANGEBYLEX` start: after the cursor key, but never before the prefix.
fn lex_start(query: &ListQuery) -> Vec<u8> {
    match query.start_after.as_deref() {
        Some(after) if after >= query.prefix.as_str() => exclusive(after.as_bytes()),
        _ if query.prefix.is_empty() => b"-".to_vec(),
        _ => [b"[", query.prefix.as_bytes()].concat(),
    }
}

/// Returns the `ZRANGEBYLEX` end for a prefix. Every key with the prefix sorts before the
/// prefix followed by byte 0xFF, because 0xFF never occurs in UTF-8.
fn lex_end(prefix: &str) -> Vec<u8> {
    if prefix.is_empty() {
        return b"+".to_vec();
    }
    [b"(", prefix.as_bytes(), b"\xff"].concat()
}

fn exclusive(name: &[u8]) -> Vec<u8> {
    [b"(", name].concat()
}

/// Groups the flat pipeline reply of `HMGET expiration metadata` and `EXISTS` pairs.
fn pair_rows(flat: Vec<redis::Value>) -> RedisResult<Vec<ListedFields>> {
    let mut rows = Vec::with_capacity(flat.len() / 2);
    let mut replies = flat.into_iter();
    while let (Some(fields), Some(exists)) = (replies.next(), replies.next()) {
        let (expiration, metadata) = redis::from_redis_value(fields)?;
        let exists = redis::from_redis_value(exists)?;
        rows.push((expiration, metadata, exists));
    }
    Ok(rows)
}

fn to_entry(
    (value, expiration, metadata): StoredFields,
    now: i64,
) -> Result<Option<Entry>, String> {
    let Some(value) = value else {
        return Ok(None);
    };
    if expiration.is_some_and(|expiration| expiration <= now) {
        return Ok(None);
    }
    Ok(Some(Entry {
        value: Bytes::from(value),
        expiration,
        metadata: parse_metadata(metadata)?,
    }))
}

fn parse_metadata(metadata: Option<Vec<u8>>) -> Result<Option<serde_json::Value>, String> {
    metadata
        .map(|json| serde_json::from_slice(&json))
        .transpose()
        .map_err(|error| format!("stored metadata is not valid JSON: {error}"))
}

fn is_connection_error(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
}

fn timeout_message() -> String {
    format!("no reply within {} s", OPERATION_TIMEOUT.as_secs())
}

fn unavailable(op: &'static str, url: &str, cause: impl std::fmt::Display) -> KvError {
    KvError::Unavailable {
        op,
        message: format!(
            "Redis KV store at {url} is unavailable: {cause}. Check that the Redis server is \
             running and reachable at that URL."
        ),
    }
}

/// Replaces the password in a Redis URL (`redis://user:password@host`) with `***`. A lone user
/// part (`redis://secret@host`) is replaced too, because some clients read it as a password,
/// and so is the query of a URL that passes a password there (`redis+unix:///sock?pass=...`).
pub(crate) fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let (scheme, rest) = url.split_at(scheme_end + 3);
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);

    let authority = match authority.rfind('@') {
        Some(at) => {
            let (userinfo, host) = authority.split_at(at);
            match userinfo.split_once(':') {
                Some((user, _password)) => format!("{user}:***{host}"),
                None => format!("***{host}"),
            }
        }
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) if query.to_ascii_lowercase().contains("pass") => {
            format!("{path}?***")
        }
        _ => tail.to_string(),
    };
    format!("{scheme}{authority}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_url_hides_passwords() {
        assert_eq!(
            redact_url("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
        assert_eq!(
            redact_url("redis://:hunter2@127.0.0.1:6379/0"),
            "redis://:***@127.0.0.1:6379/0"
        );
        assert_eq!(
            redact_url("rediss://kiln:p@ss:word@cache.internal"),
            "rediss://kiln:***@cache.internal"
        );
        assert_eq!(redact_url("redis://hunter2@host"), "redis://***@host");
        assert_eq!(
            redact_url("redis+unix:///run/redis.sock?db=1&pass=hunter2"),
            "redis+unix:///run/redis.sock?***"
        );
    }

    #[test]
    fn lex_bounds() {
        let query = |prefix: &str, after: Option<&str>| ListQuery {
            prefix: prefix.to_string(),
            limit: 10,
            start_after: after.map(str::to_string),
        };
        assert_eq!(lex_start(&query("", None)), b"-");
        assert_eq!(lex_start(&query("ab", None)), b"[ab");
        assert_eq!(lex_start(&query("ab", Some("abc"))), b"(abc");
        assert_eq!(lex_start(&query("ab", Some("aa"))), b"[ab");
        assert_eq!(lex_end(""), b"+");
        assert_eq!(lex_end("ab"), b"(ab\xff");
    }

    #[test]
    fn namespace_ids_with_colons_do_not_collide() {
        // Namespace "x:5" key "a" and namespace "x" key "5:a" would collide without the length.
        assert_ne!(value_key("x:5", "a"), value_key("x", "5:a"));
        assert_ne!(index_key("a:value:b"), value_key("a", "b:keys"));
    }
}
