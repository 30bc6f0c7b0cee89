//! The generation thread of one model: continuous batching over a fixed set of sequence slots.
//!
//! Each loop step first admits queued requests into free slots. It then builds one llama.cpp
//! batch from the next token of every decoding sequence plus a chunk of pending prompt tokens,
//! decodes it, and samples one token for each sequence whose logits were computed. A request
//! therefore joins between two decode steps as soon as a slot is free, instead of waiting for
//! the running requests to finish.
//!
//! A finished sequence leaves its KV cache in its slot. A new request takes the free slot whose
//! cached prompt tokens share the longest prefix with its prompt, truncates that slot's cache
//! after the shared prefix and prefills only the rest. Requests with the same system prompt thus
//! skip most of the prefill. Each slot is its own llama.cpp sequence and KV stream (`kv_unified`
//! is off by default), so a retained cache never takes cells from another slot.
//!
//! Reuse must not change the text that a seed gives. The CPU kernels of the vendored llama.cpp
//! (llama-cpp-sys-2 0.1.161) round differently when a sequence has one token in a ubatch than
//! when it has several: the attention matrix products go through llamafile's tinyBLAS only for
//! two or more tokens. A full prefill decodes every prompt token with several tokens per ubatch,
//! so only tokens decoded that way are offered for reuse, and at least the last two prompt
//! tokens are always decoded again. Generated tokens, decoded one per step, are not reused.

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

/// Prompt tokens decoded again after a reused prefix: the last one for its logits, and enough
/// with it that the ubatch has more than one token of the sequence (see the module docs).
const MIN_DECODED_PROMPT_TOKENS: usize = 2;

/// llama.cpp's `LLAMA_FLASH_ATTN_TYPE_DISABLED`. In the vendored llama.cpp (llama-cpp-sys-2
/// 0.1.161), the CPU flash attention kernel runs a tiled variant for 64 or more query tokens of
/// a sequence in one ubatch and a per-row variant below that, and the two round differently. A
/// prompt whose prefix came from the cache would then get other logits than the same prompt
/// prefilled at once, and the same seed would give other text. Plain attention gives the same
/// text both ways (checked by the `shared_system_prompt_reuses_cache` end-to-end test) as long
/// as the reused tokens follow the rules in the module docs.
const FLASH_ATTENTION_DISABLED: i32 = 0;

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
    /// Leading prompt tokens in this sequence's KV cache that a later prompt may reuse: the
    /// reused prefix, extended by each prompt chunk of two or more tokens that follows it.
    reusable: Vec<LlamaToken>,
}

/// The KV cache of a free slot, kept until a new sequence takes the slot.
#[derive(Debug, Default)]
struct RetainedCache {
    /// Leading tokens of the cache that a new prompt may reuse. The cache may hold more
    /// positions after them (generated tokens), which a new sequence removes.
    tokens: Vec<LlamaToken>,
}

/// The sequence slots of one context: the running sequence of each, and what each free slot
/// still has in its KV cache.
struct Slots {
    sequences: Vec<Option<Sequence>>,
    retained: Vec<RetainedCache>,
}

impl Slots {
    fn new(count: usize) -> Self {
        Self {
            sequences: (0..count).map(|_| None).collect(),
            retained: (0..count).map(|_| RetainedCache::default()).collect(),
        }
    }

    fn is_idle(&self) -> bool {
        self.sequences.iter().all(Option::is_none)
    }

    fn has_free(&self) -> bool {
        self.sequences.iter().any(Option::is_none)
    }

    /// Keeps the KV cache of a sequence that ended, so a later prompt can reuse its prefix.
    fn retain(&mut self, sequence: Sequence) {
        self.retained[sequence.slot as usize] = RetainedCache {
            tokens: sequence.reusable,
        };
    }

    /// Frees a slot's KV cache and clears its list of reusable tokens.
    fn discard(&mut self, context: &mut LlamaContext<'_>, slot: i32) {
        free_kv_cache(context, slot);
        self.retained[slot as usize] = RetainedCache::default();
    }

    /// Takes the free slot that shares the longest prefix with `prompt` and truncates its KV
    /// cache after that prefix. Returns the slot and the number of prompt tokens left in its
    /// cache, at most `prompt.len() - MIN_DECODED_PROMPT_TOKENS`. An empty `prompt` takes the
    /// lowest free slot and clears its cache.
    fn claim(&mut self, context: &mut LlamaContext<'_>, prompt: &[LlamaToken]) -> (i32, usize) {
        let free = self
            .sequences
            .iter()
            .zip(&self.retained)
            .enumerate()
            .filter(|(_, (sequence, _))| sequence.is_none())
            .map(|(slot, (_, retained))| (slot, retained.tokens.as_slice()));
        let (slot, reused) = choose_slot(free, prompt).expect("admit only runs with a free slot");
        self.retained[slot] = RetainedCache::default();
        let slot = slot as i32;
        // A sliding-window cache may already have dropped early positions (pos_min > 0), and
        // a recurrent model's state cannot be cut at a position (seq_rm returns false). Both
        // fall back to a full prefill.
        let truncated = reused > 0
            && context.kv_cache_seq_pos_min(slot) == 0
            && context
                .clear_kv_cache_seq(Some(slot as u32), Some(reused as u32), None)
                .unwrap_or(false);
        if truncated {
            (slot, reused)
        } else {
            free_kv_cache(context, slot);
            (slot, 0)
        }
    }
}

/// Picks among free slots, given as (slot, reusable tokens), the one whose tokens share the
/// longest prefix with `prompt`. Returns the slot and the prefix length to reuse, at most
/// `prompt.len() - MIN_DECODED_PROMPT_TOKENS`.
///
/// Ties go to the lowest slot. This keeps running sequences on adjacent sequence ids, which
/// matters because llama.cpp puts only consecutive sequence ids into one ubatch when every
/// sequence has its own KV stream: sequences 0, 1 and 3 take two forward passes per step.
fn choose_slot<'a, T: PartialEq + 'a>(
    free: impl Iterator<Item = (usize, &'a [T])>,
    prompt: &[T],
) -> Option<(usize, usize)> {
    let limit = prompt.len().saturating_sub(MIN_DECODED_PROMPT_TOKENS);
    free.map(|(slot, cached)| (slot, common_prefix_len(cached, prompt).min(limit)))
        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
}

fn common_prefix_len<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
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
        .with_n_threads_batch(threads)
        .with_flash_attention_policy(FLASH_ATTENTION_DISABLED);
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

    let mut slots = Slots::new(parallel as usize);
    let mut batch = LlamaBatch::new(options.batch_tokens as usize, parallel as i32);
    loop {
        if !admit(&requests, &mut slots, &mut context, model, options) {
            tracing::debug!("llama model thread stopping: queue closed");
            return;
        }
        drop_cancelled(&mut slots);
        if slots.is_idle() {
            continue;
        }
        step(&mut context, &mut batch, &mut slots, model, options);
    }
}

/// Moves queued requests into free slots. Blocks while nothing is running. Returns false when
/// the queue is closed and no sequence is left.
fn admit(
    requests: &Receiver<GenerateRequest>,
    slots: &mut Slots,
    context: &mut LlamaContext<'_>,
    model: &LlamaModel,
    options: &EngineOptions,
) -> bool {
    let mut idle = slots.is_idle();
    while slots.has_free() {
        let request = if idle {
            match requests.recv() {
                Ok(request) => request,
                Err(_) => return false,
            }
        } else {
            match requests.try_recv() {
                Ok(request) => request,
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return !slots.is_idle(),
            }
        };
        if let Some(sequence) = start_sequence(request, slots, context, model, options) {
            let slot = sequence.slot as usize;
            slots.sequences[slot] = Some(sequence);
            idle = false;
        }
    }
    true
}

/// Tokenizes and checks a request, then claims a free slot for it. Returns `None` when it was
/// rejected or already cancelled.
fn start_sequence(
    request: GenerateRequest,
    slots: &mut Slots,
    context: &mut LlamaContext<'_>,
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
    let shareable = if request.reuse_prefix {
        &prompt[..]
    } else {
        &[]
    };
    let (slot, reused) = slots.claim(context, shareable);
    tracing::debug!(
        slot,
        prompt_tokens,
        cached_tokens = reused,
        "sequence started"
    );
    let _ = request.events.send(GenerateEvent::Started {
        prompt_tokens,
        cached_tokens: reused as u32,
    });
    Some(Sequence {
        slot,
        events: request.events,
        reusable: prompt[..reused].to_vec(),
        prompt,
        prefilled: reused,
        position: reused as i32,
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

/// Frees the slots of requests whose receiver is gone (the client disconnected). Their KV
/// cache stays for prefix reuse, since every token in it was decoded.
fn drop_cancelled(slots: &mut Slots) {
    for index in 0..slots.sequences.len() {
        let cancelled = slots.sequences[index]
            .as_ref()
            .is_some_and(|sequence| sequence.events.is_closed());
        if !cancelled {
            continue;
        }
        if let Some(sequence) = slots.sequences[index].take() {
            tracing::info!(
                slot = sequence.slot,
                completion_tokens = sequence.generated,
                max_tokens = sequence.max_tokens,
                "generation cancelled: the caller went away"
            );
            slots.retain(sequence);
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
    slots: &mut Slots,
    model: &LlamaModel,
    options: &EngineOptions,
) {
    if let Err(err) = fill_batch(batch, &mut slots.sequences, options.batch_tokens as usize) {
        fail_all(context, slots, EngineError::Decode(err));
        return;
    }
    if let Err(err) = context.decode(batch) {
        tracing::error!(error = %err, "llama.cpp decode failed; failing the batch's requests");
        fail_all(context, slots, EngineError::Decode(err.to_string()));
        return;
    }

    for index in 0..slots.sequences.len() {
        let Some(sequence) = slots.sequences[index].as_mut() else {
            continue;
        };
        let Some(logits) = sequence.logits_index.take() else {
            continue;
        };
        let token = sequence.sampler.sample(context, logits);
        if let Some(reason) = advance(sequence, token, model, options) {
            if let Some(sequence) = slots.sequences[index].take() {
                let sequence = finish(sequence, reason);
                slots.retain(sequence);
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
        // NOTE: with other sequences in the batch, llama.cpp splits it into ubatches with equal
        // token counts per sequence, so the chunk's first token may sit alone in its ubatch and
        // round differently from a full prefill. Reuse is exact only when requests run one at
        // a time.
        let start = sequence.prefilled;
        if chunk >= MIN_DECODED_PROMPT_TOKENS && sequence.reusable.len() == start {
            sequence
                .reusable
                .extend_from_slice(&sequence.prompt[start..start + chunk]);
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

/// Sends the rest of the text and `Finished`. Returns the sequence, whose KV cache stays.
fn finish(mut sequence: Sequence, reason: FinishReason) -> Sequence {
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
    sequence
}

/// Fails every running sequence and frees its KV cache, because a failed decode may leave part
/// of the batch in the cache. Free slots keep their caches, because they had no tokens in the
/// batch.
fn fail_all(context: &mut LlamaContext<'_>, slots: &mut Slots, error: EngineError) {
    for slot in 0..slots.sequences.len() {
        if let Some(sequence) = slots.sequences[slot].take() {
            sequence.send(GenerateEvent::Failed(error.clone()));
            slots.discard(context, sequence.slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::choose_slot;

    #[test]
    fn choose_slot_takes_longest_prefix() {
        let prompt = [1, 2, 3, 4, 5, 6];
        let system_only = [1, 2, 3, 9, 9, 9];
        let other = [1, 7];
        let free = [(0, &other[..]), (2, &system_only[..]), (3, &[][..])];
        assert_eq!(choose_slot(free.into_iter(), &prompt), Some((2, 3)));
    }

    #[test]
    fn choose_slot_keeps_last_two_prompt_tokens() {
        let prompt = [1, 2, 3, 4];
        let longer = [1, 2, 3, 4, 5];
        let same = [1, 2, 3, 4];
        let one_short = [1, 2, 3];
        for cached in [&longer[..], &same[..], &one_short[..]] {
            let free = [(1, cached)];
            assert_eq!(choose_slot(free.into_iter(), &prompt), Some((1, 2)));
        }
    }

    #[test]
    fn choose_slot_ties_go_to_lowest_slot() {
        let prompt = [5, 6, 7];
        let a = [1, 2];
        let b = [3];
        let free = [(1, &a[..]), (2, &b[..]), (3, &[][..])];
        assert_eq!(choose_slot(free.into_iter(), &prompt), Some((1, 0)));
        let shared = [5, 6, 9];
        let free = [(0, &a[..]), (2, &shared[..]), (3, &shared[..])];
        assert_eq!(choose_slot(free.into_iter(), &prompt), Some((2, 1)));
    }

    #[test]
    fn choose_slot_without_free_slot() {
        let free: [(usize, &[i32]); 0] = [];
        assert_eq!(choose_slot(free.into_iter(), &[1, 2]), None);
    }

    #[test]
    fn choose_slot_short_prompt_reuses_nothing() {
        let cached = [1, 2, 3];
        for prompt in [&[1][..], &[1, 2][..], &[][..]] {
            let free = [(0, &cached[..])];
            assert_eq!(choose_slot(free.into_iter(), prompt), Some((0, 0)));
        }
    }
}
