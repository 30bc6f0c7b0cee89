//! `hub::pull` against a hub-compatible HTTP server on 127.0.0.1 that each test starts.

mod support;

use kiln_models::hub::{self, HubOptions};
use kiln_models::{EngineKind, ModelStore, StoreError, Task};
use support::hub_server::{HubFile, HubRepo, HubServer, TOKEN};
use support::{entries, filler, gguf_bytes, safetensors_bytes, sha256_hex};
use tempfile::TempDir;

fn new_store() -> (TempDir, ModelStore) {
    let dir = TempDir::new().unwrap();
    let store = ModelStore::open(dir.path().join("models")).unwrap();
    (dir, store)
}

fn options(server: &HubServer) -> HubOptions {
    HubOptions {
        endpoint: server.endpoint.clone(),
        ..HubOptions::default()
    }
}

/// Returns a GGUF repo with one LFS-stored model file and a README.
fn gguf_repo(id: &str, model: &[u8]) -> HubRepo {
    HubRepo::new(
        id,
        vec![
            HubFile::new("README.md", b"# Tiny\n".to_vec(), false),
            HubFile::new("tiny-q8_0.gguf", model.to_vec(), true),
        ],
    )
}

/// Asserts that no staging folder or partial download is left in the store.
fn assert_no_staging(store: &ModelStore) {
    let staging: Vec<String> = entries(store.root())
        .into_iter()
        .filter(|name| name.starts_with('.') && name != ".partial")
        .collect();
    assert!(staging.is_empty(), "staging folders left: {staging:?}");
    let partial = store.root().join(".partial");
    if partial.exists() {
        assert!(
            entries(&partial).is_empty(),
            "partial files left: {:?}",
            entries(&partial)
        );
    }
}

#[test]
fn pull_gguf_full() {
    let model = gguf_bytes(3000);
    let mut repo = gguf_repo("test-org/Tiny-GGUF", &model);
    repo.license = Some("apache-2.0".to_string());
    let server = HubServer::start(vec![repo]);
    let (_dir, store) = new_store();

    // Progress bars draw nowhere without a terminal, but the code path still runs.
    let with_progress = HubOptions {
        progress: true,
        ..options(&server)
    };
    let manifest = hub::pull(&store, "test-org/Tiny-GGUF", None, None, &with_progress).unwrap();

    assert_eq!(manifest.id, "tiny-gguf");
    assert_eq!(manifest.engine, EngineKind::Llama);
    assert_eq!(manifest.task, Task::TextGeneration);
    assert_eq!(manifest.source.as_deref(), Some("hf:test-org/Tiny-GGUF"));
    assert_eq!(manifest.license.as_deref(), Some("apache-2.0"));
    assert_eq!(manifest.files.len(), 1);
    assert_eq!(manifest.files[0].path, "tiny-q8_0.gguf");
    assert_eq!(manifest.files[0].sha256, sha256_hex(&model));
    assert_eq!(manifest.files[0].size, model.len() as u64);
    assert_eq!(store.get("tiny-gguf").unwrap(), Some(manifest.clone()));
    store.verify("tiny-gguf").unwrap();
    assert_no_staging(&store);

    let requests = server.requests();
    assert!(requests.iter().any(|request| request.method == "HEAD"
        && request.path == "/test-org/Tiny-GGUF/resolve/main/tiny-q8_0.gguf"));
    assert!(requests.iter().any(|request| request.method == "GET"
        && request.path == "/lfs/test-org/Tiny-GGUF/tiny-q8_0.gguf"));
    assert!(
        !requests
            .iter()
            .any(|request| request.path.ends_with("README.md")),
        "README.md must not be downloaded"
    );
    assert!(
        requests
            .iter()
            .all(|request| request.header("authorization").is_none()),
        "no token was set, so none may be sent"
    );
}

#[test]
fn pull_with_explicit_id_and_file() {
    let first = gguf_bytes(50);
    let second = gguf_bytes(80);
    let repo = HubRepo::new(
        "org/Multi",
        vec![
            HubFile::new("multi-q4.gguf", first, true),
            HubFile::new("multi-q8.gguf", second.clone(), true),
        ],
    );
    let server = HubServer::start(vec![repo]);
    let (_dir, store) = new_store();

    let error = hub::pull(&store, "org/Multi", None, None, &options(&server)).unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(error, StoreError::AmbiguousGguf { .. }),
        "{message}"
    );
    assert!(message.contains("multi-q4.gguf"), "{message}");
    assert!(message.contains("multi-q8.gguf"), "{message}");
    assert!(message.contains("org/Multi:FILE"), "{message}");

    let manifest = hub::pull(
        &store,
        "org/Multi:multi-q8.gguf",
        Some("@cf/org/multi-q8"),
        None,
        &options(&server),
    )
    .unwrap();
    assert_eq!(manifest.id, "@cf/org/multi-q8");
    assert_eq!(manifest.files.len(), 1);
    assert_eq!(manifest.files[0].path, "multi-q8.gguf");
    assert_eq!(manifest.files[0].sha256, sha256_hex(&second));
    let downloaded: Vec<String> = server
        .requests()
        .into_iter()
        .filter(|request| request.method == "GET" && request.path.starts_with("/lfs/"))
        .map(|request| request.path)
        .collect();
    assert_eq!(downloaded, ["/lfs/org/Multi/multi-q8.gguf"]);
}

#[test]
fn pull_resumes_partial_file() {
    let model = gguf_bytes(5000);
    let server = HubServer::start(vec![gguf_repo("org/Resume-GGUF", &model)]);
    let (_dir, store) = new_store();
    let half = model.len() / 2;
    let partial = hub::partial_path(&store, "org/Resume-GGUF", "main", "tiny-q8_0.gguf");
    std::fs::create_dir_all(partial.parent().unwrap()).unwrap();
    std::fs::write(&partial, &model[..half]).unwrap();

    let manifest = hub::pull(&store, "org/Resume-GGUF", None, None, &options(&server)).unwrap();

    assert_eq!(manifest.files[0].sha256, sha256_hex(&model));
    let stored = std::fs::read(store.file_path(&manifest, &manifest.files[0])).unwrap();
    assert_eq!(stored, model);
    // The Range header goes to /resolve and, through its redirect, to /lfs.
    let ranges: Vec<String> = server
        .requests()
        .iter()
        .filter(|request| request.method == "GET" && request.path.starts_with("/lfs/"))
        .filter_map(|request| request.header("range").map(str::to_string))
        .collect();
    assert_eq!(ranges, [format!("bytes={half}-")]);
    assert!(!partial.exists());
    assert_no_staging(&store);
}

#[test]
fn pull_resumes_after_interruption() {
    let model = gguf_bytes(200_000);
    let mut repo = gguf_repo("org/Flaky-GGUF", &model);
    repo.files[1].cut_first_download_at = Some(70_000);
    let server = HubServer::start(vec![repo]);
    let (_dir, store) = new_store();

    let error = hub::pull(&store, "org/Flaky-GGUF", None, None, &options(&server)).unwrap_err();
    assert!(error.to_string().contains("run the pull again"), "{error}");
    assert_eq!(store.get("flaky-gguf").unwrap(), None);
    let partial = hub::partial_path(&store, "org/Flaky-GGUF", "main", "tiny-q8_0.gguf");
    let partial_len = std::fs::metadata(&partial).unwrap().len();
    assert!(
        partial_len > 0,
        "the bytes received before the cut must be kept"
    );
    assert!(
        partial_len <= 70_000,
        "the partial file has {partial_len} bytes"
    );

    let manifest = hub::pull(&store, "org/Flaky-GGUF", None, None, &options(&server)).unwrap();

    assert_eq!(manifest.files[0].sha256, sha256_hex(&model));
    let ranges: Vec<String> = server
        .requests()
        .iter()
        .filter(|request| request.path.starts_with("/lfs/"))
        .filter_map(|request| request.header("range").map(str::to_string))
        .collect();
    assert_eq!(ranges, [format!("bytes={partial_len}-")]);
    assert_no_staging(&store);
}

#[test]
fn pull_rejects_wrong_etag() {
    let model = gguf_bytes(1000);
    let lie = sha256_hex(b"something else");
    let mut repo = gguf_repo("org/Liar-GGUF", &model);
    repo.files[1].advertised_sha256 = Some(lie.clone());
    let server = HubServer::start(vec![repo]);
    let (_dir, store) = new_store();

    let error = hub::pull(&store, "org/Liar-GGUF", None, None, &options(&server)).unwrap_err();

    let message = error.to_string();
    assert!(
        matches!(error, StoreError::HashMismatch { .. }),
        "{message}"
    );
    assert!(message.contains(&lie), "{message}");
    assert!(message.contains(&sha256_hex(&model)), "{message}");
    assert!(message.contains("tiny-q8_0.gguf"), "{message}");
    assert_eq!(store.get("liar-gguf").unwrap(), None);
    assert!(store.list().unwrap().is_empty());
    assert_no_staging(&store);
}

#[test]
fn pull_retries_stale_partial() {
    let model = gguf_bytes(2000);
    let server = HubServer::start(vec![gguf_repo("org/Stale-GGUF", &model)]);
    let (_dir, store) = new_store();
    let partial = hub::partial_path(&store, "org/Stale-GGUF", "main", "tiny-q8_0.gguf");
    std::fs::create_dir_all(partial.parent().unwrap()).unwrap();
    // A partial file from different contents: resuming it gives the wrong hash.
    std::fs::write(&partial, filler(500, 99)).unwrap();

    let manifest = hub::pull(&store, "org/Stale-GGUF", None, None, &options(&server)).unwrap();

    assert_eq!(manifest.files[0].sha256, sha256_hex(&model));
    let gets: Vec<Option<String>> = server
        .requests()
        .iter()
        .filter(|request| request.method == "GET" && request.path.starts_with("/lfs/"))
        .map(|request| request.header("range").map(str::to_string))
        .collect();
    assert_eq!(gets, [Some("bytes=500-".to_string()), None]);
}

#[test]
fn pull_unauthorized_mentions_hf_token() {
    let mut repo = gguf_repo("org/Private-GGUF", &gguf_bytes(10));
    repo.protected = true;
    let server = HubServer::start(vec![repo]);
    let (_dir, store) = new_store();

    let error = hub::pull(&store, "org/Private-GGUF", None, None, &options(&server)).unwrap_err();

    let message = error.to_string();
    assert!(
        matches!(error, StoreError::HubUnauthorized { status: 401, .. }),
        "{message}"
    );
    assert!(message.contains("HF_TOKEN"), "{message}");
    assert!(store.list().unwrap().is_empty());

    let wrong_token = HubOptions {
        token: Some("hf_wrong".to_string()),
        ..options(&server)
    };
    let error = hub::pull(&store, "org/Private-GGUF", None, None, &wrong_token).unwrap_err();
    let message = error.to_string();
    assert!(message.contains("HF_TOKEN"), "{message}");
    assert!(
        !message.contains("hf_wrong"),
        "the token must not appear in errors: {message}"
    );
}

#[test]
fn pull_sends_token() {
    let model = gguf_bytes(300);
    let mut repo = gguf_repo("org/Private-GGUF", &model);
    repo.protected = true;
    let server = HubServer::start(vec![repo]);
    let (_dir, store) = new_store();
    let with_token = HubOptions {
        token: Some(TOKEN.to_string()),
        ..options(&server)
    };

    let manifest = hub::pull(&store, "org/Private-GGUF", None, None, &with_token).unwrap();

    assert_eq!(manifest.files[0].sha256, sha256_hex(&model));
    let requests = server.requests();
    let expected = format!("Bearer {TOKEN}");
    for (method, path) in [
        ("GET", "/api/models/org/Private-GGUF/revision/main"),
        ("HEAD", "/org/Private-GGUF/resolve/main/tiny-q8_0.gguf"),
        ("GET", "/org/Private-GGUF/resolve/main/tiny-q8_0.gguf"),
    ] {
        let request = requests
            .iter()
            .find(|request| request.method == method && request.path == path)
            .unwrap_or_else(|| panic!("no {method} {path} in {requests:?}"));
        assert_eq!(
            request.header("authorization"),
            Some(expected.as_str()),
            "{method} {path}"
        );
    }
}

#[test]
fn pull_unknown_repo_is_not_found() {
    let server = HubServer::start(Vec::new());
    let (_dir, store) = new_store();

    let error = hub::pull(&store, "org/Nope", None, None, &options(&server)).unwrap_err();

    assert!(matches!(error, StoreError::HubNotFound { .. }), "{error}");
    assert!(error.to_string().contains("org/Nope"), "{error}");
}

#[test]
fn pull_unknown_file_lists_files() {
    let server = HubServer::start(vec![gguf_repo("org/Tiny-GGUF", &gguf_bytes(10))]);
    let (_dir, store) = new_store();

    let error = hub::pull(
        &store,
        "org/Tiny-GGUF:other.gguf",
        None,
        None,
        &options(&server),
    )
    .unwrap_err();

    let message = error.to_string();
    assert!(message.contains("other.gguf"), "{message}");
    assert!(message.contains("tiny-q8_0.gguf"), "{message}");
}

#[test]
fn pull_listing_falls_back_to_model_endpoint() {
    let model = gguf_bytes(64);
    let mut repo = gguf_repo("org/Old-GGUF", &model);
    repo.revision_api = false;
    let server = HubServer::start(vec![repo]);
    let (_dir, store) = new_store();

    let manifest = hub::pull(&store, "org/Old-GGUF", None, None, &options(&server)).unwrap();

    assert_eq!(manifest.files[0].sha256, sha256_hex(&model));
    let paths: Vec<String> = server
        .requests()
        .into_iter()
        .map(|request| request.path)
        .collect();
    assert!(
        paths.contains(&"/api/models/org/Old-GGUF".to_string()),
        "{paths:?}"
    );
}

#[test]
fn pull_safetensors_folder() {
    let weights = safetensors_bytes();
    let config = br#"{"architectures": ["BertForSequenceClassification"]}"#.to_vec();
    let tokenizer = br#"{"model": {"type": "WordPiece"}}"#.to_vec();
    let repo = HubRepo::new(
        "org/Tiny-Classifier",
        vec![
            HubFile::new(
                ".gitattributes",
                b"*.safetensors filter=lfs\n".to_vec(),
                false,
            ),
            HubFile::new("README.md", b"# Classifier\n".to_vec(), false),
            HubFile::new("config.json", config.clone(), false),
            HubFile::new("tokenizer.json", tokenizer.clone(), false),
            HubFile::new("model.safetensors", weights.clone(), true),
            HubFile::new("pytorch_model.bin", b"unused".to_vec(), true),
        ],
    );
    let server = HubServer::start(vec![repo]);
    let (_dir, store) = new_store();

    let manifest = hub::pull(&store, "org/Tiny-Classifier", None, None, &options(&server)).unwrap();

    assert_eq!(manifest.id, "tiny-classifier");
    assert_eq!(manifest.engine, EngineKind::Safetensors);
    assert_eq!(manifest.task, Task::TextClassification);
    let mut files: Vec<(&str, &str)> = manifest
        .files
        .iter()
        .map(|file| (file.path.as_str(), file.sha256.as_str()))
        .collect();
    files.sort();
    let expected_hashes = [
        sha256_hex(&config),
        sha256_hex(&weights),
        sha256_hex(&tokenizer),
    ];
    assert_eq!(
        files,
        [
            ("config.json", expected_hashes[0].as_str()),
            ("model.safetensors", expected_hashes[1].as_str()),
            ("tokenizer.json", expected_hashes[2].as_str()),
        ]
    );
    store.verify("tiny-classifier").unwrap();
    assert_no_staging(&store);
    let requests = server.requests();
    assert_eq!(
        requests
            .iter()
            .filter(|request| request.method == "GET" && request.path.ends_with("/config.json"))
            .count(),
        1,
        "config.json is fetched once for the task check and reused"
    );
    assert!(!requests
        .iter()
        .any(|request| request.path.ends_with("pytorch_model.bin")));
}

#[test]
fn pull_folder_without_task_stops_early() {
    let repo = HubRepo::new(
        "org/Causal",
        vec![
            HubFile::new(
                "config.json",
                br#"{"architectures": ["LlamaForCausalLM"]}"#.to_vec(),
                false,
            ),
            HubFile::new("model.safetensors", safetensors_bytes(), true),
        ],
    );
    let server = HubServer::start(vec![repo]);
    let (_dir, store) = new_store();

    let error = hub::pull(&store, "org/Causal", None, None, &options(&server)).unwrap_err();

    assert!(matches!(error, StoreError::TaskRequired { .. }), "{error}");
    assert!(error.to_string().contains("--task"), "{error}");
    assert!(
        !server
            .requests()
            .iter()
            .any(|request| request.method == "GET" && request.path.contains("model.safetensors")),
        "the weights must not be downloaded before the task is known"
    );

    // Only GGUF files generate text, so a safetensors folder cannot be a text-generation model.
    let error = hub::pull(
        &store,
        "org/Causal",
        None,
        Some(Task::TextGeneration),
        &options(&server),
    )
    .unwrap_err();
    assert!(error.to_string().contains("needs a GGUF file"), "{error}");

    let manifest = hub::pull(
        &store,
        "org/Causal",
        None,
        Some(Task::TextEmbeddings),
        &options(&server),
    )
    .unwrap();
    assert_eq!(manifest.task, Task::TextEmbeddings);
    assert_eq!(manifest.engine, EngineKind::Safetensors);
}

#[test]
fn pull_existing_id_fails_before_download() {
    let server = HubServer::start(vec![gguf_repo("org/Tiny-GGUF", &gguf_bytes(10))]);
    let (_dir, store) = new_store();
    hub::pull(&store, "org/Tiny-GGUF", None, None, &options(&server)).unwrap();
    server.clear_requests();

    let error = hub::pull(&store, "org/Tiny-GGUF", None, None, &options(&server)).unwrap_err();

    assert!(matches!(error, StoreError::AlreadyExists { .. }), "{error}");
    assert!(
        error.to_string().contains("kiln models remove tiny-gguf"),
        "{error}"
    );
    assert!(server.requests().is_empty());
}

#[test]
fn pull_network_error_names_url() {
    // Bind and drop a listener to get a local port with nothing listening.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (_dir, store) = new_store();
    let options = HubOptions {
        endpoint: format!("http://127.0.0.1:{port}"),
        ..HubOptions::default()
    };

    let error = hub::pull(&store, "org/Repo", None, None, &options).unwrap_err();

    assert!(matches!(error, StoreError::Network { .. }), "{error}");
    let expected_url = format!("http://127.0.0.1:{port}/api/models/org/Repo/revision/main");
    assert!(error.to_string().contains(&expected_url), "{error}");
}

#[cfg(unix)]
#[test]
fn pull_does_not_append_to_linked_partial() {
    let model = gguf_bytes(1000);
    let server = HubServer::start(vec![gguf_repo("org/Linked-GGUF", &model)]);
    let (dir, store) = new_store();
    // A partial file that is also linked elsewhere, as after a pull that stopped
    // between importing and deleting its partial files.
    let elsewhere = dir.path().join("stored-copy.gguf");
    std::fs::write(&elsewhere, &model[..400]).unwrap();
    let partial = hub::partial_path(&store, "org/Linked-GGUF", "main", "tiny-q8_0.gguf");
    std::fs::create_dir_all(partial.parent().unwrap()).unwrap();
    std::fs::hard_link(&elsewhere, &partial).unwrap();

    let manifest = hub::pull(&store, "org/Linked-GGUF", None, None, &options(&server)).unwrap();

    assert_eq!(manifest.files[0].sha256, sha256_hex(&model));
    assert_eq!(std::fs::read(&elsewhere).unwrap(), &model[..400]);
    let ranges: Vec<String> = server
        .requests()
        .iter()
        .filter_map(|request| request.header("range").map(str::to_string))
        .collect();
    assert!(ranges.is_empty(), "{ranges:?}");
}
