//! `kiln models import FILE.gguf --quantize TYPE`: converts a GGUF file with llama.cpp's
//! quantizer, measures how closely the result matches the original, and imports it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use kiln_engine_llama::quantize::{
    file_type_name, gguf_file_type, measure_agreement, parse_prompts, quantize_gguf,
    QuantizationType, AGREEMENT_PROMPTS,
};
use kiln_models::{sha256_file, ImportOptions, Manifest, ModelStore, Quantization};

/// Converts `source` to `kind` in a staging folder inside the store, compares the two models
/// on the committed prompt set, prints the report and imports the converted file with the
/// report in its manifest. `options.expected_sha256` applies to `source`.
pub fn import_quantized(
    store: &ModelStore,
    source: &Path,
    kind: QuantizationType,
    options: &ImportOptions,
    threads: u32,
) -> anyhow::Result<Manifest> {
    check_gguf_source(source, options)?;
    if store.get(&options.id)?.is_some() {
        bail!(
            "model {} already exists; choose another --id or remove it first with `kiln models remove {}`",
            options.id,
            options.id
        );
    }
    let source_sha256 = sha256_file(source)?;
    if let Some(expected) = &options.expected_sha256 {
        if !expected.trim().eq_ignore_ascii_case(&source_sha256) {
            bail!(
                "SHA-256 mismatch for {}: expected {}, got {source_sha256}; nothing was stored",
                source.display(),
                expected.trim()
            );
        }
    }
    let source_type = gguf_file_type(source)?.map(file_type_name);
    let from = source_type.as_deref().unwrap_or("unknown");

    // The staging folder is dot-named inside the store, so `kiln models list` skips it and the
    // import can move the file instead of copying it.
    let staging = tempfile::Builder::new()
        .prefix(".quantize-")
        .tempdir_in(store.root())
        .with_context(|| {
            format!(
                "failed to create a staging folder in {}",
                store.root().display()
            )
        })?;
    let converted = staging
        .path()
        .join(converted_file_name(source, source_type.as_deref(), kind));

    eprintln!(
        "quantizing {} ({from}) to {} on {threads} threads",
        source.display(),
        kind.as_str().to_uppercase()
    );
    let spinner = start_spinner(format!("quantizing to {kind}"));
    let quantized = quantize_gguf(source, &converted, kind, threads);
    spinner.finish_and_clear();
    quantized?;
    let size = std::fs::metadata(&converted)
        .with_context(|| format!("llama.cpp wrote no file at {}", converted.display()))?
        .len();
    eprintln!(
        "quantized to {} ({:.1} MB)",
        converted.display(),
        size as f64 / 1e6
    );

    let prompts = parse_prompts(AGREEMENT_PROMPTS);
    let spinner = start_spinner(format!(
        "comparing next-token distributions on {} prompts",
        prompts.len()
    ));
    let report = measure_agreement(source, &converted, &prompts, threads);
    spinner.finish_and_clear();
    let report = report?;
    println!(
        "agreement of {} with {from}: top-1 agreement {:.4}, mean KL divergence {:.5} nats \
         ({} positions of {} prompts)",
        kind, report.top1_agreement, report.mean_kl, report.positions, report.prompts
    );

    let quantization = Quantization {
        from: from.to_string(),
        from_sha256: source_sha256,
        kind: kind.as_str().to_string(),
        top1_agreement: report.top1_agreement,
        mean_kl: report.mean_kl,
        prompts: report.prompts as u32,
        positions: report.positions as u32,
    };
    let manifest = store.import_quantized(&converted, options, quantization)?;
    Ok(manifest)
}

/// Rejects a source that is not a GGUF file, and options that do not apply to a conversion.
fn check_gguf_source(source: &Path, options: &ImportOptions) -> anyhow::Result<()> {
    if options.link {
        bail!("--link does not apply to --quantize, which stores a new file; drop --link");
    }
    if options.weights.is_some() {
        bail!("--weights selects a file of a folder, but --quantize converts a single .gguf file; drop --weights");
    }
    let mut magic = [0u8; 4];
    let is_gguf = std::fs::File::open(source)
        .and_then(|mut file| file.read_exact(&mut magic))
        .is_ok()
        && &magic == b"GGUF";
    if !source.is_file() || !is_gguf {
        bail!(
            "--quantize converts GGUF files, and {} is not one (it must be a file starting with \
             the bytes \"GGUF\"); import it without --quantize, or pass a .gguf file",
            source.display()
        );
    }
    Ok(())
}

/// Names the converted file after the source, with the source's type in the name replaced by
/// the new one: `SmolLM2.Q4_1.gguf` becomes `SmolLM2.Q8_0.gguf`.
fn converted_file_name(
    source: &Path,
    source_type: Option<&str>,
    kind: QuantizationType,
) -> PathBuf {
    let stem = source
        .file_stem()
        .and_then(|stem| stem.to_str())
        .unwrap_or("model");
    let mut base = stem;
    if let Some(source_type) = source_type {
        let lower_stem = stem.to_ascii_lowercase();
        let lower_type = source_type.to_ascii_lowercase();
        for separator in ['.', '-', '_'] {
            let suffix = format!("{separator}{lower_type}");
            if lower_stem.ends_with(&suffix) && stem.len() > suffix.len() {
                base = &stem[..stem.len() - suffix.len()];
                break;
            }
        }
    }
    PathBuf::from(format!("{base}.{}.gguf", kind.as_str().to_uppercase()))
}

fn start_spinner(message: String) -> indicatif::ProgressBar {
    let spinner = indicatif::ProgressBar::new_spinner().with_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg} {elapsed}")
            .expect("valid progress template"),
    );
    spinner.set_message(message);
    spinner.enable_steady_tick(Duration::from_millis(200));
    spinner
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converted_name_replaces_source_type() {
        let name = converted_file_name(
            Path::new("/m/SmolLM2-135M-Instruct.Q4_1.gguf"),
            Some("Q4_1"),
            QuantizationType::Q8_0,
        );
        assert_eq!(name, PathBuf::from("SmolLM2-135M-Instruct.Q8_0.gguf"));

        let name = converted_file_name(
            Path::new("model-f16.gguf"),
            Some("F16"),
            QuantizationType::Q4_0,
        );
        assert_eq!(name, PathBuf::from("model.Q4_0.gguf"));
    }

    #[test]
    fn converted_name_appends_type_otherwise() {
        let name = converted_file_name(Path::new("model.gguf"), None, QuantizationType::Q4_0);
        assert_eq!(name, PathBuf::from("model.Q4_0.gguf"));
        let name =
            converted_file_name(Path::new("Q4_1.gguf"), Some("Q4_1"), QuantizationType::Q8_0);
        assert_eq!(name, PathBuf::from("Q4_1.Q8_0.gguf"));
    }
}
