//! A running worker: one isolate on its own thread, and the handle that sends it requests.

use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::oneshot;

use crate::binding::AiBinding;
use crate::isolate::{self, Event};

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
    /// The `env` property of the `[ai]` binding, when the worker declares one.
    pub ai_binding: Option<String>,
    /// KV bindings: `env` property → namespace id.
    pub kv_namespaces: Vec<(String, String)>,
    pub limits: Limits,
}

/// Resource limits of one worker's isolates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// JavaScript CPU time per request, in milliseconds. Time spent waiting for a model, a
    /// timer or a stream does not count.
    pub cpu_ms: u64,
    /// Memory of one isolate's JavaScript heap, in bytes.
    pub memory_bytes: usize,
    /// Native stack that JavaScript may use, in bytes; deeper recursion throws a `RangeError`.
    pub stack_bytes: usize,
}

impl Default for Limits {
    /// Returns the hosted platform's defaults: 30 s of CPU per request and 128 MB per isolate.
    fn default() -> Self {
        Self {
            cpu_ms: 30_000,
            memory_bytes: 128 * 1024 * 1024,
            stack_bytes: 1024 * 1024,
        }
    }
}

/// A limit that a request broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Cpu,
    Memory,
    Stack,
}

impl Limit {
    /// Returns the name used in logs and error messages, which is the configuration key where
    /// one exists.
    pub fn name(self) -> &'static str {
        match self {
            Limit::Cpu => "cpu_ms",
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
    #[error("the worker exceeded its {0} limit; its isolate was discarded")]
    LimitExceeded(Limit),
    #[error("the worker's isolate was discarded because another request exceeded the {0} limit")]
    Discarded(Limit),
    #[error("the worker is not running: {0}")]
    Unavailable(String),
}

impl WorkerError {
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

/// Handle to a running worker. Cloning is cheap; the isolate thread stops when the last clone
/// is dropped.
#[derive(Clone)]
pub struct Worker {
    inner: Arc<WorkerInner>,
}

struct WorkerInner {
    name: String,
    events: Mutex<mpsc::Sender<Event>>,
    exports: ExportedHandlers,
}

/// The handlers that the main module's default export provides, besides `fetch`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ExportedHandlers {
    pub scheduled: bool,
}

impl Drop for WorkerInner {
    fn drop(&mut self) {
        if let Ok(events) = self.events.lock() {
            let _ = events.send(Event::Shutdown);
        }
    }
}

impl Worker {
    /// Starts the worker's isolate thread and waits until its modules have loaded. Blocks the
    /// calling thread while the modules compile: call it from a blocking context.
    pub fn start(spec: WorkerSpec, services: Services) -> Result<Worker, StartError> {
        let (events, receiver) = mpsc::channel();
        let (ready, started) = mpsc::channel();
        let name = spec.name.clone();
        let sender = events.clone();
        std::thread::Builder::new()
            .name(format!("isolate-{}", spec.name))
            .stack_size(isolate::thread_stack_bytes(&spec.limits))
            .spawn(move || isolate::run_thread(spec, services, sender, receiver, ready))
            .map_err(|err| StartError(format!("failed to start the isolate thread: {err}")))?;
        match started.recv() {
            Ok(Ok(exports)) => Ok(Worker {
                inner: Arc::new(WorkerInner {
                    name,
                    events: Mutex::new(events),
                    exports,
                }),
            }),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(StartError(
                "the isolate thread stopped before the worker loaded".into(),
            )),
        }
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Returns true when the default export has a `scheduled(controller, env, ctx)` method.
    pub fn has_scheduled_handler(&self) -> bool {
        self.inner.exports.scheduled
    }

    /// Sends a request to the worker and waits for the response head.
    pub async fn fetch(&self, request: WorkerRequest) -> Result<WorkerResponse, WorkerError> {
        let (reply, response) = oneshot::channel();
        let sent = match self.inner.events.lock() {
            Ok(events) => events.send(Event::Fetch { request, reply }).is_ok(),
            Err(_) => false,
        };
        if !sent {
            return Err(WorkerError::Unavailable(
                "the isolate thread has stopped".into(),
            ));
        }
        response.await.unwrap_or_else(|_| {
            Err(WorkerError::Unavailable(
                "the isolate thread dropped the request".into(),
            ))
        })
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
        let (reply, outcome) = oneshot::channel();
        let event = Event::Scheduled {
            id: event_id.clone(),
            cron: cron.to_owned(),
            scheduled_time_ms,
            reply,
        };
        let sent = match self.inner.events.lock() {
            Ok(events) => events.send(event).is_ok(),
            Err(_) => false,
        };
        let result = if sent {
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
        match &result {
            Ok(()) => tracing::info!(
                worker = %self.inner.name,
                event_id = %event_id,
                cron = %cron,
                outcome = "ok",
                "scheduled event finished"
            ),
            Err(error) => tracing::error!(
                worker = %self.inner.name,
                event_id = %event_id,
                cron = %cron,
                outcome = scheduled_outcome(error),
                error = %error,
                "scheduled event failed"
            ),
        }
        result
    }
}

/// Names a failed scheduled event's outcome with the `outcome` values of the hosted platform's
/// Tail Worker events.
fn scheduled_outcome(error: &WorkerError) -> &'static str {
    match error {
        WorkerError::Exception { .. } | WorkerError::LimitExceeded(Limit::Stack) => "exception",
        WorkerError::LimitExceeded(Limit::Cpu) => "exceededCpu",
        WorkerError::LimitExceeded(Limit::Memory) => "exceededMemory",
        WorkerError::Discarded(_) | WorkerError::Unavailable(_) => "canceled",
    }
}
