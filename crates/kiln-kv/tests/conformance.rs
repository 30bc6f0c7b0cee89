//! The same Workers KV cases against the embedded (redb) and the Redis backend. Each Redis case
//! starts its own redis-server, so the cases cannot see each other's data.

use std::sync::Arc;

use bytes::Bytes;
use kiln_kv::test_support::RedisServer;
use kiln_kv::{
    BackendConfig, Entry, Kv, KvError, ListKey, ListOptions, ManualClock, Namespace, PutOptions,
};
use serde_json::json;

/// The manual clock's start, in Unix seconds.
const START: i64 = 1_700_000_000;

struct Harness {
    kv: Kv,
    clock: Arc<ManualClock>,
    _storage: Storage,
}

enum Storage {
    File(#[allow(dead_code)] tempfile::TempDir),
    Redis(#[allow(dead_code)] RedisServer),
}

async fn open_embedded() -> Harness {
    let dir = tempfile::tempdir().expect("create a temporary folder");
    let config = BackendConfig::Embedded {
        path: dir.path().join("kv.redb"),
    };
    harness(&config, Storage::File(dir)).await
}

async fn open_redis() -> Harness {
    let server = RedisServer::start().expect("start redis-server");
    let config = BackendConfig::Redis { url: server.url() };
    harness(&config, Storage::Redis(server)).await
}

async fn harness(config: &BackendConfig, storage: Storage) -> Harness {
    let clock = Arc::new(ManualClock::new(START));
    let kv = Kv::open(config)
        .await
        .expect("open the store")
        .with_clock(clock.clone());
    Harness {
        kv,
        clock,
        _storage: storage,
    }
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test]
                async fn $case() {
                    let harness = super::open_embedded().await;
                    super::cases::$case(&harness).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test]
                async fn $case() {
                    let harness = super::open_redis().await;
                    super::cases::$case(&harness).await;
                }
            )*
        }
    };
}

conformance!(
    text_and_binary_round_trip,
    metadata_round_trip,
    small_list_is_complete,
    large_list_pages_with_cursor,
    list_prefix_filters,
    list_uses_byte_order,
    list_limit_rules,
    ttl_minimum,
    expiration_rules,
    entry_expires_on_time,
    int32_range_type_errors,
    key_limits,
    metadata_limit,
    value_limit,
    namespaces_are_isolated,
    namespace_management,
    get_many_reads_in_order,
    cache_ttl_validation,
    purge_removes_expired,
);

fn text(value: &str) -> Bytes {
    Bytes::copy_from_slice(value.as_bytes())
}

fn ttl(seconds: f64) -> PutOptions {
    PutOptions {
        expiration_ttl: Some(seconds),
        ..PutOptions::default()
    }
}

fn expire_at(seconds: f64) -> PutOptions {
    PutOptions {
        expiration: Some(seconds),
        ..PutOptions::default()
    }
}

fn with_metadata(metadata: serde_json::Value) -> PutOptions {
    PutOptions {
        metadata: Some(metadata),
        ..PutOptions::default()
    }
}

/// Puts `value` under `key` with no expiration and no metadata.
async fn put(namespace: &Namespace, key: &str, value: Bytes) {
    namespace
        .put(key, value, PutOptions::default())
        .await
        .unwrap_or_else(|error| panic!("put {key:?} failed: {error}"));
}

/// Reads an entry that the case has stored, failing the test if it is missing.
async fn stored(namespace: &Namespace, key: &str) -> Entry {
    namespace
        .get(key, None)
        .await
        .unwrap_or_else(|error| panic!("get {key:?} failed: {error}"))
        .unwrap_or_else(|| panic!("{key:?} is not stored"))
}

fn names(keys: &[ListKey]) -> Vec<&str> {
    keys.iter().map(|key| key.name.as_str()).collect()
}

fn assert_rejected(result: Result<impl std::fmt::Debug, KvError>, status: u16, text: &str) {
    match result {
        Err(error @ KvError::Rejected { .. }) => {
            assert_eq!(error.status(), status, "{error}");
            assert_eq!(error.to_string(), text);
        }
        other => panic!("expected a rejection with {status} {text:?}, got {other:?}"),
    }
}

fn assert_type_error(result: Result<impl std::fmt::Debug, KvError>) {
    match result {
        Err(KvError::Type(message)) => {
            assert!(message.contains("-2147483648 to 2147483647"), "{message}");
        }
        other => panic!("expected a TypeError naming the 32-bit range, got {other:?}"),
    }
}

/// Lists every key of a namespace page by page with the given limit.
async fn list_all(namespace: &Namespace, prefix: Option<&str>, limit: f64) -> Vec<String> {
    let mut all = Vec::new();
    let mut cursor = None;
    loop {
        let page = namespace
            .list(ListOptions {
                prefix: prefix.map(str::to_string),
                limit: Some(limit),
                cursor: cursor.take(),
            })
            .await
            .expect("list a page");
        assert!(page.keys.len() <= limit as usize);
        all.extend(page.keys.into_iter().map(|key| key.name));
        if page.list_complete {
            assert_eq!(page.cursor, None);
            return all;
        }
        cursor = Some(page.cursor.expect("an incomplete page has a cursor"));
    }
}

mod cases {
    use super::*;

    pub async fn text_and_binary_round_trip(h: &Harness) {
        let ns = h.kv.namespace("app");
        assert_eq!(ns.get("greeting", None).await.unwrap(), None);

        put(&ns, "greeting", text("hello, world")).await;
        let entry = stored(&ns, "greeting").await;
        assert_eq!(entry.value, text("hello, world"));
        assert_eq!(entry.expiration, None);
        assert_eq!(entry.metadata, None);

        let binary: Vec<u8> = (0..=255u8).rev().chain(0..=255u8).collect();
        put(&ns, "blob", Bytes::from(binary.clone())).await;
        let entry = stored(&ns, "blob").await;
        assert_eq!(entry.value.as_ref(), binary.as_slice());

        put(&ns, "empty", Bytes::new()).await;
        let entry = stored(&ns, "empty").await;
        assert!(entry.value.is_empty());

        // Last write wins, and an overwrite drops the earlier metadata and expiration.
        ns.put("greeting", text("first"), ttl(120.0)).await.unwrap();
        put(&ns, "greeting", text("second")).await;
        let entry = stored(&ns, "greeting").await;
        assert_eq!(entry.value, text("second"));
        assert_eq!(entry.expiration, None);

        ns.delete("greeting").await.unwrap();
        assert_eq!(ns.get("greeting", None).await.unwrap(), None);
        ns.delete("greeting")
            .await
            .expect("deleting a missing key succeeds");
        ns.delete("never-written")
            .await
            .expect("deleting a missing key succeeds");
    }

    pub async fn metadata_round_trip(h: &Harness) {
        let ns = h.kv.namespace("app");
        let metadata =
            json!({"owner": "kiln", "tags": ["a", "é"], "n": 1.5, "nested": {"x": null}});
        ns.put("doc", text("body"), with_metadata(metadata.clone()))
            .await
            .unwrap();
        put(&ns, "plain", text("body")).await;
        ns.put("null-metadata", text("body"), with_metadata(json!(null)))
            .await
            .unwrap();

        let entry = stored(&ns, "doc").await;
        assert_eq!(entry.metadata, Some(metadata.clone()));
        let entry = stored(&ns, "null-metadata").await;
        assert_eq!(entry.metadata, None);

        let page = ns.list(ListOptions::default()).await.unwrap();
        assert_eq!(names(&page.keys), ["doc", "null-metadata", "plain"]);
        assert_eq!(page.keys[0].metadata, Some(metadata));
        assert_eq!(page.keys[1].metadata, None);
        assert_eq!(page.keys[2].metadata, None);
    }

    pub async fn small_list_is_complete(h: &Harness) {
        let ns = h.kv.namespace("app");
        for key in ["c", "a", "b"] {
            put(&ns, key, text(key)).await;
        }
        let page = ns.list(ListOptions::default()).await.unwrap();
        assert_eq!(names(&page.keys), ["a", "b", "c"]);
        assert!(page.list_complete);
        assert_eq!(page.cursor, None);
        assert!(page.keys.iter().all(|key| key.expiration.is_none()));
        assert!(page.keys.iter().all(|key| key.metadata.is_none()));

        let empty =
            h.kv.namespace("unused")
                .list(ListOptions::default())
                .await
                .unwrap();
        assert!(empty.keys.is_empty());
        assert!(empty.list_complete);
    }

    pub async fn large_list_pages_with_cursor(h: &Harness) {
        let ns = h.kv.namespace("big");
        let mut writes = tokio::task::JoinSet::new();
        for i in 0..2500 {
            let ns = ns.clone();
            writes.spawn(async move {
                let key = format!("key-{i:05}");
                ns.put(&key, text(&key), PutOptions::default()).await
            });
        }
        while let Some(result) = writes.join_next().await {
            result.expect("put task").expect("put");
        }

        let mut expected: Vec<String> = (0..2500).map(|i| format!("key-{i:05}")).collect();
        expected.sort();
        let mut seen = Vec::new();
        let mut cursor = None;
        let mut page_sizes = Vec::new();
        loop {
            let page = ns
                .list(ListOptions {
                    cursor: cursor.take(),
                    ..ListOptions::default()
                })
                .await
                .unwrap();
            page_sizes.push(page.keys.len());
            seen.extend(page.keys.into_iter().map(|key| key.name));
            if page.list_complete {
                assert_eq!(page.cursor, None);
                break;
            }
            cursor = Some(page.cursor.expect("an incomplete page has a cursor"));
        }
        assert_eq!(page_sizes, [1000, 1000, 500]);
        assert_eq!(seen, expected);

        // Small pages walk the same keys.
        assert_eq!(list_all(&ns, None, 333.0).await, expected);
    }

    pub async fn list_prefix_filters(h: &Harness) {
        let ns = h.kv.namespace("app");
        for key in [
            "user:1", "user:2", "user:10", "users", "user;", "admin", "use", "zebra",
        ] {
            put(&ns, key, text(key)).await;
        }
        let page = ns
            .list(ListOptions {
                prefix: Some("user:".to_string()),
                ..ListOptions::default()
            })
            .await
            .unwrap();
        assert_eq!(names(&page.keys), ["user:1", "user:10", "user:2"]);
        assert!(page.list_complete);

        assert_eq!(
            list_all(&ns, Some("user"), 1.0).await,
            ["user:1", "user:10", "user:2", "user;", "users"]
        );
        assert!(list_all(&ns, Some("nothing"), 10.0).await.is_empty());

        // A cursor from before the prefix does not leak keys outside it.
        let first = ns
            .list(ListOptions {
                limit: Some(1.0),
                ..ListOptions::default()
            })
            .await
            .unwrap();
        assert_eq!(names(&first.keys), ["admin"]);
        let page = ns
            .list(ListOptions {
                prefix: Some("user:".to_string()),
                cursor: first.cursor,
                ..ListOptions::default()
            })
            .await
            .unwrap();
        assert_eq!(names(&page.keys), ["user:1", "user:10", "user:2"]);
    }

    pub async fn list_uses_byte_order(h: &Harness) {
        let ns = h.kv.namespace("app");
        let keys = [
            "b", "B", "a", "A", "~", "~~", "é", "e", "中", "z", "Z", "ab", "a b", "😀", "ÿ",
        ];
        for key in keys {
            put(&ns, key, text(key)).await;
        }
        let mut expected: Vec<&str> = keys.to_vec();
        expected.sort_by(|left, right| left.as_bytes().cmp(right.as_bytes()));
        assert_eq!(
            expected,
            ["A", "B", "Z", "a", "a b", "ab", "b", "e", "z", "~", "~~", "é", "ÿ", "中", "😀"]
        );

        let page = ns.list(ListOptions::default()).await.unwrap();
        assert_eq!(names(&page.keys), expected);
        assert_eq!(list_all(&ns, None, 4.0).await, expected);
    }

    pub async fn list_limit_rules(h: &Harness) {
        let ns = h.kv.namespace("app");
        for key in ["a", "b", "c"] {
            put(&ns, key, text(key)).await;
        }
        let page = ns
            .list(ListOptions {
                limit: Some(2.0),
                ..ListOptions::default()
            })
            .await
            .unwrap();
        assert_eq!(names(&page.keys), ["a", "b"]);
        assert!(!page.list_complete);
        assert!(page.cursor.is_some());

        let limit = |limit: f64| ListOptions {
            limit: Some(limit),
            ..ListOptions::default()
        };
        assert_rejected(
            ns.list(limit(0.0)).await,
            400,
            "KV LIST failed: 400 Invalid key_count_limit of 0. Please specify an integer greater \
             than 0.",
        );
        assert_rejected(
            ns.list(limit(1001.0)).await,
            400,
            "KV LIST failed: 400 Invalid key_count_limit of 1001. Please specify an integer less \
             than 1000.",
        );
        assert_type_error(ns.list(limit(2.5)).await);
        let bad_cursor = ns
            .list(ListOptions {
                cursor: Some("%%%".to_string()),
                ..ListOptions::default()
            })
            .await;
        assert_eq!(bad_cursor.unwrap_err().status(), 400);
    }

    pub async fn ttl_minimum(h: &Harness) {
        let ns = h.kv.namespace("app");
        assert_rejected(
            ns.put("k", text("v"), ttl(59.0)).await,
            400,
            "KV PUT failed: 400 Invalid expiration_ttl of 59. Expiration TTL must be at least 60.",
        );
        assert_eq!(ns.get("k", None).await.unwrap(), None);
        assert_rejected(
            ns.put("k", text("v"), ttl(0.0)).await,
            400,
            "KV PUT failed: 400 Invalid expiration_ttl of 0. Please specify integer greater than 0.",
        );
        assert_rejected(
            ns.put("k", text("v"), ttl(-60.0)).await,
            400,
            "KV PUT failed: 400 Invalid expiration_ttl of -60. Please specify integer greater than \
             0.",
        );

        ns.put("k", text("v"), ttl(60.0)).await.unwrap();
        let entry = stored(&ns, "k").await;
        assert_eq!(entry.expiration, Some(START + 60));
        let page = ns.list(ListOptions::default()).await.unwrap();
        assert_eq!(page.keys[0].expiration, Some(START + 60));
    }

    pub async fn expiration_rules(h: &Harness) {
        let ns = h.kv.namespace("app");
        let too_soon = (START + 59) as f64;
        assert_rejected(
            ns.put("k", text("v"), expire_at(too_soon)).await,
            400,
            &format!(
                "KV PUT failed: 400 Invalid expiration of {}. Expiration times must be at least \
                 60 seconds in the future.",
                START + 59
            ),
        );
        for past in [START, START - 10, 0, -1] {
            assert_rejected(
                ns.put("k", text("v"), expire_at(past as f64)).await,
                400,
                &format!(
                    "KV PUT failed: 400 Invalid expiration of {past}. Please specify integer \
                     greater than the current number of seconds since the UNIX epoch."
                ),
            );
        }
        assert_eq!(ns.get("k", None).await.unwrap(), None);

        ns.put("k", text("v"), expire_at((START + 60) as f64))
            .await
            .unwrap();
        let entry = stored(&ns, "k").await;
        assert_eq!(entry.expiration, Some(START + 60));

        // With both options, the relative one decides.
        let both = PutOptions {
            expiration: Some((START + 600) as f64),
            expiration_ttl: Some(120.0),
            metadata: None,
        };
        ns.put("both", text("v"), both).await.unwrap();
        let entry = stored(&ns, "both").await;
        assert_eq!(entry.expiration, Some(START + 120));
    }

    pub async fn entry_expires_on_time(h: &Harness) {
        let ns = h.kv.namespace("app");
        ns.put("relative", text("r"), ttl(60.0)).await.unwrap();
        ns.put("absolute", text("a"), expire_at((START + 90) as f64))
            .await
            .unwrap();
        put(&ns, "forever", text("f")).await;

        h.clock.advance(59);
        assert!(ns.get("relative", None).await.unwrap().is_some());
        let page = ns.list(ListOptions::default()).await.unwrap();
        assert_eq!(names(&page.keys), ["absolute", "forever", "relative"]);

        h.clock.advance(1);
        assert_eq!(ns.get("relative", None).await.unwrap(), None);
        assert!(ns.get("absolute", None).await.unwrap().is_some());
        let page = ns.list(ListOptions::default()).await.unwrap();
        assert_eq!(names(&page.keys), ["absolute", "forever"]);

        h.clock.advance(30);
        assert_eq!(ns.get("absolute", None).await.unwrap(), None);
        let keys: Vec<String> = ["relative", "absolute", "forever"]
            .map(String::from)
            .to_vec();
        let many = ns.get_many(&keys, None).await.unwrap();
        assert_eq!(many[0], None);
        assert_eq!(many[1], None);
        assert_eq!(
            many[2].as_ref().map(|entry| entry.value.clone()),
            Some(text("f"))
        );
        let page = ns
            .list(ListOptions {
                limit: Some(1.0),
                ..ListOptions::default()
            })
            .await
            .unwrap();
        assert_eq!(names(&page.keys), ["forever"]);
        assert!(
            page.list_complete,
            "expired keys after the page do not make it incomplete"
        );

        // Writing an expired key again brings it back.
        put(&ns, "relative", text("again")).await;
        let entry = stored(&ns, "relative").await;
        assert_eq!(entry.value, text("again"));
    }

    pub async fn int32_range_type_errors(h: &Harness) {
        let ns = h.kv.namespace("app");
        for value in [
            2147483648.0,
            -2147483649.0,
            1e12,
            60.5,
            f64::NAN,
            f64::INFINITY,
        ] {
            assert_type_error(ns.put("k", text("v"), ttl(value)).await);
            assert_type_error(ns.put("k", text("v"), expire_at(value)).await);
        }
        // The largest 32-bit expiration is far in the future and valid.
        ns.put("max", text("v"), expire_at(2147483647.0))
            .await
            .unwrap();
        assert_eq!(
            ns.get("max", None)
                .await
                .unwrap()
                .and_then(|entry| entry.expiration),
            Some(2147483647)
        );

        assert_eq!(ns.get("k", None).await.unwrap(), None);
        let page = ns.list(ListOptions::default()).await.unwrap();
        assert_eq!(names(&page.keys), ["max"]);
        assert_type_error(ns.get("k", Some(1e10)).await);
    }

    pub async fn key_limits(h: &Harness) {
        let ns = h.kv.namespace("app");
        assert_rejected(
            ns.put("", text("v"), PutOptions::default()).await,
            400,
            "KV PUT failed: 400 Key names must not be empty",
        );
        assert_rejected(
            ns.get("", None).await,
            400,
            "KV GET failed: 400 Key names must not be empty",
        );
        for dots in [".", ".."] {
            assert_rejected(
                ns.put(dots, text("v"), PutOptions::default()).await,
                400,
                &format!(
                    "KV PUT failed: 400 Illegal key name \"{dots}\". Please use a different name."
                ),
            );
        }
        assert_rejected(
            ns.put(&"k".repeat(513), text("v"), PutOptions::default())
                .await,
            414,
            "KV PUT failed: 414 UTF-8 encoded length of 513 exceeds key length limit of 512.",
        );
        // 171 three-byte characters: 171 characters but 513 bytes.
        assert_rejected(
            ns.put(&"中".repeat(171), text("v"), PutOptions::default())
                .await,
            414,
            "KV PUT failed: 414 UTF-8 encoded length of 513 exceeds key length limit of 512.",
        );
        assert_rejected(
            ns.delete(&"k".repeat(513)).await,
            414,
            "KV DELETE failed: 414 UTF-8 encoded length of 513 exceeds key length limit of 512.",
        );
        let page = ns.list(ListOptions::default()).await.unwrap();
        assert!(page.keys.is_empty());

        let longest = "k".repeat(512);
        put(&ns, &longest, text("v")).await;
        assert!(ns.get(&longest, None).await.unwrap().is_some());
        let dotted = "...";
        put(&ns, dotted, text("v")).await;
        assert!(ns.get(dotted, None).await.unwrap().is_some());
    }

    pub async fn metadata_limit(h: &Harness) {
        let ns = h.kv.namespace("app");
        // A JSON string of n characters serialises to n + 2 bytes.
        let fits = json!("m".repeat(1022));
        ns.put("fits", text("v"), with_metadata(fits.clone()))
            .await
            .unwrap();
        let entry = stored(&ns, "fits").await;
        assert_eq!(entry.metadata, Some(fits));

        assert_rejected(
            ns.put("too-big", text("v"), with_metadata(json!("m".repeat(1023))))
                .await,
            413,
            "KV PUT failed: 413 Metadata length of 1025 exceeds limit of 1024.",
        );
        assert_eq!(ns.get("too-big", None).await.unwrap(), None);
    }

    pub async fn value_limit(h: &Harness) {
        let ns = h.kv.namespace("app");
        let limit = kiln_kv::MAX_VALUE_BYTES;
        assert_eq!(limit, 25 * 1024 * 1024);
        assert_rejected(
            ns.put(
                "big",
                Bytes::from(vec![7u8; limit + 1]),
                PutOptions::default(),
            )
            .await,
            413,
            "KV PUT failed: 413 Value length of 26214401 exceeds limit of 26214400.",
        );
        assert_eq!(ns.get("big", None).await.unwrap(), None);

        let largest = Bytes::from(vec![7u8; limit]);
        put(&ns, "big", largest.clone()).await;
        let entry = stored(&ns, "big").await;
        assert_eq!(entry.value.len(), limit);
        assert!(entry.value == largest);
    }

    pub async fn namespaces_are_isolated(h: &Harness) {
        let first = h.kv.namespace("first");
        let second = h.kv.namespace("second");
        // Ids that share a prefix, or contain the store's own separators, stay apart too.
        let tricky = h.kv.namespace("first:value:shared");
        put(&first, "shared", text("one")).await;
        put(&second, "shared", text("two")).await;
        put(&tricky, "x", text("three")).await;
        put(&first, "only-first", text("1")).await;

        assert_eq!(
            first.get("shared", None).await.unwrap().unwrap().value,
            text("one")
        );
        assert_eq!(
            second.get("shared", None).await.unwrap().unwrap().value,
            text("two")
        );
        assert_eq!(second.get("only-first", None).await.unwrap(), None);
        assert_eq!(
            list_all(&first, None, 1000.0).await,
            ["only-first", "shared"]
        );
        assert_eq!(list_all(&second, None, 1000.0).await, ["shared"]);
        assert_eq!(list_all(&tricky, None, 1000.0).await, ["x"]);

        first.delete("shared").await.unwrap();
        assert_eq!(
            second.get("shared", None).await.unwrap().unwrap().value,
            text("two")
        );
        assert_eq!(first.id(), "first");
    }

    pub async fn namespace_management(h: &Harness) {
        assert!(h.kv.list_namespaces().await.unwrap().is_empty());
        assert!(h.kv.create_namespace("b-space").await.unwrap());
        assert!(!h.kv.create_namespace("b-space").await.unwrap());

        // A write creates its namespace; a read or a delete does not.
        let implicit = h.kv.namespace("a-space");
        put(&implicit, "k", text("v")).await;
        h.kv.namespace("read-only").get("k", None).await.unwrap();
        h.kv.namespace("delete-only").delete("k").await.unwrap();
        assert_eq!(
            h.kv.list_namespaces().await.unwrap(),
            ["a-space", "b-space"]
        );

        h.kv.delete_namespace("a-space").await.unwrap();
        assert_eq!(h.kv.list_namespaces().await.unwrap(), ["b-space"]);
        assert_eq!(implicit.get("k", None).await.unwrap(), None);
        assert!(h.kv.create_namespace("a-space").await.unwrap());
        assert!(implicit
            .list(ListOptions::default())
            .await
            .unwrap()
            .keys
            .is_empty());

        let missing = h.kv.delete_namespace("missing").await.unwrap_err();
        assert_eq!(missing, KvError::NoSuchNamespace("missing".to_string()));
        assert_eq!(missing.status(), 404);
        assert!(matches!(
            h.kv.create_namespace("").await,
            Err(KvError::Type(_))
        ));
        assert!(matches!(
            h.kv.namespace("")
                .put("k", text("v"), PutOptions::default())
                .await,
            Err(KvError::Type(_))
        ));
    }

    pub async fn get_many_reads_in_order(h: &Harness) {
        let ns = h.kv.namespace("app");
        ns.put("a", text("1"), with_metadata(json!({"n": 1})))
            .await
            .unwrap();
        put(&ns, "c", text("3")).await;
        let keys: Vec<String> = ["c", "b", "a"].map(String::from).to_vec();
        let entries = ns.get_many(&keys, None).await.unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].as_ref().unwrap().value, text("3"));
        assert_eq!(entries[1], None);
        assert_eq!(entries[2].as_ref().unwrap().metadata, Some(json!({"n": 1})));
        assert!(ns.get_many(&[], None).await.unwrap().is_empty());

        let hundred: Vec<String> = (0..100).map(|i| format!("k{i}")).collect();
        assert_eq!(ns.get_many(&hundred, None).await.unwrap().len(), 100);
        let too_many: Vec<String> = (0..101).map(|i| format!("k{i}")).collect();
        assert_eq!(
            ns.get_many(&too_many, None).await.unwrap_err().status(),
            400
        );
        let with_bad_key = vec!["a".to_string(), String::new()];
        assert_rejected(
            ns.get_many(&with_bad_key, None).await,
            400,
            "KV GET_BULK failed: 400 Key names must not be empty",
        );
    }

    pub async fn cache_ttl_validation(h: &Harness) {
        let ns = h.kv.namespace("app");
        put(&ns, "k", text("v")).await;
        assert!(ns.get("k", Some(30.0)).await.unwrap().is_some());
        assert!(ns.get("k", Some(3600.0)).await.unwrap().is_some());
        assert_rejected(
            ns.get("k", Some(29.0)).await,
            400,
            "KV GET failed: 400 Invalid cache_ttl of 29. Cache TTL must be at least 30.",
        );
        assert_rejected(
            ns.get_many(&["k".to_string()], Some(10.0)).await,
            400,
            "KV GET_BULK failed: 400 Invalid cache_ttl of 10. Cache TTL must be at least 30.",
        );
    }

    pub async fn purge_removes_expired(h: &Harness) {
        let first = h.kv.namespace("first");
        let second = h.kv.namespace("second");
        first.put("short", text("v"), ttl(60.0)).await.unwrap();
        first.put("long", text("v"), ttl(600.0)).await.unwrap();
        second.put("short", text("v"), ttl(60.0)).await.unwrap();
        put(&second, "forever", text("v")).await;

        assert_eq!(h.kv.purge_expired().await.unwrap(), 0);
        h.clock.advance(60);
        assert_eq!(h.kv.purge_expired().await.unwrap(), 2);
        assert_eq!(h.kv.purge_expired().await.unwrap(), 0);

        // Moving the clock back shows that the purged entries are gone from storage.
        h.clock.set(START);
        assert_eq!(list_all(&first, None, 1000.0).await, ["long"]);
        assert_eq!(list_all(&second, None, 1000.0).await, ["forever"]);
    }
}
