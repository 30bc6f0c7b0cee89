//! KV end to end through the real binary. The tests cover the binding in workers under `kiln
//! dev` and the `cached` acceptance worker across a restart. They also cover the admin API with
//! its tokens, `kiln kv`, a SIGKILL during a burst of puts, a Redis outage and the REST
//! inference cache.

mod common;
mod dev_node;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{create_token, kiln, kiln_ok, Node};
use dev_node::{worker_dir, DevNode};
use kiln_kv::test_support::RedisServer;
use serde_json::{json, Value};

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

#[test]
fn binding_methods_follow_the_reference_semantics() {
    let node = DevNode::start(&worker_dir("kv-binding"), "");
    let response = node
        .client()
        .get(node.url("/"))
        .send()
        .expect("worker answers");
    assert_eq!(response.status(), 200, "log:\n{}", node.log_text());
    let results: Value = response.json().expect("JSON");

    assert_eq!(results["text"], "hello");
    assert_eq!(results["json"], json!({"n": 1}));
    assert_eq!(results["jsonOptions"], json!({"n": 1}));
    assert_eq!(results["bytes"], json!([0, 1, 255]));
    assert_eq!(results["stream"], "streamed value");
    assert_eq!(results["missing"], Value::Null);
    assert_eq!(
        results["withMetadata"],
        json!({"value": {"n": 1}, "metadata": {"kind": "json"}, "cacheStatus": null})
    );
    assert_eq!(results["bulk"], json!({"text": "hello", "missing": null}));
    // `kiln dev` binds the preview namespace, and namespaces do not see each other's keys.
    assert_eq!(results["second"], "other namespace");

    let list = &results["list"];
    let names: Vec<&str> = list["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|key| key["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["bytes", "expiring", "json", "stream", "text"]);
    assert_eq!(list["list_complete"], true);
    assert!(list.get("cursor").is_none(), "{list}");
    let expiring = &list["keys"][1];
    let expiration = expiring["expiration"].as_i64().expect("expiration");
    assert!((expiration - now() - 3600).abs() < 120, "{expiring}");
    assert_eq!(list["keys"][2]["metadata"], json!({"kind": "json"}));

    let page = &results["listPage"];
    assert_eq!(page["keys"].as_array().map(Vec::len), Some(2));
    assert_eq!(page["list_complete"], false);
    assert!(page["cursor"].is_string(), "{page}");

    assert_eq!(
        results["ttl59"]["error"],
        "Error: KV PUT failed: 400 Invalid expiration_ttl of 59. Expiration TTL must be at least 60."
    );
    let huge = results["hugeTtl"]["error"].as_str().expect("error");
    assert!(huge.starts_with("TypeError: "), "{huge}");
    for case in ["badValue", "ttlText", "ttlNaN", "limitNaN"] {
        let error = results[case]["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{case}: {results}"));
        assert!(error.starts_with("TypeError: "), "{case}: {error}");
    }
    let too_many = results["tooMany"]["error"].as_str().expect("error");
    assert!(too_many.contains("Too many API requests"), "{too_many}");
    let empty = results["emptyKey"]["error"].as_str().expect("error");
    assert!(empty.contains("Key names must not be empty"), "{empty}");
    // The failed puts wrote nothing.
    assert_eq!(results["afterBad"], Value::Null);
    assert_eq!(results["deleted"], Value::Null);
}

#[test]
fn cached_worker_answers_from_kv_across_a_restart() {
    let home = tempfile::tempdir().expect("temp dir");
    let dir = worker_dir("cached");
    let ask = |node: &DevNode| -> Value {
        let response = node
            .client()
            .post(node.url("/"))
            .body(r#"{"prompt": "Name a colour."}"#)
            .send()
            .expect("worker answers");
        assert_eq!(response.status(), 200, "log:\n{}", node.log_text());
        response.json().expect("JSON")
    };

    let node = DevNode::start_at(&dir, "", home.path());
    let first = ask(&node);
    assert_eq!(first["cached"], false, "{first}");
    assert!(first["response"].is_string(), "{first}");
    let second = ask(&node);
    assert_eq!(second["cached"], true, "{second}");
    assert_eq!(second["response"], first["response"]);
    drop(node);

    // The entry is in the preview namespace, with the TTL the worker asked for.
    let data_dir = home.path().join("data");
    let data_dir = data_dir.to_str().expect("UTF-8 path");
    let keys: Value = serde_json::from_str(&kiln_ok(&[
        "kv",
        "key",
        "list",
        "--namespace-id",
        "answers-preview",
        "--data-dir",
        data_dir,
    ]))
    .expect("JSON list");
    let keys = keys.as_array().expect("array");
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(keys[0]["name"]
        .as_str()
        .expect("name")
        .starts_with("answer:"));
    let remaining = keys[0]["expiration"].as_i64().expect("expiration") - now();
    assert!((3500..=3600).contains(&remaining), "TTL left: {remaining}");

    let node = DevNode::start_at(&dir, "", home.path());
    let third = ask(&node);
    assert_eq!(third["cached"], true, "{third}");
    assert_eq!(third["response"], first["response"]);
}

#[test]
fn admin_api_checks_tokens_and_serves_the_cli() {
    let home = tempfile::tempdir().expect("temp dir");
    let data_dir = home.path().join("data");
    std::fs::create_dir_all(&data_dir).expect("data dir");
    let kv_token = create_token(&data_dir, "kv");
    let read_token = create_token(&data_dir, "read");
    let node = Node::start_at(&common::models_dir(), "", home.path());
    let client = node.client();
    let values = node.url("/admin/v1/kv/namespaces/notes/values/a%2Fb");

    // The token matrix: none, wrong, wrong scope, right.
    let put = |token: Option<&str>| {
        let mut request = client.put(&values).body("first");
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().expect("node answers").status().as_u16()
    };
    assert_eq!(put(None), 401);
    assert_eq!(put(Some("kiln_not_a_token")), 401);
    assert_eq!(put(Some(&read_token)), 403);
    assert_eq!(put(Some(&kv_token)), 200);
    let log = node.log_text();
    assert!(log.contains("admin request rejected"), "{log}");
    for token in [&kv_token, &read_token] {
        assert!(!log.contains(token.as_str()), "a token leaked into the log");
    }

    // The node's own namespaces, such as the inference cache, are out of reach.
    let reserved = client
        .get(node.url("/admin/v1/kv/namespaces/__kiln-inference-cache/keys"))
        .bearer_auth(&kv_token)
        .send()
        .expect("node answers");
    assert_eq!(reserved.status(), 403);

    // A read token reads; the key with a slash round-trips through the path.
    let value = client
        .get(&values)
        .bearer_auth(&read_token)
        .send()
        .expect("node answers");
    assert_eq!(value.status(), 200);
    assert_eq!(value.text().expect("body"), "first");

    // The CLI against the node.
    let cli = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--node", &node.base, "--token", &kv_token]);
        kiln_ok(&all)
    };
    cli(&[
        "kv",
        "key",
        "put",
        "greeting",
        "hello",
        "--namespace-id",
        "notes",
        "--metadata",
        r#"{"lang":"en"}"#,
        "--ttl",
        "600",
    ]);
    assert_eq!(
        cli(&["kv", "key", "get", "greeting", "--namespace-id", "notes"]),
        "hello"
    );
    let bulk = home.path().join("bulk.json");
    std::fs::write(
        &bulk,
        json!([
            {"key": "b1", "value": "one"},
            {"key": "b2", "value": "AAEC", "base64": true},
        ])
        .to_string(),
    )
    .expect("write bulk file");
    cli(&[
        "kv",
        "bulk",
        "put",
        bulk.to_str().expect("UTF-8"),
        "--namespace-id",
        "notes",
    ]);
    let keys: Value = serde_json::from_str(&cli(&["kv", "key", "list", "--namespace-id", "notes"]))
        .expect("JSON list");
    let names: Vec<&str> = keys
        .as_array()
        .expect("array")
        .iter()
        .map(|key| key["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["a/b", "b1", "b2", "greeting"]);
    let greeting = &keys[3];
    assert_eq!(greeting["metadata"], json!({"lang": "en"}));
    assert!(greeting["expiration"].as_i64().expect("expiration") > now());
    let b2 = client
        .get(node.url("/admin/v1/kv/namespaces/notes/values/b2"))
        .bearer_auth(&kv_token)
        .send()
        .expect("node answers")
        .bytes()
        .expect("body");
    assert_eq!(&b2[..], [0, 1, 2]);

    // Store errors come back with the reference's status and text.
    let rejected = kiln(&[
        "kv",
        "key",
        "put",
        "short",
        "x",
        "--namespace-id",
        "notes",
        "--ttl",
        "59",
        "--node",
        &node.base,
        "--token",
        &kv_token,
    ]);
    assert!(!rejected.status.success());
    let stderr = String::from_utf8_lossy(&rejected.stderr);
    assert!(stderr.contains("400"), "{stderr}");
    assert!(stderr.contains("must be at least 60"), "{stderr}");

    cli(&["kv", "key", "delete", "greeting", "--namespace-id", "notes"]);
    let missing = kiln(&[
        "kv",
        "key",
        "get",
        "greeting",
        "--namespace-id",
        "notes",
        "--node",
        &node.base,
        "--token",
        &kv_token,
    ]);
    assert!(!missing.status.success());
    let namespaces: Value =
        serde_json::from_str(&cli(&["kv", "namespace", "list"])).expect("JSON list");
    assert!(
        namespaces
            .as_array()
            .expect("array")
            .contains(&json!("notes")),
        "{namespaces}"
    );
}

#[test]
fn acknowledged_puts_survive_sigkill() {
    let home = tempfile::tempdir().expect("temp dir");
    let data_dir = home.path().join("data");
    std::fs::create_dir_all(&data_dir).expect("data dir");
    let token = create_token(&data_dir, "kv");
    let mut node = Node::start_at(&common::models_dir(), "", home.path());

    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|writer| {
            let acknowledged = Arc::clone(&acknowledged);
            let stop = Arc::clone(&stop);
            let base = node.base.clone();
            let token = token.clone();
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .expect("client");
                for index in 0..2000 {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let key = format!("w{writer}-{index:05}");
                    let url = format!("{base}/admin/v1/kv/namespaces/burst/values/{key}");
                    match client.put(url).bearer_auth(&token).body(key.clone()).send() {
                        Ok(response) if response.status().is_success() => {
                            acknowledged.lock().expect("lock").push(key);
                        }
                        _ => return,
                    }
                }
            })
        })
        .collect();
    while acknowledged.lock().expect("lock").len() < 200 {
        std::thread::sleep(Duration::from_millis(5));
    }
    node.kill();
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.join().expect("writer thread");
    }
    let acknowledged = acknowledged.lock().expect("lock").clone();

    // The store opens cleanly after the kill, and every acknowledged put is there.
    let listed: Value = serde_json::from_str(&kiln_ok(&[
        "kv",
        "key",
        "list",
        "--namespace-id",
        "burst",
        "--data-dir",
        data_dir.to_str().expect("UTF-8 path"),
    ]))
    .expect("JSON list");
    let stored: std::collections::BTreeSet<&str> = listed
        .as_array()
        .expect("array")
        .iter()
        .map(|key| key["name"].as_str().expect("name"))
        .collect();
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|key| !stored.contains(key.as_str()))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged puts were lost, e.g. {:?}",
        lost.len(),
        acknowledged.len(),
        &lost[..lost.len().min(5)]
    );
}

#[test]
fn redis_outage_fails_only_kv_calls() {
    let mut redis = RedisServer::start().expect("start redis-server");
    let config = format!(
        "[kv]\nbackend = \"redis\"\nredis_url = \"{}\"\n",
        redis.url()
    );
    let node = DevNode::start(&worker_dir("kv-outage"), &config);
    let client = node.client();
    let get = |path: &str| {
        let response = client.get(node.url(path)).send().expect("node answers");
        let status = response.status().as_u16();
        (status, response.text().expect("body"))
    };

    let (status, body) = get("/count");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("JSON"),
        json!({"visits": 1})
    );

    redis.stop();
    let (status, body) = get("/count");
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("Redis"), "{body}");
    assert!(body.contains("503"), "{body}");
    let (status, body) = get("/uncaught");
    assert_eq!(status, 503, "{body}");
    let (status, body) = get("/plain");
    assert_eq!((status, body.as_str()), (200, "no KV here"));

    redis.restart().expect("restart redis-server");
    let (status, body) = get("/count");
    assert_eq!(status, 200, "{body}");
    // Redis ran without persistence, so the count starts again.
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("JSON"),
        json!({"visits": 1})
    );
}

#[test]
fn gateway_cache_headers_store_and_bypass_results() {
    let node = Node::start("");
    let client = node.client();
    let run = |headers: &[(&str, &str)], text: &str| {
        let mut request = client
            .post(node.url("/ai/run/@cf/baai/bge-small-en-v1.5"))
            .json(&json!({ "text": text }));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().expect("node answers");
        let status = response
            .headers()
            .get("cf-aig-cache-status")
            .map(|value| value.to_str().expect("ASCII").to_owned());
        (
            response.status().as_u16(),
            status,
            response.text().expect("body"),
        )
    };
    let ttl = [("cf-aig-cache-ttl", "120")];

    let (status, cache, first) = run(&ttl, "a cached sentence");
    assert_eq!((status, cache.as_deref()), (200, Some("MISS")), "{first}");
    let (_, cache, second) = run(&ttl, "a cached sentence");
    assert_eq!(cache.as_deref(), Some("HIT"));
    assert_eq!(second, first);
    let (_, cache, _) = run(&ttl, "another sentence");
    assert_eq!(
        cache.as_deref(),
        Some("MISS"),
        "a different input must miss"
    );
    let (_, cache, _) = run(
        &[("cf-aig-cache-ttl", "120"), ("cf-aig-skip-cache", "true")],
        "a cached sentence",
    );
    assert_eq!(cache.as_deref(), Some("MISS"));
    let (_, cache, _) = run(&[], "a cached sentence");
    assert_eq!(cache, None, "no cache headers, no cache status");
    let (status, _, body) = run(&[("cf-aig-cache-ttl", "59")], "a cached sentence");
    assert_eq!(status, 400);
    assert!(body.contains("cf-aig-cache-ttl"), "{body}");

    // The v4 route shares the entry and wraps it in the envelope.
    let response = client
        .post(node.url("/client/v4/accounts/local/ai/run/@cf/baai/bge-small-en-v1.5"))
        .header("cf-aig-cache-ttl", "120")
        .json(&json!({ "text": "a cached sentence" }))
        .send()
        .expect("node answers");
    assert_eq!(
        response.headers()["cf-aig-cache-status"]
            .to_str()
            .expect("ASCII"),
        "HIT"
    );
    let envelope: Value = response.json().expect("JSON");
    assert_eq!(
        envelope["result"],
        serde_json::from_str::<Value>(&first).expect("JSON")
    );
}
