//! One QuickJS isolate on its own thread, and the event loop that drives it.
//!
//! The thread waits on a channel for events (requests, AI results, stream chunks) and on its
//! own timer heap. Each event is one turn: a call into JavaScript followed by draining the
//! microtask queue. Every turn runs under the CPU budget of the request it belongs to. The
//! interrupt handler stops JavaScript that overruns it, so neither a loop nor a microtask storm
//! can hold the thread. A request that breaks a limit fails, and the isolate is discarded and
//! rebuilt from the same worker version.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kiln_kv::KvError;
use rquickjs::promise::PromiseState;
use rquickjs::{Context, Ctx, Function, Object, Persistent, Runtime, TypedArray, Value};
use tokio::sync::oneshot;

use crate::binding::{AiError, AiOutput};
use crate::bytecode::{self, DeclareError};
use crate::heap::{CountingAllocator, HeapCounter};
use crate::host::{self, AiSettlement, HostState, Reply, SharedState};
use crate::kv::KvReply;
use crate::modules::{SourceMaps, WorkerLoader, WorkerResolver};
use crate::worker::{
    ExportedHandlers, Limit, Limits, Services, StartError, WorkerError, WorkerRequest,
    WorkerResponse, WorkerSpec,
};

const PRELUDE: &str = include_str!("js/prelude.js");

/// Messages to an isolate thread.
pub(crate) enum Event {
    Fetch {
        /// The request's key, unique across the worker's isolates.
        number: u64,
        request: WorkerRequest,
        reply: oneshot::Sender<Result<WorkerResponse, WorkerError>>,
    },
    /// The client went away before the response head: stop the request's work.
    Cancel {
        number: u64,
    },
    /// A cron trigger fired: run the default export's `scheduled` handler.
    Scheduled {
        /// The event's key, unique across the worker's isolates.
        number: u64,
        /// Event id shown in log lines.
        id: String,
        cron: String,
        /// `controller.scheduledTime`, in milliseconds since the Unix epoch.
        scheduled_time_ms: f64,
        reply: oneshot::Sender<Result<(), WorkerError>>,
    },
    AiDone {
        generation: u64,
        call: u64,
        result: Result<AiOutput, AiError>,
    },
    /// A KV call settled.
    KvDone {
        generation: u64,
        call: u64,
        result: Result<KvReply, KvError>,
    },
    /// An outbound `fetch()` got its response head or failed.
    FetchDone {
        generation: u64,
        call: u64,
        result: crate::fetch::FetchResult,
    },
    /// A chunk of a forwarded AI stream; `Ok(None)` ends it.
    StreamChunk {
        generation: u64,
        stream: u64,
        chunk: Result<Option<Bytes>, String>,
    },
    Shutdown,
}

/// Stack of an isolate thread: room for JavaScript's own limit plus the native frames around
/// it.
pub(crate) fn thread_stack_bytes(limits: &Limits) -> usize {
    limits.stack_bytes * 2 + 8 * 1024 * 1024
}

/// CPU time used by the calling thread so far.
fn thread_cpu_time() -> Duration {
    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `time` is a valid timespec, and CLOCK_THREAD_CPUTIME_ID exists on every Linux.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut time) };
    if status != 0 {
        return Duration::ZERO;
    }
    Duration::new(time.tv_sec as u64, time.tv_nsec as u32)
}

/// The CPU deadline of the turn in progress, checked by QuickJS's interrupt handler.
#[derive(Default)]
struct CpuBudget {
    /// Thread CPU time at which the turn must stop; `None` between turns.
    deadline: Cell<Option<Duration>>,
    exceeded: Cell<bool>,
}

impl CpuBudget {
    /// Returns true (interrupt) once the thread's CPU time passes the deadline.
    fn interrupt(&self) -> bool {
        if self.exceeded.get() {
            return true;
        }
        if let Some(deadline) = self.deadline.get() {
            if thread_cpu_time() > deadline {
                self.exceeded.set(true);
                return true;
            }
        }
        false
    }
}

/// Reason an isolate's event loop returned.
enum Exit {
    Shutdown,
    /// A request broke a limit; the isolate must be rebuilt.
    Discard,
}

/// Runs an isolate thread: builds the isolate, reports readiness, then serves events until
/// shutdown, rebuilding the isolate whenever a request breaks a limit.
pub(crate) fn run_thread(
    spec: WorkerSpec,
    services: Services,
    events: mpsc::Sender<Event>,
    receiver: mpsc::Receiver<Event>,
    ready: mpsc::Sender<Result<ExportedHandlers, StartError>>,
) {
    let mut generation = 0;
    let mut isolate = match Isolate::build(&spec, &services, &events, generation) {
        Ok(isolate) => {
            let _ = ready.send(Ok(isolate.state.borrow().exports));
            isolate
        }
        Err(error) => {
            let _ = ready.send(Err(error));
            return;
        }
    };
    drop(ready);

    loop {
        match isolate.serve(&receiver) {
            Exit::Shutdown => return,
            Exit::Discard => {
                generation += 1;
                drop(isolate);
                let started = Instant::now();
                match Isolate::build(&spec, &services, &events, generation) {
                    Ok(rebuilt) => {
                        tracing::info!(
                            worker = %spec.name,
                            ms = started.elapsed().as_secs_f64() * 1000.0,
                            "isolate rebuilt"
                        );
                        isolate = rebuilt;
                    }
                    Err(error) => {
                        tracing::error!(worker = %spec.name, error = %error, "failed to rebuild the isolate");
                        reject_until_shutdown(&receiver, &error.0);
                        return;
                    }
                }
            }
        }
    }
}

fn reject_until_shutdown(receiver: &mpsc::Receiver<Event>, reason: &str) {
    while let Ok(event) = receiver.recv() {
        match event {
            Event::Fetch { reply, .. } => {
                let _ = reply.send(Err(WorkerError::Unavailable(reason.to_owned())));
            }
            Event::Scheduled { reply, .. } => {
                let _ = reply.send(Err(WorkerError::Unavailable(reason.to_owned())));
            }
            Event::Shutdown => return,
            _ => {}
        }
    }
}

struct Isolate {
    // Field order is drop order: JavaScript handles go before the context and runtime.
    host: Persistent<Object<'static>>,
    context: Context,
    runtime: Runtime,
    state: SharedState,
    budget: Rc<CpuBudget>,
    cpu_used: HashMap<u64, Duration>,
    limits: Limits,
    /// Bytes that the runtime's allocator holds.
    heap: HeapCounter,
    /// The worker's `kiln_worker_isolate_memory_bytes` gauge, and this isolate's share of it.
    heap_gauge: metrics::Gauge,
    reported_heap: usize,
    /// Promises rejected without a handler during the current turn.
    rejections: Rc<RefCell<Vec<Rejection>>>,
}

/// A promise rejected while nothing handled it.
struct Rejection {
    promise: Persistent<Value<'static>>,
    /// `Name: message` and stack of the reason.
    reason: String,
    /// The rejection is QuickJS running out of heap inside a promise job.
    out_of_memory: bool,
}

impl Drop for Isolate {
    /// Takes this isolate's heap out of the worker's gauge.
    fn drop(&mut self) {
        self.heap_gauge.decrement(self.reported_heap as f64);
    }
}

impl Isolate {
    fn build(
        spec: &WorkerSpec,
        services: &Services,
        events: &mpsc::Sender<Event>,
        generation: u64,
    ) -> Result<Isolate, StartError> {
        if let Some((binding, id)) = spec
            .kv_namespaces
            .iter()
            .find(|(_, id)| kiln_kv::is_reserved_namespace(id))
        {
            return Err(StartError(format!(
                "the KV binding {binding} names namespace {id:?}, but ids starting with {} are \
                 reserved for the node: choose another id",
                kiln_kv::RESERVED_NAMESPACE_PREFIX
            )));
        }
        let engine_error = |err: rquickjs::Error| StartError(format!("QuickJS failed: {err}"));
        let heap = HeapCounter::default();
        let runtime =
            Runtime::new_with_alloc(CountingAllocator::new(heap.clone())).map_err(engine_error)?;
        runtime.set_memory_limit(spec.limits.memory_bytes);
        runtime.set_max_stack_size(spec.limits.stack_bytes);
        let budget = Rc::new(CpuBudget::default());
        let handler_budget = Rc::clone(&budget);
        runtime.set_interrupt_handler(Some(Box::new(move || handler_budget.interrupt())));
        let rejections: Rc<RefCell<Vec<Rejection>>> = Rc::default();
        let tracked = Rc::clone(&rejections);
        let tracked_heap = heap.clone();
        let half_limit = spec.limits.memory_bytes / 2;
        runtime.set_host_promise_rejection_tracker(Some(Box::new(
            move |ctx, promise, reason, is_handled| {
                // QuickJS rejects with null when it cannot even allocate the error object.
                let near_limit = tracked_heap.may_exceed(half_limit);
                track_rejection(&ctx, &tracked, promise, reason, is_handled, near_limit);
            },
        )));
        let source_maps = SourceMaps::default();
        runtime.set_loader(
            WorkerResolver::new(&spec.root),
            WorkerLoader::new(&spec.root, source_maps.clone()),
        );
        let context = Context::full(&runtime).map_err(engine_error)?;
        let state: SharedState = Rc::new(RefCell::new(HostState::new(
            spec.name.clone(),
            generation,
            events.clone(),
            services.clone(),
            kv_namespaces(spec, services),
            source_maps,
            host::Outbound {
                subrequest_limit: spec.limits.subrequests,
                policy: spec.outbound.clone(),
            },
        )));

        // Module top levels run under the same CPU limit as a request.
        budget.deadline.set(Some(
            thread_cpu_time() + Duration::from_millis(spec.limits.cpu_ms),
        ));
        let host = context.with(|ctx| load_worker(&ctx, spec, &state));
        budget.deadline.set(None);
        if budget.exceeded.get() {
            return Err(StartError(format!(
                "{}: the module's top level exceeded the CPU limit of {} ms",
                spec.main, spec.limits.cpu_ms
            )));
        }

        let mut isolate = Isolate {
            host: host?,
            context,
            runtime,
            state,
            budget,
            cpu_used: HashMap::new(),
            limits: spec.limits,
            heap,
            heap_gauge: metrics::gauge!(
                "kiln_worker_isolate_memory_bytes",
                "worker" => spec.name.clone()
            ),
            reported_heap: 0,
            rejections,
        };
        // Rejections left by the modules' top level are logged; no request owns them.
        isolate.report_rejections(None);
        Ok(isolate)
    }

    /// Serves events until shutdown or until a request breaks a limit.
    fn serve(&mut self, receiver: &mpsc::Receiver<Event>) -> Exit {
        loop {
            let deadline = self.state.borrow_mut().next_deadline();
            let event = match deadline {
                Some(deadline) => {
                    let wait = deadline.saturating_duration_since(Instant::now());
                    match receiver.recv_timeout(wait) {
                        Ok(event) => Some(event),
                        Err(mpsc::RecvTimeoutError::Timeout) => None,
                        Err(mpsc::RecvTimeoutError::Disconnected) => return Exit::Shutdown,
                    }
                }
                None => match receiver.recv() {
                    Ok(event) => Some(event),
                    Err(_) => return Exit::Shutdown,
                },
            };

            if let Some(event) = event {
                if matches!(event, Event::Shutdown) {
                    self.state
                        .borrow_mut()
                        .fail_all(|_| WorkerError::Unavailable("the worker was stopped".into()));
                    return Exit::Shutdown;
                }
                self.handle(event);
                if self.discard_if_breached() {
                    return Exit::Discard;
                }
            }

            self.expire_wall_deadlines();
            loop {
                let due = self.state.borrow_mut().pop_due_timer(Instant::now());
                let Some((timer, owner)) = due else { break };
                self.turn(owner, |_, host| {
                    let fire: Function = host.get("timer")?;
                    fire.call((timer as f64,))
                });
                if self.discard_if_breached() {
                    return Exit::Discard;
                }
            }
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Fetch {
                number,
                request,
                reply,
            } => self.handle_fetch(number, request, reply),
            Event::Cancel { number } => {
                let waiting = self
                    .state
                    .borrow()
                    .replies
                    .get(&number)
                    .is_some_and(Reply::is_pending);
                if waiting {
                    let mut state = self.state.borrow_mut();
                    tracing::info!(
                        worker = %state.worker,
                        request_id = %state.request_id(Some(number)),
                        outcome = "canceled",
                        "the client went away; request canceled"
                    );
                    state.cancel(number, None);
                }
            }
            Event::Scheduled {
                number,
                id,
                cron,
                scheduled_time_ms,
                reply,
            } => self.handle_scheduled(number, id, cron, scheduled_time_ms, reply),
            Event::AiDone {
                generation,
                call,
                result,
            } => {
                let Some(owner) = self.finish_call(generation, call) else {
                    return;
                };
                let settlement = host::settle_ai(&self.state, owner, result);
                self.turn(owner, |_, host| match settlement {
                    AiSettlement::Json(json) => {
                        let done: Function = host.get("aiDone")?;
                        done.call((call as f64, true, json))
                    }
                    AiSettlement::Error(json) => {
                        let done: Function = host.get("aiDone")?;
                        done.call((call as f64, false, json))
                    }
                    AiSettlement::Stream(stream) => {
                        let done: Function = host.get("aiStream")?;
                        done.call((call as f64, stream as f64))
                    }
                });
            }
            Event::KvDone {
                generation,
                call,
                result,
            } => {
                let Some(owner) = self.finish_call(generation, call) else {
                    return;
                };
                self.turn(owner, |ctx, host| {
                    crate::kv::settle(ctx, host, call, result)
                });
            }
            Event::FetchDone {
                generation,
                call,
                result,
            } => {
                let Some(owner) = self.finish_call(generation, call) else {
                    return;
                };
                let settlement = crate::fetch::settle(&self.state, owner, result);
                self.turn(owner, |_, host| settlement.deliver(host, call));
            }
            Event::StreamChunk {
                generation,
                stream,
                chunk,
            } => {
                if generation != self.state.borrow().generation {
                    return;
                }
                let Some(owner) = self.state.borrow().stream_owner(stream) else {
                    return;
                };
                if !matches!(chunk, Ok(Some(_))) {
                    self.state.borrow_mut().finish_stream(stream);
                }
                self.turn(owner, |ctx, host| match chunk {
                    Ok(Some(bytes)) => {
                        let push: Function = host.get("streamChunk")?;
                        let bytes = TypedArray::<u8>::new(ctx.clone(), bytes.to_vec())?;
                        push.call((stream as f64, bytes))
                    }
                    Ok(None) => {
                        let end: Function = host.get("streamEnd")?;
                        end.call((stream as f64, Value::new_null(ctx.clone())))
                    }
                    Err(message) => {
                        let end: Function = host.get("streamEnd")?;
                        end.call((stream as f64, message))
                    }
                });
            }
            Event::Shutdown => {}
        }
    }

    /// Removes a finished AI or KV call and returns the request that made it, which is `None`
    /// outside a request. Returns `None` instead when the result is to be dropped: the call
    /// comes from a discarded isolate (an older generation) or its request was canceled.
    fn finish_call(&self, generation: u64, call: u64) -> Option<Option<u64>> {
        let mut state = self.state.borrow_mut();
        if generation != state.generation {
            return None;
        }
        state.call_tasks.remove(&call);
        state.call_owner.remove(&call)
    }

    fn handle_fetch(
        &mut self,
        number: u64,
        request: WorkerRequest,
        reply: oneshot::Sender<Result<WorkerResponse, WorkerError>>,
    ) {
        {
            let mut state = self.state.borrow_mut();
            state.request_ids.insert(number, request.id.clone());
            state.replies.insert(number, Reply::Waiting(reply));
            let deadline = Instant::now() + Duration::from_millis(self.limits.wall_ms);
            state.arm_wall_deadline(number, deadline);
        }
        let headers: Vec<String> = request
            .headers
            .into_iter()
            .flat_map(|(name, value)| [name, value])
            .collect();
        let cf = request.cf.to_string();
        let body = request.body;
        self.turn(Some(number), |ctx, host| {
            let fetch: Function = host.get("fetch")?;
            let body = if body.is_empty() {
                Value::new_null(ctx.clone())
            } else {
                TypedArray::<u8>::new(ctx.clone(), body.to_vec())?.into_value()
            };
            fetch.call((
                number as f64,
                request.method,
                request.url,
                headers,
                body,
                cf,
            ))
        });
    }

    /// Starts a scheduled event. It is tracked as a request, so it gets the same CPU budget
    /// and fails the same way when the isolate is discarded.
    fn handle_scheduled(
        &mut self,
        number: u64,
        id: String,
        cron: String,
        scheduled_time_ms: f64,
        reply: oneshot::Sender<Result<(), WorkerError>>,
    ) {
        {
            let mut state = self.state.borrow_mut();
            state.request_ids.insert(number, id);
            state.replies.insert(number, Reply::Scheduled(reply));
            let deadline = Instant::now() + Duration::from_millis(self.limits.wall_ms);
            state.arm_wall_deadline(number, deadline);
        }
        self.turn(Some(number), |_, host| {
            let scheduled: Function = host.get("scheduled")?;
            scheduled.call((number as f64, cron, scheduled_time_ms))
        });
    }

    /// Runs one turn for `owner`: the call into JavaScript, then the microtask queue, under the
    /// CPU time the request has left.
    fn turn<F>(&mut self, owner: Option<u64>, call: F)
    where
        F: for<'js> FnOnce(&Ctx<'js>, &Object<'js>) -> rquickjs::Result<()>,
    {
        {
            let mut state = self.state.borrow_mut();
            state.current = owner;
            state.last_owner = owner;
        }
        let used = owner
            .and_then(|number| self.cpu_used.get(&number).copied())
            .unwrap_or_default();
        let allowed = Duration::from_millis(self.limits.cpu_ms).saturating_sub(used);
        let started = thread_cpu_time();
        let deadline = started + allowed;
        self.budget.deadline.set(Some(deadline));

        let budget = &self.budget;
        let host = &self.host;
        let state = &self.state;
        self.context.with(|ctx| {
            let result = host
                .clone()
                .restore(&ctx)
                .and_then(|host| call(&ctx, &host));
            if let Err(error) = result {
                if !budget.exceeded.get() {
                    let mut state = state.borrow_mut();
                    let description = state.source_maps.remap(&describe_error(&ctx, error));
                    report_uncaught(&mut state, owner, &description);
                }
            }
            let mut jobs: u64 = 0;
            while !budget.exceeded.get() && ctx.execute_pending_job() {
                jobs += 1;
                // Cheap jobs may finish before QuickJS polls the interrupt handler.
                if jobs.is_multiple_of(1024) && thread_cpu_time() > deadline {
                    budget.exceeded.set(true);
                }
            }
        });
        self.report_rejections(owner);
        self.report_heap();

        let spent = thread_cpu_time().saturating_sub(started);
        self.budget.deadline.set(None);
        let mut state = self.state.borrow_mut();
        state.current = None;
        if let Some(number) = owner {
            if !state.replies.get(&number).is_some_and(Reply::is_pending) {
                state.disarm_wall_deadline(number);
            }
            if state.replies.contains_key(&number) {
                *self.cpu_used.entry(number).or_default() += spent;
            } else {
                self.cpu_used.remove(&number);
                state.request_ids.remove(&number);
                state.kv_calls.remove(&number);
                state.subrequests.remove(&number);
            }
        }
    }

    /// Checks the limits after a turn; on a breach, fails the requests in flight and returns
    /// true so the caller discards the isolate.
    fn discard_if_breached(&mut self) -> bool {
        let breach = if self.budget.exceeded.get() {
            Some((None, Limit::Cpu))
        } else if let Some(breach) = self.state.borrow_mut().breach.take() {
            Some(breach)
        } else if self.memory_exhausted() {
            Some((None, Limit::Memory))
        } else {
            None
        };
        let Some((culprit, limit)) = breach else {
            return false;
        };
        let culprit = culprit.or(self.last_owner());

        let mut state = self.state.borrow_mut();
        let value = match limit {
            Limit::Cpu => format!("{} ms", self.limits.cpu_ms),
            Limit::Wall => format!("{} ms", self.limits.wall_ms),
            Limit::Memory => format!("{} bytes", self.limits.memory_bytes),
            Limit::Stack => format!("{} bytes", self.limits.stack_bytes),
        };
        tracing::error!(
            worker = %state.worker,
            request_id = %state.request_id(culprit),
            limit = limit.name(),
            limit_value = %value,
            "request exceeded the worker's {} limit; discarding the isolate",
            limit.name()
        );
        state.fail_all(|number| {
            if Some(number) == culprit {
                WorkerError::LimitExceeded(limit)
            } else {
                WorkerError::Discarded(limit)
            }
        });
        true
    }

    /// Fails `owner` for each promise that the turn left rejected without a handler, as an
    /// uncaught exception would. After the response, the rejection is only logged.
    fn report_rejections(&mut self, owner: Option<u64>) {
        let rejections = std::mem::take(&mut *self.rejections.borrow_mut());
        if rejections.is_empty() || self.budget.exceeded.get() {
            return;
        }
        let mut state = self.state.borrow_mut();
        for rejection in rejections {
            if rejection.out_of_memory {
                // The heap ran out inside a promise job: a memory breach, not a worker error.
                state.breach.get_or_insert((owner, Limit::Memory));
                continue;
            }
            let reason = state.source_maps.remap(&rejection.reason);
            let (first, stack) = reason.split_once('\n').unwrap_or((&reason, ""));
            let message = format!("Uncaught (in promise) {first}");
            tracing::error!(
                worker = %state.worker,
                request_id = %state.request_id(owner),
                outcome = "exception",
                error = %message,
                stack = %stack,
                "unhandled promise rejection"
            );
            if let Some(number) = owner.filter(|number| state.replies.contains_key(number)) {
                let error = WorkerError::Exception {
                    message,
                    stack: stack.to_owned(),
                    status: 500,
                };
                state.cancel(number, Some(error));
            }
            drop(rejection.promise);
        }
    }

    /// Moves the worker's heap gauge by the change in this isolate's heap since the last turn.
    fn report_heap(&mut self) {
        let bytes = self.heap.bytes();
        self.heap_gauge
            .increment(bytes as f64 - self.reported_heap as f64);
        self.reported_heap = bytes;
    }

    /// Fails each request still waiting for its response head past its wall-time deadline.
    fn expire_wall_deadlines(&mut self) {
        let now = Instant::now();
        let mut state = self.state.borrow_mut();
        while let Some(number) = state.pop_expired_request(now) {
            if !state.replies.get(&number).is_some_and(Reply::is_pending) {
                continue;
            }
            tracing::error!(
                worker = %state.worker,
                request_id = %state.request_id(Some(number)),
                limit = Limit::Wall.name(),
                limit_value = %format!("{} ms", self.limits.wall_ms),
                "request exceeded the worker's wall_ms limit; request canceled"
            );
            state.cancel(number, Some(WorkerError::LimitExceeded(Limit::Wall)));
        }
    }

    fn last_owner(&self) -> Option<u64> {
        self.state.borrow().last_owner
    }

    /// True when the heap stays above 90% of the memory limit even after garbage collection.
    fn memory_exhausted(&self) -> bool {
        let threshold = self.limits.memory_bytes / 10 * 9;
        // QuickJS's count walks the whole heap, so it runs only near the threshold.
        if !self.heap.may_exceed(threshold) {
            return false;
        }
        let threshold = threshold as i64;
        if self.runtime.memory_usage().malloc_size < threshold {
            return false;
        }
        self.runtime.run_gc();
        self.runtime.memory_usage().malloc_size >= threshold
    }
}

/// Handles an exception that escaped a turn, such as a timer callback that threw. A memory or
/// stack exhaustion is recorded as a breach. Any other exception is logged and fails the
/// request that owns the turn with 500, as an uncaught exception in its handler would.
fn report_uncaught(state: &mut HostState, owner: Option<u64>, description: &str) {
    let (first, stack) = description.split_once('\n').unwrap_or((description, ""));
    let (name, message) = first.split_once(": ").unwrap_or(("Error", first));
    if let Some(limit) = host::limit_of(name, message) {
        state.breach.get_or_insert((owner, limit));
        return;
    }
    tracing::error!(
        worker = %state.worker,
        request_id = %state.request_id(owner),
        outcome = "exception",
        error = %description,
        "uncaught exception in the worker"
    );
    if let Some(number) = owner.filter(|number| state.replies.contains_key(number)) {
        let error = WorkerError::Exception {
            message: format!("Uncaught {first}"),
            stack: stack.to_owned(),
            status: 500,
        };
        state.cancel(number, Some(error));
    }
}

/// Records a promise rejected with no handler, or removes it from the record when a handler
/// is attached later in the same turn.
fn track_rejection<'js>(
    ctx: &Ctx<'js>,
    rejections: &RefCell<Vec<Rejection>>,
    promise: Value<'js>,
    reason: Value<'js>,
    is_handled: bool,
    near_memory_limit: bool,
) {
    let Ok(mut rejections) = rejections.try_borrow_mut() else {
        return;
    };
    if is_handled {
        rejections.retain(|rejection| {
            rejection
                .promise
                .clone()
                .restore(ctx)
                .map_or(true, |known| known != promise)
        });
        return;
    }
    let out_of_memory = (reason.is_null() && near_memory_limit)
        || describe_value(&reason).starts_with("InternalError: out of memory");
    let reason = describe_value(&reason);
    rejections.push(Rejection {
        promise: Persistent::save(ctx, promise),
        reason,
        out_of_memory,
    });
}

/// Returns the worker's KV namespaces by binding name. Without a store on the node, the map is
/// empty and calls fail with a clear error instead.
fn kv_namespaces(spec: &WorkerSpec, services: &Services) -> HashMap<String, kiln_kv::Namespace> {
    let Some(kv) = &services.kv else {
        return HashMap::new();
    };
    spec.kv_namespaces
        .iter()
        .map(|(binding, id)| (binding.clone(), kv.namespace(id)))
        .collect()
}

/// Evaluates the prelude and the worker's main module, and hands the module's exports to the
/// prelude. Returns the prelude's host entry points.
fn load_worker(
    ctx: &Ctx<'_>,
    spec: &WorkerSpec,
    state: &SharedState,
) -> Result<Persistent<Object<'static>>, StartError> {
    let internal = |ctx: &Ctx<'_>, error: rquickjs::Error| {
        StartError(format!(
            "failed to set up the worker's globals: {}",
            describe_error(ctx, error)
        ))
    };
    let native = host::native_object(ctx, state).map_err(|err| internal(ctx, err))?;
    let prelude = bytecode::declare_builtin(ctx, "kiln:prelude", PRELUDE)
        .map_err(|err| internal(ctx, err))?;
    let (prelude, _) = prelude.eval().map_err(|err| internal(ctx, err))?;
    let factory: Function = prelude.get("default").map_err(|err| internal(ctx, err))?;
    let host: Object = factory.call((native,)).map_err(|err| internal(ctx, err))?;

    let resolver = WorkerResolver::new(&spec.root);
    let main = resolver
        .module_name(&spec.root.join(&spec.main))
        .map_err(StartError)?;
    let source_maps = state.borrow().source_maps.clone();
    let module_error = |ctx: &Ctx<'_>, error: rquickjs::Error| {
        let description = source_maps.remap(&describe_error(ctx, error));
        StartError(locate_error(&spec.root, &description))
    };
    let declared = match bytecode::declare(ctx, &resolver, &main, &source_maps) {
        Ok(module) => module,
        Err(DeclareError::Source(error)) => return Err(StartError(error.to_string())),
        Err(DeclareError::Engine(error)) => return Err(module_error(ctx, error)),
    };
    let (module, evaluated) = declared.eval().map_err(|err| module_error(ctx, err))?;
    while ctx.execute_pending_job() {}
    match evaluated.state() {
        PromiseState::Resolved => {}
        PromiseState::Rejected => {
            let error = evaluated
                .result::<Value>()
                .and_then(Result::err)
                .unwrap_or(rquickjs::Error::Exception);
            return Err(module_error(ctx, error));
        }
        PromiseState::Pending => {
            return Err(StartError(format!(
                "{main}: the module's top-level await never settled"
            )))
        }
    }

    let exports = module.namespace().map_err(|err| module_error(ctx, err))?;
    let mut vars = spec.vars.clone();
    for (name, value) in &spec.secrets.0 {
        vars.insert(name.clone(), serde_json::Value::String(value.clone()));
    }
    let vars = serde_json::Value::Object(vars).to_string();
    let init: Function = host.get("init").map_err(|err| internal(ctx, err))?;
    let kv_bindings: Vec<String> = spec
        .kv_namespaces
        .iter()
        .map(|(binding, _)| binding.clone())
        .collect();
    let has_scheduled: bool = init
        .call((exports, vars, spec.ai_binding.clone(), kv_bindings))
        .map_err(|err| StartError(format!("{main}: {}", describe_error(ctx, err))))?;
    state.borrow_mut().exports = ExportedHandlers {
        scheduled: has_scheduled,
    };
    Ok(Persistent::save(ctx, host))
}

/// Describes a QuickJS error: for a JavaScript exception, `Name: message` and the stack.
pub(crate) fn describe_error(ctx: &Ctx<'_>, error: rquickjs::Error) -> String {
    if !matches!(error, rquickjs::Error::Exception) {
        return error.to_string();
    }
    describe_value(&ctx.catch())
}

/// Describes a thrown value: for an `Error`, `Name: message` and the stack.
fn describe_value(value: &Value<'_>) -> String {
    if let Some(exception) = value.as_exception() {
        let name: String = exception
            .get::<_, Option<String>>("name")
            .ok()
            .flatten()
            .unwrap_or_else(|| "Error".into());
        let message = exception.message().unwrap_or_default();
        let stack = exception.stack().unwrap_or_default();
        return format!("{name}: {message}\n{}", stack.trim_end());
    }
    value
        .as_string()
        .and_then(|text| text.to_string().ok())
        .unwrap_or_else(|| format!("{value:?}"))
}

/// Puts the first `file:line:column` of a QuickJS stack in front of the message, followed by
/// that source line, so editors and terminals can jump to it.
fn locate_error(root: &std::path::Path, description: &str) -> String {
    let location = description.lines().find_map(|line| {
        let frame = line.trim().strip_prefix("at ")?;
        let frame = frame
            .rsplit_once('(')
            .map_or(frame, |(_, inner)| inner.trim_end_matches(')'));
        let mut parts = frame.rsplitn(3, ':');
        let column: usize = parts.next()?.parse().ok()?;
        let line: usize = parts.next()?.parse().ok()?;
        let file = parts.next()?;
        (!file.starts_with("kiln:")).then(|| (file.to_owned(), line, column))
    });
    let Some((file, line, column)) = location else {
        return description.to_owned();
    };
    let source_line = std::fs::read_to_string(root.join(&file))
        .ok()
        .and_then(|text| text.lines().nth(line.saturating_sub(1)).map(str::to_owned))
        .unwrap_or_default();
    let first = description.lines().next().unwrap_or("");
    format!("{file}:{line}:{column}: {first}\n    {source_line}\n{description}")
}
