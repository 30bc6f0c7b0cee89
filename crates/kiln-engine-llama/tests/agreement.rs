//! The agreement report on the real bundled chat model: a model compared with itself agrees
//! everywhere, and a Q4_0 conversion does not. Needs the bundled models (KILN_TEST_MODELS_DIR),
//! as scripts/test.sh installs them.

use std::path::PathBuf;

use kiln_engine_llama::quantize::{
    gguf_file_type, measure_agreement, parse_prompts, quantize_gguf, QuantizationType,
    AGREEMENT_PROMPTS,
};

/// Q4_0 in llama.cpp's `enum llama_ftype`.
const FILE_TYPE_Q4_0: u32 = 2;

fn bundled_gguf() -> PathBuf {
    let models = std::env::var_os("KILN_TEST_MODELS_DIR")
        .expect("KILN_TEST_MODELS_DIR is not set: run the tests through scripts/test.sh");
    let dir = PathBuf::from(models).join("smollm2-135m-instruct");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", dir.display()))
        .map(|entry| entry.expect("dir entry").path())
        .find(|path| path.extension().is_some_and(|ext| ext == "gguf"))
        .expect("a .gguf file in the bundled chat model folder")
}

#[test]
fn model_agrees_with_itself() {
    let gguf = bundled_gguf();
    let prompts = parse_prompts(AGREEMENT_PROMPTS);

    let report = measure_agreement(&gguf, &gguf, &prompts, 2).expect("agreement report");

    assert_eq!(report.prompts, prompts.len());
    // Every prompt has at least one token, and most have several.
    assert!(report.positions > prompts.len(), "{report:?}");
    assert_eq!(report.top1_agreement, 1.0, "{report:?}");
    assert!(report.mean_kl < 1e-6, "{report:?}");
}

#[test]
fn q4_0_conversion_differs_from_source() {
    let gguf = bundled_gguf();
    assert_ne!(
        gguf_file_type(&gguf).expect("read the file type"),
        Some(FILE_TYPE_Q4_0),
        "this test converts the bundled model to Q4_0"
    );
    let scratch = tempfile::tempdir().expect("temp dir");
    let converted = scratch.path().join("model.Q4_0.gguf");

    quantize_gguf(&gguf, &converted, QuantizationType::Q4_0, 2).expect("quantize to Q4_0");

    assert_eq!(
        gguf_file_type(&converted).expect("read the file type"),
        Some(FILE_TYPE_Q4_0)
    );
    let prompts = parse_prompts(AGREEMENT_PROMPTS);
    let report = measure_agreement(&gguf, &converted, &prompts, 2).expect("agreement report");
    assert!(report.top1_agreement < 1.0, "{report:?}");
    assert!(report.top1_agreement > 0.0, "{report:?}");
    assert!(report.mean_kl > 0.0, "{report:?}");

    let again = quantize_gguf(
        &converted,
        &scratch.path().join("again.gguf"),
        QuantizationType::Q4_0,
        2,
    )
    .expect_err("a Q4_0 source is rejected");
    assert!(again.to_string().contains("already Q4_0"), "{again}");
}
