//! End-to-end tests of `kiln models ...` on the real binary and the bundled chat model.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{import_model, kiln_on_models, listed_models, stderr};
use serde_json::Value;

/// SHA-256 of the bundled SmolLM2 GGUF file.
const CHAT_MODEL_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

fn bundled_gguf() -> PathBuf {
    let dir = common::models_dir().join(common::CHAT_MODEL);
    std::fs::read_dir(&dir)
        .expect("bundled chat model folder")
        .map(|entry| entry.expect("dir entry").path())
        .find(|path| path.extension().is_some_and(|ext| ext == "gguf"))
        .expect("a .gguf file in the bundled chat model folder")
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
    assert_eq!(manifests[0]["files"][0]["sha256"], CHAT_MODEL_SHA256);

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
    assert!(message.contains(CHAT_MODEL_SHA256), "{message}");
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
    assert_eq!(manifests[0]["files"][0]["sha256"], CHAT_MODEL_SHA256);

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
