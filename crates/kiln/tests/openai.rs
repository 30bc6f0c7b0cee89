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

#[test]
fn full_queue_gets_429() {
    // One sequence and no queue: while a long generation runs, the next request is rejected.
    let node = Node::start("[llama]\nparallel_sequences = 1\nqueue_capacity = 0\n");
    let long = json!({"model": CHAT_MODEL, "stream": true, "max_tokens": 2000, "temperature": 0.9,
                      "seed": 4, "messages": [{"role": "user", "content": "Tell a long story."}]});
    let mut busy = node
        .client()
        .post(node.url("/v1/chat/completions"))
        .json(&long)
        .send()
        .expect("long request");
    assert_eq!(busy.status(), 200);
    let mut first_bytes = [0u8; 32];
    std::io::Read::read(&mut busy, &mut first_bytes).expect("stream starts");

    let short = json!({"model": CHAT_MODEL, "max_tokens": 4,
                       "messages": [{"role": "user", "content": "hi"}]});
    let (status, headers, body) =
        post_with_headers(&node, "/v1/chat/completions", &short.to_string());
    assert_eq!(status, 429, "{body}");
    assert_eq!(headers["retry-after"], "1");
    assert_openai_error(&body, "rate_limit_error");

    let (status, headers, body) = post_with_headers(
        &node,
        &format!("/ai/run/{CHAT_MODEL}"),
        r#"{"prompt": "hi"}"#,
    );
    assert_eq!(status, 429, "{body}");
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(body["internalCode"], 3040);
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
