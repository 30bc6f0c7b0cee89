//! Isolate cold start and memory per idle isolate, for the hello-world worker in
//! bench/hello-worker.
//!
//! Run: `cargo bench -p kiln-runtime --bench worker_start`, or the built binary with `--tsv`
//! for one `metric<TAB>value` line per figure (scripts/bench-workers.sh does that).
//!
//! - Cold start: starts a `Worker` with `max_isolates: 1` (one isolate thread, the prelude and
//!   the worker's module loaded), sends it one GET request, waits for the response and drops
//!   the worker, STARTS times. The first start compiles the prelude and the module. Modules are
//!   cached as bytecode for the whole process, so every later start loads bytecode, as a
//!   rebuilt isolate or a pool that grows does in `kiln dev`. The first start is reported
//!   apart from the p50 and p99 of the others.
//! - Memory per idle isolate: starts one worker, sends it a request and reads the process's
//!   resident set size (VmRSS). Then it starts ISOLATES - 1 more, sends each one request and
//!   reads it again. The figure is the difference over ISOLATES - 1. Each worker is one isolate
//!   on its own thread, so this includes the thread's stack pages that the isolate touched.
//!
//! Environment: STARTS (default 200), ISOLATES (50, at least 2), WORKER_DIR (the worker folder,
//! default bench/hello-worker, whose main module is index.js).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kiln_runtime::{Limits, ResponseBody, Services, Worker, WorkerRequest, WorkerSpec};

fn main() {
    let tsv = std::env::args().any(|arg| arg == "--tsv");
    let starts = env_count("STARTS", 200, 2);
    let isolates = env_count("ISOLATES", 50, 2);
    let root = std::env::var_os("WORKER_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../bench/hello-worker"),
        PathBuf::from,
    );
    let root = root
        .canonicalize()
        .unwrap_or_else(|err| panic!("worker folder {} not found: {err}", root.display()));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("build a tokio runtime");
    let services = Services {
        ai: None,
        kv: None,
        tokio: runtime.handle().clone(),
    };
    let bench = Bench {
        spec: WorkerSpec {
            name: "hello-bench".into(),
            root,
            main: "index.js".into(),
            vars: serde_json::Map::new(),
            secrets: Default::default(),
            ai_binding: None,
            kv_namespaces: Vec::new(),
            limits: Limits::default(),
            max_isolates: 1,
            outbound: Default::default(),
        },
        services,
        runtime,
    };

    let mut times: Vec<Duration> = (0..starts).map(|_| bench.cold_start()).collect();
    let first = times.remove(0);
    times.sort();
    let per_isolate = bench.memory_per_isolate(isolates);

    let rows = [
        ("cold_start_first_us", micros(first)),
        ("cold_start_p50_us", micros(percentile(&times, 0.50))),
        ("cold_start_p99_us", micros(percentile(&times, 0.99))),
        ("cold_start_samples", times.len() as f64),
        ("memory_per_isolate_kib", per_isolate / 1024.0),
        ("memory_isolates", isolates as f64),
    ];
    if tsv {
        for (metric, value) in rows {
            println!("{metric}\t{value:.1}");
        }
        return;
    }
    println!(
        "isolate start to first response, first start (compiles the modules): {:.0} µs",
        micros(first)
    );
    println!(
        "isolate start to first response, {} later starts (bytecode cache warm): p50 {:.0} µs, \
         p99 {:.0} µs",
        times.len(),
        micros(percentile(&times, 0.50)),
        micros(percentile(&times, 0.99))
    );
    println!(
        "memory per idle isolate over {isolates} isolates, after one request each: {:.0} KiB",
        per_isolate / 1024.0
    );
}

struct Bench {
    spec: WorkerSpec,
    services: Services,
    runtime: tokio::runtime::Runtime,
}

impl Bench {
    fn start(&self) -> Worker {
        Worker::start(self.spec.clone(), self.services.clone())
            .unwrap_or_else(|err| panic!("the worker failed to start: {err}"))
    }

    /// Sends one GET request and checks that the response is a 200 with a body.
    fn request(&self, worker: &Worker) {
        let request = WorkerRequest {
            id: "bench".into(),
            method: "GET".into(),
            url: "http://127.0.0.1/".into(),
            headers: vec![("host".into(), "127.0.0.1".into())],
            body: Bytes::new(),
            cf: serde_json::json!({}),
        };
        let response = self
            .runtime
            .block_on(worker.fetch(request))
            .unwrap_or_else(|err| panic!("the request failed: {err}"));
        assert_eq!(
            response.status, 200,
            "the worker answered {}",
            response.status
        );
        let ResponseBody::Bytes(body) = response.body else {
            panic!("the worker streamed its response instead of returning bytes");
        };
        assert!(!body.is_empty(), "the worker answered with an empty body");
    }

    /// Times one worker from its start to its first response.
    fn cold_start(&self) -> Duration {
        let started = Instant::now();
        let worker = self.start();
        self.request(&worker);
        let elapsed = started.elapsed();
        drop(worker);
        elapsed
    }

    /// Returns (RSS with `count` workers - RSS with one) / (count - 1), in bytes.
    fn memory_per_isolate(&self, count: usize) -> f64 {
        let first = self.start();
        self.request(&first);
        let one = resident_bytes();
        let mut workers = vec![first];
        for _ in 1..count {
            let worker = self.start();
            self.request(&worker);
            workers.push(worker);
        }
        let all = resident_bytes();
        drop(workers);
        (all as f64 - one as f64) / (count - 1) as f64
    }
}

/// Reads a count from the environment, with a default and a minimum.
fn env_count(name: &str, default: usize, minimum: usize) -> usize {
    let Ok(text) = std::env::var(name) else {
        return default;
    };
    match text.parse::<usize>() {
        Ok(value) if value >= minimum => value,
        _ => panic!("{name}={text} is invalid: expected an integer of at least {minimum}"),
    }
}

/// Reads the process's resident set size (VmRSS in /proc/self/status), in bytes.
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .expect("/proc/self/status has a VmRSS line");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|value| value.parse().ok())
        .expect("VmRSS is a number of kB");
    kib * 1024
}

/// Returns the nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    let rank = (fraction * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}
