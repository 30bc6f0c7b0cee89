//! Live tails of deployed workers: `GET /admin/v1/workers/{name}/tail` streams one JSON line
//! per finished request of the worker, with the `console` output of that request, in the shape
//! of the hosted platform's tail events.
//!
//! Console lines reach the hub through [`TailLayer`], a `tracing` layer that receives the events
//! that isolates log under the `kiln::worker` target. They wait in the hub until their request
//! ends, and only while the worker has a tail. Each tail has a bounded queue: when a client
//! reads too slowly its events are dropped and counted, so the worker never waits for it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio::sync::mpsc;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

/// Events a tail may hold before later ones are dropped.
const QUEUE: usize = 256;

/// Console lines kept for requests still running, across all tailed workers; past it the
/// oldest requests' lines are dropped.
const MAX_PENDING_REQUESTS: usize = 10_000;

/// The filter of the requests that a tail receives.
#[derive(Debug, Clone, Copy)]
pub struct TailFilter {
    /// `Some(true)`: only `ok` outcomes; `Some(false)`: only the others.
    pub ok: Option<bool>,
    /// Share of requests sent, 0 to 1.
    pub sample: f64,
}

struct Subscriber {
    id: u64,
    sender: mpsc::Sender<Arc<str>>,
    filter: TailFilter,
    /// Events dropped since the last one that fit, reported in the next line that fits.
    dropped: u64,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    subscribers: HashMap<String, Vec<Subscriber>>,
    /// Request id → console entries of a tailed worker's running request.
    pending: HashMap<String, Vec<Value>>,
}

/// The node's tails.
#[derive(Default)]
pub struct TailHub {
    inner: Mutex<Inner>,
    /// Number of tails, read without the lock by the logging path.
    tails: AtomicUsize,
}

/// A request that ended, as the tail reports it.
pub struct FinishedRequest<'a> {
    pub worker: &'a str,
    pub version: Option<u64>,
    pub request_id: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub outcome: &'a str,
}

/// Ends a tail when its stream is dropped.
pub struct TailGuard {
    hub: &'static TailHub,
    worker: String,
    id: u64,
}

impl Drop for TailGuard {
    fn drop(&mut self) {
        self.hub.unsubscribe(&self.worker, self.id);
    }
}

impl TailHub {
    /// Returns the hub of this process, shared by the logging layer and the HTTP front.
    pub fn global() -> &'static TailHub {
        static HUB: OnceLock<TailHub> = OnceLock::new();
        HUB.get_or_init(TailHub::default)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Starts a tail of `worker`. The receiver gets one JSON text per event; the tail ends
    /// when the guard is dropped.
    pub fn subscribe(
        &'static self,
        worker: &str,
        filter: TailFilter,
    ) -> (mpsc::Receiver<Arc<str>>, TailGuard) {
        let (sender, receiver) = mpsc::channel(QUEUE);
        let mut inner = self.lock();
        inner.next_id += 1;
        let id = inner.next_id;
        inner
            .subscribers
            .entry(worker.to_owned())
            .or_default()
            .push(Subscriber {
                id,
                sender,
                filter,
                dropped: 0,
            });
        self.tails.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!("kiln_tails", "worker" => worker.to_owned()).increment(1.0);
        tracing::info!(worker, tail = id, "tail connected");
        let guard = TailGuard {
            hub: self,
            worker: worker.to_owned(),
            id,
        };
        (receiver, guard)
    }

    fn unsubscribe(&self, worker: &str, id: u64) {
        let mut inner = self.lock();
        let Some(subscribers) = inner.subscribers.get_mut(worker) else {
            return;
        };
        let before = subscribers.len();
        subscribers.retain(|subscriber| subscriber.id != id);
        let removed = before - subscribers.len();
        if subscribers.is_empty() {
            inner.subscribers.remove(worker);
        }
        if removed > 0 {
            self.tails.fetch_sub(removed, Ordering::Relaxed);
            metrics::gauge!("kiln_tails", "worker" => worker.to_owned()).decrement(removed as f64);
            tracing::info!(worker, tail = id, "tail disconnected");
        }
    }

    /// Ends every tail, so that their connections close when the node shuts down.
    pub fn close_all(&self) {
        let mut inner = self.lock();
        for (worker, subscribers) in inner.subscribers.drain() {
            self.tails.fetch_sub(subscribers.len(), Ordering::Relaxed);
            metrics::gauge!("kiln_tails", "worker" => worker).set(0.0);
        }
        inner.pending.clear();
    }

    /// Keeps a console line of a tailed worker's request until the request ends.
    fn console(&self, worker: &str, request_id: &str, level: &str, message: String) {
        let mut inner = self.lock();
        if !inner.subscribers.contains_key(worker) || request_id.is_empty() {
            return;
        }
        if inner.pending.len() >= MAX_PENDING_REQUESTS && !inner.pending.contains_key(request_id) {
            inner.pending.clear();
        }
        let level = match level {
            "ERROR" => "error",
            "WARN" => "warn",
            "DEBUG" | "TRACE" => "debug",
            _ => "log",
        };
        inner
            .pending
            .entry(request_id.to_owned())
            .or_default()
            .push(json!({
                "message": [message],
                "level": level,
                "timestamp": now_ms(),
            }));
    }

    /// Sends a finished request, with its console lines, to the worker's tails.
    pub fn finish(&self, request: FinishedRequest<'_>) {
        if self.tails.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut inner = self.lock();
        let logs = inner.pending.remove(request.request_id).unwrap_or_default();
        let Some(subscribers) = inner.subscribers.get_mut(request.worker) else {
            return;
        };
        let event: Arc<str> = json!({
            "scriptName": request.worker,
            "scriptVersion": { "id": request.version.map(|version| version.to_string()) },
            "outcome": request.outcome,
            "eventTimestamp": now_ms(),
            "requestId": request.request_id,
            "event": {
                "request": { "method": request.method, "path": request.path },
                "response": { "status": request.status },
            },
            "logs": logs,
            "exceptions": [],
        })
        .to_string()
        .into();
        let ok = request.outcome == "ok";
        for subscriber in subscribers.iter_mut() {
            let selected = subscriber.filter.ok.is_none_or(|want_ok| want_ok == ok)
                && (subscriber.filter.sample >= 1.0
                    || rand::random::<f64>() < subscriber.filter.sample);
            if !selected {
                continue;
            }
            if subscriber.dropped > 0 {
                let notice: Arc<str> = json!({ "dropped": subscriber.dropped }).to_string().into();
                if subscriber.sender.try_send(notice).is_ok() {
                    subscriber.dropped = 0;
                }
            }
            if subscriber.sender.try_send(Arc::clone(&event)).is_err() {
                subscriber.dropped += 1;
                metrics::counter!("kiln_tail_dropped_events_total", "worker" => request.worker.to_owned())
                    .increment(1);
            }
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// Sends the `console` output of workers (events of the `kiln::worker` target) to the tail hub.
pub struct TailLayer;

impl<S: tracing::Subscriber> Layer<S> for TailLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let hub = TailHub::global();
        if hub.tails.load(Ordering::Relaxed) == 0 || event.metadata().target() != "kiln::worker" {
            return;
        }
        let mut fields = ConsoleFields::default();
        event.record(&mut fields);
        hub.console(
            &fields.worker,
            &fields.request_id,
            event.metadata().level().as_str(),
            fields.message,
        );
    }
}

#[derive(Default)]
struct ConsoleFields {
    worker: String,
    request_id: String,
    message: String,
}

impl Visit for ConsoleFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "worker" => self.worker = value.to_owned(),
            "request_id" => self.request_id = value.to_owned(),
            "message" => self.message = value.to_owned(),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        self.record_str(field, &text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished<'a>(worker: &'a str, request_id: &'a str, outcome: &'a str) -> FinishedRequest<'a> {
        FinishedRequest {
            worker,
            version: Some(3),
            request_id,
            method: "GET",
            path: "/",
            status: 200,
            outcome,
        }
    }

    #[test]
    fn events_carry_console_lines_and_follow_filters() {
        let hub: &'static TailHub = Box::leak(Box::default());
        let everything = TailFilter {
            ok: None,
            sample: 1.0,
        };
        let errors = TailFilter {
            ok: Some(false),
            sample: 1.0,
        };
        let (mut all, _all_guard) = hub.subscribe("w", everything);
        let (mut failed, _failed_guard) = hub.subscribe("w", errors);
        hub.console("w", "r1", "INFO", "hello".into());
        hub.console("other", "r9", "INFO", "not tailed".into());
        hub.finish(finished("w", "r1", "ok"));
        hub.finish(finished("w", "r2", "exception"));

        let first: Value = serde_json::from_str(&all.try_recv().unwrap()).unwrap();
        assert_eq!(first["logs"][0]["message"][0], "hello");
        assert_eq!(first["scriptVersion"]["id"], "3");
        let second: Value = serde_json::from_str(&all.try_recv().unwrap()).unwrap();
        assert_eq!(second["outcome"], "exception");
        let only: Value = serde_json::from_str(&failed.try_recv().unwrap()).unwrap();
        assert_eq!(only["requestId"], "r2");
        assert!(failed.try_recv().is_err());
        assert!(hub.lock().pending.is_empty());
    }

    #[test]
    fn slow_tail_drops_and_counts() {
        let hub: &'static TailHub = Box::leak(Box::default());
        let (mut receiver, _guard) = hub.subscribe(
            "w",
            TailFilter {
                ok: None,
                sample: 1.0,
            },
        );
        for index in 0..QUEUE + 10 {
            hub.finish(finished("w", &index.to_string(), "ok"));
        }
        let mut received = 0;
        while receiver.try_recv().is_ok() {
            received += 1;
        }
        assert_eq!(received, QUEUE);
        hub.finish(finished("w", "late", "ok"));
        let notice: Value = serde_json::from_str(&receiver.try_recv().unwrap()).unwrap();
        assert_eq!(notice["dropped"], 10);
    }
}
