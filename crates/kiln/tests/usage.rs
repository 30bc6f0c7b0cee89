//! Usage accounting end to end: the counters that `kiln usage` and `GET /admin/v1/usage`
//! return against the tokens the same node reported in its responses, across restarts, and
//! for a worker's `env.AI.run` calls under `kiln dev`.

mod common;
mod dev_node;

use std::path::Path;
use std::time::{Duration, SystemTime};

use common::{create_token, kiln, kiln_ok, models_dir, stderr, Node, CHAT_MODEL};
use dev_node::{worker_dir, DevNode};
use kiln_server::usage::{Counters, UsageStore, USAGE_FILE};
use serde_json::{json, Value};

const EMBEDDING_MODEL: &str = "all-minilm-l6-v2";
const IMAGE_MODEL: &str = "open-nsfw";

/// Tokens that one response reported.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Reported {
    input_tokens: u64,
    output_tokens: u64,
}

fn post_json(node: &Node, path: &str, body: Value) -> Value {
    let response = node
        .client()
        .post(node.url(path))
        .json(&body)
        .send()
        .expect("send the request");
    let status = response.status();
    let text = response.text().expect("response body");
    assert!(status.is_success(), "{path} returned {status}: {text}");
    serde_json::from_str(&text).expect("a JSON body")
}

fn chat_messages(question: &str) -> Value {
    json!([{"role": "user", "content": question}])
}

/// Sends a chat request to `/ai/run` and returns the `usage` it reported.
fn native_chat(node: &Node, question: &str) -> Reported {
    let body = json!({"messages": chat_messages(question), "max_tokens": 8});
    let result = post_json(node, &format!("/ai/run/{CHAT_MODEL}"), body);
    Reported {
        input_tokens: result["usage"]["prompt_tokens"]
            .as_u64()
            .expect("prompt_tokens"),
        output_tokens: result["usage"]["completion_tokens"]
            .as_u64()
            .expect("completion_tokens"),
    }
}

/// Sends a chat request to `/v1/chat/completions` and returns the `usage` it reported.
fn openai_chat(node: &Node, question: &str) -> Reported {
    let body = json!({"model": CHAT_MODEL, "messages": chat_messages(question), "max_tokens": 8});
    let result = post_json(node, "/v1/chat/completions", body);
    Reported {
        input_tokens: result["usage"]["prompt_tokens"]
            .as_u64()
            .expect("prompt_tokens"),
        output_tokens: result["usage"]["completion_tokens"]
            .as_u64()
            .expect("completion_tokens"),
    }
}

/// Streams a chat completion with `include_usage` and returns the usage of its last chunk.
fn streamed_openai_chat(node: &Node, question: &str) -> Reported {
    let body = json!({
        "model": CHAT_MODEL,
        "messages": chat_messages(question),
        "max_tokens": 8,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let response = node
        .client()
        .post(node.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .expect("send the request");
    assert!(response.status().is_success(), "{}", response.status());
    let text = response.text().expect("the event stream");
    let usage = text
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .filter(|data| *data != "[DONE]")
        .map(|data| serde_json::from_str::<Value>(data).expect("a JSON event"))
        .find_map(|event| event.get("usage").filter(|usage| !usage.is_null()).cloned())
        .unwrap_or_else(|| panic!("no usage chunk in the stream:\n{text}"));
    Reported {
        input_tokens: usage["prompt_tokens"].as_u64().expect("prompt_tokens"),
        output_tokens: usage["completion_tokens"]
            .as_u64()
            .expect("completion_tokens"),
    }
}

/// Runs `kiln usage ARGS --format json` and returns its report.
fn usage_json(args: &[&str]) -> Value {
    let mut all = vec!["usage", "--format", "json"];
    all.extend_from_slice(args);
    let output = kiln_ok(&all);
    serde_json::from_str(&output).expect("kiln usage prints JSON")
}

/// Returns the row of (worker, model), panicking with the report when there is none.
fn row<'a>(report: &'a Value, worker: &str, model: &str) -> &'a Value {
    report["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .find(|row| row["worker"] == worker && row["model"] == model)
        .unwrap_or_else(|| panic!("no row for ({worker:?}, {model:?}) in {report:#}"))
}

fn counter(row: &Value, name: &str) -> u64 {
    row[name]
        .as_u64()
        .unwrap_or_else(|| panic!("{name} in {row}"))
}

fn data_dir_arg(home: &Path) -> String {
    home.join("data").to_str().expect("UTF-8 path").to_owned()
}

#[test]
fn usage_totals_match_reported_tokens() {
    let home = tempfile::tempdir().expect("temp dir");
    let models = models_dir();
    let mut node = Node::start_at(&models, "", home.path());

    let reported = [
        native_chat(&node, "Name a color."),
        native_chat(&node, "Name a fruit."),
        openai_chat(&node, "Name a planet."),
        streamed_openai_chat(&node, "Name an animal."),
    ];
    let expected_input: u64 = reported.iter().map(|usage| usage.input_tokens).sum();
    let expected_output: u64 = reported.iter().map(|usage| usage.output_tokens).sum();
    assert!(expected_input > 0);
    assert!(expected_output > 0);

    // Embeddings: the OpenAI route reports the encoded tokens, the native route does not.
    let embedded = post_json(
        &node,
        "/v1/embeddings",
        json!({"model": EMBEDDING_MODEL, "input": ["first text", "the second text"]}),
    );
    let embedding_tokens = embedded["usage"]["prompt_tokens"]
        .as_u64()
        .expect("prompt_tokens");
    // Each text has at least one word token plus the [CLS] and [SEP] special tokens.
    assert!(embedding_tokens >= 6, "{embedded}");
    post_json(
        &node,
        &format!("/ai/run/{EMBEDDING_MODEL}"),
        json!({"text": ["first text", "the second text"]}),
    );

    let image =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/images/blocks.jpg"))
            .expect("test image");
    let response = node
        .client()
        .post(node.url(&format!("/ai/run/{IMAGE_MODEL}")))
        .header("content-type", "image/jpeg")
        .body(image)
        .send()
        .expect("send the image");
    assert!(response.status().is_success(), "{}", response.status());

    let token = create_token(&home.path().join("data"), "read");
    let remote = ["--node", node.base.as_str(), "--token", token.as_str()];
    let report = usage_json(&remote);

    let chat = row(&report, "", CHAT_MODEL);
    assert_eq!(counter(chat, "requests"), 4);
    assert_eq!(counter(chat, "input_tokens"), expected_input);
    assert_eq!(counter(chat, "output_tokens"), expected_output);
    assert_eq!(counter(chat, "images"), 0);
    assert!(chat["compute_seconds"].as_f64().expect("compute_seconds") > 0.0);

    let embeddings = row(&report, "", EMBEDDING_MODEL);
    assert_eq!(counter(embeddings, "requests"), 2);
    assert_eq!(counter(embeddings, "input_tokens"), 2 * embedding_tokens);
    assert_eq!(counter(embeddings, "output_tokens"), 0);

    let images = row(&report, "", IMAGE_MODEL);
    assert_eq!(counter(images, "requests"), 1);
    assert_eq!(counter(images, "images"), 1);
    assert_eq!(counter(&report["total"], "requests"), 7);
    assert_eq!(
        counter(&report["total"], "input_tokens"),
        expected_input + 2 * embedding_tokens
    );

    // The model filter selects one model's row.
    let only_chat = usage_json(&[&remote[..], &["--model", CHAT_MODEL]].concat());
    assert_eq!(only_chat["rows"].as_array().expect("rows").len(), 1);
    assert_eq!(counter(&only_chat["total"], "input_tokens"), expected_input);

    // The table has one line per row, a header and a total line.
    let table = kiln_ok(&[&["usage"], &remote[..]].concat());
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 5, "{table}");
    assert!(lines[0].starts_with("WORKER"), "{table}");
    let total: Vec<&str> = lines[4].split_whitespace().collect();
    assert_eq!(total[0], "TOTAL", "{table}");
    assert_eq!(total[1], "7", "{table}");

    // The counters survive a restart, and a stopped node's folder reads the same.
    let status = node.terminate(Duration::from_secs(30));
    assert!(status.is_some_and(|status| status.success()), "{status:?}");
    let data_dir = data_dir_arg(home.path());
    let stopped = usage_json(&["--data-dir", &data_dir]);
    assert_eq!(stopped["rows"], report["rows"]);
    assert_eq!(stopped["total"], report["total"]);

    let node = Node::start_at(&models, "", home.path());
    let after = openai_chat(&node, "Name a river.");
    let remote = ["--node", node.base.as_str(), "--token", token.as_str()];
    let restarted = usage_json(&remote);
    let chat = row(&restarted, "", CHAT_MODEL);
    assert_eq!(counter(chat, "requests"), 5);
    assert_eq!(
        counter(chat, "input_tokens"),
        expected_input + after.input_tokens
    );
    assert_eq!(
        counter(chat, "output_tokens"),
        expected_output + after.output_tokens
    );
}

#[test]
fn since_selects_recent_hours() {
    let home = tempfile::tempdir().expect("temp dir");
    let data_dir = home.path().join("data");
    std::fs::create_dir_all(&data_dir).expect("create the data folder");
    {
        let store = UsageStore::open(&data_dir.join(USAGE_FILE)).expect("open usage.redb");
        let three_days_ago = SystemTime::now() - Duration::from_secs(3 * 86_400);
        let old = Counters {
            requests: 1,
            input_tokens: 1000,
            ..Counters::default()
        };
        store
            .add_at(three_days_ago, "", CHAT_MODEL, old)
            .expect("add an old bucket");
    }

    let node = Node::start_at(&models_dir(), "", home.path());
    let recent = openai_chat(&node, "Name a mountain.");
    let token = create_token(&data_dir, "read");
    let remote = ["--node", node.base.as_str(), "--token", token.as_str()];

    let everything = usage_json(&remote);
    let chat = row(&everything, "", CHAT_MODEL);
    assert_eq!(counter(chat, "requests"), 2);
    assert_eq!(counter(chat, "input_tokens"), 1000 + recent.input_tokens);

    for since in ["30m", "24h"] {
        let report = usage_json(&[&remote[..], &["--since", since]].concat());
        let chat = row(&report, "", CHAT_MODEL);
        assert_eq!(counter(chat, "requests"), 1, "--since {since}");
        assert_eq!(
            counter(chat, "input_tokens"),
            recent.input_tokens,
            "--since {since}"
        );
    }
    let week = usage_json(&[&remote[..], &["--since", "7d"]].concat());
    assert_eq!(counter(row(&week, "", CHAT_MODEL), "requests"), 2);

    let invalid = kiln(&[&["usage", "--since", "yesterday"], &remote[..]].concat());
    assert!(!invalid.status.success());
    assert!(
        stderr(&invalid).contains("invalid duration"),
        "{}",
        stderr(&invalid)
    );
    let response = node
        .client()
        .get(node.url("/admin/v1/usage?since=1w"))
        .bearer_auth(&token)
        .send()
        .expect("send the request");
    assert_eq!(response.status().as_u16(), 400);

    // The running node keeps usage.redb open, so reading its folder directly fails and the
    // error names --node as the fix.
    let data_dir = data_dir.to_str().expect("UTF-8 path");
    let locked = kiln(&["usage", "--data-dir", data_dir]);
    assert!(!locked.status.success());
    assert!(stderr(&locked).contains("--node"), "{}", stderr(&locked));
}

#[test]
fn usage_route_checks_tokens() {
    let home = tempfile::tempdir().expect("temp dir");
    let node = Node::start_at(&models_dir(), "", home.path());
    let data_dir = home.path().join("data");
    let client = node.client();
    let url = node.url("/admin/v1/usage");

    let missing = client.get(&url).send().expect("send the request");
    assert_eq!(missing.status().as_u16(), 401);
    let invalid = client
        .get(&url)
        .bearer_auth("kiln_not_a_token")
        .send()
        .expect("send the request");
    assert_eq!(invalid.status().as_u16(), 401);

    // The route needs scope read, which every scope includes.
    for scope in ["read", "kv", "models", "deploy"] {
        let token = create_token(&data_dir, scope);
        let response = client
            .get(&url)
            .bearer_auth(&token)
            .send()
            .expect("send the request");
        assert_eq!(response.status().as_u16(), 200, "scope {scope}");
        let body: Value = response.json().expect("a JSON body");
        assert!(body["result"]["rows"].is_array(), "scope {scope}: {body}");
    }

    let output = kiln(&[
        "usage",
        "--node",
        node.base.as_str(),
        "--token",
        "kiln_wrong",
    ]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("401"), "{}", stderr(&output));
}

#[test]
fn worker_ai_runs_count_for_the_worker() {
    let home = tempfile::tempdir().expect("temp dir");
    let mut node = DevNode::start_at(&worker_dir("chat"), "", home.path());
    for question in ["Name a color.", "Name a fruit."] {
        let response = node
            .client()
            .post(node.url("/"))
            .json(&json!({"question": question}))
            .send()
            .expect("send the request");
        let status = response.status();
        let body = response.text().expect("response body");
        assert!(status.is_success(), "{status}: {body}");
    }
    let status = node.terminate(Duration::from_secs(30));
    assert!(status.is_some_and(|status| status.success()), "{status:?}");

    let report = usage_json(&["--data-dir", &data_dir_arg(home.path())]);
    let requests = row(&report, "chat", "");
    assert_eq!(counter(requests, "requests"), 2);
    assert_eq!(counter(requests, "input_tokens"), 0);
    let runs = row(&report, "chat", CHAT_MODEL);
    assert_eq!(counter(runs, "requests"), 2);
    assert!(counter(runs, "input_tokens") > 0, "{report:#}");
    // The worker sets max_tokens to 64 per request.
    let output_tokens = counter(runs, "output_tokens");
    assert!(output_tokens > 0, "{report:#}");
    assert!(output_tokens <= 2 * 64, "{report:#}");
    assert_eq!(
        report["rows"].as_array().expect("rows").len(),
        2,
        "every run counts for the worker: {report:#}"
    );

    let filtered = usage_json(&[
        "--data-dir",
        &data_dir_arg(home.path()),
        "--worker",
        "other",
    ]);
    assert_eq!(filtered["rows"], json!([]));
    assert_eq!(counter(&filtered["total"], "requests"), 0);
}

#[test]
fn canceled_stream_still_counts() {
    let home = tempfile::tempdir().expect("temp dir");
    let node = Node::start_at(&models_dir(), "", home.path());
    let token = create_token(&home.path().join("data"), "read");
    let body = json!({
        "model": CHAT_MODEL,
        "messages": chat_messages("Write a long story about a lighthouse."),
        "max_tokens": 256,
        "stream": true,
    });
    let mut response = node
        .client()
        .post(node.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .expect("send the request");
    assert!(response.status().is_success(), "{}", response.status());
    let mut first_bytes = [0u8; 64];
    let read = std::io::Read::read(&mut response, &mut first_bytes).expect("read the stream");
    assert!(read > 0);
    // Closing the connection drops the generation on the node.
    drop(response);

    // The node records the usage when it notices the closed connection, so poll for it.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let chat = loop {
        let report: Value = node
            .client()
            .get(node.url(&format!("/admin/v1/usage?model={CHAT_MODEL}")))
            .bearer_auth(&token)
            .send()
            .expect("send the request")
            .json()
            .expect("a JSON body");
        let rows = report["result"]["rows"].as_array().expect("rows").clone();
        if let Some(chat) = rows.into_iter().next() {
            break chat;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no usage row for the canceled stream: {report}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(counter(&chat, "requests"), 1);
    assert!(counter(&chat, "input_tokens") > 0, "{chat}");
    assert!(counter(&chat, "output_tokens") < 256, "{chat}");
}
