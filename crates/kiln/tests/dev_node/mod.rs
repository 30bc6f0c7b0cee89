//! A real `kiln dev DIR` process on a free loopback port, for end-to-end tests of workers.

// Each test binary includes this module and uses only part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Returns the folder of a test worker under `tests/workers`.
pub fn worker_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/workers")
        .join(name)
}

pub struct DevNode {
    child: Child,
    pub base: String,
    /// Everything the node wrote to stderr (its JSON log) so far.
    log: Arc<Mutex<String>>,
    _home: Option<tempfile::TempDir>,
}

impl DevNode {
    /// Runs `kiln dev DIR` with the bundled models and `config` as the node's kiln.toml, and
    /// waits until the worker has loaded (or failed to load) and the server listens.
    ///
    /// Each model gets one llama.cpp thread and OpenMP threads sleep while idle, because the
    /// tests run several nodes at once and spinning threads on few cores slow every node down.
    pub fn start(dir: &Path, config: &str) -> DevNode {
        Self::start_with_args(dir, config, &[])
    }

    /// Like [`DevNode::start`], with extra `kiln dev` arguments such as `--test-scheduled`.
    pub fn start_with_args(dir: &Path, config: &str, args: &[&str]) -> DevNode {
        let home = tempfile::tempdir().expect("temp dir");
        let mut node = Self::launch(dir, config, home.path(), args);
        node._home = Some(home);
        node
    }

    /// Like [`DevNode::start`], with `home` as KILN_HOME, so that its data (KV) outlives the
    /// process and a second node can start on it.
    pub fn start_at(dir: &Path, config: &str, home: &Path) -> DevNode {
        Self::launch(dir, config, home, &[])
    }

    fn launch(dir: &Path, config: &str, home: &Path, args: &[&str]) -> DevNode {
        let config_path = home.join("kiln.toml");
        let config = if config.contains("[llama]") {
            config.to_owned()
        } else {
            format!("{config}\n[llama]\nthreads = 1\n")
        };
        std::fs::write(&config_path, config).expect("write kiln.toml");
        let port = crate::common::free_port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .arg("dev")
            .arg(dir)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--log-format", "json"])
            .args(args)
            .arg("--config")
            .arg(&config_path)
            .arg("--models-dir")
            .arg(crate::common::models_dir())
            .env("KILN_HOME", home)
            .env_remove("KILN_MODELS_DIR")
            .env_remove("KILN_DATA_DIR")
            .env_remove("RUST_LOG")
            .env("OMP_WAIT_POLICY", "PASSIVE")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the kiln binary");

        let log = crate::common::capture_stderr(&mut child);

        let node = DevNode {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
            _home: None,
        };
        node.wait_for_log("kiln dev listening", Duration::from_secs(60));
        node
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn client(&self) -> reqwest::blocking::Client {
        reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(300))
            .build()
            .expect("HTTP client")
    }

    pub fn log_text(&self) -> String {
        self.log.lock().expect("log lock").clone()
    }

    /// Parses the log into JSON objects, one per line.
    pub fn log_lines(&self) -> Vec<Value> {
        self.log_text()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// Waits until a log line contains `text` and returns that line; panics with the log after
    /// `limit`.
    pub fn wait_for_log(&self, text: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(line) = self.log_text().lines().find(|line| line.contains(text)) {
                return line.to_owned();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "the log never contained {text:?} within {limit:?}; log:\n{}",
            self.log_text()
        );
    }
}

impl DevNode {
    /// Sends SIGTERM and waits up to `limit` for the process to exit. Returns its exit status,
    /// or `None` if it is still running.
    pub fn terminate(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        crate::common::terminate(&mut self.child, limit)
    }
}

impl Drop for DevNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Copies a folder (without `node_modules`) into a fresh temporary folder that tests may edit.
pub fn copy_worker(source: &Path) -> tempfile::TempDir {
    let target = tempfile::tempdir().expect("temp dir");
    copy_tree(source, target.path());
    target
}

fn copy_tree(source: &Path, target: &Path) {
    std::fs::create_dir_all(target).expect("create folder");
    for entry in std::fs::read_dir(source).expect("read folder") {
        let entry = entry.expect("folder entry");
        let path = entry.path();
        if entry.file_type().expect("file type").is_dir() {
            if entry.file_name() != "node_modules" {
                copy_tree(&path, &target.join(entry.file_name()));
            }
        } else {
            std::fs::copy(&path, target.join(entry.file_name())).expect("copy file");
        }
    }
}
