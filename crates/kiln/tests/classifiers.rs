//! End-to-end text classification with trained checkpoints: the tiny DistilBERT and BERT
//! classifiers in tests/data/tiny-classifiers (made by
//! scripts/reference/make_tiny_classifiers.py) are imported with `kiln models import` in each
//! format (safetensors on candle, ONNX and int8 ONNX on ONNX Runtime) and run by the real
//! binary. Scores must match the script's reference.json within 1e-4.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use common::{import_model, listed_models, stderr, Node};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const TOLERANCE: f64 = 1e-4;
const ARCHITECTURES: [&str; 2] = ["distilbert", "bert"];

/// One way to import a tiny classifier.
struct Format {
    name: &'static str,
    /// The `--weights` argument, or `None` for the importer's default.
    weights_option: Option<&'static str>,
    /// The weights file that the import must store.
    stored_weights: &'static str,
    engine: &'static str,
    /// The key of the expected outputs in reference.json.
    reference: &'static str,
}

const FORMATS: [Format; 3] = [
    Format {
        name: "safetensors",
        weights_option: Some("model.safetensors"),
        stored_weights: "model.safetensors",
        engine: "safetensors",
        reference: "transformers",
    },
    Format {
        name: "onnx",
        weights_option: None,
        stored_weights: "onnx/model.onnx",
        engine: "onnx",
        reference: "transformers",
    },
    Format {
        name: "int8",
        weights_option: Some("onnx/model_quantized.onnx"),
        stored_weights: "onnx/model_quantized.onnx",
        engine: "onnx",
        reference: "onnxruntime_int8",
    },
];

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny-classifiers")
}

fn reference() -> Value {
    let text = std::fs::read_to_string(data_dir().join("reference.json")).expect("reference.json");
    serde_json::from_str(&text).expect("reference JSON")
}

fn model_id(architecture: &str, format: &Format) -> String {
    format!("tiny-{architecture}-{}", format.name)
}

/// Every imported classifier: its architecture, its format and its model id.
fn all_models() -> impl Iterator<Item = (&'static str, &'static Format, String)> {
    ARCHITECTURES.into_iter().flat_map(|architecture| {
        FORMATS
            .iter()
            .map(move |format| (architecture, format, model_id(architecture, format)))
    })
}

fn sha256_file(path: &Path) -> String {
    let bytes = std::fs::read(path).expect("read a weights file");
    hex::encode(Sha256::digest(bytes))
}

/// Imports every architecture in every format into a new models folder and checks each
/// manifest. Returns the temporary folder, which contains the models folder `models`.
fn import_all() -> tempfile::TempDir {
    let home = tempfile::tempdir().expect("temp dir");
    let models = home.path().join("models");
    for (architecture, format, id) in all_models() {
        let weights_args = match format.weights_option {
            Some(weights) => vec!["--weights", weights],
            None => Vec::new(),
        };
        let output = import_model(&models, &data_dir().join(architecture), &id, &weights_args);
        assert!(output.status.success(), "{id}: {}", stderr(&output));
    }

    let manifests = listed_models(&models);
    assert_eq!(manifests.len(), ARCHITECTURES.len() * FORMATS.len());
    for (architecture, format, id) in all_models() {
        let manifest = manifests
            .iter()
            .find(|manifest| manifest["id"] == id.as_str())
            .unwrap_or_else(|| panic!("{id} is not listed"));
        check_manifest(manifest, &data_dir().join(architecture), format);
    }
    home
}

fn check_manifest(manifest: &Value, source: &Path, format: &Format) {
    let id = &manifest["id"];
    assert_eq!(manifest["task"], "text-classification", "{id}");
    assert_eq!(manifest["engine"], format.engine, "{id}");
    let files = manifest["files"].as_array().expect("files");
    let paths: Vec<&str> = files
        .iter()
        .map(|file| file["path"].as_str().expect("path"))
        .collect();
    for required in ["config.json", "tokenizer.json", format.stored_weights] {
        assert!(paths.contains(&required), "{id}: {paths:?}");
    }
    let weights_files = paths
        .iter()
        .filter(|path| path.ends_with(".onnx") || path.ends_with(".safetensors"))
        .count();
    assert_eq!(weights_files, 1, "{id}: {paths:?}");
    for file in files {
        let path = file["path"].as_str().expect("path");
        let expected = sha256_file(&source.join(path));
        assert_eq!(file["sha256"], expected.as_str(), "{id}: {path}");
    }
}

fn run(node: &Node, model: &str, input: &Value) -> reqwest::blocking::Response {
    node.client()
        .post(node.url(&format!("/ai/run/{model}")))
        .json(input)
        .send()
        .expect("request reaches the node")
}

/// Checks one `[{label, score}]` response against a reference case's scores.
fn check_scores(context: &str, body: &Value, labels: &[String], expected: &[f64]) {
    let entries = body.as_array().expect("array of {label, score}");
    assert_eq!(entries.len(), labels.len(), "{context}: {body}");
    let mut actual = HashMap::new();
    for entry in entries {
        let label = entry["label"].as_str().expect("label").to_string();
        let score = entry["score"].as_f64().expect("score");
        actual.insert(label, score);
    }
    for (label, expected) in labels.iter().zip(expected) {
        let score = actual
            .get(label)
            .unwrap_or_else(|| panic!("{context}: no label {label} in {body}"));
        assert!(
            (score - expected).abs() < TOLERANCE,
            "{context}: {label} scored {score}, expected {expected}"
        );
    }
    let scores: Vec<f64> = entries
        .iter()
        .map(|entry| entry["score"].as_f64().expect("score"))
        .collect();
    assert!(
        scores.windows(2).all(|pair| pair[0] >= pair[1]),
        "{context}: scores are not sorted: {body}"
    );
}

fn labels(reference: &Value, architecture: &str) -> Vec<String> {
    serde_json::from_value(reference["models"][architecture]["labels"].clone()).expect("labels")
}

/// Returns the reference texts of one architecture, each with its expected scores.
fn cases<'a>(reference: &'a Value, architecture: &str) -> &'a [Value] {
    reference["models"][architecture]["cases"]
        .as_array()
        .expect("cases")
}

fn expected_scores(case: &Value, format: &Format) -> Vec<f64> {
    serde_json::from_value(case[format.reference]["scores"].clone()).expect("scores")
}

#[test]
fn imported_classifiers_match_reference() {
    let home = import_all();
    let node = Node::start_with_models(&home.path().join("models"), "");
    let reference = reference();
    for architecture in ARCHITECTURES {
        let labels = labels(&reference, architecture);
        let cases = cases(&reference, architecture);
        for format in &FORMATS {
            let id = model_id(architecture, format);
            for case in cases {
                let text = case["text"].as_str().expect("text");
                let response = run(&node, &id, &json!({ "text": text }));
                assert_eq!(response.status(), 200, "{id}: {text}");
                assert_eq!(response.headers()["x-kiln-model"], id.as_str());
                let body: Value = response.json().expect("JSON body");
                let context = format!("{id}: {text}");
                check_scores(&context, &body, &labels, &expected_scores(case, format));
            }
        }
    }
}

#[test]
fn concurrent_requests_match_reference() {
    // Concurrent requests share padded batches, which must not change the scores. The int8
    // graphs are left out, because their activation scales depend on the whole batch.
    let home = import_all();
    let node = Node::start_with_models(
        &home.path().join("models"),
        "[batching]\nmax_wait_ms = 20\n",
    );
    let reference = reference();
    for architecture in ARCHITECTURES {
        let labels = labels(&reference, architecture);
        let cases = cases(&reference, architecture);
        for format in FORMATS.iter().filter(|format| format.name != "int8") {
            let id = model_id(architecture, format);
            let threads: Vec<_> = cases
                .iter()
                .map(|case| {
                    let client = node.client();
                    let url = node.url(&format!("/ai/run/{id}"));
                    let input = json!({ "text": case["text"] });
                    std::thread::spawn(move || {
                        let response = client.post(url).json(&input).send().expect("request");
                        let status = response.status();
                        (status, response.json::<Value>().expect("JSON body"))
                    })
                })
                .collect();
            for (case, thread) in cases.iter().zip(threads) {
                let (status, body) = thread.join().expect("request thread");
                let context = format!("{id} (concurrent): {}", case["text"]);
                assert_eq!(status, 200, "{context}: {body}");
                check_scores(&context, &body, &labels, &expected_scores(case, format));
            }
        }
    }
}

#[test]
fn invalid_text_gets_400() {
    let home = import_all();
    let node = Node::start_with_models(&home.path().join("models"), "");
    let cases = [
        (json!({"text": ""}), "`text` must not be empty"),
        (json!({}), "missing `text`"),
        (json!({"text": 42}), "`text` must be a string"),
        (json!({"text": ["a", "b"]}), "`text` must be a string"),
    ];
    for format in &FORMATS {
        let id = model_id("distilbert", format);
        for (input, expected) in &cases {
            let response = run(&node, &id, input);
            assert_eq!(response.status(), 400, "{id}: {input}");
            let body: Value = response.json().expect("JSON body");
            let message = body["errors"][0]["message"].as_str().unwrap_or_default();
            assert!(message.contains(expected), "{id}: {input}: {message}");
        }
    }
}

#[test]
fn model_search_lists_the_task() {
    let home = import_all();
    let node = Node::start_with_models(&home.path().join("models"), "");
    let response = node
        .client()
        .get(node.url("/ai/models/search?task=Text%20Classification"))
        .send()
        .expect("search request");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().expect("JSON body");
    let entries = body["result"].as_array().expect("result array");
    for (_, format, id) in all_models() {
        let entry = entries
            .iter()
            .find(|entry| entry["name"] == id.as_str())
            .unwrap_or_else(|| panic!("{id} is not in {body}"));
        assert_eq!(entry["task"]["name"], "Text Classification", "{id}");
        let engine = entry["properties"]
            .as_array()
            .expect("properties")
            .iter()
            .find(|property| property["property_id"] == "engine")
            .map(|property| property["value"].clone());
        assert_eq!(engine, Some(json!(format.engine)), "{id}");
    }
}

#[test]
fn import_rejects_missing_weights_file() {
    let home = tempfile::tempdir().expect("temp dir");
    let models = home.path().join("models");
    let source = home.path().join("classifier");
    std::fs::create_dir_all(&source).expect("create folder");
    for name in ["config.json", "tokenizer.json", "model.safetensors"] {
        std::fs::copy(data_dir().join("distilbert").join(name), source.join(name))
            .expect("copy a model file");
    }
    let output = import_model(
        &models,
        &source,
        "tiny-int8",
        &["--weights", "onnx/model_quantized.onnx"],
    );
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("onnx/model_quantized.onnx is not a file"),
        "{}",
        stderr(&output)
    );

    // Without the option, the folder's only weights file is chosen.
    let output = import_model(&models, &source, "tiny-default", &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    let manifests = listed_models(&models);
    assert_eq!(manifests.len(), 1);
    assert_eq!(manifests[0]["engine"], "safetensors");
    assert_eq!(manifests[0]["task"], "text-classification");
}
