//! The OpenAI-compatible API: the official Python SDK against a real node, and plain HTTP cases
//! for each error status.

mod common;

use std::process::Command;

use common::{Node, CHAT_MODEL};
use serde_json::{json, Value};

/// Id under which the install script stores the bundled embedding model.
const EMBEDDING_MODEL: &str = "all-minilm-l6-v2";

fn openai_python() -> String {
    std::env::var("KILN_TEST_OPENAI_PYTHON").expect(
        "KILN_TEST_OPENAI_PYTHON is not set: run the tests through scripts/test.sh, which \
         installs the pinned openai SDK into a virtual environment and sets it",
    )
}

#[test]
fn official_sdk_checks_pass() {
    let node = Node::start("");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/openai/sdk_checks.py"
    );
    let output = Command::new(openai_python())
        .args([script, &node.base, CHAT_MODEL, EMBEDDING_MODEL])
        .output()
        .expect("run the SDK checks");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "SDK checks failed\nstdout:\n{stdout}\nstderr:\n{stderr}\nnode log:\n{}",
        node.log_text()
    );
    for check in [
        "check_chat",
        "check_tool_call_loop",
        "check_embeddings",
        "check_errors",
    ] {
        assert!(
            stdout.contains(&format!("passed {check}")),
            "{check} did not run:\n{stdout}"
        );
    }
}

fn post(node: &Node, path: &str, body: &str) -> (u16, Value) {
    let (status, _, body) = post_with_headers(node, path, body);
    (status, body)
}

fn post_with_headers(
    node: &Node,
    path: &str,
    body: &str,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let response = node
        .client()
        .post(node.url(path))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .expect("request reaches the node");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "application/json");
    (status, headers, response.json().expect("JSON error body"))
}

fn assert_openai_error(body: &Value, kind: &str) {
    let error = &body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert_eq!(error["type"], kind, "{body}");
    assert!(error.get("param").is_some(), "{body}");
    assert!(error.get("code").is_some(), "{body}");
}

#[test]
fn chat_errors_have_openai_shape() {
    let node = Node::start("[limits]\nmax_body_bytes = 4096\n");
    let chat = "/v1/chat/completions";
    let message = json!([{"role": "user", "content": "hi"}]);

    let (status, body) = post(&node, chat, "{not json");
    assert_eq!(status, 400);
    assert_openai_error(&body, "invalid_request_error");

    let cases = [
        (
            json!({"model": CHAT_MODEL, "messages": message, "n": 3}),
            "n",
        ),
        (
            json!({"model": CHAT_MODEL, "messages": message, "temperature": 3}),
            "temperature",
        ),
        (json!({"model": CHAT_MODEL}), "messages"),
        (json!({"messages": message}), "model"),
        (
            json!({"model": CHAT_MODEL, "messages": message, "stop": ["a", "b", "c", "d", "e"]}),
            "stop",
        ),
        (
            json!({"model": CHAT_MODEL, "messages": message, "tool_choice": "required"}),
            "tool_choice",
        ),
        (
            json!({"model": CHAT_MODEL, "messages": [{"role": "user", "content": 5}]}),
            "messages[0].content",
        ),
    ];
    for (input, param) in cases {
        let (status, body) = post(&node, chat, &input.to_string());
        assert_eq!(status, 400, "{input}");
        assert_openai_error(&body, "invalid_request_error");
        assert_eq!(body["error"]["param"], param, "{input}: {body}");
    }

    let (status, body) = post(
        &node,
        "/v1/embeddings",
        &json!({"model": CHAT_MODEL, "input": "x"}).to_string(),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "model", "{body}");
    let text = body["error"]["message"].as_str().unwrap_or("");
    assert!(text.contains("not a text-embeddings model"), "{body}");

    let unknown = json!({"model": "@cf/nobody/missing", "messages": message});
    let (status, body) = post(&node, chat, &unknown.to_string());
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "model_not_found");

    let huge =
        json!({"model": CHAT_MODEL, "messages": [{"role": "user", "content": "x".repeat(8192)}]});
    let (status, body) = post(&node, chat, &huge.to_string());
    assert_eq!(status, 413);
    assert_openai_error(&body, "invalid_request_error");
}

/// Starts a streamed generation that keeps the node's sequence busy until the returned response
/// is dropped, and waits for its first bytes. The schema requires at least 1000 integers, so the
/// model cannot stop early.
fn start_long_generation(node: &Node) -> reqwest::blocking::Response {
    let long = json!({"model": CHAT_MODEL, "stream": true, "max_tokens": 3000, "seed": 4,
                      "messages": [{"role": "user", "content": "List numbers."}],
                      "response_format": {"type": "json_schema", "json_schema": {"name": "numbers",
                          "schema": {"type": "array", "items": {"type": "integer"},
                                     "minItems": 1000}}}});
    let mut busy = node
        .client()
        .post(node.url("/v1/chat/completions"))
        .json(&long)
        .send()
        .expect("long request");
    assert_eq!(busy.status(), 200);
    let mut first_bytes = [0u8; 32];
    std::io::Read::read(&mut busy, &mut first_bytes).expect("stream starts");
    busy
}

#[test]
fn full_queue_gets_429() {
    // One sequence and a queue of one: while a long generation runs and one request waits,
    // any further request is rejected.
    let node = Node::start("[llama]\nparallel_sequences = 1\nqueue_capacity = 1\n");
    // Held until the end of the test, so the sequence stays busy.
    let _busy = start_long_generation(&node);

    // Two more requests race for the one queue place; the loser gets 429 at once, and the
    // winner waits until the client gives up.
    let paths = [
        "/v1/chat/completions".to_string(),
        format!("/ai/run/{CHAT_MODEL}"),
    ];
    let bodies = [
        json!({"model": CHAT_MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}),
        json!({"prompt": "hi", "max_tokens": 4}),
    ];
    let attempts: Vec<_> = paths
        .into_iter()
        .zip(bodies)
        .map(|(path, body)| {
            let url = node.url(&path);
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::builder()
                    .timeout(std::time::Duration::from_secs(20))
                    .build()
                    .expect("HTTP client");
                let response = client.post(url).json(&body).send().ok()?;
                let status = response.status().as_u16();
                let retry_after = response.headers().get("retry-after").cloned();
                let body: Value = response.json().ok()?;
                Some((path, status, retry_after, body))
            })
        })
        .collect();
    let rejected: Vec<_> = attempts
        .into_iter()
        .filter_map(|attempt| attempt.join().expect("request thread"))
        .filter(|(_, status, _, _)| *status == 429)
        .collect();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    let (path, _, retry_after, body) = &rejected[0];
    assert_eq!(
        retry_after
            .as_ref()
            .map(|value| value.to_str().unwrap_or("")),
        Some("1")
    );
    if path.starts_with("/v1/") {
        assert_openai_error(body, "rate_limit_error");
    } else {
        assert_eq!(body["internalCode"], 3040, "{body}");
    }
}

#[test]
fn unloadable_model_gets_503() {
    let home = tempfile::tempdir().expect("temp dir");
    let broken = home.path().join("broken.gguf");
    // A GGUF header with a version llama.cpp does not know, so loading fails after import.
    let mut bytes = b"GGUF".to_vec();
    bytes.extend_from_slice(&999u32.to_le_bytes());
    bytes.extend_from_slice(&[0u8; 64]);
    std::fs::write(&broken, bytes).expect("write broken model");
    let models = home.path().join("models");
    let status = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["models", "import"])
        .arg(&broken)
        .args(["--id", "broken"])
        .arg("--models-dir")
        .arg(&models)
        .status()
        .expect("run kiln models import");
    assert!(status.success());

    let node = Node::start_with_models(&models, "");
    let (status, body) = post(&node, "/ai/run/broken", r#"{"prompt": "hi"}"#);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["internalCode"], 7009);
    assert!(
        body["description"]
            .as_str()
            .is_some_and(|text| text.contains("broken")),
        "{body}"
    );

    let chat = json!({"model": "broken", "messages": [{"role": "user", "content": "hi"}]});
    let (status, body) = post(&node, "/v1/chat/completions", &chat.to_string());
    assert_eq!(status, 503, "{body}");
    assert_openai_error(&body, "server_error");
}

#[test]
fn queued_request_past_deadline_gets_408() {
    // One sequence: while a long generation uses it, a request with a short deadline waits in
    // the queue until its deadline passes.
    let node = Node::start("[llama]\nparallel_sequences = 1\n");
    let busy = start_long_generation(&node);

    let hurried = |path: &str, body: &Value| {
        node.client()
            .post(node.url(path))
            .header("cf-aig-request-timeout", "300")
            .json(body)
            .send()
            .expect("request")
    };
    let native = hurried(
        &format!("/ai/run/{CHAT_MODEL}"),
        &json!({"prompt": "hi", "max_tokens": 4}),
    );
    assert_eq!(native.status(), 408);
    let body: Value = native.json().expect("JSON error");
    assert_eq!(body["internalCode"], 3007, "{body}");
    assert_eq!(body["name"], "Timeout", "{body}");

    let chat = json!({"model": CHAT_MODEL, "max_tokens": 4,
                      "messages": [{"role": "user", "content": "hi"}]});
    let openai = hurried("/v1/chat/completions", &chat);
    assert_eq!(openai.status(), 408);
    let body: Value = openai.json().expect("JSON error");
    assert_eq!(body["error"]["code"], "timeout", "{body}");

    let invalid = node
        .client()
        .post(node.url(&format!("/ai/run/{CHAT_MODEL}")))
        .header("cf-aig-request-timeout", "soon")
        .json(&json!({"prompt": "hi"}))
        .send()
        .expect("request");
    assert_eq!(invalid.status(), 400);

    // The timed-out requests left the queue: once the long generation ends, a request runs.
    drop(busy);
    let after = node
        .client()
        .post(node.url(&format!("/ai/run/{CHAT_MODEL}")))
        .json(&json!({"prompt": "hi", "max_tokens": 4}))
        .send()
        .expect("request");
    assert_eq!(after.status(), 200);
}
