//! The generation thread of one model: continuous batching over a fixed set of sequence slots.
//!
//! Each loop step first admits queued requests into free slots. It then builds one llama.cpp
//! batch from the next token of every decoding sequence plus a chunk of pending prompt tokens,
//! decodes it, and samples one token for each sequence whose logits were computed. A request
//! therefore joins between two decode steps as soon as a slot is free, instead of waiting for
//! the running requests to finish.

use std::sync::mpsc::{Receiver, Sender, TryRecvError};

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::mpsc::UnboundedSender;

use crate::stop::{StopMatcher, StopOutcome};
use crate::utf8::Utf8Buffer;
use crate::{
    context_size, tokenize, EngineError, EngineOptions, FinishReason, GenerateEvent,
    GenerateRequest, SamplingParams,
};

/// Tokens of recent history that the repetition, frequency and presence penalties look at.
const PENALTY_WINDOW_TOKENS: i32 = 64;

struct Sequence {
    slot: i32,
    events: UnboundedSender<GenerateEvent>,
    prompt: Vec<LlamaToken>,
    /// Prompt tokens already decoded into the KV cache.
    prefilled: usize,
    /// Position of the next token to decode.
    position: i32,
    /// The sampled token that the next step decodes.
    next_token: Option<LlamaToken>,
    generated: u32,
    max_tokens: u32,
    ignore_eos: bool,
    sampler: LlamaSampler,
    text: Utf8Buffer,
    stop: StopMatcher,
    /// Index of this sequence's logits in the batch just decoded.
    logits_index: Option<i32>,
}

impl Sequence {
    fn send(&self, event: GenerateEvent) -> bool {
        self.events.send(event).is_ok()
    }
}

/// Runs until the request queue is closed and every admitted request has finished. `ready`
/// receives the outcome of creating the llama.cpp context.
pub(crate) fn run(
    backend: &LlamaBackend,
    model: &LlamaModel,
    options: &EngineOptions,
    requests: Receiver<GenerateRequest>,
    ready: Sender<Result<(), String>>,
) {
    let threads = options.threads.max(1) as i32;
    let parallel = options.parallel_sequences.max(1);
    let params = LlamaContextParams::default()
        .with_n_ctx(context_size(options))
        .with_n_batch(options.batch_tokens)
        .with_n_ubatch(options.batch_tokens)
        .with_n_seq_max(parallel)
        .with_n_threads(threads)
        .with_n_threads_batch(threads);
    let mut context = match model.new_context(backend, params) {
        Ok(context) => context,
        Err(err) => {
            let _ = ready.send(Err(format!(
                "failed to create the llama.cpp context: {err}"
            )));
            return;
        }
    };
    let _ = ready.send(Ok(()));

    let mut slots: Vec<Option<Sequence>> = (0..parallel).map(|_| None).collect();
    let mut batch = LlamaBatch::new(options.batch_tokens as usize, parallel as i32);
    loop {
        if !admit(&requests, &mut slots, model, options) {
            tracing::debug!("llama model thread stopping: queue closed");
            return;
        }
        drop_cancelled(&mut context, &mut slots);
        if slots.iter().all(Option::is_none) {
            continue;
        }
        step(&mut context, &mut batch, &mut slots, model, options);
    }
}

/// Moves queued requests into free slots. Blocks while nothing is running. Returns false when
/// the queue is closed and no sequence is left.
fn admit(
    requests: &Receiver<GenerateRequest>,
    slots: &mut [Option<Sequence>],
    model: &LlamaModel,
    options: &EngineOptions,
) -> bool {
    let mut idle = slots.iter().all(Option::is_none);
    while let Some(free) = slots.iter().position(Option::is_none) {
        let request = if idle {
            match requests.recv() {
                Ok(request) => request,
                Err(_) => return false,
            }
        } else {
            match requests.try_recv() {
                Ok(request) => request,
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return slots.iter().any(Option::is_some),
            }
        };
        if let Some(sequence) = start_sequence(free as i32, request, model, options) {
            slots[free] = Some(sequence);
            idle = false;
        }
    }
    true
}

/// Tokenizes and checks a request. Returns `None` when it was rejected or already cancelled.
fn start_sequence(
    slot: i32,
    request: GenerateRequest,
    model: &LlamaModel,
    options: &EngineOptions,
) -> Option<Sequence> {
    if request.events.is_closed() {
        return None;
    }
    let prompt = tokenize(model, &request.prompt);
    let prompt_tokens = prompt.len() as u32;
    let rejection = if prompt.is_empty() {
        Some(EngineError::EmptyPrompt)
    } else if prompt_tokens >= options.context_tokens {
        // At least one position must stay free for the first generated token.
        Some(EngineError::PromptTooLong {
            prompt_tokens,
            context_tokens: options.context_tokens,
        })
    } else {
        None
    };
    if let Some(error) = rejection {
        let _ = request.events.send(GenerateEvent::Failed(error));
        return None;
    }

    let sampler = match build_sampler(model, &request.sampling, request.grammar.as_deref()) {
        Ok(sampler) => sampler,
        Err(error) => {
            let _ = request.events.send(GenerateEvent::Failed(error));
            return None;
        }
    };
    let _ = request
        .events
        .send(GenerateEvent::Started { prompt_tokens });
    Some(Sequence {
        slot,
        events: request.events,
        prompt,
        prefilled: 0,
        position: 0,
        next_token: None,
        generated: 0,
        max_tokens: request.max_tokens.max(1),
        ignore_eos: request.ignore_eos,
        sampler,
        text: Utf8Buffer::default(),
        stop: StopMatcher::new(request.stop),
        logits_index: None,
    })
}

fn build_sampler(
    model: &LlamaModel,
    params: &SamplingParams,
    grammar: Option<&str>,
) -> Result<LlamaSampler, EngineError> {
    let mut chain = Vec::new();
    if let Some(grammar) = grammar {
        let sampler = LlamaSampler::grammar(model, grammar, "root")
            .map_err(|err| EngineError::Grammar(err.to_string()))?;
        chain.push(sampler);
    }
    let repeat = params.repetition_penalty.unwrap_or(1.0);
    let frequency = params.frequency_penalty.unwrap_or(0.0);
    let presence = params.presence_penalty.unwrap_or(0.0);
    if repeat != 1.0 || frequency != 0.0 || presence != 0.0 {
        chain.push(LlamaSampler::penalties(
            model.n_vocab(),
            PENALTY_WINDOW_TOKENS,
            // llama.cpp divides positive logits by this value, so 0 would be a division by zero.
            repeat.max(f32::EPSILON),
            frequency,
            presence,
        ));
    }
    if params.temperature <= 0.0 {
        chain.push(LlamaSampler::greedy());
    } else {
        if let Some(top_k) = params.top_k {
            chain.push(LlamaSampler::top_k(top_k as i32));
        }
        if let Some(top_p) = params.top_p {
            chain.push(LlamaSampler::top_p(top_p, 1));
        }
        chain.push(LlamaSampler::temp(params.temperature));
        chain.push(LlamaSampler::dist(params.seed));
    }
    Ok(LlamaSampler::chain_simple(chain))
}

/// Frees the slots of requests whose receiver is gone (the client disconnected).
fn drop_cancelled(context: &mut LlamaContext<'_>, slots: &mut [Option<Sequence>]) {
    for slot in slots.iter_mut() {
        if slot
            .as_ref()
            .is_some_and(|sequence| sequence.events.is_closed())
        {
            if let Some(sequence) = slot.take() {
                tracing::info!(
                    slot = sequence.slot,
                    completion_tokens = sequence.generated,
                    max_tokens = sequence.max_tokens,
                    "generation cancelled: the caller went away"
                );
                free_kv_cache(context, sequence.slot);
            }
        }
    }
}

fn free_kv_cache(context: &mut LlamaContext<'_>, slot: i32) {
    if let Err(err) = context.clear_kv_cache_seq(Some(slot as u32), None, None) {
        tracing::error!(slot, error = %err, "failed to clear a sequence's KV cache");
    }
}

/// Decodes one batch and samples the next token of every sequence that has logits in it.
fn step(
    context: &mut LlamaContext<'_>,
    batch: &mut LlamaBatch,
    slots: &mut [Option<Sequence>],
    model: &LlamaModel,
    options: &EngineOptions,
) {
    if let Err(err) = fill_batch(batch, slots, options.batch_tokens as usize) {
        fail_all(context, slots, EngineError::Decode(err));
        return;
    }
    if let Err(err) = context.decode(batch) {
        tracing::error!(error = %err, "llama.cpp decode failed; failing the batch's requests");
        fail_all(context, slots, EngineError::Decode(err.to_string()));
        return;
    }

    for slot in slots.iter_mut() {
        let Some(sequence) = slot.as_mut() else {
            continue;
        };
        let Some(index) = sequence.logits_index.take() else {
            continue;
        };
        let token = sequence.sampler.sample(context, index);
        if let Some(reason) = advance(sequence, token, model, options) {
            if let Some(sequence) = slot.take() {
                finish(context, sequence, reason);
            }
        }
    }
}

/// Adds the next token of each decoding sequence, then prompt chunks up to `capacity` tokens.
fn fill_batch(
    batch: &mut LlamaBatch,
    slots: &mut [Option<Sequence>],
    capacity: usize,
) -> Result<(), String> {
    batch.clear();
    let mut used = 0usize;
    for sequence in slots.iter_mut().flatten() {
        if let Some(token) = sequence.next_token.take() {
            batch
                .add(token, sequence.position, &[sequence.slot], true)
                .map_err(|err| err.to_string())?;
            sequence.logits_index = Some(used as i32);
            sequence.position += 1;
            used += 1;
        }
    }
    for sequence in slots.iter_mut().flatten() {
        let remaining = sequence.prompt.len() - sequence.prefilled;
        if remaining == 0 || used >= capacity {
            continue;
        }
        let chunk = remaining.min(capacity - used);
        for offset in 0..chunk {
            let index = sequence.prefilled + offset;
            let last = index + 1 == sequence.prompt.len();
            batch
                .add(
                    sequence.prompt[index],
                    sequence.position,
                    &[sequence.slot],
                    last,
                )
                .map_err(|err| err.to_string())?;
            if last {
                sequence.logits_index = Some(used as i32);
            }
            sequence.position += 1;
            used += 1;
        }
        sequence.prefilled += chunk;
    }
    Ok(())
}

/// Records a sampled token and streams its text. Returns why the sequence ends, if it does.
fn advance(
    sequence: &mut Sequence,
    token: LlamaToken,
    model: &LlamaModel,
    options: &EngineOptions,
) -> Option<FinishReason> {
    if !sequence.ignore_eos && model.vocab().is_eog(token) {
        return Some(FinishReason::Stop);
    }
    sequence.generated += 1;
    let piece = model.vocab().token_to_piece(token, false, None);
    let (text, stopped) = match sequence.stop.push(&sequence.text.push(&piece)) {
        StopOutcome::Continue(text) => (text, false),
        StopOutcome::Stopped(text) => (text, true),
    };
    if !text.is_empty() && !sequence.send(GenerateEvent::Text(text)) {
        // The receiver is gone; the next step's cancellation check frees the slot.
        sequence.next_token = None;
        return None;
    }
    if stopped {
        return Some(FinishReason::Stop);
    }
    if sequence.generated >= sequence.max_tokens
        || sequence.position as u32 >= options.context_tokens
    {
        return Some(FinishReason::Length);
    }
    sequence.next_token = Some(token);
    None
}

fn finish(context: &mut LlamaContext<'_>, mut sequence: Sequence, reason: FinishReason) {
    let rest = match sequence.stop.push(&sequence.text.finish()) {
        StopOutcome::Continue(text) => text + &sequence.stop.finish(),
        StopOutcome::Stopped(text) => text,
    };
    if !rest.is_empty() {
        sequence.send(GenerateEvent::Text(rest));
    }
    sequence.send(GenerateEvent::Finished {
        prompt_tokens: sequence.prompt.len() as u32,
        completion_tokens: sequence.generated,
        reason,
    });
    free_kv_cache(context, sequence.slot);
}

fn fail_all(context: &mut LlamaContext<'_>, slots: &mut [Option<Sequence>], error: EngineError) {
    for slot in slots.iter_mut() {
        if let Some(sequence) = slot.take() {
            sequence.send(GenerateEvent::Failed(error.clone()));
            free_kv_cache(context, sequence.slot);
        }
    }
}
