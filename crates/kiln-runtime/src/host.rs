//! The native functions behind the Web APIs and bindings, and the per-isolate state they share
//! with the event loop.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::rc::Rc;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use rand::RngCore;
use rquickjs::{Ctx, Exception, Function, Object, TypedArray};
use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::binding::{AiError, AiOutput};
use crate::isolate::Event;
use crate::modules::SourceMaps;
use crate::outbound::OutboundPolicy;
use crate::worker::{ExportedHandlers, Limit, ResponseBody, Services, WorkerError, WorkerResponse};

/// Destination of a request's response.
pub(crate) enum Reply {
    /// No response yet: the fetch handler has not settled.
    Waiting(oneshot::Sender<Result<WorkerResponse, WorkerError>>),
    /// The head is sent and the body streams through this channel.
    Streaming(tokio::sync::mpsc::UnboundedSender<Result<Bytes, String>>),
    /// A scheduled event that has not finished yet.
    Scheduled(oneshot::Sender<Result<(), WorkerError>>),
}

impl Reply {
    /// Returns true until the request's response head is sent or the scheduled event ends:
    /// the span that the wall-time limit and client cancellation cover.
    pub fn is_pending(&self) -> bool {
        matches!(self, Reply::Waiting(_) | Reply::Scheduled(_))
    }
}

/// An AI result stream being forwarded into the isolate.
struct ForwardedStream {
    owner: Option<u64>,
    task: tokio::task::AbortHandle,
}

/// State shared by the native functions and the event loop of one isolate.
pub(crate) struct HostState {
    pub worker: String,
    /// Isolate generation: events from a discarded isolate carry an older one and are dropped.
    pub generation: u64,
    pub events: mpsc::Sender<Event>,
    pub services: Services,
    /// The request whose event the isolate is handling now, by internal number.
    pub current: Option<u64>,
    /// The request of the most recent turn: the one that broke a CPU or memory limit.
    pub last_owner: Option<u64>,
    /// Internal request number → request id shown in logs.
    pub request_ids: HashMap<u64, String>,
    pub replies: HashMap<u64, Reply>,
    /// Pending timers by deadline; an entry is stale unless `timer_owner` has the same deadline.
    pub timers: BinaryHeap<Reverse<(Instant, u64)>>,
    pub timer_owner: HashMap<u64, (Instant, Option<u64>)>,
    /// AI and KV calls in flight → the request that made them.
    pub call_owner: HashMap<u64, Option<u64>>,
    /// Tasks of the AI calls and of the outbound fetches waiting for their response head,
    /// aborted when their request is canceled.
    pub call_tasks: HashMap<u64, tokio::task::AbortHandle>,
    /// Wall-time deadlines of the requests waiting for their response head, in order, and by
    /// request.
    wall_deadlines: BTreeSet<(Instant, u64)>,
    wall_deadline_of: HashMap<u64, Instant>,
    /// KV namespaces by binding name.
    pub kv: HashMap<String, kiln_kv::Namespace>,
    /// KV operations made so far by each request still in flight.
    pub kv_calls: HashMap<u64, u32>,
    /// Subrequests (outbound fetches and AI calls) made so far by each request in flight.
    pub subrequests: HashMap<u64, u32>,
    /// Maximum subrequests per request.
    pub subrequest_limit: u32,
    /// Hosts and addresses that outbound fetches may reach.
    pub outbound: Arc<OutboundPolicy>,
    streams: HashMap<u64, ForwardedStream>,
    next_stream: u64,
    /// A limit that a request broke, found while handling a JavaScript error.
    pub breach: Option<(Option<u64>, Limit)>,
    /// Maps stack positions in stripped TypeScript back to the source files.
    pub source_maps: SourceMaps,
    /// Handlers of the default export, recorded when the main module loads.
    pub exports: ExportedHandlers,
}

/// The outbound side of an isolate: its subrequest limit and the policy of its fetches.
pub(crate) struct Outbound {
    pub subrequest_limit: u32,
    pub policy: Arc<OutboundPolicy>,
}

impl HostState {
    pub fn new(
        worker: String,
        generation: u64,
        events: mpsc::Sender<Event>,
        services: Services,
        kv: HashMap<String, kiln_kv::Namespace>,
        source_maps: SourceMaps,
        outbound: Outbound,
    ) -> Self {
        Self {
            worker,
            generation,
            events,
            services,
            current: None,
            last_owner: None,
            request_ids: HashMap::new(),
            replies: HashMap::new(),
            timers: BinaryHeap::new(),
            timer_owner: HashMap::new(),
            call_owner: HashMap::new(),
            call_tasks: HashMap::new(),
            wall_deadlines: BTreeSet::new(),
            wall_deadline_of: HashMap::new(),
            kv,
            kv_calls: HashMap::new(),
            subrequests: HashMap::new(),
            subrequest_limit: outbound.subrequest_limit,
            outbound: outbound.policy,
            streams: HashMap::new(),
            next_stream: 1,
            breach: None,
            source_maps,
            exports: ExportedHandlers::default(),
        }
    }

    /// Returns the request id of `request`, for logs.
    pub fn request_id(&self, request: Option<u64>) -> &str {
        request
            .and_then(|number| self.request_ids.get(&number))
            .map_or("", String::as_str)
    }

    /// Counts one subrequest of the current request. Past the limit, throws the hosted
    /// runtime's `Error: Too many subrequests.` and logs a warning on the first call over it.
    ///
    /// NOTE: calls made after the response has finished (from `ctx.waitUntil`) and calls outside
    /// a request are not counted, as with KV operations.
    pub fn count_subrequest(&mut self, ctx: &Ctx<'_>) -> rquickjs::Result<()> {
        let Some(number) = self
            .current
            .filter(|number| self.request_ids.contains_key(number))
        else {
            return Ok(());
        };
        let count = self.subrequests.entry(number).or_default();
        *count = count.saturating_add(1);
        let count = *count;
        if count <= self.subrequest_limit {
            return Ok(());
        }
        if count == self.subrequest_limit.saturating_add(1) {
            tracing::warn!(
                worker = %self.worker,
                request_id = %self.request_id(Some(number)),
                limit = "subrequests",
                limit_value = self.subrequest_limit,
                "request exceeded the worker's subrequests limit; further fetch() and AI calls \
                 of this request fail"
            );
        }
        Err(Exception::throw_message(ctx, "Too many subrequests."))
    }

    /// Pops the next due timer, skipping cleared and re-armed entries.
    pub fn pop_due_timer(&mut self, now: Instant) -> Option<(u64, Option<u64>)> {
        while let Some(Reverse((deadline, id))) = self.timers.peek().copied() {
            if deadline > now {
                return None;
            }
            self.timers.pop();
            if let Some(&(armed, owner)) = self.timer_owner.get(&id) {
                if armed == deadline {
                    self.timer_owner.remove(&id);
                    return Some((id, owner));
                }
            }
        }
        None
    }

    /// Returns the earliest live timer or wall-time deadline.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        let wall = self.wall_deadlines.first().map(|(deadline, _)| *deadline);
        while let Some(Reverse((deadline, id))) = self.timers.peek().copied() {
            match self.timer_owner.get(&id) {
                Some(&(armed, _)) if armed == deadline => {
                    return Some(wall.map_or(deadline, |wall| wall.min(deadline)))
                }
                _ => {
                    self.timers.pop();
                }
            }
        }
        wall
    }

    pub fn arm_wall_deadline(&mut self, request: u64, deadline: Instant) {
        self.wall_deadlines.insert((deadline, request));
        self.wall_deadline_of.insert(request, deadline);
    }

    /// Removes a request's wall-time deadline once its response head is sent.
    pub fn disarm_wall_deadline(&mut self, request: u64) {
        if let Some(deadline) = self.wall_deadline_of.remove(&request) {
            self.wall_deadlines.remove(&(deadline, request));
        }
    }

    /// Removes and returns a request whose wall-time deadline has passed.
    pub fn pop_expired_request(&mut self, now: Instant) -> Option<u64> {
        let &(deadline, request) = self.wall_deadlines.first()?;
        if deadline > now {
            return None;
        }
        self.disarm_wall_deadline(request);
        Some(request)
    }

    /// Stops a request: sends `error` as its result (nothing when the client went away), clears
    /// its timers, aborts its model calls and streams, and drops the results of its KV calls.
    pub fn cancel(&mut self, request: u64, error: Option<WorkerError>) {
        match (self.replies.remove(&request), error) {
            (Some(Reply::Waiting(sender)), Some(error)) => {
                let _ = sender.send(Err(error));
            }
            (Some(Reply::Streaming(sender)), Some(error)) => {
                let _ = sender.send(Err(error.to_string()));
            }
            (Some(Reply::Scheduled(sender)), Some(error)) => {
                let _ = sender.send(Err(error));
            }
            _ => {}
        }
        let owned = Some(request);
        self.timer_owner.retain(|_, (_, owner)| *owner != owned);
        let calls: Vec<u64> = self
            .call_owner
            .iter()
            .filter(|(_, owner)| **owner == owned)
            .map(|(call, _)| *call)
            .collect();
        for call in calls {
            self.call_owner.remove(&call);
            if let Some(task) = self.call_tasks.remove(&call) {
                task.abort();
            }
        }
        self.streams.retain(|_, stream| {
            let keep = stream.owner != owned;
            if !keep {
                stream.task.abort();
            }
            keep
        });
        self.kv_calls.remove(&request);
        self.request_ids.remove(&request);
        self.disarm_wall_deadline(request);
    }

    /// Owner of a forwarded stream's events.
    pub fn stream_owner(&self, stream: u64) -> Option<Option<u64>> {
        self.streams.get(&stream).map(|entry| entry.owner)
    }

    pub fn finish_stream(&mut self, stream: u64) {
        self.streams.remove(&stream);
    }

    /// Runs a node call (`work`) on the async runtime and sends its result back to the isolate
    /// thread as the event that `done(generation, call, result)` builds. With `abortable`, the
    /// task is aborted when its request is canceled; a KV write is not, so it completes.
    pub fn spawn_call<F>(
        &mut self,
        call: u64,
        abortable: bool,
        work: F,
        done: fn(u64, u64, F::Output) -> Event,
    ) where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let events = self.events.clone();
        let generation = self.generation;
        let task = self.services.tokio.spawn(async move {
            let result = work.await;
            let _ = events.send(done(generation, call, result));
        });
        if abortable {
            self.call_tasks.insert(call, task.abort_handle());
        }
    }

    /// Starts forwarding an AI result stream into the isolate and returns its id.
    pub fn forward_stream(
        &mut self,
        owner: Option<u64>,
        mut body: futures::stream::BoxStream<'static, Result<Bytes, String>>,
    ) -> u64 {
        let stream = self.next_stream;
        self.next_stream += 1;
        let events = self.events.clone();
        let generation = self.generation;
        let task = self.services.tokio.spawn(async move {
            while let Some(item) = body.next().await {
                let chunk = item.map(Some);
                let failed = chunk.is_err();
                let event = Event::StreamChunk {
                    generation,
                    stream,
                    chunk,
                };
                if events.send(event).is_err() || failed {
                    return;
                }
            }
            let _ = events.send(Event::StreamChunk {
                generation,
                stream,
                chunk: Ok(None),
            });
        });
        self.streams.insert(
            stream,
            ForwardedStream {
                owner,
                task: task.abort_handle(),
            },
        );
        stream
    }

    /// Fails every request still waiting, as happens when the isolate is discarded.
    pub fn fail_all(&mut self, error: impl Fn(u64) -> WorkerError) {
        for (number, reply) in self.replies.drain() {
            let error = error(number);
            match reply {
                Reply::Waiting(sender) => {
                    let _ = sender.send(Err(error));
                }
                Reply::Streaming(sender) => {
                    let _ = sender.send(Err(error.to_string()));
                }
                Reply::Scheduled(sender) => {
                    let _ = sender.send(Err(error));
                }
            }
        }
        for (_, stream) in self.streams.drain() {
            stream.task.abort();
        }
        for (_, task) in self.call_tasks.drain() {
            task.abort();
        }
    }
}

pub(crate) type SharedState = Rc<RefCell<HostState>>;

pub(crate) fn copy_bytes(array: &TypedArray<'_, u8>) -> Vec<u8> {
    match array.as_raw() {
        // SAFETY: the slice is copied at once, before any JavaScript runs.
        Some(raw) => unsafe { raw.as_ref().to_vec() },
        None => Vec::new(),
    }
}

fn pairs(flat: Vec<String>) -> Vec<(String, String)> {
    flat.chunks_exact(2)
        .map(|pair| (pair[0].clone(), pair[1].clone()))
        .collect()
}

/// Classifies an error that ended a request: some errors mean a limit was reached.
pub(crate) fn limit_of(name: &str, message: &str) -> Option<Limit> {
    if message.contains("Maximum call stack size exceeded") || message.starts_with("stack overflow")
    {
        return Some(Limit::Stack);
    }
    if name == "InternalError" && message == "out of memory" {
        return Some(Limit::Memory);
    }
    None
}

/// Builds the object of native functions that the prelude wraps into Web APIs.
pub(crate) fn native_object<'js>(
    ctx: &Ctx<'js>,
    state: &SharedState,
) -> rquickjs::Result<Object<'js>> {
    let native = Object::new(ctx.clone())?;
    install_logging(ctx, &native, state)?;
    install_timers(ctx, &native, state)?;
    install_encoding(ctx, &native)?;
    install_crypto(ctx, &native)?;
    install_url(ctx, &native)?;
    install_ai(ctx, &native, state)?;
    crate::kv::install(ctx, &native, state)?;
    crate::fetch::install(ctx, &native, state)?;
    install_responses(ctx, &native, state)?;
    install_scheduled(ctx, &native, state)?;
    Ok(native)
}

fn install_logging<'js>(
    ctx: &Ctx<'js>,
    native: &Object<'js>,
    state: &SharedState,
) -> rquickjs::Result<()> {
    let state = Rc::clone(state);
    native.set(
        "log",
        Function::new(ctx.clone(), move |level: String, text: String| {
            let state = state.borrow();
            let worker = state.worker.as_str();
            let request_id = state.request_id(state.current);
            match level.as_str() {
                "error" => tracing::error!(target: "kiln::worker", worker, request_id, "{text}"),
                "warn" => tracing::warn!(target: "kiln::worker", worker, request_id, "{text}"),
                "debug" => tracing::debug!(target: "kiln::worker", worker, request_id, "{text}"),
                _ => tracing::info!(target: "kiln::worker", worker, request_id, "{text}"),
            }
        })?,
    )
}

fn install_timers<'js>(
    ctx: &Ctx<'js>,
    native: &Object<'js>,
    state: &SharedState,
) -> rquickjs::Result<()> {
    let start_state = Rc::clone(state);
    native.set(
        "timerStart",
        Function::new(ctx.clone(), move |id: f64, ms: f64| {
            let mut state = start_state.borrow_mut();
            let ms = if ms.is_finite() {
                ms.clamp(0.0, 1e9)
            } else {
                0.0
            };
            let delay = Duration::from_secs_f64(ms / 1000.0);
            let deadline = Instant::now() + delay;
            let id = id as u64;
            let owner = state.current;
            state.timer_owner.insert(id, (deadline, owner));
            state.timers.push(Reverse((deadline, id)));
        })?,
    )?;
    let clear_state = Rc::clone(state);
    native.set(
        "timerClear",
        Function::new(ctx.clone(), move |id: f64| {
            clear_state.borrow_mut().timer_owner.remove(&(id as u64));
        })?,
    )
}

fn install_encoding<'js>(ctx: &Ctx<'js>, native: &Object<'js>) -> rquickjs::Result<()> {
    native.set(
        "utf8Encode",
        Function::new(ctx.clone(), |ctx: Ctx<'js>, text: String| {
            TypedArray::<u8>::new(ctx, text.into_bytes())
        })?,
    )?;
    native.set(
        "utf8Decode",
        Function::new(
            ctx.clone(),
            |ctx: Ctx<'js>, bytes: TypedArray<'js, u8>, fatal: bool| -> rquickjs::Result<String> {
                let bytes = copy_bytes(&bytes);
                if fatal {
                    String::from_utf8(bytes).map_err(|err| {
                        Exception::throw_type(
                            &ctx,
                            &format!("The encoded data was not valid UTF-8: {err}"),
                        )
                    })
                } else {
                    Ok(String::from_utf8_lossy(&bytes).into_owned())
                }
            },
        )?,
    )
}

fn install_crypto<'js>(ctx: &Ctx<'js>, native: &Object<'js>) -> rquickjs::Result<()> {
    native.set(
        "randomBytes",
        Function::new(ctx.clone(), |ctx: Ctx<'js>, length: usize| {
            let mut bytes = vec![0u8; length.min(65536)];
            rand::rng().fill_bytes(&mut bytes);
            TypedArray::<u8>::new(ctx, bytes)
        })?,
    )?;
    native.set(
        "randomUUID",
        Function::new(ctx.clone(), || uuid::Uuid::new_v4().to_string())?,
    )?;
    native.set(
        "digest",
        Function::new(
            ctx.clone(),
            |ctx: Ctx<'js>, algorithm: String, data: TypedArray<'js, u8>| {
                use sha2::Digest;
                let data = copy_bytes(&data);
                let digest = match algorithm.as_str() {
                    "SHA-1" => sha1::Sha1::digest(&data).to_vec(),
                    "SHA-256" => sha2::Sha256::digest(&data).to_vec(),
                    "SHA-384" => sha2::Sha384::digest(&data).to_vec(),
                    "SHA-512" => sha2::Sha512::digest(&data).to_vec(),
                    other => {
                        return Err(Exception::throw_dom(
                            &ctx,
                            "NotSupportedError",
                            &format!(
                                "Unrecognized algorithm name {other:?}: use SHA-1, SHA-256, SHA-384 or SHA-512"
                            ),
                        ))
                    }
                };
                TypedArray::<u8>::new(ctx, digest)
            },
        )?,
    )
}

/// Serializes the WHATWG URL components of `url` as JSON, for the prelude's `URL` class.
fn url_components(url: &url::Url) -> String {
    use url::quirks;
    json!({
        "href": quirks::href(url),
        "origin": quirks::origin(url),
        "protocol": quirks::protocol(url),
        "username": quirks::username(url),
        "password": quirks::password(url),
        "host": quirks::host(url),
        "hostname": quirks::hostname(url),
        "port": quirks::port(url),
        "pathname": quirks::pathname(url),
        "search": quirks::search(url),
        "hash": quirks::hash(url),
    })
    .to_string()
}

fn install_url<'js>(ctx: &Ctx<'js>, native: &Object<'js>) -> rquickjs::Result<()> {
    native.set(
        "parseUrl",
        Function::new(ctx.clone(), |input: String, base: Option<String>| {
            let parsed = match base {
                Some(base) => url::Url::parse(&base).and_then(|base| base.join(&input)),
                None => url::Url::parse(&input),
            };
            parsed.ok().map(|url| url_components(&url))
        })?,
    )?;
    native.set(
        "setUrlPart",
        Function::new(ctx.clone(), |href: String, part: String, value: String| {
            use url::quirks;
            let mut url = url::Url::parse(&href).ok()?;
            match part.as_str() {
                "protocol" => {
                    let _ = quirks::set_protocol(&mut url, &value);
                }
                "username" => {
                    let _ = quirks::set_username(&mut url, &value);
                }
                "password" => {
                    let _ = quirks::set_password(&mut url, &value);
                }
                "host" => {
                    let _ = quirks::set_host(&mut url, &value);
                }
                "hostname" => {
                    let _ = quirks::set_hostname(&mut url, &value);
                }
                "port" => {
                    let _ = quirks::set_port(&mut url, &value);
                }
                "pathname" => quirks::set_pathname(&mut url, &value),
                "search" => quirks::set_search(&mut url, &value),
                "hash" => quirks::set_hash(&mut url, &value),
                _ => return None,
            }
            Some(url_components(&url))
        })?,
    )
}

fn install_ai<'js>(
    ctx: &Ctx<'js>,
    native: &Object<'js>,
    state: &SharedState,
) -> rquickjs::Result<()> {
    let run_state = Rc::clone(state);
    native.set(
        "aiRun",
        Function::new(
            ctx.clone(),
            move |ctx: Ctx<'js>,
                  call: f64,
                  model: String,
                  inputs: String,
                  options: String|
                  -> rquickjs::Result<()> {
                let mut state = run_state.borrow_mut();
                state.count_subrequest(&ctx)?;
                let call = call as u64;
                let owner = state.current;
                state.call_owner.insert(call, owner);
                let events = state.events.clone();
                let generation = state.generation;
                let inputs: Value = serde_json::from_str(&inputs).unwrap_or(Value::Null);
                let options: Value = serde_json::from_str(&options).unwrap_or(Value::Null);
                let Some(ai) = state.services.ai.clone() else {
                    let result = Err(AiError {
                        name: "AiInternalError".into(),
                        code: 3001,
                        description: "this worker has no [ai] binding".into(),
                    });
                    let _ = events.send(Event::AiDone {
                        generation,
                        call,
                        result,
                    });
                    return Ok(());
                };
                let request_id = state.request_id(owner).to_owned();
                let run = ai.run(request_id, model, inputs, options);
                state.spawn_call(call, true, run, |generation, call, result| Event::AiDone {
                    generation,
                    call,
                    result,
                });
                Ok(())
            },
        )?,
    )?;
    let cancel_state = Rc::clone(state);
    native.set(
        "streamCancel",
        Function::new(ctx.clone(), move |stream: f64| {
            let mut state = cancel_state.borrow_mut();
            if let Some(entry) = state.streams.remove(&(stream as u64)) {
                entry.task.abort();
            }
        })?,
    )
}

/// Converts a settled AI call into the arguments of the prelude's `aiDone` entry point.
pub(crate) fn ai_error_payload(error: &AiError) -> String {
    let status = match error.code {
        3006 => 413,
        3040 => 429,
        3010 | 5007 => 400,
        7009 => 503,
        _ => 500,
    };
    json!({
        "name": error.name,
        "code": error.code,
        "description": error.description,
        "status": status,
    })
    .to_string()
}

/// Result of an AI call, in the form the isolate receives it.
pub(crate) enum AiSettlement {
    Json(String),
    Error(String),
    Stream(u64),
}

pub(crate) fn settle_ai(
    state: &SharedState,
    owner: Option<u64>,
    result: Result<AiOutput, AiError>,
) -> AiSettlement {
    match result {
        Ok(AiOutput::Json(value)) => AiSettlement::Json(value.to_string()),
        Ok(AiOutput::Stream(body)) => {
            AiSettlement::Stream(state.borrow_mut().forward_stream(owner, body))
        }
        Err(error) => AiSettlement::Error(ai_error_payload(&error)),
    }
}

fn install_responses<'js>(
    ctx: &Ctx<'js>,
    native: &Object<'js>,
    state: &SharedState,
) -> rquickjs::Result<()> {
    let respond_state = Rc::clone(state);
    native.set(
        "respond",
        Function::new(
            ctx.clone(),
            move |id: f64, status: u16, headers: Vec<String>, body: Option<TypedArray<'js, u8>>| {
                let body = body.map(|bytes| copy_bytes(&bytes)).unwrap_or_default();
                let reply = respond_state.borrow_mut().replies.remove(&(id as u64));
                if let Some(Reply::Waiting(sender)) = reply {
                    let _ = sender.send(Ok(WorkerResponse {
                        status,
                        headers: pairs(headers),
                        body: ResponseBody::Bytes(Bytes::from(body)),
                    }));
                }
            },
        )?,
    )?;

    let stream_state = Rc::clone(state);
    native.set(
        "respondStream",
        Function::new(
            ctx.clone(),
            move |id: f64, status: u16, headers: Vec<String>| {
                let mut state = stream_state.borrow_mut();
                let id = id as u64;
                if let Some(Reply::Waiting(sender)) = state.replies.remove(&id) {
                    let (chunks, body) = tokio::sync::mpsc::unbounded_channel();
                    let response = WorkerResponse {
                        status,
                        headers: pairs(headers),
                        body: ResponseBody::Stream(body),
                    };
                    if sender.send(Ok(response)).is_ok() {
                        state.replies.insert(id, Reply::Streaming(chunks));
                    }
                }
            },
        )?,
    )?;

    let chunk_state = Rc::clone(state);
    native.set(
        "chunk",
        Function::new(ctx.clone(), move |id: f64, bytes: TypedArray<'js, u8>| {
            let state = chunk_state.borrow();
            match state.replies.get(&(id as u64)) {
                Some(Reply::Streaming(sender)) => {
                    sender.send(Ok(Bytes::from(copy_bytes(&bytes)))).is_ok()
                }
                _ => false,
            }
        })?,
    )?;

    let end_state = Rc::clone(state);
    native.set(
        "end",
        Function::new(ctx.clone(), move |id: f64| {
            end_state.borrow_mut().replies.remove(&(id as u64));
        })?,
    )?;

    let fail_state = Rc::clone(state);
    native.set(
        "fail",
        Function::new(
            ctx.clone(),
            move |id: f64, name: String, message: String, stack: String, status: f64| {
                let mut state = fail_state.borrow_mut();
                let id = id as u64;
                if let Some(limit) = limit_of(&name, &message) {
                    state.breach.get_or_insert((Some(id), limit));
                    return;
                }
                let worker = state.worker.clone();
                let request_id = state.request_id(Some(id)).to_owned();
                let stack = state.source_maps.remap(&stack);
                tracing::error!(
                    worker = %worker,
                    request_id = %request_id,
                    error = %format!("{name}: {message}"),
                    stack = %stack,
                    "worker threw an exception"
                );
                let error = WorkerError::Exception {
                    message: format!("{name}: {message}"),
                    stack,
                    status: status as u16,
                };
                match state.replies.remove(&id) {
                    Some(Reply::Waiting(sender)) => {
                        let _ = sender.send(Err(error));
                    }
                    Some(Reply::Streaming(sender)) => {
                        let _ = sender.send(Err(error.to_string()));
                    }
                    Some(Reply::Scheduled(sender)) => {
                        let _ = sender.send(Err(error));
                    }
                    None => {}
                }
            },
        )?,
    )
}

/// Installs `native.scheduledDone(id)`, which ends a scheduled event whose handler and
/// `waitUntil` promises all fulfilled. A failed event ends through `native.fail` instead.
fn install_scheduled<'js>(
    ctx: &Ctx<'js>,
    native: &Object<'js>,
    state: &SharedState,
) -> rquickjs::Result<()> {
    let done_state = Rc::clone(state);
    native.set(
        "scheduledDone",
        Function::new(ctx.clone(), move |id: f64| {
            let reply = done_state.borrow_mut().replies.remove(&(id as u64));
            if let Some(Reply::Scheduled(sender)) = reply {
                let _ = sender.send(Ok(()));
            }
        })?,
    )
}
