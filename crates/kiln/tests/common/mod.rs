//! A real `kiln serve` process on a free loopback port, for end-to-end tests.

// Each test binary includes this module and uses only part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Id under which the install script stores the bundled chat model.
pub const CHAT_MODEL: &str = "smollm2-135m-instruct";

/// The models folder that `scripts/test.sh` fills with the bundled models.
pub fn models_dir() -> PathBuf {
    let dir = std::env::var_os("KILN_TEST_MODELS_DIR")
        .map(PathBuf::from)
        .expect(
        "KILN_TEST_MODELS_DIR is not set: run the end-to-end tests through scripts/test.sh, which \
         installs the bundled models and sets it",
    );
    assert!(
        dir.is_dir(),
        "KILN_TEST_MODELS_DIR={} is not a folder",
        dir.display()
    );
    dir
}

/// Runs `kiln ARGS --models-dir MODELS_DIR`, with KILN_HOME in `MODELS_DIR/home` so no
/// configuration outside the test is read.
pub fn kiln_on_models(models_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .arg("--models-dir")
        .arg(models_dir)
        .env_remove("KILN_MODELS_DIR")
        .env("KILN_HOME", models_dir.join("home"))
        .output()
        .expect("run kiln")
}

/// Runs `kiln models import SOURCE --id ID EXTRA_ARGS` on `models_dir`.
pub fn import_model(models_dir: &Path, source: &Path, id: &str, extra_args: &[&str]) -> Output {
    let mut args = vec![
        "models",
        "import",
        source.to_str().expect("utf-8 path"),
        "--id",
        id,
    ];
    args.extend_from_slice(extra_args);
    kiln_on_models(models_dir, &args)
}

/// Returns the manifests that `kiln models list --json` prints for `models_dir`.
pub fn listed_models(models_dir: &Path) -> Vec<serde_json::Value> {
    let output = kiln_on_models(models_dir, &["models", "list", "--json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    serde_json::from_slice(&output.stdout).expect("list --json prints a JSON array")
}

/// Runs `kiln ARGS` without the environment variables that pick a node or a data folder, so a
/// test's flags alone decide where the command goes.
pub fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .env_remove("KILN_NODE")
        .env_remove("KILN_TOKEN")
        .env_remove("KILN_DATA_DIR")
        .output()
        .expect("run the kiln binary")
}

/// Runs `kiln ARGS` and returns its standard output; panics with stderr on failure.
pub fn kiln_ok(args: &[&str]) -> String {
    let output = kiln(args);
    assert!(
        output.status.success(),
        "kiln {args:?} failed: {}",
        stderr(&output)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

/// Creates an admin token of `scope` in `data_dir` and returns it.
pub fn create_token(data_dir: &Path, scope: &str) -> String {
    let data_dir = data_dir.to_str().expect("UTF-8 path");
    let output = kiln_ok(&["tokens", "create", "--scope", scope, "--data-dir", data_dir]);
    output
        .lines()
        .last()
        .expect("a token line")
        .trim()
        .to_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub struct Node {
    child: Child,
    pub base: String,
    /// The node's `--data-dir`.
    pub data_dir: PathBuf,
    /// Everything the node wrote to stderr (its log) so far.
    pub log: Arc<Mutex<String>>,
    _home: Option<tempfile::TempDir>,
}

impl Node {
    /// Starts a node with the bundled models and `config` as its kiln.toml.
    pub fn start(config: &str) -> Node {
        Self::start_with_models(&models_dir(), config)
    }

    /// Starts a node on the models in `models` with `config` as its kiln.toml.
    pub fn start_with_models(models: &Path, config: &str) -> Node {
        let home = tempfile::tempdir().expect("temp dir");
        let mut node = Self::start_at(models, config, home.path());
        node._home = Some(home);
        node
    }

    /// Starts a node whose KILN_HOME (config, and data in `home/data`) is `home`, which
    /// outlives the process, so a later node can start on the same data.
    pub fn start_at(models: &Path, config: &str, home: &Path) -> Node {
        let config_path = home.join("kiln.toml");
        std::fs::write(&config_path, config).expect("write kiln.toml");
        let port = free_port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--config")
            .arg(&config_path)
            .arg("--models-dir")
            .arg(models)
            .arg("--data-dir")
            .arg(home.join("data"))
            .env("KILN_HOME", home)
            .env_remove("KILN_MODELS_DIR")
            .env_remove("KILN_DATA_DIR")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the kiln binary");

        let log = capture_stderr(&mut child);

        let node = Node {
            child,
            base: format!("http://127.0.0.1:{port}"),
            data_dir: home.join("data"),
            log,
            _home: None,
        };
        node.wait_ready();
        node
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let client = reqwest::blocking::Client::new();
        while Instant::now() < deadline {
            if let Ok(response) = client.get(format!("{}/healthz", self.base)).send() {
                if response.status().is_success() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "kiln serve did not become ready within 60 s; log:\n{}",
            self.log_text()
        );
    }

    pub fn log_text(&self) -> String {
        self.log.lock().expect("log lock").clone()
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

    /// Returns the text of `GET /metrics`, which must return status 200.
    pub fn metrics(&self) -> String {
        let response = self
            .client()
            .get(self.url("/metrics"))
            .send()
            .expect("metrics request");
        assert_eq!(response.status(), 200);
        response.text().expect("metrics text")
    }

    /// Returns the sum of the samples of metric `name` whose labels include `labels`, or
    /// `None` when the node reports no such sample.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let samples = parse_samples(&self.metrics());
        let values: Vec<f64> = matching_samples(&samples, name, labels)
            .map(|sample| sample.value)
            .collect();
        (!values.is_empty()).then(|| values.iter().sum())
    }
}

/// One sample of the Prometheus text format: metric name, labels and value.
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the Prometheus text format of `GET /metrics`, skipping comments.
pub fn parse_samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (key, value) = pair.split_once("=\"").expect("label=\"value\"");
                    (key.to_owned(), value.trim_end_matches('"').to_owned())
                })
                .collect();
            Sample {
                name: name.to_owned(),
                labels,
                value: value.parse().expect("a numeric value"),
            }
        })
        .collect()
}

/// Returns the sum of the samples of metric `name` whose labels include `labels`, or 0 when
/// there is none yet.
pub fn metric_value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    matching_samples(samples, name, labels)
        .map(|sample| sample.value)
        .sum()
}

fn matching_samples<'a>(
    samples: &'a [Sample],
    name: &'a str,
    labels: &'a [(&str, &str)],
) -> impl Iterator<Item = &'a Sample> {
    samples.iter().filter(move |sample| {
        sample.name == name
            && labels
                .iter()
                .all(|(key, value)| sample.labels.get(*key).map(String::as_str) == Some(*value))
    })
}

impl Node {
    /// Sends SIGTERM and waits up to `limit` for the process to exit. Returns its exit status,
    /// or `None` if it is still running.
    pub fn terminate(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        terminate(&mut self.child, limit)
    }
}

/// Sends SIGTERM to `child` and waits up to `limit` for it to exit. Returns its exit status, or
/// `None` if it is still running.
pub fn terminate(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -TERM failed");
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("wait for kiln") {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

impl Node {
    /// Kills the process with SIGKILL, as a crash would, and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Collects the child's stderr (its log) in the background, line by line.
pub fn capture_stderr(child: &mut Child) -> Arc<Mutex<String>> {
    let log = Arc::new(Mutex::new(String::new()));
    let stderr = child.stderr.take().expect("piped stderr");
    let sink = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut log = sink.lock().expect("log lock");
            log.push_str(&line);
            log.push('\n');
        }
    });
    log
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("bind a free port")
}
