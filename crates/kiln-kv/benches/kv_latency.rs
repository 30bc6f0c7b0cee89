//! Latency of KV operations on both backends, printed as percentiles.
//!
//! Run: `cargo bench -p kiln-kv --bench kv_latency`. Redis runs on a local redis-server that
//! the benchmark starts, so its numbers include a loopback round trip. Embedded put latency is
//! dominated by fsync and so depends on the disk.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kiln_kv::test_support::RedisServer;
use kiln_kv::{BackendConfig, Kv, ListOptions, Namespace, PutOptions};

const KEYS: usize = 10_000;
const GETS: usize = 100_000;
const SEQUENTIAL_PUTS: usize = 200;
const CONCURRENT_TASKS: usize = 64;
const PUTS_PER_TASK: usize = 50;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("build a tokio runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("create a temporary folder");
        let embedded = BackendConfig::Embedded {
            path: dir.path().join("bench.redb"),
        };
        run("embedded", &embedded).await;

        let server = RedisServer::start().expect("start redis-server");
        let redis = BackendConfig::Redis { url: server.url() };
        run("redis", &redis).await;
    });
}

async fn run(name: &str, config: &BackendConfig) {
    let kv = Kv::open(config).await.expect("open the store");
    let ns = kv.namespace("bench");
    let value = Bytes::from(vec![b'v'; 100]);
    fill(&ns, &value).await;

    let keys: Vec<String> = (0..KEYS).map(|i| format!("key-{i:06}")).collect();
    let gets = GETS / if name == "redis" { 10 } else { 1 };
    let mut next = 0;
    report(name, "get (100-byte value, hit)", gets, || {
        next = (next + 7919) % KEYS;
        let key = keys[next].clone();
        let ns = ns.clone();
        async move {
            let entry = ns.get(&key, None).await.expect("get");
            assert!(entry.is_some());
        }
    })
    .await;
    report(name, "get (miss)", gets, || {
        let ns = ns.clone();
        async move {
            assert!(ns.get("absent", None).await.expect("get").is_none());
        }
    })
    .await;
    report(name, "list (1000 keys)", 200, || {
        let ns = ns.clone();
        async move {
            let page = ns.list(ListOptions::default()).await.expect("list");
            assert_eq!(page.keys.len(), 1000);
        }
    })
    .await;
    let mut counter = 0;
    report(name, "put, one at a time", SEQUENTIAL_PUTS, || {
        counter += 1;
        let key = format!("seq-{counter}");
        let ns = ns.clone();
        let value = value.clone();
        async move {
            ns.put(&key, value, PutOptions::default())
                .await
                .expect("put");
        }
    })
    .await;
    concurrent_puts(name, &ns, &value).await;
}

async fn fill(ns: &Namespace, value: &Bytes) {
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..CONCURRENT_TASKS {
        let ns = ns.clone();
        let value = value.clone();
        tasks.spawn(async move {
            for i in (task..KEYS).step_by(CONCURRENT_TASKS) {
                let key = format!("key-{i:06}");
                ns.put(&key, value.clone(), PutOptions::default())
                    .await
                    .expect("put");
            }
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.expect("fill task");
    }
}

async fn concurrent_puts(name: &str, ns: &Namespace, value: &Bytes) {
    let started = Instant::now();
    let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..CONCURRENT_TASKS {
        let ns = ns.clone();
        let value = value.clone();
        let latencies = latencies.clone();
        tasks.spawn(async move {
            for i in 0..PUTS_PER_TASK {
                let key = format!("con-{task}-{i}");
                let put_started = Instant::now();
                ns.put(&key, value.clone(), PutOptions::default())
                    .await
                    .expect("put");
                latencies.lock().unwrap().push(put_started.elapsed());
            }
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.expect("put task");
    }
    let elapsed = started.elapsed();
    let total = CONCURRENT_TASKS * PUTS_PER_TASK;
    let mut latencies = latencies.lock().unwrap().clone();
    print_percentiles(
        name,
        &format!("put, {CONCURRENT_TASKS} tasks at once"),
        &mut latencies,
    );
    println!(
        "{name:>8}  {:<28} {:.0} puts/s",
        "  throughput",
        total as f64 / elapsed.as_secs_f64()
    );
}

async fn report<F, Fut>(name: &str, label: &str, count: usize, mut operation: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut latencies = Vec::with_capacity(count);
    for _ in 0..count {
        let future = operation();
        let started = Instant::now();
        future.await;
        latencies.push(started.elapsed());
    }
    print_percentiles(name, label, &mut latencies);
}

fn print_percentiles(name: &str, label: &str, latencies: &mut [Duration]) {
    latencies.sort();
    let at = |quantile: f64| {
        let index = ((latencies.len() as f64 - 1.0) * quantile).round() as usize;
        latencies[index].as_secs_f64() * 1e6
    };
    println!(
        "{name:>8}  {label:<28} p50 {:>9.1} µs  p90 {:>9.1} µs  p99 {:>9.1} µs  (n = {})",
        at(0.5),
        at(0.9),
        at(0.99),
        latencies.len()
    );
}
