//! The Redis backend when the server is down, hangs, or comes back.

use std::net::{Ipv4Addr, TcpListener};
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use kiln_kv::test_support::RedisServer;
use kiln_kv::{BackendConfig, Kv, KvError, ListOptions, PutOptions};

/// Fails the test if an operation hangs. The store's own bound is a few seconds, so this guard
/// only trips on a real hang; it asserts nothing about speed.
const HANG_GUARD: Duration = Duration::from_secs(30);

async fn guarded<T>(operation: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(HANG_GUARD, operation)
        .await
        .expect("the KV operation hung instead of failing within its timeout")
}

fn assert_unavailable<T: std::fmt::Debug>(result: Result<T, KvError>, port: u16) -> String {
    match result {
        Err(error @ KvError::Unavailable { .. }) => {
            assert_eq!(error.status(), 503);
            let message = error.to_string();
            eprintln!("{message}");
            assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
            assert!(
                message.contains("Check that the Redis server is running"),
                "{message}"
            );
            message
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid} failed");
}

#[tokio::test]
async fn outage_then_recovery_same_kv() {
    let mut server = RedisServer::start().expect("start redis-server");
    let port = server.port();
    let kv = Kv::open(&BackendConfig::Redis { url: server.url() })
        .await
        .unwrap();
    let ns = kv.namespace("app");
    ns.put("k", Bytes::from_static(b"before"), PutOptions::default())
        .await
        .unwrap();

    server.stop();
    let message = assert_unavailable(guarded(ns.get("k", None)).await, port);
    assert!(
        message.starts_with("KV GET failed: 503 Redis KV store at"),
        "{message}"
    );
    let put = guarded(ns.put("k", Bytes::from_static(b"during"), PutOptions::default())).await;
    assert!(assert_unavailable(put, port).starts_with("KV PUT failed: 503"));
    assert_unavailable(guarded(ns.delete("k")).await, port);
    assert_unavailable(guarded(ns.list(ListOptions::default())).await, port);
    assert_unavailable(guarded(ns.get_many(&["k".to_string()], None)).await, port);
    assert_unavailable(guarded(kv.list_namespaces()).await, port);
    assert_unavailable(guarded(kv.create_namespace("other")).await, port);

    // The restarted server is empty (no persistence), so the old key is gone; the same Kv
    // writes and reads again without being reopened.
    server.restart().expect("restart redis-server");
    assert_eq!(guarded(ns.get("k", None)).await.unwrap(), None);
    guarded(ns.put("k", Bytes::from_static(b"after"), PutOptions::default()))
        .await
        .unwrap();
    let entry = guarded(ns.get("k", None))
        .await
        .unwrap()
        .expect("entry written after restart");
    assert_eq!(entry.value, Bytes::from_static(b"after"));
    assert_eq!(guarded(kv.list_namespaces()).await.unwrap(), ["app"]);
}

#[tokio::test]
async fn hung_server_times_out() {
    let server = RedisServer::start().expect("start redis-server");
    let port = server.port();
    let kv = Kv::open(&BackendConfig::Redis { url: server.url() })
        .await
        .unwrap();
    let ns = kv.namespace("app");
    ns.put("k", Bytes::from_static(b"v"), PutOptions::default())
        .await
        .unwrap();

    let pid = server.pid().expect("server is running");
    signal(pid, "STOP");
    let result = guarded(ns.get("k", None)).await;
    signal(pid, "CONT");
    assert_unavailable(result, port);

    let entry = guarded(ns.get("k", None))
        .await
        .unwrap()
        .expect("entry after the server resumed");
    assert_eq!(entry.value, Bytes::from_static(b"v"));
}

#[tokio::test]
async fn open_fails_fast_and_hides_password() {
    // A port that was free a moment ago, with nothing listening.
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://:hunter2@127.0.0.1:{port}/0");
    let message = assert_unavailable(guarded(Kv::open(&BackendConfig::Redis { url })).await, port);
    assert!(!message.contains("hunter2"), "{message}");
    assert!(message.contains("redis://:***@127.0.0.1"), "{message}");
    assert!(message.starts_with("KV OPEN failed: 503"), "{message}");
}

#[tokio::test]
async fn open_times_out_on_silent_server() {
    // Accepts connections but never replies, like a server that hangs.
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let url = format!("redis://127.0.0.1:{port}/0");
    let result = guarded(Kv::open(&BackendConfig::Redis { url })).await;
    assert_unavailable(result, port);
    drop(listener);
}

#[tokio::test]
async fn invalid_url_is_unavailable() {
    let url = "http://user:hunter2@127.0.0.1:1/".to_string();
    match Kv::open(&BackendConfig::Redis { url }).await {
        Err(KvError::Unavailable { message, .. }) => {
            assert!(message.contains("the URL is invalid"), "{message}");
            assert!(!message.contains("hunter2"), "{message}");
        }
        other => panic!("expected Unavailable for a non-Redis URL, got {other:?}"),
    }
}
