//! End-to-end runs of the example custom model `@custom/home-value` through the real binary
//! and ONNX Runtime (ORT_DYLIB_PATH, set by scripts/test.sh). scripts/install-models.sh
//! installs the model from `models/custom`, and the expected predictions come from
//! scikit-learn, which trained it (scripts/custom-models/train_home_value.py).

mod common;

use std::path::PathBuf;

use common::Node;
use reqwest::blocking::Response;
use serde_json::{json, Value};

const MODEL: &str = "@custom/home-value";
/// Maximum absolute difference from scikit-learn's float64 predictions (millions of USD).
/// The node computes in float32, which is good to about 1e-7 here.
const TOLERANCE: f64 = 1e-5;

/// The test rows and scikit-learn's predictions that the training script wrote.
struct Expected {
    input_name: String,
    rows: Vec<Vec<f64>>,
    predictions: Vec<f64>,
}

fn expected() -> Expected {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/custom/home-value.expected.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("read {}: {error}", path.display()));
    let json: Value = serde_json::from_str(&text).expect("expected predictions are JSON");
    Expected {
        input_name: json["input_name"].as_str().expect("input_name").to_owned(),
        rows: serde_json::from_value(json["rows"].clone()).expect("rows of numbers"),
        predictions: serde_json::from_value(json["predictions"].clone())
            .expect("array of predictions"),
    }
}

fn run(node: &Node, input: &Value) -> Response {
    node.client()
        .post(node.url(&format!("/ai/run/{MODEL}")))
        .json(input)
        .send()
        .expect("request reaches the node")
}

fn assert_predictions(actual: &Value, expected: &[f64]) {
    let actual: Vec<f64> = serde_json::from_value(actual.clone())
        .unwrap_or_else(|_| panic!("prediction is not an array of numbers: {actual}"));
    assert_eq!(actual.len(), expected.len(), "{actual:?}");
    for (index, (got, want)) in actual.iter().zip(expected).enumerate() {
        assert!(
            (got - want).abs() < TOLERANCE,
            "row {index}: the node predicted {got}, scikit-learn {want}"
        );
    }
}

/// Returns the first error message of a hosted-API error body.
fn error_message(response: Response) -> String {
    let body: Value = response.json().expect("JSON error body");
    body["errors"][0]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message: {body}"))
        .to_owned()
}

#[test]
fn rows_match_training_library() {
    let node = Node::start("");
    let expected = expected();
    let response = run(&node, &json!({"input": expected.rows}));
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-kiln-model"], MODEL);
    let body: Value = response.json().expect("JSON body");
    assert_predictions(&body["prediction"], &expected.predictions);
    let output = &body["outputs"]["price"];
    assert_eq!(output["shape"], json!([expected.rows.len(), 1]), "{body}");
    assert_predictions(&output["data"], &expected.predictions);
}

#[test]
fn flat_input_is_one_row() {
    let node = Node::start("");
    let expected = expected();
    let response = run(&node, &json!({"input": expected.rows[1]}));
    assert_eq!(response.status(), 200);
    let body: Value = response.json().expect("JSON body");
    assert_predictions(&body["prediction"], &expected.predictions[1..2]);
}

#[test]
fn named_tensor_input_matches() {
    let node = Node::start("");
    let expected = expected();
    let data: Vec<f64> = expected.rows.concat();
    let input = json!({"inputs": {
        expected.input_name.clone(): {"shape": [expected.rows.len(), 6], "data": data}
    }});
    let response = run(&node, &input);
    assert_eq!(response.status(), 200);
    let body: Value = response.json().expect("JSON body");
    assert_predictions(&body["prediction"], &expected.predictions);

    // Without `shape`, the nesting of `data` gives it.
    let input = json!({"inputs": {expected.input_name.clone(): {"data": expected.rows}}});
    let response = run(&node, &input);
    assert_eq!(response.status(), 200);
    let body: Value = response.json().expect("JSON body");
    assert_predictions(&body["prediction"], &expected.predictions);
}

#[test]
fn invalid_inputs_get_expected_shape() {
    let node = Node::start("");
    let name = expected().input_name;
    let cases = [
        json!({"input": [[1800, 3, 2, 5000, 1995]]}),
        json!({"input": [1800, 3, 2, 5000, 1995]}),
        json!({"inputs": {name.clone(): {"shape": [1, 5], "data": [1800, 3, 2, 5000, 1995]}}}),
        json!({"input": [[1800, "3", 2, 5000, 1995, 70]]}),
        json!({"input": "1800, 3, 2, 5000, 1995, 70"}),
        json!({"input": [[1800, true, 2, 5000, 1995, 70]]}),
        json!({"inputs": {name.clone(): {"data": [[1800, 3, null, 5000, 1995, 70]]}}}),
    ];
    for input in cases {
        let response = run(&node, &input);
        assert_eq!(response.status(), 400, "{input}");
        let message = error_message(response);
        assert!(message.contains("[?, 6]"), "{input}: {message}");
        assert!(message.contains(&name), "{input}: {message}");
    }
}

#[test]
fn upload_over_admin_api_installs_model() {
    let home = tempfile::tempdir().expect("temp dir");
    let models = home.path().join("models");
    let data = home.path().join("data");
    std::fs::create_dir_all(&models).expect("models dir");
    let models_token = common::create_token(&data, "models");
    let kv_token = common::create_token(&data, "kv");
    let node = Node::start_at(&models, "", home.path());

    let file =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/custom/home-value.onnx");
    let file = file.to_str().expect("UTF-8 path");
    let upload = |token: &str, id: &str| {
        common::kiln(&[
            "models", "upload", file, "--id", id, "--task", "custom", "--node", &node.base,
            "--token", token,
        ])
    };

    let rejected = upload(&kv_token, "@custom/uploaded");
    assert!(!rejected.status.success());
    let stderr = String::from_utf8_lossy(&rejected.stderr);
    assert!(stderr.contains("403"), "{stderr}");

    let uploaded = upload(&models_token, "@custom/uploaded");
    assert!(uploaded.status.success(), "{uploaded:?}");
    let expected = expected();
    let response = node
        .client()
        .post(node.url("/ai/run/@custom/uploaded"))
        .json(&json!({"input": expected.rows}))
        .send()
        .expect("request reaches the node");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().expect("JSON body");
    assert_predictions(&body["prediction"], &expected.predictions);

    // A second upload under the same id replaces the first; tests/model_memory.rs checks that
    // the next requests run on the new files.
    let again = upload(&models_token, "@custom/uploaded");
    assert!(again.status.success(), "{again:?}");
    let staged = std::fs::read_dir(data.join("uploads"))
        .expect("staging folder")
        .count();
    assert_eq!(staged, 0, "staging files were left behind");
}
