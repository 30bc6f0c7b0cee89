//! A worker in a temporary folder with a scripted AI binding, for runtime tests.

// Each test binary includes this module and uses only part of it.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::StreamExt;
use kiln_runtime::{
    AiBinding, AiError, AiOutput, Limits, ResponseBody, Secrets, Services, StartError, Worker,
    WorkerError, WorkerRequest, WorkerSpec,
};
use serde_json::{json, Value};

/// An AI binding that echoes its inputs, streams three SSE events for `stream: true`, and
/// fails with code 3010 for the model `@cf/bad`.
#[derive(Default)]
pub struct EchoAi {
    pub calls: AtomicUsize,
}

impl AiBinding for EchoAi {
    fn run(
        &self,
        _request_id: String,
        model: String,
        inputs: Value,
        _options: Value,
    ) -> BoxFuture<'static, Result<AiOutput, AiError>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            if model == "@cf/bad" {
                return Err(AiError {
                    name: "InvalidInput".into(),
                    code: 3010,
                    description: "Invalid or incomplete input for the model".into(),
                });
            }
            if inputs["stream"] == json!(true) {
                let events: BoxStream<'static, Result<Bytes, String>> = futures::stream::iter(
                    [
                        "data: {\"response\":\"a\"}\n\n",
                        "data: {\"response\":\"b\"}\n\n",
                        "data: [DONE]\n\n",
                    ]
                    .map(|event| Ok(Bytes::from_static(event.as_bytes()))),
                )
                .then(|item| async move {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    item
                })
                .boxed();
                return Ok(AiOutput::Stream(events));
            }
            Ok(AiOutput::Json(json!({"model": model, "inputs": inputs})))
        })
    }
}

pub struct TestWorker {
    pub worker: Worker,
    pub ai: Arc<EchoAi>,
    _dir: tempfile::TempDir,
}

/// Writes `files` (path, contents) into a temporary folder and starts the worker whose main
/// module is the first file.
pub fn start(files: &[(&str, &str)], limits: Limits) -> Result<TestWorker, StartError> {
    start_pool(files, limits, 1)
}

/// Like [`start`], with a pool of up to `max_isolates` isolates.
pub fn start_pool(
    files: &[(&str, &str)],
    limits: Limits,
    max_isolates: usize,
) -> Result<TestWorker, StartError> {
    let dir = tempfile::tempdir().expect("temp dir");
    for (path, contents) in files {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("create dirs");
        std::fs::write(path, contents).expect("write module");
    }
    let ai = Arc::new(EchoAi::default());
    let spec = WorkerSpec {
        name: "test".into(),
        root: dir.path().to_path_buf(),
        main: files[0].0.into(),
        vars: serde_json::from_value(json!({"GREETING": "hello", "LIMIT": 3})).expect("vars"),
        secrets: Secrets::default(),
        ai_binding: Some("AI".into()),
        kv_namespaces: Vec::new(),
        limits,
        max_isolates,
        outbound: Default::default(),
    };
    let services = Services {
        ai: Some(ai.clone()),
        kv: None,
        tokio: runtime().handle().clone(),
    };
    let worker = Worker::start(spec, services)?;
    Ok(TestWorker {
        worker,
        ai,
        _dir: dir,
    })
}

fn make_request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> WorkerRequest {
    WorkerRequest {
        id: uuid::Uuid::new_v4().to_string(),
        method: method.into(),
        url: format!("http://127.0.0.1:8787{path}"),
        headers: headers
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect(),
        body: Bytes::copy_from_slice(body),
        cf: json!({"colo": "TST", "country": "NL"}),
    }
}

pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|err| panic!("body is not JSON ({err}): {}", self.body))
    }
}

impl TestWorker {
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Reply, WorkerError> {
        let request = make_request(method, path, headers, body);
        runtime().block_on(async {
            let response = self.worker.fetch(request).await?;
            let body = match response.body {
                ResponseBody::Bytes(bytes) => bytes.to_vec(),
                ResponseBody::Stream(mut chunks) => {
                    let mut body = Vec::new();
                    while let Some(chunk) = chunks.recv().await {
                        body.extend_from_slice(&chunk.map_err(WorkerError::Unavailable)?);
                    }
                    body
                }
            };
            Ok(Reply {
                status: response.status,
                headers: response.headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            })
        })
    }

    /// Builds a GET request for `path`, for tests that drive `Worker::fetch` themselves.
    pub fn request_for(&self, path: &str) -> WorkerRequest {
        make_request("GET", path, &[], b"")
    }

    pub fn get(&self, path: &str) -> Reply {
        self.request("GET", path, &[], b"")
            .expect("request succeeds")
    }
}
