//! The inference cache of the REST API, driven by the AI Gateway's request headers:
//! `cf-aig-cache-ttl: SECONDS` stores the result of a request for that long and serves an
//! identical later request from the store, `cf-aig-skip-cache: true` bypasses the store, and the
//! response carries `cf-aig-cache-status: HIT` or `MISS`. The older names `cf-cache-ttl` and
//! `cf-skip-cache` work too.
//!
//! Entries live in a KV namespace of the node's store, so nodes that share a Redis store share
//! the cache. Two requests are identical when they run the same installed model (after alias
//! resolution, with the same file hashes) on the same input JSON.

use axum::http::{HeaderMap, HeaderValue};
use bytes::Bytes;
use kiln_inference::InferenceError;
use kiln_kv::{Kv, Namespace, PutOptions};
use kiln_models::Manifest;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The KV namespace of the cached results: a reserved id, so no worker binding or admin
/// request can read or forge entries.
pub const CACHE_NAMESPACE: &str = "__kiln-inference-cache";
/// Response header with `HIT` or `MISS`.
pub const STATUS_HEADER: &str = "cf-aig-cache-status";

const TTL_HEADERS: [&str; 2] = ["cf-aig-cache-ttl", "cf-cache-ttl"];
const SKIP_HEADERS: [&str; 2] = ["cf-aig-skip-cache", "cf-skip-cache"];
/// The gateway's bounds on `cf-aig-cache-ttl`: one minute to one month.
const MIN_TTL: u64 = 60;
const MAX_TTL: u64 = 30 * 24 * 3600;

/// The cache mode a request selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheRequest {
    /// No cache headers: the response carries no cache status.
    None,
    /// Run the model and do not touch the store.
    Skip,
    /// Serve from the store when possible, else run and store for `ttl` seconds.
    Use { ttl: u64 },
}

impl CacheRequest {
    /// Reads the cache headers. A TTL that is not a whole number of seconds in the gateway's
    /// range is the client's error.
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, InferenceError> {
        let value = |names: [&'static str; 2]| {
            names.into_iter().find_map(|name| {
                headers
                    .get(name)
                    .map(|value| (name, value.to_str().unwrap_or("").trim().to_owned()))
            })
        };
        if let Some((_, skip)) = value(SKIP_HEADERS) {
            if skip.eq_ignore_ascii_case("true") {
                return Ok(Self::Skip);
            }
        }
        let Some((name, ttl)) = value(TTL_HEADERS) else {
            return Ok(Self::None);
        };
        match ttl.parse::<u64>() {
            Ok(ttl) if (MIN_TTL..=MAX_TTL).contains(&ttl) => Ok(Self::Use { ttl }),
            _ => Err(InferenceError::invalid_input(format!(
                "invalid {name} header {ttl:?}: give the seconds to cache the result, from \
                 {MIN_TTL} to {MAX_TTL}"
            ))),
        }
    }

    /// Returns the `cf-aig-cache-status` value of a response that was not served from the store.
    pub fn miss_header(self) -> Option<HeaderValue> {
        match self {
            Self::None => None,
            Self::Skip | Self::Use { .. } => Some(HeaderValue::from_static("MISS")),
        }
    }
}

/// Cached results in the node's KV store.
#[derive(Clone)]
pub struct InferenceCache {
    namespace: Namespace,
}

impl InferenceCache {
    pub fn new(kv: &Kv) -> Self {
        Self {
            namespace: kv.namespace(CACHE_NAMESPACE),
        }
    }

    /// Returns the cached result of `input` on `manifest`'s model. A store that fails is
    /// logged and treated as a miss, so a cache outage never fails a request.
    pub async fn get(&self, manifest: &Manifest, input: &Value) -> Option<Value> {
        let key = key(manifest, input);
        match self.namespace.get(&key, None).await {
            Ok(entry) => entry.and_then(|entry| serde_json::from_slice(&entry.value).ok()),
            Err(error) => {
                tracing::warn!(error = %error, "inference cache read failed; running the model");
                None
            }
        }
    }

    /// Stores `result` for `ttl` seconds. Failures are logged only.
    pub async fn put(&self, manifest: &Manifest, input: &Value, result: &Value, ttl: u64) {
        let key = key(manifest, input);
        let options = PutOptions {
            expiration_ttl: Some(ttl as f64),
            ..PutOptions::default()
        };
        let value = Bytes::from(result.to_string());
        if let Err(error) = self.namespace.put(&key, value, options).await {
            tracing::warn!(error = %error, "inference cache write failed");
        }
    }
}

/// Key of a request: a SHA-256 over the model id, its files' hashes and the input JSON, whose
/// object keys serialise in sorted order.
fn key(manifest: &Manifest, input: &Value) -> String {
    let mut hash = Sha256::new();
    hash.update(manifest.id.as_bytes());
    for file in &manifest.files {
        hash.update(b"\n");
        hash.update(file.sha256.as_bytes());
    }
    hash.update(b"\n");
    hash.update(input.to_string().as_bytes());
    format!("result:{:x}", hash.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn headers_select_the_cache_mode() {
        let read = |pairs| CacheRequest::from_headers(&headers(pairs)).unwrap();
        assert_eq!(read(&[]), CacheRequest::None);
        assert_eq!(
            read(&[("cf-aig-cache-ttl", "120")]),
            CacheRequest::Use { ttl: 120 }
        );
        assert_eq!(
            read(&[("cf-cache-ttl", "60")]),
            CacheRequest::Use { ttl: 60 }
        );
        assert_eq!(
            read(&[("cf-aig-cache-ttl", "120"), ("cf-aig-skip-cache", "true")]),
            CacheRequest::Skip
        );
    }

    #[test]
    fn invalid_ttl_is_rejected() {
        for ttl in ["59", "abc", "-1", "2592001"] {
            let mut map = HeaderMap::new();
            map.insert("cf-aig-cache-ttl", HeaderValue::from_str(ttl).unwrap());
            let error = CacheRequest::from_headers(&map).unwrap_err();
            assert_eq!(error.status(), 400);
            assert!(
                error.message.contains("cf-aig-cache-ttl"),
                "{}",
                error.message
            );
            assert!(error.message.contains("60 to 2592000"), "{}", error.message);
        }
    }
}
