//! End-to-end tests of the model memory budget (`[models] memory_budget`) and of removing and
//! replacing models over the admin API, against the real binary and the bundled models.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::{create_token, import_model, models_dir, Node, CHAT_MODEL};
use serde_json::{json, Value};

/// The bundled embeddings model, an ONNX encoder.
const EMBEDDINGS_MODEL: &str = "all-minilm-l6-v2";

/// Returns the size of a bundled model's files, as its manifest records them.
fn bundled_size(id: &str) -> u64 {
    let manifest = models_dir().join(id).join("manifest.json");
    let text = std::fs::read_to_string(&manifest)
        .unwrap_or_else(|error| panic!("read {}: {error}", manifest.display()));
    let manifest: Value = serde_json::from_str(&text).expect("manifest is JSON");
    manifest["files"]
        .as_array()
        .expect("files array")
        .iter()
        .map(|file| file["size"].as_u64().expect("file size"))
        .sum()
}

/// Returns the value of `kiln_model_memory_bytes` for `model` on `/metrics`, `None` when the
/// node has not reported it.
fn memory_gauge(node: &Node, model: &str) -> Option<f64> {
    node.metric("kiln_model_memory_bytes", &[("model", model)])
}

/// Returns the summed `kiln_model_unloads_total` of `model` with `reason`.
fn unload_count(node: &Node, model: &str, reason: &str) -> f64 {
    node.metric(
        "kiln_model_unloads_total",
        &[("model", model), ("reason", reason)],
    )
    .unwrap_or(0.0)
}

fn generate(node: &Node) -> reqwest::blocking::Response {
    node.client()
        .post(node.url(&format!("/ai/run/{CHAT_MODEL}")))
        .json(&json!({"prompt": "Say hi.", "max_tokens": 4}))
        .send()
        .expect("request reaches the node")
}

fn embed(node: &Node) -> reqwest::blocking::Response {
    node.client()
        .post(node.url(&format!("/ai/run/{EMBEDDINGS_MODEL}")))
        .json(&json!({"text": ["A man is eating food."]}))
        .send()
        .expect("request reaches the node")
}

/// Returns the ids that `GET /admin/v1/models` marks as loaded.
fn loaded_ids(node: &Node, token: &str) -> Vec<String> {
    let body: Value = node
        .client()
        .get(node.url("/admin/v1/models"))
        .bearer_auth(token)
        .send()
        .expect("admin request")
        .json()
        .expect("JSON body");
    body["result"]["models"]
        .as_array()
        .unwrap_or_else(|| panic!("no models array: {body}"))
        .iter()
        .filter(|model| model["loaded"] == json!(true))
        .map(|model| model["id"].as_str().expect("model id").to_owned())
        .collect()
}

fn error_message(response: reqwest::blocking::Response) -> String {
    let body: Value = response.json().expect("JSON error body");
    body["errors"][0]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message: {body}"))
        .to_owned()
}

#[test]
fn budget_keeps_one_of_two_models() {
    let chat_bytes = bundled_size(CHAT_MODEL);
    let embeddings_bytes = bundled_size(EMBEDDINGS_MODEL);
    // Room for the larger model alone, but not for both.
    let budget = chat_bytes.max(embeddings_bytes) + 1_000_000;
    assert!(budget < chat_bytes + embeddings_bytes);
    let home = tempfile::tempdir().expect("temp dir");
    let node = Node::start_at(
        &models_dir(),
        &format!("[models]\nmemory_budget = {budget}\n"),
        home.path(),
    );
    let token = create_token(&home.path().join("data"), "read");

    for round in 0..2 {
        let response = generate(&node);
        assert_eq!(response.status(), 200, "round {round}: {}", node.log_text());
        assert_eq!(memory_gauge(&node, CHAT_MODEL), Some(chat_bytes as f64));
        assert_ne!(
            memory_gauge(&node, EMBEDDINGS_MODEL),
            Some(embeddings_bytes as f64),
            "round {round}: both models are loaded"
        );
        assert_eq!(loaded_ids(&node, &token), vec![CHAT_MODEL.to_owned()]);

        let response = embed(&node);
        assert_eq!(response.status(), 200, "round {round}: {}", node.log_text());
        assert_eq!(
            memory_gauge(&node, EMBEDDINGS_MODEL),
            Some(embeddings_bytes as f64)
        );
        assert_eq!(memory_gauge(&node, CHAT_MODEL), Some(0.0));
        assert_eq!(loaded_ids(&node, &token), vec![EMBEDDINGS_MODEL.to_owned()]);
    }

    // The chat model made room for the embeddings model twice. The embeddings model made room
    // once, because it is still loaded after the last round.
    assert_eq!(unload_count(&node, CHAT_MODEL, "memory_budget"), 2.0);
    assert_eq!(unload_count(&node, EMBEDDINGS_MODEL, "memory_budget"), 1.0);
    let log = node.log_text();
    assert!(log.contains("model unloaded"), "{log}");
    assert!(log.contains("memory_budget"), "{log}");
}

#[test]
fn model_over_budget_gets_503() {
    let chat_bytes = bundled_size(CHAT_MODEL);
    let node = Node::start("[models]\nmemory_budget = \"50MB\"\n");

    let response = generate(&node);
    assert_eq!(response.status(), 503);
    let message = error_message(response);
    assert!(message.contains(CHAT_MODEL), "{message}");
    assert!(
        message.contains(&format!("{chat_bytes} bytes")),
        "{message}"
    );
    assert!(message.contains("50000000 bytes"), "{message}");
    assert!(message.contains("memory_budget"), "{message}");
    assert_eq!(memory_gauge(&node, CHAT_MODEL), None);

    // A model that fits still runs.
    let response = node
        .client()
        .post(node.url("/ai/run/@custom/home-value"))
        .json(&json!({"input": [[1800, 3, 2, 5000, 1995, 70]]}))
        .send()
        .expect("request reaches the node");
    assert_eq!(response.status(), 200);
}

fn home_value_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/custom/home-value.onnx")
}

fn row_sum_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/row-sum.onnx")
}

/// Imports the example custom model as `id` into `models` (a folder the test owns, since
/// removal deletes files).
fn install_home_value(models: &Path, id: &str) {
    std::fs::create_dir_all(models).expect("models dir");
    let output = import_model(models, &home_value_file(), id, &["--task", "custom"]);
    assert!(output.status.success(), "{}", common::stderr(&output));
}

fn run_custom(node: &Node, id: &str, row: &[f64]) -> reqwest::blocking::Response {
    node.client()
        .post(node.url(&format!("/ai/run/{id}")))
        .json(&json!({"input": [row]}))
        .send()
        .expect("request reaches the node")
}

fn delete_model(node: &Node, id: &str, token: Option<&str>) -> reqwest::blocking::Response {
    let request = node
        .client()
        .delete(node.url(&format!("/admin/v1/models/{id}")));
    let request = match token {
        Some(token) => request.bearer_auth(token),
        None => request,
    };
    request.send().expect("admin request")
}

#[test]
fn delete_removes_model_and_needs_scope() {
    let home = tempfile::tempdir().expect("temp dir");
    let models = home.path().join("models");
    let id = "@custom/doomed";
    install_home_value(&models, id);
    let node = Node::start_at(&models, "", home.path());
    let data = home.path().join("data");
    let read_token = create_token(&data, "read");
    let models_token = create_token(&data, "models");
    let row = [1800.0, 3.0, 2.0, 5000.0, 1995.0, 70.0];

    assert_eq!(run_custom(&node, id, &row).status(), 200);
    assert!(memory_gauge(&node, id).is_some_and(|bytes| bytes > 0.0));

    assert_eq!(delete_model(&node, id, None).status(), 401);
    assert_eq!(delete_model(&node, id, Some(&read_token)).status(), 403);
    assert_eq!(run_custom(&node, id, &row).status(), 200);

    let response = delete_model(&node, id, Some(&models_token));
    assert_eq!(response.status(), 200);
    assert_eq!(memory_gauge(&node, id), Some(0.0));
    assert_eq!(unload_count(&node, id, "removed"), 1.0);
    assert!(!models.join("@custom%2Fdoomed").exists());

    let response = run_custom(&node, id, &row);
    assert_eq!(response.status(), 400);
    let body: Value = response.json().expect("JSON error body");
    assert_eq!(body["errors"][0]["code"], 5007, "{body}");

    let response = delete_model(&node, id, Some(&models_token));
    assert_eq!(response.status(), 404);
    let message = error_message(response);
    assert!(message.contains("not found"), "{message}");
}

#[test]
fn cli_removes_model_from_node() {
    let home = tempfile::tempdir().expect("temp dir");
    let models = home.path().join("models");
    let id = "@custom/remote";
    install_home_value(&models, id);
    let node = Node::start_at(&models, "", home.path());
    let data = home.path().join("data");
    let read_token = create_token(&data, "read");
    let models_token = create_token(&data, "models");

    let remove = |token: &str| {
        common::kiln(&[
            "models", "remove", id, "--node", &node.base, "--token", token,
        ])
    };
    let rejected = remove(&read_token);
    assert!(!rejected.status.success());
    let stderr = common::stderr(&rejected);
    assert!(stderr.contains("403"), "{stderr}");
    assert!(models.join("@custom%2Fremote").exists());

    let removed = remove(&models_token);
    assert!(removed.status.success(), "{}", common::stderr(&removed));
    assert!(!models.join("@custom%2Fremote").exists());
    let again = remove(&models_token);
    assert!(!again.status.success());
    let stderr = common::stderr(&again);
    assert!(stderr.contains("404"), "{stderr}");
}

#[test]
fn reupload_during_requests_fails_none() {
    let home = tempfile::tempdir().expect("temp dir");
    let models = home.path().join("models");
    let id = "@custom/swapped";
    install_home_value(&models, id);
    let node = Arc::new(Node::start_at(&models, "", home.path()));
    let token = create_token(&home.path().join("data"), "models");
    let row = [1800.0, 3.0, 2.0, 5000.0, 1995.0, 70.0];
    let row_sum: f64 = row.iter().sum();

    let first = run_custom(&node, id, &row);
    assert_eq!(first.status(), 200);
    let first: Value = first.json().expect("JSON body");
    let old_prediction = first["prediction"][0].as_f64().expect("prediction");
    assert!((old_prediction - row_sum).abs() > 1.0, "{old_prediction}");

    // The client loop records (index, status, prediction, body) of each request it sends.
    let started = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let results = Arc::new(Mutex::new(Vec::new()));
    let client = {
        let (node, started, stop, results) = (
            Arc::clone(&node),
            Arc::clone(&started),
            Arc::clone(&stop),
            Arc::clone(&results),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let index = started.fetch_add(1, Ordering::SeqCst);
                let response = run_custom(&node, id, &row);
                let status = response.status().as_u16();
                let body: Value = response.json().unwrap_or(Value::Null);
                let prediction = body["prediction"][0].as_f64();
                results
                    .lock()
                    .expect("results lock")
                    .push((index, status, prediction, body));
            }
        })
    };
    // The deadline only stops a hung test, since a client loop that panicked stops counting.
    let wait_for_requests = |count: usize| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while results.lock().expect("results lock").len() < count {
            assert!(
                std::time::Instant::now() < deadline && !client.is_finished(),
                "the client loop stopped before sending {count} requests; log:\n{}",
                node.log_text()
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    };
    wait_for_requests(20);

    let body = std::fs::read(row_sum_file()).expect("read row-sum.onnx");
    let response = node
        .client()
        .put(node.url(&format!("/admin/v1/models/{id}")))
        .query(&[("filename", "row-sum.onnx"), ("task", "custom")])
        .bearer_auth(&token)
        .body(body)
        .send()
        .expect("upload request");
    assert_eq!(response.status(), 200);
    // Requests with this index or a larger one started after the upload returned.
    let swapped_at = started.load(Ordering::SeqCst);
    let done_before = results.lock().expect("results lock").len();
    wait_for_requests(done_before + 20);
    stop.store(true, Ordering::SeqCst);
    client.join().expect("client loop");

    let results = results.lock().expect("results lock");
    let failed: Vec<_> = results
        .iter()
        .filter(|(_, status, _, _)| *status != 200)
        .collect();
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    let old_answers = results
        .iter()
        .filter(|(_, _, prediction, _)| {
            prediction.is_some_and(|p| (p - old_prediction).abs() < 1e-3)
        })
        .count();
    assert!(
        old_answers >= 20,
        "{old_answers} requests ran on the old model"
    );
    for (index, _, prediction, body) in results.iter().filter(|(index, ..)| *index >= swapped_at) {
        let prediction = prediction.unwrap_or_else(|| panic!("request {index}: {body}"));
        assert!(
            (prediction - row_sum).abs() < 1e-3,
            "request {index} started after the upload returned, but the old model returned {prediction}"
        );
    }
    assert!(unload_count(&node, id, "replaced") >= 1.0);
}
