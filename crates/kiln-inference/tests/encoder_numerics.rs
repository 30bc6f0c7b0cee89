//! Numerics of the embeddings and image models against the reference implementations' golden
//! files, through the inference service (no HTTP). Needs the bundled models
//! (KILN_TEST_MODELS_DIR) and ONNX Runtime (ORT_DYLIB_PATH), as scripts/test.sh sets them.

use std::path::PathBuf;
use std::time::Duration;

use kiln_inference::{BatchOptions, InferenceService, OnnxEngineOptions, Output, ServiceOptions};
use kiln_models::ModelStore;
use serde_json::{json, Value};

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../kiln/tests/data")
}

fn service() -> InferenceService {
    let models = std::env::var_os("KILN_TEST_MODELS_DIR")
        .expect("KILN_TEST_MODELS_DIR is not set: run the tests through scripts/test.sh");
    let library = std::env::var_os("ORT_DYLIB_PATH")
        .expect("ORT_DYLIB_PATH is not set: run the tests through scripts/test.sh");
    let store = ModelStore::open(PathBuf::from(models)).expect("models folder");
    InferenceService::new(
        store,
        ServiceOptions {
            aliases: Default::default(),
            default_models: Default::default(),
            llama: kiln_inference::EngineOptions {
                threads: 2,
                context_tokens: 512,
                parallel_sequences: 1,
                batch_tokens: 512,
                queue_capacity: 4,
                ..Default::default()
            },
            max_generated_tokens: 64,
            onnx: OnnxEngineOptions {
                onnx_library: PathBuf::from(library),
                onnx_threads: 0,
            },
            batching: BatchOptions {
                max_wait: Duration::from_millis(2),
                ..BatchOptions::default()
            },
            memory_budget: None,
        },
    )
}

async fn run_json(service: &InferenceService, model: &str, input: Value) -> Value {
    match service
        .run(model, input)
        .await
        .expect("run succeeds")
        .output
    {
        Output::Json(value) => value,
        Output::TextStream(_) => panic!("expected a JSON result"),
    }
}

fn read_json(name: &str) -> Value {
    let text = std::fs::read_to_string(data_dir().join(name)).expect("golden file");
    serde_json::from_str(&text).expect("golden JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_match_sentence_transformers() {
    let service = service();
    let golden = read_json("embeddings_golden.json");
    for case in golden["cases"].as_array().expect("cases") {
        let result = run_json(
            &service,
            "all-minilm-l6-v2",
            json!({"text": [case["text"]], "pooling": case["pooling"]}),
        )
        .await;
        let expected: Vec<f64> = serde_json::from_value(case["embedding"].clone()).unwrap();
        let actual: Vec<f64> = serde_json::from_value(result["data"][0].clone()).unwrap();
        assert_eq!(actual.len(), expected.len());
        let max_error = actual
            .iter()
            .zip(&expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(
            max_error < 1e-4,
            "{} ({}): max error {max_error}",
            case["text"],
            case["pooling"]
        );
        assert_eq!(
            result["truncated"][0], case["truncated"],
            "{}",
            case["text"]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_nsfw_matches_onnxruntime_python() {
    let service = service();
    let golden = read_json("open_nsfw_golden.json");
    for case in golden["cases"].as_array().expect("cases") {
        let file = case["file"].as_str().unwrap();
        let bytes = std::fs::read(data_dir().join(file)).expect("image");
        let result = run_json(&service, "open-nsfw", json!({ "image": bytes })).await;
        let scores = result.as_array().expect("array");
        assert_eq!(scores.len(), 2, "{result}");
        for entry in scores {
            let label = entry["label"].as_str().unwrap();
            let expected = case[label].as_f64().unwrap();
            let actual = entry["score"].as_f64().unwrap();
            assert!(
                (actual - expected).abs() < 1e-4,
                "{file} {label}: got {actual}, expected {expected}"
            );
        }
    }
}
