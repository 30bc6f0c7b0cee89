//! Acknowledged puts on the embedded store survive SIGKILL.
//!
//! The test binary runs itself as a child with `KILN_KV_DURABILITY_CHILD` set to a redb path.
//! The child puts keys from several tasks at once and prints `acked {key}` after each put that
//! returned Ok. The parent kills it with SIGKILL mid-burst, reopens the file, and checks that
//! every acknowledged key is there with its value.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use bytes::Bytes;
use kiln_kv::{BackendConfig, Kv, PutOptions};

const CHILD_ENV: &str = "KILN_KV_DURABILITY_CHILD";
/// Acknowledgements the parent waits for before it kills the child.
const ACKS_BEFORE_KILL: usize = 300;
const WRITER_TASKS: usize = 8;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("build a tokio runtime");
    match std::env::var_os(CHILD_ENV) {
        Some(path) => runtime.block_on(put_until_killed(Path::new(&path))),
        None => {
            println!("\nrunning 1 test");
            runtime.block_on(acknowledged_puts_survive_sigkill());
            println!("test acknowledged_puts_survive_sigkill ... ok\n");
        }
    }
}

fn value_for(key: &str) -> Bytes {
    Bytes::from(format!("{key};").repeat(64))
}

async fn put_until_killed(path: &Path) {
    let kv = Kv::open(&BackendConfig::Embedded {
        path: path.to_path_buf(),
    })
    .await
    .expect("child: open the store");
    let ns = kv.namespace("durable");

    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..WRITER_TASKS {
        let ns = ns.clone();
        tasks.spawn(async move {
            for i in 0.. {
                let key = format!("t{task}-{i:07}");
                ns.put(&key, value_for(&key), PutOptions::default())
                    .await
                    .expect("child: put");
                // println! locks stdout per line, so lines from tasks do not interleave.
                println!("acked {key}");
            }
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.expect("child: writer task");
    }
}

async fn acknowledged_puts_survive_sigkill() {
    let dir = tempfile::tempdir().expect("create a temporary folder");
    let path = dir.path().join("kv.redb");
    let mut child = Command::new(std::env::current_exe().expect("path of the test binary"))
        .env(CHILD_ENV, &path)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the child process");

    let mut acked = Vec::new();
    let mut lines = BufReader::new(child.stdout.take().expect("child stdout is piped")).lines();
    while acked.len() < ACKS_BEFORE_KILL {
        let line = lines
            .next()
            .expect("the child exited before it acknowledged enough puts")
            .expect("read the child's output");
        acked.push(line);
    }
    // std's Child::kill sends SIGKILL on Unix.
    child.kill().expect("SIGKILL the child");
    // Lines the child printed before it died are acknowledged puts too.
    for line in lines {
        acked.push(line.expect("read the child's output"));
    }
    let status = child.wait().expect("wait for the child");
    assert!(
        !status.success(),
        "the child was killed, not finished: {status}"
    );

    let kv = Kv::open(&BackendConfig::Embedded { path: path.clone() })
        .await
        .expect("reopen the store after SIGKILL");
    let ns = kv.namespace("durable");
    for line in &acked {
        let key = line
            .strip_prefix("acked ")
            .expect("child lines start with 'acked '");
        let entry = ns.get(key, None).await.expect("read an acknowledged key");
        let entry = entry.unwrap_or_else(|| panic!("acknowledged key {key} is missing"));
        assert_eq!(entry.value, value_for(key), "value of {key}");
    }
    assert!(acked.len() >= ACKS_BEFORE_KILL);

    // The reopened file takes writes again.
    ns.put(
        "after-kill",
        Bytes::from_static(b"ok"),
        PutOptions::default(),
    )
    .await
    .unwrap();
    assert!(ns.get("after-kill", None).await.unwrap().is_some());
    eprintln!("{} acknowledged puts survived SIGKILL", acked.len());
}
