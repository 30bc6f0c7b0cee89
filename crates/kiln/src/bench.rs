//! `kiln bench generate`: prefill and decode speed of an installed GGUF model, measured as
//! llama.cpp's `llama-bench` does (pp: one prompt of N tokens; tg: N tokens generated one at a
//! time), so the two tools can be compared in one run.

use std::time::Instant;

use anyhow::{bail, Context};
use kiln_engine_llama::{
    EngineOptions, GenerateEvent, GenerateRequest, LlamaModelHandle, SamplingParams,
};
use kiln_models::{EngineKind, ModelStore};
use serde_json::json;

use crate::NodePaths;

#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(flatten)]
    paths: NodePaths,
    /// Installed model id to measure (a GGUF model).
    #[arg(long, default_value = "smollm2-135m-instruct")]
    model: String,
    /// Prompt length of the prefill test, in tokens.
    #[arg(long, default_value_t = 128)]
    prompt_tokens: u32,
    /// Tokens generated in the decode test.
    #[arg(long, default_value_t = 64)]
    gen_tokens: u32,
    /// CPU threads.
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// Timed runs of each test, after one warm-up run; the report gives mean and standard
    /// deviation.
    #[arg(long, default_value_t = 5)]
    repetitions: u32,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let config = args.paths.load_config()?;
    let store = ModelStore::open(args.paths.models_dir(&config)?)?;
    let manifest = store.get(&args.model)?.with_context(|| {
        format!(
            "model {} is not installed; see `kiln models list`",
            args.model
        )
    })?;
    if manifest.engine != EngineKind::Llama {
        bail!(
            "model {} is not a GGUF model; kiln bench generate measures GGUF models only",
            args.model
        );
    }
    let file = manifest
        .primary_file()
        .context("the manifest lists no model file")?;
    let path = store.file_path(&manifest, file);

    let options = EngineOptions {
        threads: args.threads,
        context_tokens: args.prompt_tokens + args.gen_tokens + 16,
        parallel_sequences: 1,
        batch_tokens: args.prompt_tokens.max(32),
        queue_capacity: 1,
        ..EngineOptions::default()
    };
    let model = LlamaModelHandle::load(&path, options)?;
    let long_prompt = prompt_of_length(&model, args.prompt_tokens)?;

    // Prefill: one prompt of N tokens and a single sampled token.
    let prefill = measure(args.repetitions, || generate(&model, &long_prompt, 1))?;
    // Decode: the difference between generating N + 1 tokens and 1 token from a 1-word prompt
    // is exactly N single-token decode steps.
    let decode = measure(args.repetitions, || {
        let full = generate(&model, "Once", args.gen_tokens + 1)?;
        let first = generate(&model, "Once", 1)?;
        Ok(full - first)
    })?;

    let pp = Rate::from_seconds(args.prompt_tokens, &prefill);
    let tg = Rate::from_seconds(args.gen_tokens, &decode);
    if args.json {
        println!(
            "{}",
            json!({
                "model": args.model,
                "threads": args.threads,
                "prompt_tokens": args.prompt_tokens,
                "gen_tokens": args.gen_tokens,
                "prefill_tokens_per_second": {"mean": pp.mean, "stdev": pp.stdev},
                "decode_tokens_per_second": {"mean": tg.mean, "stdev": tg.stdev},
            })
        );
    } else {
        println!("| model | threads | test | t/s |");
        println!("| --- | --- | --- | --- |");
        for (test, rate) in [
            (format!("pp{}", args.prompt_tokens), pp),
            (format!("tg{}", args.gen_tokens), tg),
        ] {
            println!(
                "| {} | {} | {test} | {:.2} ± {:.2} |",
                args.model, args.threads, rate.mean, rate.stdev
            );
        }
    }
    Ok(())
}

/// Builds a raw prompt of exactly `tokens` tokens (counting BOS) from a repeated word.
fn prompt_of_length(model: &LlamaModelHandle, tokens: u32) -> anyhow::Result<String> {
    let mut words = tokens as usize;
    for _ in 0..8 {
        let prompt = " hello".repeat(words);
        let count = model.count_tokens(&prompt);
        if count == tokens {
            return Ok(prompt);
        }
        words = (words as i64 + tokens as i64 - count as i64).max(1) as usize;
    }
    bail!("could not build a prompt of exactly {tokens} tokens")
}

/// Generates `max_tokens` tokens (ignoring end-of-generation) and returns the seconds it took.
fn generate(model: &LlamaModelHandle, prompt: &str, max_tokens: u32) -> anyhow::Result<f64> {
    let (sender, mut events) = tokio::sync::mpsc::unbounded_channel();
    let started = Instant::now();
    model.submit(GenerateRequest {
        prompt: prompt.to_string(),
        max_tokens,
        sampling: SamplingParams {
            temperature: 0.0,
            top_p: None,
            top_k: None,
            seed: 1,
            repetition_penalty: None,
            frequency_penalty: None,
            presence_penalty: None,
        },
        ignore_eos: true,
        stop: Vec::new(),
        grammar: None,
        // Every repetition sends the same prompt, which would otherwise come from the cache.
        reuse_prefix: false,
        events: sender,
    })?;
    while let Some(event) = events.blocking_recv() {
        match event {
            GenerateEvent::Finished {
                completion_tokens, ..
            } => {
                if completion_tokens != max_tokens {
                    bail!("generated {completion_tokens} tokens instead of {max_tokens}");
                }
                return Ok(started.elapsed().as_secs_f64());
            }
            GenerateEvent::Failed(error) => return Err(error.into()),
            GenerateEvent::Started { .. } | GenerateEvent::Text(_) => {}
        }
    }
    bail!("the model thread stopped before finishing")
}

/// Runs `sample` once to warm up, then `repetitions` times, and returns the timed seconds.
fn measure(
    repetitions: u32,
    mut sample: impl FnMut() -> anyhow::Result<f64>,
) -> anyhow::Result<Vec<f64>> {
    sample()?;
    (0..repetitions.max(1)).map(|_| sample()).collect()
}

struct Rate {
    mean: f64,
    stdev: f64,
}

impl Rate {
    /// Tokens per second of each run, then their mean and sample standard deviation.
    fn from_seconds(tokens: u32, seconds: &[f64]) -> Rate {
        let rates: Vec<f64> = seconds.iter().map(|s| f64::from(tokens) / s).collect();
        let mean = rates.iter().sum::<f64>() / rates.len() as f64;
        let variance = if rates.len() > 1 {
            rates.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (rates.len() - 1) as f64
        } else {
            0.0
        };
        Rate {
            mean,
            stdev: variance.sqrt(),
        }
    }
}
