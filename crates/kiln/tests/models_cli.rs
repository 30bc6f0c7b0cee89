//! End-to-end tests of `kiln models ...` on the real binary and the bundled chat model.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{import_model, kiln_on_models, listed_models, stderr};
use serde_json::Value;

/// SHA-256 of the pinned SmolLM2 GGUF file (Q4_1) that the install script downloads. The
/// bundled model is this file, or a conversion of it whose manifest names it as the source.
const PINNED_GGUF_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

fn bundled_gguf() -> PathBuf {
    let dir = common::models_dir().join(common::CHAT_MODEL);
    std::fs::read_dir(&dir)
        .expect("bundled chat model folder")
        .map(|entry| entry.expect("dir entry").path())
        .find(|path| path.extension().is_some_and(|ext| ext == "gguf"))
        .expect("a .gguf file in the bundled chat model folder")
}

/// Returns the bundled chat model's manifest, after checking that its GGUF file is the pinned
/// download or a conversion of it.
fn bundled_manifest() -> Value {
    let manifest = listed_models(&common::models_dir())
        .into_iter()
        .find(|manifest| manifest["id"] == common::CHAT_MODEL)
        .expect("the bundled chat model is installed");
    let pinned = match manifest.get("quantization") {
        Some(quantization) => &quantization["from_sha256"],
        None => &manifest["files"][0]["sha256"],
    };
    assert_eq!(pinned, PINNED_GGUF_SHA256, "{manifest}");
    manifest
}

/// Returns the SHA-256 of the bundled chat model's GGUF file, as its manifest records it.
fn bundled_sha256() -> String {
    let manifest = bundled_manifest();
    manifest["files"][0]["sha256"]
        .as_str()
        .expect("a sha256 string")
        .to_string()
}

#[test]
fn import_list_verify_remove() {
    let home = tempfile::tempdir().expect("temp dir");
    let models = home.path().join("models");
    let gguf = bundled_gguf();

    let output = import_model(&models, &gguf, "my-chat", &["--link"]);
    assert!(output.status.success(), "{}", stderr(&output));

    let manifests = listed_models(&models);
    assert_eq!(manifests.len(), 1);
    assert_eq!(manifests[0]["id"], "my-chat");
    assert_eq!(manifests[0]["task"], "text-generation");
    assert_eq!(manifests[0]["engine"], "llama");
    assert_eq!(manifests[0]["files"][0]["sha256"], bundled_sha256());

    let output = kiln_on_models(&models, &["models", "verify", "my-chat"]);
    assert!(output.status.success(), "{}", stderr(&output));

    let output = kiln_on_models(&models, &["models", "remove", "my-chat"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(listed_models(&models).is_empty());
}

#[test]
fn import_rejects_unknown_format() {
    let home = tempfile::tempdir().expect("temp dir");
    let models = home.path().join("models");
    let text_file = home.path().join("notes.txt");
    std::fs::write(&text_file, "not a model").expect("write file");

    let output = import_model(&models, &text_file, "notes", &[]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.contains("notes.txt"), "{message}");
    assert!(message.to_lowercase().contains("gguf"), "{message}");
    assert!(listed_models(&models).is_empty());
}

#[test]
fn import_rejects_wrong_sha256() {
    let home = tempfile::tempdir().expect("temp dir");
    let models = home.path().join("models");
    let gguf = bundled_gguf();
    let wrong = "0".repeat(64);

    let output = import_model(&models, &gguf, "bad", &["--sha256", &wrong]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.contains(&wrong), "{message}");
    assert!(message.contains(&bundled_sha256()), "{message}");
    assert!(listed_models(&models).is_empty());
}

/// A static file server (Python's http.server) that lays out a Hugging Face style repository.
struct HubServer {
    child: Child,
    endpoint: String,
    _root: tempfile::TempDir,
}

impl HubServer {
    fn start(repo: &str, file: &str, source: &Path) -> HubServer {
        let root = tempfile::tempdir().expect("temp dir");
        let listing_dir = root.path().join(format!("api/models/{repo}/revision"));
        std::fs::create_dir_all(&listing_dir).expect("listing dir");
        std::fs::write(
            listing_dir.join("main"),
            serde_json::json!({"id": repo, "siblings": [{"rfilename": file}]}).to_string(),
        )
        .expect("write listing");
        let file_dir = root.path().join(format!("{repo}/resolve/main"));
        std::fs::create_dir_all(&file_dir).expect("file dir");
        std::os::unix::fs::symlink(source, file_dir.join(file)).expect("link model file");

        let port = common::free_port();
        let child = Command::new("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .current_dir(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start python3 -m http.server");
        let endpoint = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "http.server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        HubServer {
            child,
            endpoint,
            _root: root,
        }
    }
}

impl Drop for HubServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn pull_from_local_hub_then_serve() {
    let hub = HubServer::start("acme/tiny-chat", "tiny-chat.Q4_1.gguf", &bundled_gguf());
    let home = tempfile::tempdir().expect("temp dir");
    let models = home.path().join("models");

    let output = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["models", "pull", "acme/tiny-chat"])
        .arg("--models-dir")
        .arg(&models)
        .env("HF_ENDPOINT", &hub.endpoint)
        .env_remove("HF_TOKEN")
        .env("KILN_HOME", home.path())
        .output()
        .expect("run kiln models pull");
    assert!(output.status.success(), "{}", stderr(&output));

    let manifests = listed_models(&models);
    assert_eq!(manifests.len(), 1);
    assert_eq!(manifests[0]["id"], "tiny-chat");
    assert_eq!(manifests[0]["source"], "hf:acme/tiny-chat");
    assert_eq!(manifests[0]["files"][0]["sha256"], bundled_sha256());

    let node = common::Node::start_with_models(&models, "");
    let body: Value = node
        .client()
        .post(node.url("/ai/run/tiny-chat"))
        .json(&serde_json::json!({"prompt": "Say hello.", "max_tokens": 8}))
        .send()
        .expect("request")
        .json()
        .expect("JSON body");
    assert!(
        body["response"]
            .as_str()
            .is_some_and(|text| !text.is_empty()),
        "{body}"
    );
}

#[test]
fn list_warns_about_broken_manifest() {
    let home = tempfile::tempdir().expect("temp dir");
    let models = home.path().join("models");
    let gguf = bundled_gguf();
    let output = import_model(&models, &gguf, "chat", &["--link"]);
    assert!(output.status.success(), "{}", stderr(&output));
    std::fs::write(models.join("chat/manifest.json"), "{broken").expect("corrupt the manifest");

    let output = kiln_on_models(&models, &["models", "list"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(message.contains("broken manifest"), "{message}");
    assert!(message.contains("chat"), "{message}");
}

/// Returns the SHA-256 of a file, lowercase hex.
fn sha256_of(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).expect("read the file");
    hex::encode(Sha256::digest(&bytes))
}

/// Returns the quantization type of the bundled GGUF file as llama.cpp names it (`Q4_1`).
fn bundled_file_type() -> String {
    match bundled_manifest().get("quantization") {
        Some(quantization) => quantization["type"]
            .as_str()
            .expect("a type string")
            .to_uppercase(),
        None => "Q4_1".to_string(),
    }
}

/// Returns a GGUF file of the bundled model that is not Q8_0, and its type: the bundled file
/// itself, or, when the install script converted it to Q8_0, a Q4_0 conversion of it made in
/// `scratch` with `--quantize q4_0`.
fn source_for_q8_0(scratch: &Path) -> (PathBuf, String) {
    let bundled = bundled_gguf();
    let bundled_type = bundled_file_type();
    if bundled_type != "Q8_0" {
        return (bundled, bundled_type);
    }
    let output = import_model(scratch, &bundled, "chat-q4", &["--quantize", "q4_0"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let manifest = listed_models(scratch)
        .into_iter()
        .find(|manifest| manifest["id"] == "chat-q4")
        .expect("the Q4_0 conversion is installed");
    let quantization = &manifest["quantization"];
    assert_eq!(quantization["type"], "q4_0", "{manifest}");
    assert_eq!(quantization["from"], "Q8_0", "{manifest}");
    let agreement = quantization["top1_agreement"].as_f64().expect("agreement");
    assert!((0.0..=1.0).contains(&agreement), "{manifest}");
    let file = manifest["files"][0]["path"].as_str().expect("a file path");
    (scratch.join("chat-q4").join(file), "Q4_0".to_string())
}

#[test]
fn import_quantize_q8_0_then_chat() {
    let home = tempfile::tempdir().expect("temp dir");
    let models = home.path().join("models");
    let (gguf, source_type) = source_for_q8_0(&home.path().join("scratch"));

    let output = import_model(&models, &gguf, "chat-q8", &["--quantize", "q8_0"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("top-1 agreement"), "{stdout}");
    assert!(stdout.contains("installed chat-q8"), "{stdout}");

    let manifests = listed_models(&models);
    assert_eq!(manifests.len(), 1);
    let manifest = &manifests[0];
    assert_eq!(manifest["id"], "chat-q8");
    assert_eq!(manifest["engine"], "llama");
    assert_eq!(manifest["task"], "text-generation");
    let file = manifest["files"][0]["path"].as_str().expect("a file path");
    assert!(file.ends_with(".Q8_0.gguf"), "{manifest}");
    assert_ne!(manifest["files"][0]["sha256"], sha256_of(&gguf));

    let quantization = &manifest["quantization"];
    assert_eq!(quantization["type"], "q8_0", "{manifest}");
    assert_eq!(quantization["from"], source_type.as_str(), "{manifest}");
    assert_eq!(quantization["from_sha256"], sha256_of(&gguf), "{manifest}");
    assert_eq!(quantization["prompts"], 32, "{manifest}");
    let positions = quantization["positions"].as_u64().expect("positions");
    assert!(positions > 32, "{manifest}");
    let agreement = quantization["top1_agreement"].as_f64().expect("agreement");
    assert!((0.0..=1.0).contains(&agreement), "{manifest}");
    // Q8_0 has finer steps than the 4-bit source, so the top token should rarely change.
    assert!(agreement > 0.8, "{manifest}");
    let mean_kl = quantization["mean_kl"].as_f64().expect("mean KL");
    assert!(mean_kl.is_finite(), "{manifest}");
    assert!(mean_kl >= 0.0, "{manifest}");

    let leftovers: Vec<_> = std::fs::read_dir(&models)
        .expect("read the models folder")
        .map(|entry| entry.expect("dir entry").file_name())
        .filter(|name| name.to_string_lossy().starts_with(".quantize-"))
        .collect();
    assert!(leftovers.is_empty(), "staging folders left: {leftovers:?}");

    let output = kiln_on_models(&models, &["models", "list"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let table = String::from_utf8_lossy(&output.stdout);
    let expected = format!("chat-q8: converted from {source_type} to Q8_0, top-1 agreement");
    assert!(table.contains(&expected), "{table}");

    let output = kiln_on_models(&models, &["models", "verify", "chat-q8"]);
    assert!(output.status.success(), "{}", stderr(&output));

    // A file that already has the requested type is rejected before any work.
    let converted = models.join("chat-q8").join(file);
    let output = import_model(&models, &converted, "again", &["--quantize", "q8_0"]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.contains("already Q8_0"), "{message}");
    assert!(message.contains("without --quantize"), "{message}");
    assert_eq!(listed_models(&models).len(), 1);

    // The id is checked before the conversion too.
    let output = import_model(&models, &gguf, "chat-q8", &["--quantize", "q4_0"]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.contains("already exists"), "{message}");

    let node = common::Node::start_with_models(&models, "");
    let body: Value = node
        .client()
        .post(node.url("/ai/run/chat-q8"))
        .json(&serde_json::json!({
            "messages": [{"role": "user", "content": "Say hello."}],
            "max_tokens": 8
        }))
        .send()
        .expect("request")
        .json()
        .expect("JSON body");
    assert!(
        body["response"]
            .as_str()
            .is_some_and(|text| !text.is_empty()),
        "{body}"
    );
}

#[test]
fn import_quantize_rejects_non_gguf() {
    let home = tempfile::tempdir().expect("temp dir");
    let models = home.path().join("models");
    let onnx = home.path().join("model.onnx");
    std::fs::write(&onnx, "not a GGUF file").expect("write file");

    let output = import_model(&models, &onnx, "bad", &["--quantize", "q8_0"]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.contains("model.onnx"), "{message}");
    assert!(message.contains("GGUF"), "{message}");
    assert!(message.contains("without --quantize"), "{message}");

    let output = import_model(&models, home.path(), "bad", &["--quantize", "q8_0"]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("GGUF"), "{}", stderr(&output));
    assert!(listed_models(&models).is_empty());
}

#[test]
fn import_quantize_rejects_unknown_type() {
    let home = tempfile::tempdir().expect("temp dir");
    let models = home.path().join("models");

    let output = import_model(&models, &bundled_gguf(), "bad", &["--quantize", "q5_k"]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.contains("q5_k"), "{message}");
    assert!(message.contains("q8_0"), "{message}");
    assert!(message.contains("q4_0"), "{message}");
    assert!(listed_models(&models).is_empty());
}
