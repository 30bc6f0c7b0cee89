//! Logits of the tiny DistilBERT and BERT classifiers that
//! scripts/reference/make_tiny_classifiers.py generated, against transformers' logits in its
//! reference.json. The token ids come from the same file, so the tokenizer is not involved.

use std::path::PathBuf;

use kiln_engine::{Engine, Tensor, TensorData};
use kiln_engine_candle::{CandleSequenceClassifier, LOGITS};
use serde_json::Value;

const TOLERANCE: f64 = 1e-4;

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../kiln/tests/data/tiny-classifiers")
}

fn reference() -> Value {
    let text = std::fs::read_to_string(data_dir().join("reference.json")).expect("reference.json");
    serde_json::from_str(&text).expect("reference JSON")
}

fn load(architecture: &str) -> CandleSequenceClassifier {
    let folder = data_dir().join(architecture);
    CandleSequenceClassifier::load(
        &folder.join("config.json"),
        &folder.join("model.safetensors"),
    )
    .unwrap_or_else(|error| panic!("{architecture}: {error}"))
}

fn token_ids(case: &Value) -> Vec<i64> {
    serde_json::from_value(case["input_ids"].clone()).expect("input_ids")
}

fn expected_logits(case: &Value) -> Vec<f64> {
    serde_json::from_value(case["transformers"]["logits"].clone()).expect("logits")
}

fn int64(shape: &[usize], values: Vec<i64>) -> Tensor {
    Tensor::new(shape.to_vec(), TensorData::I64(values)).expect("tensor")
}

/// Runs rows of token ids as one batch, padded with 0 on the right, and returns the logits.
fn run_batch(model: &mut CandleSequenceClassifier, rows: &[Vec<i64>]) -> (Vec<usize>, Vec<f32>) {
    let width = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = vec![0i64; rows.len() * width];
    let mut mask = vec![0i64; rows.len() * width];
    for (index, row) in rows.iter().enumerate() {
        ids[index * width..index * width + row.len()].copy_from_slice(row);
        mask[index * width..index * width + row.len()].fill(1);
    }
    let shape = [rows.len(), width];
    let mut inputs = vec![
        ("input_ids".to_string(), int64(&shape, ids)),
        ("attention_mask".to_string(), int64(&shape, mask)),
    ];
    if model
        .inputs()
        .iter()
        .any(|input| input.name == "token_type_ids")
    {
        inputs.push((
            "token_type_ids".to_string(),
            int64(&shape, vec![0; shape[0] * shape[1]]),
        ));
    }
    let outputs = model.run(inputs).expect("forward pass");
    assert_eq!(outputs.len(), 1);
    assert_eq!(outputs[0].0, LOGITS);
    let logits = &outputs[0].1;
    (
        logits.shape.clone(),
        logits.as_f32().expect("float32").to_vec(),
    )
}

fn max_error(actual: &[f32], expected: &[f64]) -> f64 {
    actual
        .iter()
        .zip(expected)
        .map(|(a, b)| (f64::from(*a) - b).abs())
        .fold(0.0, f64::max)
}

#[test]
fn single_texts_match_transformers() {
    let reference = reference();
    for architecture in ["distilbert", "bert"] {
        let mut model = load(architecture);
        let labels = reference["models"][architecture]["labels"]
            .as_array()
            .expect("labels")
            .len();
        assert_eq!(model.outputs()[0].shape, vec![None, Some(labels)]);
        for case in reference["models"][architecture]["cases"]
            .as_array()
            .expect("cases")
        {
            let (shape, logits) = run_batch(&mut model, &[token_ids(case)]);
            assert_eq!(shape, vec![1, labels], "{architecture}: {}", case["text"]);
            let error = max_error(&logits, &expected_logits(case));
            assert!(
                error < TOLERANCE,
                "{architecture}: {}: max error {error}",
                case["text"]
            );
        }
    }
}

#[test]
fn padded_batch_matches_single_texts() {
    let reference = reference();
    for architecture in ["distilbert", "bert"] {
        let mut model = load(architecture);
        let cases = reference["models"][architecture]["cases"]
            .as_array()
            .expect("cases");
        let rows: Vec<Vec<i64>> = cases.iter().map(token_ids).collect();
        let (shape, logits) = run_batch(&mut model, &rows);
        let labels = shape[1];
        assert_eq!(shape[0], cases.len());
        for (index, case) in cases.iter().enumerate() {
            let row = &logits[index * labels..(index + 1) * labels];
            let error = max_error(row, &expected_logits(case));
            assert!(
                error < TOLERANCE,
                "{architecture}: {}: max error {error} in a padded batch",
                case["text"]
            );
        }
    }
}

#[test]
fn distilbert_rejects_token_type_ids() {
    let mut model = load("distilbert");
    let shape = [1, 3];
    let inputs = vec![
        ("input_ids".to_string(), int64(&shape, vec![2, 6, 3])),
        ("token_type_ids".to_string(), int64(&shape, vec![0, 0, 0])),
    ];
    let error = model.run(inputs).unwrap_err();
    assert!(error.to_string().contains("token_type_ids"), "{error}");
}
