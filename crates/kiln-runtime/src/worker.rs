//! A running worker: a small pool of isolates, each on its own thread, and the handle that
//! sends them requests.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::oneshot;

use crate::binding::AiBinding;
use crate::isolate::{self, Event};
use crate::outbound::OutboundPolicy;

/// Everything needed to build the isolates of one worker version.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    /// The worker's name, used in logs.
    pub name: String,
    /// The worker folder: modules and `node_modules` are resolved inside it.
    pub root: PathBuf,
    /// The main module, relative to `root`.
    pub main: String,
    /// `[vars]`: values that appear on `env` as they are.
    pub vars: serde_json::Map<String, Value>,
    /// Secrets: strings that appear on `env`, replacing a var of the same name.
    pub secrets: Secrets,
    /// The `env` property of the `[ai]` binding, when the worker declares one.
    pub ai_binding: Option<String>,
    /// KV bindings: `env` property → namespace id.
    pub kv_namespaces: Vec<(String, String)>,
    pub limits: Limits,
    /// Maximum number of isolates that serve this worker at once. A request goes to an idle
    /// isolate, and when none is idle the pool grows up to this size before requests share one.
    pub max_isolates: usize,
    /// Hosts and addresses that the worker's `fetch()` may reach.
    pub outbound: Arc<OutboundPolicy>,
}

/// A worker's secrets, name → value. Its `Debug` output lists the names only, so that logging
/// a [`WorkerSpec`] cannot leak a value.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secrets(pub BTreeMap<String, String>);

impl std::fmt::Debug for Secrets {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_set().entries(self.0.keys()).finish()
    }
}

impl From<BTreeMap<String, String>> for Secrets {
    fn from(secrets: BTreeMap<String, String>) -> Self {
        Self(secrets)
    }
}

/// Resource limits of one worker's isolates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// JavaScript CPU time per request, in milliseconds. Time spent waiting for a model, a
    /// timer or a stream does not count.
    pub cpu_ms: u64,
    /// Time from a request's arrival to its response head, in milliseconds, waiting included.
    pub wall_ms: u64,
    /// Memory of one isolate's JavaScript heap, in bytes.
    pub memory_bytes: usize,
    /// Native stack that JavaScript may use, in bytes; deeper recursion throws a `RangeError`.
    pub stack_bytes: usize,
    /// Outbound `fetch()` calls and `env.AI.run` calls per request. Calls past it reject with
    /// `Error: Too many subrequests.`.
    pub subrequests: u32,
}

impl Default for Limits {
    /// Returns the hosted platform's defaults: 30 s of CPU per request, 128 MB per isolate and
    /// 50 subrequests per request (the free plan's limit), and five minutes of wall time.
    fn default() -> Self {
        Self {
            cpu_ms: 30_000,
            wall_ms: 300_000,
            memory_bytes: 128 * 1024 * 1024,
            stack_bytes: 1024 * 1024,
            subrequests: 50,
        }
    }
}

/// A limit that a request broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Cpu,
    Wall,
    Memory,
    Stack,
}

impl Limit {
    /// Returns the name used in logs and error messages, which is the configuration key where
    /// one exists.
    pub fn name(self) -> &'static str {
        match self {
            Limit::Cpu => "cpu_ms",
            Limit::Wall => "wall_ms",
            Limit::Memory => "memory",
            Limit::Stack => "stack",
        }
    }
}

impl std::fmt::Display for Limit {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.name())
    }
}

/// Node services that bindings reach.
#[derive(Clone)]
pub struct Services {
    pub ai: Option<Arc<dyn AiBinding>>,
    /// The node's KV store, for workers with KV bindings.
    pub kv: Option<kiln_kv::Kv>,
    /// The async runtime on which binding calls and response streams run.
    pub tokio: tokio::runtime::Handle,
}

/// An HTTP request for a worker, with its body already read.
#[derive(Debug, Clone)]
pub struct WorkerRequest {
    /// Unique id, shown in the worker's log lines.
    pub id: String,
    pub method: String,
    /// The absolute URL, e.g. `http://127.0.0.1:8787/path?q=1`.
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// `request.cf`.
    pub cf: Value,
}

/// The response body: complete, or streamed as the worker produces it.
pub enum ResponseBody {
    Bytes(Bytes),
    /// Chunks in order; an `Err` ends the stream early (the worker's stream failed).
    Stream(tokio::sync::mpsc::UnboundedReceiver<Result<Bytes, String>>),
}

pub struct WorkerResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: ResponseBody,
}

/// Failure of a request to a worker.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WorkerError {
    #[error("the worker threw an exception: {message}")]
    Exception {
        /// `Name: message`.
        message: String,
        stack: String,
        /// 503 when the exception came from a node service that is down (a KV store that cannot
        /// be reached), else 500.
        status: u16,
    },
    #[error("the worker exceeded its {0} limit")]
    LimitExceeded(Limit),
    #[error("the worker's isolate was discarded because another request exceeded the {0} limit")]
    Discarded(Limit),
    #[error("the worker is not running: {0}")]
    Unavailable(String),
}

impl WorkerError {
    /// Returns the outcome name used in logs and metrics, as the hosted platform's tail names
    /// it (`exception`, `exceededCpu`, …).
    pub fn outcome(&self) -> &'static str {
        match self {
            WorkerError::Exception { .. } | WorkerError::LimitExceeded(Limit::Stack) => "exception",
            WorkerError::LimitExceeded(Limit::Cpu) => "exceededCpu",
            WorkerError::LimitExceeded(Limit::Memory) => "exceededMemory",
            WorkerError::LimitExceeded(Limit::Wall) => "exceededWall",
            WorkerError::Discarded(_) | WorkerError::Unavailable(_) => "canceled",
        }
    }

    /// Returns the HTTP status sent to the client.
    pub fn status(&self) -> u16 {
        match self {
            WorkerError::Exception { status, .. } => *status,
            WorkerError::LimitExceeded(_)
            | WorkerError::Discarded(_)
            | WorkerError::Unavailable(_) => 503,
        }
    }
}

/// A worker that failed to start: a module failed to load or its top level threw.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct StartError(pub String);

/// Handle to a running worker. Cloning is cheap; the isolate threads stop when the last clone
/// is dropped.
#[derive(Clone)]
pub struct Worker {
    inner: Arc<WorkerInner>,
}

struct WorkerInner {
    spec: WorkerSpec,
    services: Services,
    isolates: RwLock<Vec<Arc<IsolateHandle>>>,
    /// Held while the pool grows, so that only one new isolate starts at a time.
    growing: Mutex<()>,
    /// Numbers requests across the pool; the isolates use it as the request's key.
    next_request: AtomicU64,
    /// The handlers that the main module's default export provides, besides `fetch`.
    exports: ExportedHandlers,
}

/// The handlers that the main module's default export provides, besides `fetch`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ExportedHandlers {
    pub scheduled: bool,
}

/// One isolate thread of the pool.
struct IsolateHandle {
    events: mpsc::Sender<Event>,
    /// The `kiln_worker_isolates` gauge of the worker, decremented when the isolate stops.
    alive: metrics::Gauge,
    /// Requests sent to this isolate whose response head has not arrived yet.
    in_flight: AtomicUsize,
}

impl Drop for IsolateHandle {
    fn drop(&mut self) {
        self.alive.decrement(1);
        let _ = self.events.send(Event::Shutdown);
    }
}

impl IsolateHandle {
    /// Starts an isolate thread and waits until the worker's modules have loaded in it.
    fn start(
        spec: &WorkerSpec,
        services: &Services,
    ) -> Result<(IsolateHandle, ExportedHandlers), StartError> {
        let (events, receiver) = mpsc::channel();
        let (ready, started) = mpsc::channel();
        let sender = events.clone();
        let thread_spec = spec.clone();
        let services = services.clone();
        std::thread::Builder::new()
            .name(format!("isolate-{}", spec.name))
            .stack_size(isolate::thread_stack_bytes(&spec.limits))
            .spawn(move || isolate::run_thread(thread_spec, services, sender, receiver, ready))
            .map_err(|err| StartError(format!("failed to start the isolate thread: {err}")))?;
        match started.recv() {
            Ok(Ok(exports)) => {
                let alive = metrics::gauge!("kiln_worker_isolates", "worker" => spec.name.clone());
                alive.increment(1);
                let isolate = IsolateHandle {
                    events,
                    alive,
                    in_flight: AtomicUsize::new(0),
                };
                Ok((isolate, exports))
            }
            Ok(Err(error)) => Err(error),
            Err(_) => Err(StartError(
                "the isolate thread stopped before the worker loaded".into(),
            )),
        }
    }

    /// Takes this isolate for a request if it has none in flight.
    fn claim_if_idle(&self) -> bool {
        self.in_flight
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

/// A request sent to an isolate. Dropping it before the response head arrives (the client went
/// away) cancels the request in the isolate.
struct InFlight {
    isolate: Arc<IsolateHandle>,
    number: u64,
    answered: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.isolate.in_flight.fetch_sub(1, Ordering::AcqRel);
        if !self.answered {
            let _ = self.isolate.events.send(Event::Cancel {
                number: self.number,
            });
        }
    }
}

impl Worker {
    /// Starts the worker's first isolate and waits until its modules have loaded. Blocks the
    /// calling thread while the modules compile: call it from a blocking context.
    pub fn start(spec: WorkerSpec, services: Services) -> Result<Worker, StartError> {
        let (first, exports) = IsolateHandle::start(&spec, &services)?;
        Ok(Worker {
            inner: Arc::new(WorkerInner {
                spec,
                services,
                isolates: RwLock::new(vec![Arc::new(first)]),
                growing: Mutex::new(()),
                next_request: AtomicU64::new(1),
                exports,
            }),
        })
    }

    pub fn name(&self) -> &str {
        &self.inner.spec.name
    }

    /// Number of isolates in the pool now.
    pub fn isolates(&self) -> usize {
        self.inner.isolates.read().map_or(0, |pool| pool.len())
    }

    /// Returns true when the default export has a `scheduled(controller, env, ctx)` method.
    pub fn has_scheduled_handler(&self) -> bool {
        self.inner.exports.scheduled
    }

    /// Sends a request to the worker and waits for the response head. Dropping the returned
    /// future cancels the request: its timers, model calls and streams stop.
    pub async fn fetch(&self, request: WorkerRequest) -> Result<WorkerResponse, WorkerError> {
        let isolate = self.claim_isolate().await;
        let (reply, response) = oneshot::channel();
        let mut in_flight = InFlight {
            number: self.inner.next_request.fetch_add(1, Ordering::Relaxed),
            isolate,
            answered: false,
        };
        let event = Event::Fetch {
            number: in_flight.number,
            request,
            reply,
        };
        if in_flight.isolate.events.send(event).is_err() {
            in_flight.answered = true;
            return Err(WorkerError::Unavailable(
                "the isolate thread has stopped".into(),
            ));
        }
        let result = response.await.unwrap_or_else(|_| {
            Err(WorkerError::Unavailable(
                "the isolate thread dropped the request".into(),
            ))
        });
        in_flight.answered = true;
        result
    }

    /// Runs the default export's `scheduled` handler for the cron trigger `cron` due at
    /// `scheduled_time`, under the same limits as a request. The event ends when the handler's
    /// promise and every `ctx.waitUntil` promise settle. Logs the outcome and returns it.
    pub async fn scheduled(
        &self,
        cron: &str,
        scheduled_time: SystemTime,
    ) -> Result<(), WorkerError> {
        let event_id = format!("scheduled-{}", uuid::Uuid::new_v4());
        let scheduled_time_ms = scheduled_time
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |since| since.as_millis() as f64);
        let isolate = self.claim_isolate().await;
        let (reply, outcome) = oneshot::channel();
        let mut in_flight = InFlight {
            number: self.inner.next_request.fetch_add(1, Ordering::Relaxed),
            isolate,
            answered: false,
        };
        let event = Event::Scheduled {
            number: in_flight.number,
            id: event_id.clone(),
            cron: cron.to_owned(),
            scheduled_time_ms,
            reply,
        };
        let result = if in_flight.isolate.events.send(event).is_ok() {
            outcome.await.unwrap_or_else(|_| {
                Err(WorkerError::Unavailable(
                    "the isolate thread dropped the scheduled event".into(),
                ))
            })
        } else {
            Err(WorkerError::Unavailable(
                "the isolate thread has stopped".into(),
            ))
        };
        in_flight.answered = true;
        match &result {
            Ok(()) => tracing::info!(
                worker = %self.name(),
                event_id = %event_id,
                cron = %cron,
                outcome = "ok",
                "scheduled event finished"
            ),
            Err(error) => tracing::error!(
                worker = %self.name(),
                event_id = %event_id,
                cron = %cron,
                outcome = error.outcome(),
                error = %error,
                "scheduled event failed"
            ),
        }
        result
    }

    /// Picks the isolate for a new request, counted as in flight on it: an idle one, else a new
    /// one while the pool may grow, else the one with the fewest requests in flight.
    async fn claim_isolate(&self) -> Arc<IsolateHandle> {
        if let Some(isolate) = self.inner.claim_idle() {
            return isolate;
        }
        if self.isolates() < self.inner.spec.max_isolates {
            let inner = Arc::clone(&self.inner);
            if let Ok(Some(isolate)) = tokio::task::spawn_blocking(move || inner.grow()).await {
                return isolate;
            }
        }
        self.inner.claim_least_loaded()
    }
}

impl WorkerInner {
    fn pool(&self) -> Vec<Arc<IsolateHandle>> {
        self.isolates
            .read()
            .map(|pool| pool.clone())
            .unwrap_or_default()
    }

    fn claim_idle(&self) -> Option<Arc<IsolateHandle>> {
        self.pool()
            .into_iter()
            .find(|isolate| isolate.claim_if_idle())
    }

    fn claim_least_loaded(&self) -> Arc<IsolateHandle> {
        let pool = self.pool();
        let isolate = pool
            .iter()
            .min_by_key(|isolate| isolate.in_flight.load(Ordering::Acquire))
            .expect("the pool contains its first isolate from the start");
        isolate.in_flight.fetch_add(1, Ordering::AcqRel);
        Arc::clone(isolate)
    }

    /// Adds an isolate to the pool and claims it, unless one became idle meanwhile (then that
    /// one is claimed) or the pool is full (`None`).
    fn grow(&self) -> Option<Arc<IsolateHandle>> {
        let _growing = self.growing.lock().unwrap_or_else(|err| err.into_inner());
        if let Some(isolate) = self.claim_idle() {
            return Some(isolate);
        }
        if self.pool().len() >= self.spec.max_isolates {
            return None;
        }
        let started = std::time::Instant::now();
        match IsolateHandle::start(&self.spec, &self.services) {
            Ok((isolate, _)) => {
                isolate.in_flight.store(1, Ordering::Release);
                let isolate = Arc::new(isolate);
                let mut pool = self.isolates.write().unwrap_or_else(|err| err.into_inner());
                pool.push(Arc::clone(&isolate));
                tracing::info!(
                    worker = %self.spec.name,
                    isolates = pool.len(),
                    ms = started.elapsed().as_secs_f64() * 1000.0,
                    "isolate added to the pool"
                );
                Some(isolate)
            }
            Err(error) => {
                tracing::error!(worker = %self.spec.name, error = %error, "failed to add an isolate");
                None
            }
        }
    }
}
