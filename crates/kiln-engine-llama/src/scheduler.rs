//! The generation thread of one model: continuous batching over a fixed set of sequence slots.
//!
//! Each loop step first admits queued requests into free slots. It then decodes the next token
//! of every decoding sequence in one llama.cpp batch, samples them, and prefills pending prompt
//! chunks in further batches. A request therefore joins between two decode steps as soon as a
//! slot is free, instead of waiting for the running requests to finish.
//!
//! A finished sequence leaves its KV cache in its slot. A new request takes the free slot whose
//! cached prompt tokens share the longest prefix with its prompt, truncates that slot's cache
//! after the shared prefix and prefills only the rest. Requests with the same system prompt thus
//! skip most of the prefill. Each slot is its own llama.cpp sequence and KV stream (`kv_unified`
//! is off by default), so a retained cache never takes cells from another slot.
//!
//! Neither batching nor reuse may change the text that a seed gives. The CPU kernels of the
//! vendored llama.cpp (llama-cpp-sys-2 0.1.161) round differently by how many tokens of a
//! sequence one ubatch contains (see [`Kernel`]), and flash attention also by whether other
//! sequences are in it. So the scheduler keeps both the same as for a prompt decoded alone:
//! - a prompt is prefilled in chunks of `batch_tokens` from its start, or from a reused prefix
//!   that ends on such a boundary. Each chunk goes into a batch of chunks of the same length, so
//!   llama.cpp never splits a chunk across ubatches;
//! - a reused prefix counts only tokens decoded with the kernel that a full prefill of the new
//!   prompt would use. It stops early enough that the rest is decoded with the kernel of a full
//!   prefill's last chunk ([`reusable_prefix`]);
//! - a sequence that would be alone in its ubatch past position 256 gets a throwaway companion
//!   token in a neighbouring slot ([`add_companions`]), so flash attention takes the per-row
//!   kernel, as it does beside other sequences, instead of its split-KV kernel.

use std::collections::BTreeMap;
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

/// llama.cpp's flash attention policies (`LLAMA_FLASH_ATTN_TYPE_*`): `auto` turns it on where
/// the backend supports the model's attention.
const FLASH_ATTENTION_AUTO: i32 = -1;
const FLASH_ATTENTION_DISABLED: i32 = 0;

/// Query rows of one sequence in a ubatch from which the CPU flash attention kernel takes its
/// tiled variant (`GGML_FA_TILE_Q` in the vendored ggml).
const FLASH_ATTENTION_TILE_ROWS: usize = 64;

/// Kernel variant of llama.cpp's CPU backend for the tokens of one sequence in a ubatch, which
/// depends on how many there are. The variants round differently, so a token's KV cache entries
/// depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    /// One token: the single-row paths, and flash attention's per-row or split-KV variant
    /// depending on the other sequences in the ubatch. Never reused.
    Single,
    /// 2 to 63 tokens: llamafile's tinyBLAS products and per-row flash attention.
    Rows,
    /// 64 or more tokens: tinyBLAS and tiled flash attention. Each row's result does not
    /// depend on the other rows of its tile.
    Tiled,
}

impl Kernel {
    fn for_chunk(tokens: usize) -> Self {
        match tokens {
            0 | 1 => Kernel::Single,
            n if n < FLASH_ATTENTION_TILE_ROWS => Kernel::Rows,
            _ => Kernel::Tiled,
        }
    }

    /// Returns the minimum number of tokens in a chunk decoded with this kernel.
    fn min_tokens(self) -> usize {
        match self {
            Kernel::Single => 1,
            Kernel::Rows => 2,
            Kernel::Tiled => FLASH_ATTENTION_TILE_ROWS,
        }
    }
}

/// A prompt token in a slot's KV cache and the kernel that decoded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CachedToken {
    token: LlamaToken,
    kernel: Kernel,
}

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
    reusable: Vec<CachedToken>,
}

/// The KV cache of a free slot, kept until a new sequence takes the slot.
#[derive(Debug, Default)]
struct RetainedCache {
    /// Leading tokens of the cache that a new prompt may reuse. The cache may hold more
    /// positions after them (generated tokens), which a new sequence removes.
    tokens: Vec<CachedToken>,
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

    /// Takes the free slot that shares the longest reusable prefix with `prompt` (see
    /// [`reusable_prefix`]) and truncates its KV cache after that prefix. Returns the slot and
    /// the prompt tokens left in its cache. An empty `prompt` reuses nothing and takes the free
    /// slot with the fewest cached tokens (see [`choose_slot`]).
    fn claim(
        &mut self,
        context: &mut LlamaContext<'_>,
        prompt: &[LlamaToken],
        batch_tokens: usize,
    ) -> (i32, Vec<CachedToken>) {
        let free = self
            .sequences
            .iter()
            .zip(&self.retained)
            .enumerate()
            .filter(|(_, (sequence, _))| sequence.is_none())
            .map(|(slot, (_, retained))| (slot, retained.tokens.as_slice()));
        let (slot, reused) =
            choose_slot(free, prompt, batch_tokens).expect("admit only runs with a free slot");
        let mut kept = std::mem::take(&mut self.retained[slot].tokens);
        kept.truncate(reused);
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
            (slot, kept)
        } else {
            free_kv_cache(context, slot);
            (slot, Vec::new())
        }
    }
}

/// Picks among free slots, given as (slot, cached tokens), the one with the longest
/// [`reusable_prefix`] for `prompt`. Returns the slot and that prefix's length.
///
/// Ties go to the slot with the fewest cached tokens, so a prompt that reuses nothing does not
/// wipe out another conversation's cache while empty slots are free. Remaining ties go to the
/// lowest slot. This keeps running sequences on adjacent sequence ids, which matters because
/// llama.cpp puts only consecutive sequence ids into one ubatch when every sequence has its own
/// KV stream: sequences 0, 1 and 3 take two forward passes per step.
fn choose_slot<'a>(
    free: impl Iterator<Item = (usize, &'a [CachedToken])>,
    prompt: &[LlamaToken],
    batch_tokens: usize,
) -> Option<(usize, usize)> {
    free.map(|(slot, cached)| {
        let reused = reusable_prefix(cached, prompt, batch_tokens);
        (
            reused,
            std::cmp::Reverse(cached.len()),
            std::cmp::Reverse(slot),
        )
    })
    .max()
    .map(|(reused, _, std::cmp::Reverse(slot))| (slot, reused))
}

/// Returns how many leading tokens of `prompt` can come from `cached` so that the prompt's KV
/// cache and logits come out exactly as in a full prefill in chunks of `batch_tokens`.
///
/// Each reused token must have been decoded with the kernel that the full prefill would use
/// at its position. The rest of the prompt is then prefilled in chunks from the end of the
/// reused prefix. So the prefix ends on a chunk boundary of the full prefill, or inside its last
/// chunk early enough that the rest is one chunk with that chunk's kernel. At least one token is
/// always decoded, for the logits.
fn reusable_prefix(cached: &[CachedToken], prompt: &[LlamaToken], batch_tokens: usize) -> usize {
    let batch_tokens = batch_tokens.max(1);
    let Some(last_start) = prompt
        .len()
        .checked_sub(1)
        .map(|last| last / batch_tokens * batch_tokens)
    else {
        return 0;
    };
    let full_prefill_kernel = |position: usize| {
        let start = position / batch_tokens * batch_tokens;
        Kernel::for_chunk((start + batch_tokens).min(prompt.len()) - start)
    };
    let matching = cached
        .iter()
        .zip(prompt)
        .enumerate()
        .take_while(|(position, (cached, token))| {
            cached.token == **token && cached.kernel == full_prefill_kernel(*position)
        })
        .count();
    if matching >= last_start {
        let last_kernel = Kernel::for_chunk(prompt.len() - last_start);
        matching.min(prompt.len() - last_kernel.min_tokens())
    } else {
        matching / batch_tokens * batch_tokens
    }
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
    // A batch contains prompt chunks of up to `batch_tokens` in all, or one token per sequence.
    let batch_capacity = options.batch_tokens.max(parallel);
    let flash_attention = if options.flash_attention {
        FLASH_ATTENTION_AUTO
    } else {
        FLASH_ATTENTION_DISABLED
    };
    let params = LlamaContextParams::default()
        .with_n_ctx(context_size(options))
        .with_n_batch(batch_capacity)
        .with_n_ubatch(options.batch_tokens)
        .with_n_seq_max(parallel)
        .with_n_threads(threads)
        .with_n_threads_batch(threads)
        .with_flash_attention_policy(flash_attention);
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
    let mut batch = LlamaBatch::new(batch_capacity as usize, parallel as i32);
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
    let (slot, reusable) = slots.claim(context, shareable, options.batch_tokens as usize);
    let reused = reusable.len();
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
        reusable,
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

/// Runs one step: the planned batches (see [`plan_step`]) one after another, each decoded and
/// then sampled for every sequence that has logits in it.
fn step(
    context: &mut LlamaContext<'_>,
    batch: &mut LlamaBatch,
    slots: &mut Slots,
    model: &LlamaModel,
    options: &EngineOptions,
) {
    for work in plan_step(&slots.sequences, options.batch_tokens as usize) {
        if let Err(err) = fill_batch(batch, &mut slots.sequences, &work) {
            fail_all(context, slots, EngineError::Decode(err));
            return;
        }
        let companions = if options.flash_attention {
            add_companions(context, batch, slots, &work, options.context_tokens)
        } else {
            Vec::new()
        };
        let decoded = context.decode(batch);
        for (slot, position) in companions {
            let removed =
                context.clear_kv_cache_seq(Some(slot as u32), Some(position as u32), None);
            if !matches!(removed, Ok(true)) {
                tracing::error!(
                    slot,
                    position,
                    ?removed,
                    "failed to remove a companion token"
                );
                // A free slot can drop its cache. A prefilling sequence keeps it, and its next
                // chunk then fails to decode, which fails the running requests.
                if slots.sequences[slot as usize].is_none() {
                    slots.discard(context, slot);
                }
            }
        }
        if let Err(err) = decoded {
            tracing::error!(error = %err, "llama.cpp decode failed; failing the batch's requests");
            fail_all(context, slots, EngineError::Decode(err.to_string()));
            return;
        }
        sample(context, slots, model, options);
    }
}

/// Position from which one token alone in a ubatch goes through the split-KV variant of
/// llama.cpp's CPU flash attention. That variant runs for one query row with at least 512 KV
/// cells, and llama.cpp pads the cells it attends over to a multiple of 256 of the used ones.
const SPLIT_KV_FROM_POSITION: i32 = 256;

/// Adds a throwaway token of a neighbouring slot next to each sequence that would be the only
/// one in its ubatch while decoding one token at [`SPLIT_KV_FROM_POSITION`] or later. llama.cpp
/// puts only consecutive sequence ids into one ubatch, so a sequence is alone there when neither
/// neighbouring id is in the batch. With two KV streams in the ubatch, llama.cpp takes the
/// per-row attention kernel, as it does beside other sequences, so the sequence rounds the same
/// alone and under load. Returns the slots and positions of the added tokens, which the caller
/// removes after decoding.
///
/// The neighbour may be free or prefilling: its token goes after its cached positions, and is
/// gone before its next prompt chunk is decoded.
fn add_companions(
    context: &mut LlamaContext<'_>,
    batch: &mut LlamaBatch,
    slots: &mut Slots,
    work: &[Work],
    context_tokens: u32,
) -> Vec<(i32, i32)> {
    let mut in_batch = vec![false; slots.sequences.len()];
    for &(index, tokens) in work {
        if tokens != 1 {
            return Vec::new();
        }
        in_batch[index] = true;
    }
    let mut companions = Vec::new();
    for &(index, _) in work {
        let Some(sequence) = slots.sequences[index].as_ref() else {
            continue;
        };
        let left_in_batch = index > 0 && in_batch[index - 1];
        let right_in_batch = in_batch.get(index + 1).copied().unwrap_or(false);
        // fill_batch has moved `position` past the token just added.
        if left_in_batch || right_in_batch || sequence.position - 1 < SPLIT_KV_FROM_POSITION {
            continue;
        }
        let token = sequence.prompt[0];
        let neighbour = if index + 1 < in_batch.len() {
            index + 1
        } else if index > 0 {
            index - 1
        } else {
            // The only slot: the sequence is alone under load too.
            continue;
        };
        let slot = neighbour as i32;
        let mut position = context.kv_cache_seq_pos_max(slot) + 1;
        // Only a free slot can be full: a running sequence always has room for its next token.
        if position as u32 >= context_tokens {
            slots.discard(context, slot);
            position = 0;
        }
        if batch.add(token, position, &[slot], false).is_ok() {
            in_batch[neighbour] = true;
            companions.push((slot, position));
        }
    }
    companions
}

/// Samples the next token of every sequence whose logits the last batch computed.
fn sample(
    context: &mut LlamaContext<'_>,
    slots: &mut Slots,
    model: &LlamaModel,
    options: &EngineOptions,
) {
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

/// The tokens of one sequence in one batch: its next token, or a chunk of its prompt.
type Work = (usize, usize);

/// Splits a step into batches of (sequence index, tokens). The first contains the next token of
/// every decoding sequence and any prompt chunk of one token. Then comes one batch per prompt
/// chunk length. A chunk is `batch_tokens` tokens, or what is left of its prompt. The first
/// pending prompt always gets a chunk, the others while the step's prompt tokens stay within
/// `batch_tokens`.
///
/// Batching chunks by length makes llama.cpp keep each chunk whole in one ubatch (it gives
/// every sequence of a ubatch the same number of tokens), so each token is decoded with the
/// kernel it gets when its prompt runs alone.
fn plan_step(sequences: &[Option<Sequence>], batch_tokens: usize) -> Vec<Vec<Work>> {
    let mut single = Vec::new();
    let mut chunks: BTreeMap<usize, Vec<Work>> = BTreeMap::new();
    let mut prompt_tokens = 0;
    for (index, sequence) in sequences.iter().enumerate() {
        let Some(sequence) = sequence else {
            continue;
        };
        if sequence.next_token.is_some() {
            single.push((index, 1));
            continue;
        }
        let remaining = sequence.prompt.len() - sequence.prefilled;
        let chunk = remaining.min(batch_tokens.max(1));
        if chunk == 0 || (prompt_tokens > 0 && prompt_tokens + chunk > batch_tokens) {
            continue;
        }
        prompt_tokens += chunk;
        if chunk == 1 {
            single.push((index, 1));
        } else {
            chunks.entry(chunk).or_default().push((index, chunk));
        }
    }
    std::iter::once(single)
        .filter(|work| !work.is_empty())
        .chain(chunks.into_values())
        .collect()
}

/// Puts the planned tokens into `batch`.
fn fill_batch(
    batch: &mut LlamaBatch,
    sequences: &mut [Option<Sequence>],
    work: &[Work],
) -> Result<(), String> {
    batch.clear();
    let mut used = 0i32;
    for &(index, tokens) in work {
        let sequence = sequences[index]
            .as_mut()
            .expect("the plan names running sequences");
        if let Some(token) = sequence.next_token.take() {
            batch
                .add(token, sequence.position, &[sequence.slot], true)
                .map_err(|err| err.to_string())?;
            sequence.logits_index = Some(used);
            sequence.position += 1;
            used += 1;
            continue;
        }
        let start = sequence.prefilled;
        for index in start..start + tokens {
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
                sequence.logits_index = Some(used);
            }
            sequence.position += 1;
            used += 1;
        }
        // One-token chunks decode like generated tokens, whose kernel depends on the company
        // in the ubatch, so reuse stops before them.
        let kernel = Kernel::for_chunk(tokens);
        if kernel != Kernel::Single && sequence.reusable.len() == start {
            let chunk = &sequence.prompt[start..start + tokens];
            sequence
                .reusable
                .extend(chunk.iter().map(|&token| CachedToken { token, kernel }));
        }
        sequence.prefilled += tokens;
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
    use super::{choose_slot, reusable_prefix, CachedToken, Kernel, LlamaToken};

    fn tokens(ids: impl IntoIterator<Item = i32>) -> Vec<LlamaToken> {
        ids.into_iter().map(LlamaToken::new).collect()
    }

    fn cached(ids: impl IntoIterator<Item = i32>, kernel: Kernel) -> Vec<CachedToken> {
        tokens(ids)
            .into_iter()
            .map(|token| CachedToken { token, kernel })
            .collect()
    }

    #[test]
    fn choose_slot_takes_longest_prefix() {
        let prompt = tokens([1, 2, 3, 4, 5, 6]);
        let system_only = cached([1, 2, 3, 9, 9, 9], Kernel::Rows);
        let other = cached([1, 7], Kernel::Rows);
        let free = [(0, &other[..]), (2, &system_only[..]), (3, &[][..])];
        assert_eq!(choose_slot(free.into_iter(), &prompt, 512), Some((2, 3)));
    }

    #[test]
    fn choose_slot_ties_keep_larger_caches() {
        let prompt = tokens([5, 6, 7]);
        let a = cached([1, 2], Kernel::Rows);
        let b = cached([3], Kernel::Rows);
        let free = [(1, &a[..]), (2, &b[..]), (3, &[][..])];
        assert_eq!(choose_slot(free.into_iter(), &prompt, 512), Some((3, 0)));
        let free = [(1, &a[..]), (2, &b[..])];
        assert_eq!(choose_slot(free.into_iter(), &prompt, 512), Some((2, 0)));
        let shared = cached([5, 6, 9], Kernel::Rows);
        let free = [(0, &a[..]), (2, &shared[..]), (3, &shared[..])];
        assert_eq!(choose_slot(free.into_iter(), &prompt, 512), Some((2, 1)));
    }

    #[test]
    fn choose_slot_without_free_slot() {
        let free: [(usize, &[CachedToken]); 0] = [];
        assert_eq!(choose_slot(free.into_iter(), &tokens([1, 2]), 512), None);
    }

    #[test]
    fn short_prompts_decode_their_last_two_tokens() {
        let cache = cached([1, 2, 3, 4, 5], Kernel::Rows);
        assert_eq!(reusable_prefix(&cache, &tokens([1, 2, 3, 4]), 512), 2);
        for prompt in [tokens([1]), tokens([1, 2]), tokens([])] {
            assert_eq!(reusable_prefix(&cache, &prompt, 512), 0, "{prompt:?}");
        }
    }

    #[test]
    fn tiled_prompts_decode_full_tile() {
        let cache = cached(0..100, Kernel::Tiled);
        // Alone, 100 tokens take the tiled kernel, so at least 64 are decoded again.
        assert_eq!(reusable_prefix(&cache, &tokens(0..100), 512), 36);
        // A 40-token prompt is decoded by rows alone; tiled entries do not match that.
        assert_eq!(reusable_prefix(&cache, &tokens(0..40), 512), 0);
        let rows = cached(0..40, Kernel::Rows);
        assert_eq!(reusable_prefix(&rows, &tokens(0..100), 512), 0);
    }

    #[test]
    fn reuse_ends_on_chunk_boundary() {
        // Batches of 8: a 20-token prompt is prefilled as 8 + 8 + 4 tokens.
        let prompt = tokens(0..20);
        let cache = |len| cached(0..len, Kernel::Rows);
        assert_eq!(reusable_prefix(&cache(13), &prompt, 8), 8);
        assert_eq!(reusable_prefix(&cache(16), &prompt, 8), 16);
        assert_eq!(reusable_prefix(&cache(17), &prompt, 8), 17);
        assert_eq!(reusable_prefix(&cache(20), &prompt, 8), 18);
        // 8 + 8 + 1: the last token is decoded alone, as in a full prefill.
        assert_eq!(reusable_prefix(&cache(17), &tokens(0..17), 8), 16);
        // A cached token decoded by another kernel ends the match.
        let mut mixed = cache(20);
        mixed[5].kernel = Kernel::Single;
        assert_eq!(reusable_prefix(&mixed, &prompt, 8), 0);
    }
}
