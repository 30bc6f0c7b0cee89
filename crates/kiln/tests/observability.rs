//! The node's metrics and readiness against the real binary: `GET /metrics` passes
//! `promtool check metrics` and its counters move by what known requests did, and `GET /readyz`
//! waits for the preloaded models.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{metric_value, parse_samples, Node, CHAT_MODEL};
use serde_json::{json, Value};

const EMBEDDING_MODEL: &str = "all-minilm-l6-v2";

/// Runs `promtool check metrics` on `text` and returns its exit status and output.
fn promtool_check(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed by scripts/install-build-deps.sh");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write metrics to promtool");
    let output = child.wait_with_output().expect("promtool output");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), report)
}

fn run(node: &Node, model: &str, input: &Value) -> reqwest::blocking::Response {
    node.client()
        .post(node.url(&format!("/ai/run/{model}")))
        .json(input)
        .send()
        .expect("request")
}

#[test]
fn metrics_pass_promtool_and_count_requests() {
    let node = Node::start("");
    let chat = run(
        &node,
        CHAT_MODEL,
        &json!({"prompt": "Name a colour.", "max_tokens": 8, "seed": 1}),
    );
    assert_eq!(chat.status(), 200);
    let chat: Value = chat.json().expect("chat JSON");
    let usage = &chat["usage"];
    let embed_three = run(&node, EMBEDDING_MODEL, &json!({"text": ["a", "b", "c"]}));
    assert_eq!(embed_three.status(), 200);
    let embed_one = run(&node, EMBEDDING_MODEL, &json!({"text": "d"}));
    assert_eq!(embed_one.status(), 200);
    let invalid = run(&node, EMBEDDING_MODEL, &json!({"text": 5}));
    assert_eq!(invalid.status(), 400);

    let text = node.metrics();
    let (passed, report) = promtool_check(&text);
    assert!(passed, "promtool check metrics failed:\n{report}\n{text}");
    assert!(report.trim().is_empty(), "promtool lint:\n{report}");

    let samples = parse_samples(&text);
    let route = [("route", "/ai/run/{*model}")];
    let ok_route = [route[0], ("status", "200")];
    assert_eq!(
        metric_value(&samples, "kiln_http_requests_total", &ok_route),
        3.0
    );
    let bad_route = [route[0], ("status", "400")];
    assert_eq!(
        metric_value(&samples, "kiln_http_requests_total", &bad_route),
        1.0
    );
    assert_eq!(
        metric_value(&samples, "kiln_http_request_duration_seconds_count", &route),
        4.0
    );

    let chat_labels = [("model", CHAT_MODEL)];
    let chat_ok = [chat_labels[0], ("outcome", "ok")];
    assert_eq!(
        metric_value(&samples, "kiln_inference_requests_total", &chat_ok),
        1.0
    );
    assert_eq!(
        metric_value(&samples, "kiln_input_tokens_total", &chat_labels),
        usage["prompt_tokens"].as_f64().expect("prompt tokens")
    );
    assert_eq!(
        metric_value(&samples, "kiln_output_tokens_total", &chat_labels),
        usage["completion_tokens"]
            .as_f64()
            .expect("completion tokens")
    );
    assert_eq!(
        metric_value(
            &samples,
            "kiln_time_to_first_token_seconds_count",
            &chat_labels
        ),
        1.0
    );
    let manifest_path = common::models_dir().join(CHAT_MODEL).join("manifest.json");
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(&manifest_path).expect("read the chat model's manifest"),
    )
    .expect("manifest JSON");
    let file_bytes: f64 = manifest["files"]
        .as_array()
        .expect("files")
        .iter()
        .filter_map(|file| file["size"].as_f64())
        .sum();
    assert!(file_bytes > 0.0);
    assert_eq!(
        metric_value(&samples, "kiln_model_memory_bytes", &chat_labels),
        file_bytes
    );

    let embedding = [("model", EMBEDDING_MODEL)];
    let embedding_ok = [embedding[0], ("outcome", "ok")];
    assert_eq!(
        metric_value(&samples, "kiln_inference_requests_total", &embedding_ok),
        2.0
    );
    assert_eq!(
        metric_value(&samples, "kiln_batch_items_total", &embedding),
        4.0
    );
    assert_eq!(
        metric_value(&samples, "kiln_batch_size_count", &embedding),
        metric_value(&samples, "kiln_batch_forward_passes_total", &embedding)
    );
    assert_eq!(
        metric_value(&samples, "kiln_inference_queue_depth", &embedding),
        0.0
    );
}

#[test]
fn readyz_waits_for_preloaded_models() {
    let node = Node::start(&format!(
        "preload = [\"{CHAT_MODEL}\", \"{EMBEDDING_MODEL}\", \"open-nsfw\"]\n"
    ));
    let client = node.client();
    let mut seen_loading = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let ready = loop {
        assert!(
            Instant::now() < deadline,
            "never ready; log:\n{}",
            node.log_text()
        );
        let response = client.get(node.url("/readyz")).send().expect("readyz");
        let status = response.status();
        let body: Value = response.json().expect("readyz JSON");
        if status == 200 {
            break body;
        }
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["ready"], false);
        seen_loading.push(body["loading"].clone());
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["loading"], json!([]));
    let first = seen_loading
        .first()
        .unwrap_or_else(|| panic!("/readyz was ready before any model loaded"));
    assert!(
        first.as_array().is_some_and(|models| !models.is_empty()),
        "{first}"
    );
}

#[test]
fn readyz_reports_failed_preload() {
    let node = Node::start("preload = [\"no-such-model\"]\n");
    let client = node.client();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let response = client.get(node.url("/readyz")).send().expect("readyz");
        assert_eq!(response.status(), 503);
        let body: Value = response.json().expect("readyz JSON");
        if let Some(failed) = body["failed"]
            .as_array()
            .filter(|failed| !failed.is_empty())
        {
            assert_eq!(failed[0]["model"], "no-such-model");
            let error = failed[0]["error"].as_str().expect("an error text");
            assert!(error.contains("no-such-model"), "{error}");
            break;
        }
        assert!(Instant::now() < deadline, "{body}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let health = client.get(node.url("/healthz")).send().expect("healthz");
    assert_eq!(health.status(), 200);
}

/// Returns the `request` log line of the request whose id the response carried.
fn request_line(node: &Node, response_id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let line = node.log_text().lines().find_map(|line| {
            let entry: Value = serde_json::from_str(line).ok()?;
            (entry["message"] == "request" && entry["request_id"] == response_id).then_some(entry)
        });
        if let Some(line) = line {
            return line;
        }
        assert!(
            Instant::now() < deadline,
            "no request line for {response_id}:\n{}",
            node.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn request_log_line_names_model_runs() {
    let node = Node::start("");
    let prompt = "Which colour is the sky on a clear day?";
    let send = || {
        node.client()
            .post(node.url(&format!("/ai/run/{CHAT_MODEL}?trace=1")))
            .header("cf-aig-cache-ttl", "60")
            .json(&json!({"prompt": prompt, "max_tokens": 8, "seed": 2}))
            .send()
            .expect("request")
    };
    let mut usage = Value::Null;
    for expected_cache in ["MISS", "HIT"] {
        let response = send();
        assert_eq!(response.status(), 200);
        let id = response.headers()["cf-ai-req-id"]
            .to_str()
            .expect("request id")
            .to_owned();
        let body: Value = response.json().expect("JSON body");
        if expected_cache == "MISS" {
            usage = body["usage"].clone();
        }

        let line = request_line(&node, &id);
        assert_eq!(line["route"], "/ai/run/{*model}");
        assert_eq!(line["method"], "POST");
        assert_eq!(line["path"], format!("/ai/run/{CHAT_MODEL}"));
        assert_eq!(line["status"], 200);
        assert_eq!(line["outcome"], "ok");
        assert!(line["ms"].as_f64().is_some(), "{line}");
        let runs: Value = serde_json::from_str(line["model_runs"].as_str().expect("runs text"))
            .expect("runs JSON");
        assert_eq!(runs.as_array().map(Vec::len), Some(1), "{runs}");
        let run = &runs[0];
        assert_eq!(run["model"], CHAT_MODEL);
        assert_eq!(run["requested"], CHAT_MODEL);
        assert_eq!(run["cache"], expected_cache);
        if expected_cache == "MISS" {
            assert_eq!(run["input_tokens"], usage["prompt_tokens"], "{run}");
            assert_eq!(run["output_tokens"], usage["completion_tokens"], "{run}");
        }
    }
    assert!(
        !node.log_text().contains(prompt),
        "the prompt reached the log:\n{}",
        node.log_text()
    );
}
