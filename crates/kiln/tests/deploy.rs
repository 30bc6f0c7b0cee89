//! Deployed workers on `kiln serve`: tokens, `kiln deploy`, versions, rollback, routing by host
//! and route, secrets, and a redeploy or SIGTERM while clients keep sending requests.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{create_token, kiln, stderr, Node};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Writes a worker whose response names its release, so a response shows which version served it.
fn write_worker(dir: &Path, name: &str, release: &str, extra_config: &str) {
    std::fs::create_dir_all(dir.join("src")).expect("create the worker folder");
    std::fs::write(
        dir.join("wrangler.toml"),
        format!("name = \"{name}\"\nmain = \"src/index.ts\"\n{extra_config}"),
    )
    .expect("write wrangler.toml");
    std::fs::write(
        dir.join("src/index.ts"),
        "import { release } from './release';\n\
         export default {\n\
           async fetch(request: Request, env: Record<string, string>): Promise<Response> {\n\
             const url = new URL(request.url);\n\
             if (url.pathname === '/secret') return new Response(env.API_KEY ?? 'none');\n\
             if (url.pathname === '/slow') await new Promise((done) => setTimeout(done, 400));\n\
             return new Response(`${release} ${url.pathname}`);\n\
           },\n\
         };\n",
    )
    .expect("write index.ts");
    std::fs::write(
        dir.join("src/release.ts"),
        format!("export const release: string = '{release}';\n"),
    )
    .expect("write release.ts");
}

struct Deployer {
    node: Node,
    token: String,
    data_dir: std::path::PathBuf,
}

impl Deployer {
    fn start(config: &str) -> Self {
        let node = Node::start(config);
        let data_dir = node.data_dir.clone();
        let token = create_token(&data_dir, "deploy");
        Self {
            node,
            token,
            data_dir,
        }
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--node", &self.node.base, "--token", &self.token]);
        kiln(&all)
    }

    fn deploy(&self, dir: &Path) -> String {
        let output = self.run(&["deploy", dir.to_str().expect("UTF-8 path")]);
        assert!(
            output.status.success(),
            "deploy failed: {}",
            stderr(&output)
        );
        String::from_utf8(output.stdout).expect("UTF-8 output")
    }

    /// GET `path` with `Host: host`; returns the status and body.
    fn get(&self, host: &str, path: &str) -> (StatusCode, String) {
        let response = self
            .node
            .client()
            .get(self.node.url(path))
            .header("host", host)
            .send()
            .expect("request to the node");
        let status = response.status();
        (status, response.text().expect("response text"))
    }
}

#[test]
fn token_matrix_guards_deploys() {
    let node = Deployer::start("");
    let folder = tempfile::tempdir().unwrap();
    write_worker(folder.path(), "guarded", "r1", "");
    let bundle = json!({
        "config": std::fs::read_to_string(folder.path().join("wrangler.toml")).unwrap(),
        "files": {
            "src/index.ts": std::fs::read_to_string(folder.path().join("src/index.ts")).unwrap(),
            "src/release.ts": "export const release = 'raw';\n",
        },
    });
    let kv_token = create_token(&node.data_dir, "kv");
    let read_token = create_token(&node.data_dir, "read");
    let client = node.node.client();
    let put = |token: Option<&str>| {
        let mut request = client
            .put(node.node.url("/admin/v1/workers/guarded"))
            .json(&bundle);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().expect("deploy request").status()
    };
    assert_eq!(put(None), StatusCode::UNAUTHORIZED);
    assert_eq!(put(Some("not-a-token")), StatusCode::UNAUTHORIZED);
    assert_eq!(put(Some(&kv_token)), StatusCode::FORBIDDEN);
    assert_eq!(put(Some(&read_token)), StatusCode::FORBIDDEN);
    assert_eq!(put(Some(&node.token)), StatusCode::OK);
    // A read token may list versions but not roll back.
    let versions = client
        .get(node.node.url("/admin/v1/workers/guarded/versions"))
        .bearer_auth(&read_token)
        .send()
        .unwrap();
    assert_eq!(versions.status(), StatusCode::OK);
    let rollback = client
        .post(node.node.url("/admin/v1/workers/guarded/rollback"))
        .bearer_auth(&read_token)
        .send()
        .unwrap();
    assert_eq!(rollback.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        node.get("guarded.localhost", "/"),
        (StatusCode::OK, "raw /".into())
    );

    let log = node.node.log_text();
    assert!(log.contains("admin request rejected"), "{log}");
    for token in [&kv_token, &read_token, &node.token] {
        assert!(!log.contains(token.as_str()), "a token reached the log");
    }
}

#[test]
fn deploy_redeploy_and_rollback() {
    let node = Deployer::start("");
    let folder = tempfile::tempdir().unwrap();
    write_worker(
        folder.path(),
        "shop",
        "r1",
        "routes = [\"shop.example.test/api/*\"]\n",
    );
    let printed = node.deploy(folder.path());
    assert!(printed.contains("version 1"), "{printed}");
    assert_eq!(
        node.get("shop.localhost:8787", "/a"),
        (StatusCode::OK, "r1 /a".into())
    );
    assert_eq!(
        node.get("shop.example.test", "/api/items"),
        (StatusCode::OK, "r1 /api/items".into())
    );

    // Outside its routes and subdomain the worker is not reachable.
    let (status, body) = node.get("shop.example.test", "/other");
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        body.contains("no worker is routed to host shop.example.test"),
        "{body}"
    );
    let (status, body) = node.get("missing.localhost", "/");
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("missing.localhost"), "{body}");
    // The node's own API stays on its address.
    let (status, _) = node.get(node.node.base.trim_start_matches("http://"), "/healthz");
    assert_eq!(status, StatusCode::OK);

    write_worker(folder.path(), "shop", "r2", "");
    assert!(node.deploy(folder.path()).contains("version 2"));
    assert_eq!(
        node.get("shop.localhost", "/a"),
        (StatusCode::OK, "r2 /a".into())
    );
    // Version 2 has no routes any more.
    assert_eq!(
        node.get("shop.example.test", "/api/x").0,
        StatusCode::NOT_FOUND
    );

    let listed = String::from_utf8(node.run(&["versions", "list", "shop"]).stdout).unwrap();
    let marked: Vec<&str> = listed
        .lines()
        .filter(|line| line.starts_with('*'))
        .collect();
    assert_eq!(marked.len(), 1, "{listed}");
    assert!(marked[0].split_whitespace().nth(1) == Some("2"), "{listed}");
    assert_eq!(listed.lines().count(), 3, "{listed}");

    let output = node.run(&["rollback", "shop"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        node.get("shop.localhost", "/a"),
        (StatusCode::OK, "r1 /a".into())
    );
    let output = node.run(&["rollback", "shop", "--to", "2"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        node.get("shop.localhost", "/a"),
        (StatusCode::OK, "r2 /a".into())
    );
    let output = node.run(&["rollback", "shop", "--to", "9"]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("no version 9"),
        "{}",
        stderr(&output)
    );

    // The version in service survives a restart of the node.
    let home = node.data_dir.parent().unwrap().to_path_buf();
    let output = node.run(&["rollback", "shop", "--to", "1"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let Deployer {
        node: mut first, ..
    } = node;
    assert!(first
        .terminate(Duration::from_secs(30))
        .is_some_and(|status| status.success()));
    let second = Node::start_at(&common::models_dir(), "", &home);
    let response = second
        .client()
        .get(second.url("/a"))
        .header("host", "shop.localhost")
        .send()
        .unwrap();
    assert_eq!(response.text().unwrap(), "r1 /a");
    let log = second.log_text();
    assert!(log.contains("deployed worker started"), "{log}");
}

#[test]
fn broken_bundle_never_replaces_the_version_in_service() {
    let node = Deployer::start("");
    let folder = tempfile::tempdir().unwrap();
    write_worker(folder.path(), "steady", "good", "");
    node.deploy(folder.path());

    // The CLI finds the syntax error before uploading.
    std::fs::write(
        folder.path().join("src/release.ts"),
        "export const release: string = ;\n",
    )
    .unwrap();
    let output = node.run(&["deploy", folder.path().to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("src/release.ts:1:"),
        "{}",
        stderr(&output)
    );

    // The node rejects a bundle that fails to start (with the file and line), files outside the
    // folder and a bundle without its main module.
    let cases = [
        (
            json!({ "index.js": "export default {\n  fetch() { return new Response('x') \n};\n" }),
            vec!["index.js:", "version 1 stays in service"],
        ),
        (
            json!({ "../escape.js": "x", "index.js": "export default {}" }),
            vec!["invalid file name"],
        ),
        (json!({}), vec!["has no file index.js"]),
    ];
    for (files, expected) in cases {
        let bundle =
            json!({ "config": "name = \"steady\"\nmain = \"index.js\"\n", "files": files });
        let response = node
            .node
            .client()
            .put(node.node.url("/admin/v1/workers/steady"))
            .bearer_auth(&node.token)
            .json(&bundle)
            .send()
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let body: Value = response.json().unwrap();
        let message = body["errors"][0]["message"].as_str().unwrap();
        for part in expected {
            assert!(message.contains(part), "{message}");
        }
    }
    assert_eq!(
        node.get("steady.localhost", "/"),
        (StatusCode::OK, "good /".into())
    );
    let listed = String::from_utf8(node.run(&["versions", "list", "steady"]).stdout).unwrap();
    assert_eq!(listed.lines().count(), 2, "{listed}");
}

#[test]
fn concurrent_deploys_leave_one_complete_version() {
    let node = Arc::new(Deployer::start(""));
    let folders: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    for (index, folder) in folders.iter().enumerate() {
        write_worker(folder.path(), "racer", &format!("r{index}"), "");
    }
    let deploys: Vec<_> = folders
        .iter()
        .map(|folder| {
            let node = Arc::clone(&node);
            let path = folder.path().to_path_buf();
            std::thread::spawn(move || node.deploy(&path))
        })
        .collect();
    for deploy in deploys {
        deploy.join().expect("deploy thread");
    }
    let client = node.node.client();
    let versions: Value = client
        .get(node.node.url("/admin/v1/workers/racer/versions"))
        .bearer_auth(&node.token)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let versions = versions["result"]["versions"].as_array().unwrap().clone();
    assert_eq!(versions.len(), 2, "{versions:?}");
    let active: Vec<&Value> = versions.iter().filter(|v| v["active"] == true).collect();
    assert_eq!(active.len(), 1, "{versions:?}");
    assert_eq!(active[0]["version"], 2);

    // The active version serves one release, whole.
    let (status, body) = node.get("racer.localhost", "/");
    assert_eq!(status, StatusCode::OK);
    assert!(body == "r0 /" || body == "r1 /", "{body}");
    // Each stored version is complete: rolling back to the other gives the other release.
    let output = node.run(&["rollback", "racer", "--to", "1"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let (_, other) = node.get("racer.localhost", "/");
    assert!(
        other != body && (other == "r0 /" || other == "r1 /"),
        "{other}"
    );
}

#[test]
fn redeploys_under_load_fail_no_request() {
    let node = Arc::new(Deployer::start(""));
    let folder = tempfile::tempdir().unwrap();
    write_worker(folder.path(), "busy", "r0", "");
    node.deploy(folder.path());

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let node = Arc::clone(&node);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut answers = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    answers.push(node.get("busy.localhost", "/slow"));
                }
                answers
            })
        })
        .collect();
    for release in 1..=3 {
        std::thread::sleep(Duration::from_millis(300));
        write_worker(folder.path(), "busy", &format!("r{release}"), "");
        node.deploy(folder.path());
    }
    std::thread::sleep(Duration::from_millis(600));
    stop.store(true, Ordering::Relaxed);

    let answers: Vec<(StatusCode, String)> = clients
        .into_iter()
        .flat_map(|client| client.join().expect("client thread"))
        .collect();
    assert!(answers.len() >= 8, "only {} requests ran", answers.len());
    let failed: Vec<_> = answers
        .iter()
        .filter(|(status, _)| *status != StatusCode::OK)
        .collect();
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    let releases: std::collections::BTreeSet<&str> = answers
        .iter()
        .map(|(_, body)| body.split(' ').next().unwrap())
        .collect();
    assert!(releases.contains("r3"), "{releases:?}");
    assert!(releases.len() >= 2, "{releases:?}");
}

#[test]
fn sigterm_lets_accepted_requests_finish() {
    let mut node = Deployer::start("[limits]\nshutdown_grace_seconds = 20\n");
    let folder = tempfile::tempdir().unwrap();
    write_worker(folder.path(), "drain", "r1", "");
    node.deploy(folder.path());

    let url = node.node.url("/slow");
    let requests: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                reqwest::blocking::Client::new()
                    .get(url)
                    .header("host", "drain.localhost")
                    .send()
                    .and_then(|response| Ok((response.status(), response.text()?)))
            })
        })
        .collect();
    // The requests are accepted and waiting on their timers when the signal comes.
    std::thread::sleep(Duration::from_millis(150));
    let status = node.node.terminate(Duration::from_secs(30));
    for request in requests {
        let (status, body) = request.join().unwrap().expect("the request got a response");
        assert_eq!((status, body.as_str()), (StatusCode::OK, "r1 /slow"));
    }
    let status = status.expect("the node exited after SIGTERM");
    assert!(status.success(), "exit status {status}");
    // New connections are refused once it has stopped.
    assert!(reqwest::blocking::Client::new().get(&url).send().is_err());
}

#[test]
fn secrets_are_encrypted_and_reach_env() {
    let home = tempfile::tempdir().unwrap();
    let key_file = home.path().join("secrets.key");
    std::fs::write(&key_file, "7f".repeat(32)).unwrap();
    let config = format!(
        "[deploy]\nsecrets_key_file = {:?}\n",
        key_file.to_str().unwrap()
    );
    let node = Deployer::start(&config);
    let folder = tempfile::tempdir().unwrap();
    write_worker(folder.path(), "vault", "r1", "");
    node.deploy(folder.path());
    assert_eq!(node.get("vault.localhost", "/secret").1, "none");

    let value = "s3cret-value-that-must-not-leak";
    let mut put = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["secret", "put", "API_KEY", "--worker", "vault"])
        .args(["--node", &node.node.base, "--token", &node.token])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    writeln!(put.stdin.take().unwrap(), "{value}").unwrap();
    let output = put.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(node.get("vault.localhost", "/secret").1, value);

    let listed = node.run(&["secret", "list", "--worker", "vault"]);
    assert_eq!(String::from_utf8(listed.stdout).unwrap().trim(), "API_KEY");
    let stored = std::fs::read_to_string(node.data_dir.join("workers/vault/secrets.json")).unwrap();
    assert!(!stored.contains(value), "{stored}");
    assert!(
        !node.node.log_text().contains(value),
        "the secret reached the log"
    );

    // A new version keeps the worker's secrets; deleting one removes it from env.
    write_worker(folder.path(), "vault", "r2", "");
    node.deploy(folder.path());
    assert_eq!(node.get("vault.localhost", "/secret").1, value);
    let output = node.run(&["secret", "delete", "API_KEY", "--worker", "vault"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(node.get("vault.localhost", "/secret").1, "none");
}

#[test]
fn secrets_need_a_key() {
    let node = Deployer::start("");
    let response = node
        .node
        .client()
        .put(node.node.url("/admin/v1/workers/vault/secrets/API_KEY"))
        .bearer_auth(&node.token)
        .body("value")
        .send()
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.text().unwrap().contains("KILN_SECRETS_KEY"));
}

#[test]
fn openapi_lists_every_guarded_admin_route() {
    let node = Node::start("");
    let client = node.client();
    let document: Value = client
        .get(node.url("/admin/v1/openapi.json"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let paths = document["paths"].as_object().expect("paths");
    assert!(paths.len() >= 10, "{paths:?}");
    for (path, operations) in paths {
        let concrete = path
            .replace("{name}", "w")
            .replace("{key}", "K")
            .replace("{namespace}", "ns")
            .replace("{id}", "m");
        for method in operations.as_object().unwrap().keys() {
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let status = client
                .request(method.clone(), node.url(&concrete))
                .send()
                .unwrap()
                .status();
            let expected = if path.ends_with("openapi.json") {
                StatusCode::OK
            } else {
                StatusCode::UNAUTHORIZED
            };
            assert_eq!(status, expected, "{method} {path}");
        }
    }
}

#[test]
fn tail_streams_requests_with_their_console_lines() {
    let node = Deployer::start("");
    let folder = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(folder.path()).unwrap();
    std::fs::write(
        folder.path().join("wrangler.toml"),
        "name = \"chatty\"\nmain = \"index.js\"\n",
    )
    .unwrap();
    std::fs::write(
        folder.path().join("index.js"),
        "export default {\n\
           fetch(request) {\n\
             const path = new URL(request.url).pathname;\n\
             console.log('handling', path);\n\
             if (path === '/fail') throw new Error('boom');\n\
             return new Response('ok');\n\
           },\n\
         };\n",
    )
    .unwrap();
    node.deploy(folder.path());

    let read_token = create_token(&node.data_dir, "read");
    let spawn_tail = |extra: &[&str]| {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["tail", "chatty", "--format", "json"])
            .args(extra)
            .args(["--node", &node.node.base, "--token", &read_token])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = common::capture_stderr(&mut child);
        (child, stderr)
    };
    let (mut all, all_stderr) = spawn_tail(&[]);
    let (mut errors, errors_stderr) = spawn_tail(&["--status", "error"]);
    for stderr in [&all_stderr, &errors_stderr] {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !stderr.lock().unwrap().contains("tailing chatty") {
            assert!(
                std::time::Instant::now() < deadline,
                "the tail did not connect"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    let (status, _) = node.get("chatty.localhost", "/hello?secret=query");
    assert_eq!(status, StatusCode::OK);
    let (status, _) = node.get("chatty.localhost", "/fail");
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);

    let read_events = |child: &mut std::process::Child, count: usize| -> Vec<Value> {
        use std::io::BufRead as _;
        let stdout = child.stdout.take().unwrap();
        let lines = std::io::BufReader::new(stdout).lines().take(count);
        lines
            .map(|line| serde_json::from_str(&line.unwrap()).unwrap())
            .collect()
    };
    let events = read_events(&mut all, 2);
    assert_eq!(events[0]["event"]["request"]["path"], "/hello");
    assert_eq!(events[0]["outcome"], "ok");
    assert_eq!(events[0]["scriptVersion"]["id"], "1");
    assert_eq!(events[0]["logs"][0]["message"][0], "handling /hello");
    assert_eq!(events[1]["outcome"], "exception");
    assert_eq!(events[1]["event"]["response"]["status"], 500);
    let failed = read_events(&mut errors, 1);
    assert_eq!(failed[0]["event"]["request"]["path"], "/fail");
    assert_eq!(failed[0]["logs"][0]["message"][0], "handling /fail");

    // The request id of the tail event is the one on the node's log line, with the version.
    let log = node.node.log_text();
    let request_id = events[0]["requestId"].as_str().unwrap();
    let line = log
        .lines()
        .find(|line| line.contains(request_id) && line.contains("\"request\""))
        .unwrap_or_else(|| panic!("no request line for {request_id}:\n{log}"));
    let line: Value = serde_json::from_str(line).unwrap();
    assert_eq!(line["worker"], "chatty");
    assert_eq!(line["version"], 1);
    let _ = all.kill();
    let _ = errors.kill();
}

/// Writes a one-file worker with `main = "./index.js"`, whose response names the worker.
fn write_plain_worker(dir: &Path, name: &str, extra_config: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("wrangler.toml"),
        format!("name = \"{name}\"\nmain = \"./index.js\"\n{extra_config}"),
    )
    .unwrap();
    std::fs::write(
        dir.join("index.js"),
        format!("export default {{ fetch() {{ return new Response('{name}'); }} }};\n"),
    )
    .unwrap();
}

#[test]
fn routes_never_take_api_hosts() {
    let node = Deployer::start("[deploy]\napi_hosts = [\"api.example.test\"]\n");
    let folder = tempfile::tempdir().unwrap();

    // A route on an API host or under the node's domain is rejected at deploy time.
    for route in [
        "localhost/*",
        "api.example.test/*",
        "other.localhost/*",
        "127.0.0.1/*",
    ] {
        write_plain_worker(
            folder.path(),
            "grabber",
            &format!("routes = [\"{route}\"]\n"),
        );
        let output = node.run(&["deploy", folder.path().to_str().unwrap()]);
        assert!(!output.status.success(), "{route} was accepted");
        assert!(
            stderr(&output).contains("invalid route"),
            "{}",
            stderr(&output)
        );
    }

    // A catch-all route serves other hosts, but the API hosts stay with the node.
    write_plain_worker(folder.path(), "grabber", "routes = [\"*/*\"]\n");
    node.deploy(folder.path());
    assert_eq!(
        node.get("shop.example.net", "/"),
        (StatusCode::OK, "grabber".into())
    );
    for host in [
        "localhost",
        "LOCALHOST:8787",
        "localhost.",
        "api.example.test",
    ] {
        assert_eq!(
            node.get(host, "/healthz"),
            (StatusCode::OK, "ok".into()),
            "{host}"
        );
    }
    let versions = node
        .node
        .client()
        .get(node.node.url("/admin/v1/workers/grabber/versions"))
        .header("host", "localhost")
        .bearer_auth(&node.token)
        .send()
        .unwrap();
    assert_eq!(versions.status(), StatusCode::OK);
    assert!(versions.text().unwrap().contains("\"versions\""));

    // Another worker cannot claim a route that one already has.
    let second = tempfile::tempdir().unwrap();
    write_plain_worker(second.path(), "second", "routes = [\"*/*\"]\n");
    let output = node.run(&["deploy", second.path().to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("already belongs to worker grabber"),
        "{}",
        stderr(&output)
    );

    // A name that cannot be a host name is rejected, and a broken Host header gets 400.
    write_plain_worker(second.path(), "Upper", "");
    let output = node.run(&["deploy", second.path().to_str().unwrap()]);
    assert!(
        stderr(&output).contains("lower-case"),
        "{}",
        stderr(&output)
    );
    assert_eq!(
        node.get("grabber.localhost:99999", "/").0,
        StatusCode::BAD_REQUEST
    );
}

#[test]
fn sigterm_stops_a_looping_deploy() {
    let mut node = Deployer::start("[limits]\nshutdown_grace_seconds = 2\n");
    let bundle = json!({
        "config": "name = \"spin\"\nmain = \"index.js\"\n[limits]\ncpu_ms = 300000\n",
        "files": { "index.js": "for (;;) {}\nexport default {};\n" },
    });
    let url = node.node.url("/admin/v1/workers/spin");
    let token = node.token.clone();
    // The deploy never returns: its module's top level loops within its CPU limit.
    std::thread::spawn(move || {
        let _ = reqwest::blocking::Client::new()
            .put(url)
            .bearer_auth(token)
            .json(&bundle)
            .send();
    });
    std::thread::sleep(Duration::from_millis(500));
    let status = node.node.terminate(Duration::from_secs(20));
    let status = status.expect("the node exited after SIGTERM while a worker's top level looped");
    assert!(status.success(), "exit status {status}");
}

#[test]
fn worker_that_fails_at_restart_gets_503() {
    let home = tempfile::tempdir().unwrap();
    let key_file = home.path().join("secrets.key");
    std::fs::write(&key_file, "11".repeat(32)).unwrap();
    let config = format!(
        "[deploy]\nsecrets_key_file = {:?}\n",
        key_file.to_str().unwrap()
    );
    let mut node = Node::start_at(&common::models_dir(), &config, home.path());
    let token = create_token(&node.data_dir, "deploy");
    let folder = tempfile::tempdir().unwrap();
    write_worker(folder.path(), "keyed", "r1", "");
    let deployer = |node: &Node, args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--node", node.base.as_str(), "--token", token.as_str()]);
        let output = kiln(&all);
        assert!(output.status.success(), "{}", stderr(&output));
    };
    deployer(&node, &["deploy", folder.path().to_str().unwrap()]);
    let client = reqwest::blocking::Client::new();
    let put = client
        .put(node.url("/admin/v1/workers/keyed/secrets/API_KEY"))
        .bearer_auth(&token)
        .body("first")
        .send()
        .unwrap();
    assert_eq!(put.status(), StatusCode::OK);
    assert!(node.terminate(Duration::from_secs(30)).is_some());

    // With another key the stored secret does not open, so the worker reports why.
    std::fs::write(&key_file, "22".repeat(32)).unwrap();
    let node = Node::start_at(&common::models_dir(), &config, home.path());
    let response = client
        .get(node.url("/secret"))
        .header("host", "keyed.localhost")
        .send()
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let text = response.text().unwrap();
    assert!(
        text.contains("API_KEY") && text.contains("cannot be decrypted"),
        "{text}"
    );

    // Storing the secret again under the new key starts the version in service.
    let put = client
        .put(node.url("/admin/v1/workers/keyed/secrets/API_KEY"))
        .bearer_auth(&token)
        .body("second")
        .send()
        .unwrap();
    assert_eq!(put.status(), StatusCode::OK);
    let response = client
        .get(node.url("/secret"))
        .header("host", "keyed.localhost")
        .send()
        .unwrap();
    assert_eq!(response.text().unwrap(), "second");
}
