//! The embedded store's file: one opener at a time, data kept across close and reopen.

use bytes::Bytes;
use kiln_kv::{BackendConfig, Kv, KvError, PutOptions};

#[tokio::test]
async fn second_open_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let config = BackendConfig::Embedded {
        path: dir.path().join("kv.redb"),
    };
    let _first = Kv::open(&config).await.unwrap();
    match Kv::open(&config).await {
        Err(error @ KvError::Unavailable { .. }) => {
            let message = error.to_string();
            assert!(message.contains("already open"), "{message}");
            assert!(message.contains("kv.redb"), "{message}");
        }
        other => panic!("expected Unavailable for a file that is open, got {other:?}"),
    }
}

#[tokio::test]
async fn reopen_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    // A missing parent folder is created.
    let config = BackendConfig::Embedded {
        path: dir.path().join("nested/folder/kv.redb"),
    };
    let kv = Kv::open(&config).await.unwrap();
    let ns = kv.namespace("app");
    ns.put("k", Bytes::from_static(b"v"), PutOptions::default())
        .await
        .unwrap();
    kv.create_namespace("empty").await.unwrap();
    // Dropping the last clone closes the file, so it can be opened again at once.
    drop(ns);
    drop(kv);

    let kv = Kv::open(&config).await.unwrap();
    let entry = kv
        .namespace("app")
        .get("k", None)
        .await
        .unwrap()
        .expect("entry after reopen");
    assert_eq!(entry.value, Bytes::from_static(b"v"));
    assert_eq!(kv.list_namespaces().await.unwrap(), ["app", "empty"]);
}
