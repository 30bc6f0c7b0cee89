//! GGUF conversion with llama.cpp's quantizer, and the agreement report that compares the
//! next-token distributions of the original and the converted model.

use std::ffi::CString;
use std::fmt;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

use crate::{backend, tokenize};

/// The prompt set of every agreement report, committed in `data/agreement-prompts.txt`.
pub const AGREEMENT_PROMPTS: &str = include_str!("../data/agreement-prompts.txt");

/// Maximum tokens of one agreement prompt. Longer prompts are cut to this length.
const MAX_PROMPT_TOKENS: usize = 256;

/// A quantization type that `kiln models import --quantize` produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantizationType {
    /// 8-bit weights in blocks of 32 with one scale each.
    Q8_0,
    /// 4-bit weights in blocks of 32 with one scale each.
    Q4_0,
}

impl QuantizationType {
    pub const ALL: [QuantizationType; 2] = [QuantizationType::Q8_0, QuantizationType::Q4_0];

    /// Returns the lower-case name used on the command line and in manifests (`q8_0`).
    pub fn as_str(self) -> &'static str {
        match self {
            QuantizationType::Q8_0 => "q8_0",
            QuantizationType::Q4_0 => "q4_0",
        }
    }

    /// Returns llama.cpp's `llama_ftype` value, which GGUF files store as `general.file_type`.
    // bindgen types C enums as the target's enum type: `c_uint` here, `c_int` with MSVC.
    #[allow(clippy::unnecessary_cast)]
    fn file_type(self) -> u32 {
        match self {
            QuantizationType::Q8_0 => llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q8_0 as u32,
            QuantizationType::Q4_0 => llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q4_0 as u32,
        }
    }

    /// Returns the accepted names, comma-separated, for error messages.
    pub fn valid_values() -> String {
        QuantizationType::ALL
            .map(QuantizationType::as_str)
            .join(", ")
    }
}

impl fmt::Display for QuantizationType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for QuantizationType {
    type Err = QuantizeError;

    /// Parses `q8_0` or `q4_0`, case-insensitively.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        QuantizationType::ALL
            .into_iter()
            .find(|kind| kind.as_str().eq_ignore_ascii_case(input.trim()))
            .ok_or_else(|| QuantizeError::UnknownType(input.to_string()))
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QuantizeError {
    #[error(
        "unknown quantization type {0:?}: expected one of {valid}",
        valid = QuantizationType::valid_values()
    )]
    UnknownType(String),
    #[error(
        "{path} is already {upper}; import it without --quantize, or choose another type ({valid})",
        path = .path.display(),
        upper = .kind.as_str().to_uppercase(),
        valid = QuantizationType::valid_values()
    )]
    AlreadyInType {
        path: PathBuf,
        kind: QuantizationType,
    },
    #[error("failed to load {path}: {reason}", path = .path.display())]
    Load { path: PathBuf, reason: String },
    #[error("llama.cpp failed to quantize {path} (status {status})", path = .path.display())]
    Quantize { path: PathBuf, status: u32 },
    #[error("failed to compare the original and the converted model: {0}")]
    Compare(String),
}

/// Returns llama.cpp's name of a `general.file_type` value, such as `Q4_1`, or `type N` for
/// values this list does not name (see `enum llama_ftype` in llama.h).
pub fn file_type_name(file_type: u32) -> String {
    let name = match file_type {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        32 => "BF16",
        _ => return format!("type {file_type}"),
    };
    name.to_string()
}

/// Reads `general.file_type` from a GGUF file's metadata, without loading the weights.
/// Returns `None` when the file does not record it.
pub fn gguf_file_type(path: &Path) -> Result<Option<u32>, QuantizeError> {
    let model = load(path, LlamaModelParams::default().with_vocab_only(true))?;
    let file_type = model
        .meta_val_str("general.file_type")
        .ok()
        .and_then(|value| value.trim().parse().ok());
    Ok(file_type)
}

/// Converts the GGUF file `input` to `kind` and writes the result to `output`, on `threads`
/// CPU threads. Blocks until llama.cpp is done. Rejects an input that is already of `kind`.
///
/// Tensors that are already quantized are dequantized and quantized again
/// (`allow_requantize`), so the result can be no more accurate than the input.
pub fn quantize_gguf(
    input: &Path,
    output: &Path,
    kind: QuantizationType,
    threads: u32,
) -> Result<(), QuantizeError> {
    if gguf_file_type(input)? == Some(kind.file_type()) {
        return Err(QuantizeError::AlreadyInType {
            path: input.to_path_buf(),
            kind,
        });
    }
    let path_error = |path: &Path| QuantizeError::Load {
        path: path.to_path_buf(),
        reason: "the path is not valid UTF-8 or contains a NUL byte".to_string(),
    };
    let input_c = path_cstring(input).ok_or_else(|| path_error(input))?;
    let output_c = path_cstring(output).ok_or_else(|| path_error(output))?;

    // SAFETY: the default parameters contain null pointers for the optional tables (imatrix,
    // overrides, pruned layers), which llama.cpp reads as absent. The two strings outlive
    // the call, which does not keep them.
    let status = unsafe {
        let mut params = llama_cpp_sys_2::llama_model_quantize_default_params();
        params.nthread = i32::try_from(threads).unwrap_or(i32::MAX);
        params.ftype = kind.file_type() as _;
        params.allow_requantize = true;
        llama_cpp_sys_2::llama_model_quantize(input_c.as_ptr(), output_c.as_ptr(), &params)
    };
    if status != 0 {
        return Err(QuantizeError::Quantize {
            path: input.to_path_buf(),
            status,
        });
    }
    Ok(())
}

fn path_cstring(path: &Path) -> Option<CString> {
    CString::new(path.to_str()?).ok()
}

fn load(path: &Path, params: LlamaModelParams) -> Result<LlamaModel, QuantizeError> {
    let backend = backend().map_err(|error| QuantizeError::Load {
        path: path.to_path_buf(),
        reason: error.to_string(),
    })?;
    LlamaModel::load_from_file(backend, path, &params).map_err(|error| QuantizeError::Load {
        path: path.to_path_buf(),
        reason: error.to_string(),
    })
}

/// Splits the prompt file's text into prompts: blank lines separate prompts, and lines that
/// start with `#` are comments.
pub fn parse_prompts(text: &str) -> Vec<String> {
    let mut prompts = Vec::new();
    let mut current: Vec<&str> = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        if line.trim().is_empty() {
            if !current.is_empty() {
                prompts.push(current.join("\n"));
                current.clear();
            }
            continue;
        }
        current.push(line);
    }
    if !current.is_empty() {
        prompts.push(current.join("\n"));
    }
    prompts
}

/// Agreement of a converted model's next-token distributions with the original's, over every
/// position of every prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct AgreementReport {
    pub prompts: usize,
    pub positions: usize,
    /// Share of positions where both models rank the same token first, in [0, 1].
    pub top1_agreement: f64,
    /// Mean KL divergence KL(original ‖ converted) of the next-token distributions, in nats.
    pub mean_kl: f64,
}

/// Running sums of the agreement report, one position at a time.
#[derive(Debug, Default)]
pub struct AgreementAccumulator {
    positions: usize,
    agreeing: usize,
    kl_sum: f64,
}

impl AgreementAccumulator {
    /// Adds one position, given both models' logits over the same vocabulary.
    ///
    /// # Panics
    /// When the two slices differ in length or are empty.
    pub fn add(&mut self, original_logits: &[f32], converted_logits: &[f32]) {
        assert_eq!(
            original_logits.len(),
            converted_logits.len(),
            "both models must score the same vocabulary"
        );
        assert!(!original_logits.is_empty(), "the vocabulary is empty");
        self.positions += 1;
        if argmax(original_logits) == argmax(converted_logits) {
            self.agreeing += 1;
        }
        self.kl_sum += kl_divergence(original_logits, converted_logits);
    }

    /// Returns the report over the positions added so far, or `None` before the first one.
    pub fn report(&self, prompts: usize) -> Option<AgreementReport> {
        if self.positions == 0 {
            return None;
        }
        Some(AgreementReport {
            prompts,
            positions: self.positions,
            top1_agreement: self.agreeing as f64 / self.positions as f64,
            mean_kl: self.kl_sum / self.positions as f64,
        })
    }
}

/// Returns the index of the largest logit, the first one on ties.
pub fn argmax(logits: &[f32]) -> usize {
    let mut best = 0;
    for (index, &value) in logits.iter().enumerate() {
        if value > logits[best] {
            best = index;
        }
    }
    best
}

/// Returns log(softmax(logits)) in f64, shifted by the maximum so large logits cannot overflow.
fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits
        .iter()
        .map(|&value| f64::from(value))
        .fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = logits
        .iter()
        .map(|&value| (f64::from(value) - max).exp())
        .sum();
    let log_sum = sum.ln() + max;
    logits
        .iter()
        .map(|&value| f64::from(value) - log_sum)
        .collect()
}

/// Returns KL(P ‖ Q) = Σ p·(log p − log q) in nats, where P and Q are the softmax
/// distributions of the two logit vectors. The result is never negative: rounding below zero
/// is clamped.
pub fn kl_divergence(p_logits: &[f32], q_logits: &[f32]) -> f64 {
    let log_p = log_softmax(p_logits);
    let log_q = log_softmax(q_logits);
    let kl: f64 = log_p
        .iter()
        .zip(&log_q)
        .map(|(&lp, &lq)| lp.exp() * (lp - lq))
        .sum();
    kl.max(0.0)
}

/// Runs every prompt through both GGUF models and compares their next-token distributions at
/// every prompt position. The original model's tokenizer tokenizes the prompts, and both
/// models see the same tokens, so the two files must share a vocabulary.
pub fn measure_agreement(
    original: &Path,
    converted: &Path,
    prompts: &[String],
    threads: u32,
) -> Result<AgreementReport, QuantizeError> {
    let original_model = load(original, LlamaModelParams::default())?;
    let converted_model = load(converted, LlamaModelParams::default())?;
    if original_model.n_vocab() != converted_model.n_vocab() {
        return Err(QuantizeError::Compare(format!(
            "the vocabularies differ ({} and {} tokens)",
            original_model.n_vocab(),
            converted_model.n_vocab()
        )));
    }

    let token_lists: Vec<Vec<LlamaToken>> = prompts
        .iter()
        .map(|prompt| {
            let mut tokens = tokenize(&original_model, prompt);
            tokens.truncate(MAX_PROMPT_TOKENS);
            tokens
        })
        .filter(|tokens| !tokens.is_empty())
        .collect();
    let longest = token_lists.iter().map(Vec::len).max().unwrap_or(1);

    let mut original_context = new_context(&original_model, longest, threads)?;
    let mut converted_context = new_context(&converted_model, longest, threads)?;
    let mut batch = LlamaBatch::new(longest, 1);
    let mut accumulator = AgreementAccumulator::default();
    for tokens in &token_lists {
        batch.clear();
        for (position, token) in tokens.iter().enumerate() {
            batch
                .add(*token, position as i32, &[0], true)
                .map_err(|error| QuantizeError::Compare(error.to_string()))?;
        }
        decode(&mut original_context, &mut batch)?;
        decode(&mut converted_context, &mut batch)?;
        for index in 0..tokens.len() as i32 {
            accumulator.add(
                original_context.get_logits_ith(index),
                converted_context.get_logits_ith(index),
            );
        }
        original_context.clear_kv_cache();
        converted_context.clear_kv_cache();
    }
    accumulator
        .report(token_lists.len())
        .ok_or_else(|| QuantizeError::Compare("no prompt has any tokens".to_string()))
}

fn new_context<'a>(
    model: &'a LlamaModel,
    tokens: usize,
    threads: u32,
) -> Result<LlamaContext<'a>, QuantizeError> {
    let backend = backend().map_err(|error| QuantizeError::Compare(error.to_string()))?;
    let tokens = tokens as u32;
    let threads = i32::try_from(threads.max(1)).unwrap_or(i32::MAX);
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(tokens.max(1)))
        .with_n_batch(tokens)
        .with_n_ubatch(tokens)
        .with_n_seq_max(1)
        .with_n_threads(threads)
        .with_n_threads_batch(threads);
    model
        .new_context(backend, params)
        .map_err(|error| QuantizeError::Compare(format!("failed to create a context: {error}")))
}

fn decode(context: &mut LlamaContext<'_>, batch: &mut LlamaBatch) -> Result<(), QuantizeError> {
    context
        .decode(batch)
        .map_err(|error| QuantizeError::Compare(format!("llama.cpp decode failed: {error}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kl_of_identical_logits_is_zero() {
        let logits = [1.0, 2.0, 3.0, -4.0];
        assert!(kl_divergence(&logits, &logits).abs() < 1e-12);
    }

    #[test]
    fn kl_matches_hand_computed_value() {
        // P = softmax(ln 0.5, ln 0.5) = (0.5, 0.5); Q = softmax(ln 0.9, ln 0.1) = (0.9, 0.1).
        // KL(P ‖ Q) = 0.5 ln(0.5 / 0.9) + 0.5 ln(0.5 / 0.1) = 0.5108256...
        let p = [0.5f32.ln(), 0.5f32.ln()];
        let q = [0.9f32.ln(), 0.1f32.ln()];
        let expected = 0.5 * (0.5f64 / 0.9).ln() + 0.5 * (0.5f64 / 0.1).ln();
        assert!((kl_divergence(&p, &q) - expected).abs() < 1e-6);
        // KL is not symmetric: KL(Q ‖ P) = 0.9 ln 1.8 + 0.1 ln 0.2 = 0.3680642...
        let reverse = 0.9 * (0.9f64 / 0.5).ln() + 0.1 * (0.1f64 / 0.5).ln();
        assert!((kl_divergence(&q, &p) - reverse).abs() < 1e-6);
    }

    #[test]
    fn kl_ignores_logit_offset() {
        // Softmax is invariant to adding a constant, so KL must be too, even for large logits.
        let p = [10.0, 20.0, 30.0];
        let shifted = [1010.0, 1020.0, 1030.0];
        assert!(kl_divergence(&p, &shifted).abs() < 1e-9);
    }

    #[test]
    fn argmax_takes_first_of_ties() {
        assert_eq!(argmax(&[0.0, 3.0, 1.0, 3.0]), 1);
        assert_eq!(argmax(&[-1.0]), 0);
    }

    #[test]
    fn accumulator_averages_positions() {
        let mut accumulator = AgreementAccumulator::default();
        assert!(accumulator.report(0).is_none());

        let p = [0.5f32.ln(), 0.5f32.ln()];
        let q = [0.9f32.ln(), 0.1f32.ln()];
        // Agreeing position, KL 0.
        accumulator.add(&[2.0, 1.0], &[2.0, 1.0]);
        // Disagreeing position: argmax of P is 0 (first of ties), of the reverse of Q is 1.
        accumulator.add(&p, &[q[1], q[0]]);
        // Agreeing position with KL(P ‖ Q).
        accumulator.add(&p, &q);
        let report = accumulator.report(2).expect("a report");

        let kl = kl_divergence(&p, &q);
        assert_eq!(report.prompts, 2);
        assert_eq!(report.positions, 3);
        assert!((report.top1_agreement - 2.0 / 3.0).abs() < 1e-12);
        assert!((report.mean_kl - 2.0 * kl / 3.0).abs() < 1e-9);
    }

    #[test]
    fn prompts_split_on_blank_lines() {
        let text = "# comment\nfirst line\nsecond line\n\n\nthird\n# another\n\nfourth";
        let prompts = parse_prompts(text);
        assert_eq!(prompts, ["first line\nsecond line", "third", "fourth"]);
    }

    #[test]
    fn committed_prompt_set_has_32_prompts() {
        let prompts = parse_prompts(AGREEMENT_PROMPTS);
        assert_eq!(prompts.len(), 32);
        assert!(prompts.iter().all(|prompt| !prompt.trim().is_empty()));
    }

    #[test]
    fn quantization_type_parses_names() {
        assert_eq!("q8_0".parse(), Ok(QuantizationType::Q8_0));
        assert_eq!("Q4_0".parse(), Ok(QuantizationType::Q4_0));
        let error = "q5_k".parse::<QuantizationType>().unwrap_err().to_string();
        assert!(error.contains("q5_k"), "{error}");
        assert!(error.contains("q8_0, q4_0"), "{error}");
    }

    #[test]
    fn file_type_names_match_llama_h() {
        assert_eq!(file_type_name(QuantizationType::Q8_0.file_type()), "Q8_0");
        assert_eq!(file_type_name(QuantizationType::Q4_0.file_type()), "Q4_0");
        assert_eq!(file_type_name(3), "Q4_1");
        assert_eq!(file_type_name(999), "type 999");
    }
}
