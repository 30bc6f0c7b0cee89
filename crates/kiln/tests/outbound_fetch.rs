//! Outbound `fetch()` from a worker under the real `kiln dev`, against an HTTP server that each
//! test runs on 127.0.0.1: the node's host and private-address policy, response streaming,
//! request bodies, redirects, aborts and the subrequest limit.

mod common;
mod dev_node;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use dev_node::{worker_dir, DevNode};
use serde_json::{json, Value};

/// What the origin server has seen.
#[derive(Default)]
struct Seen {
    /// `METHOD /path?query` of each request, in order.
    requests: Vec<String>,
    /// Paths of held requests (`/hang`, `/hold`) whose client closed the connection.
    closed: Vec<String>,
    /// Set by `/release`, which lets `/stream` send the rest of its body.
    released: bool,
}

/// A plain HTTP/1.1 server on 127.0.0.1 with one thread per connection.
///
/// Routes: `/json`, `/echo` (returns the method, headers and body it got), `/redirect?status=
/// &to=`, `/stream` (sends `one`, then waits for `/release` before `two` and `three`),
/// `/release`, `/hang` (never responds) and `/hold` (sends the head and `first`, then never
/// finishes). The last two record when the client closes the connection.
struct Origin {
    port: u16,
    seen: Arc<(Mutex<Seen>, Condvar)>,
}

impl Origin {
    fn start() -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the origin server");
        let port = listener.local_addr().expect("origin address").port();
        let seen: Arc<(Mutex<Seen>, Condvar)> = Arc::default();
        let shared = Arc::clone(&seen);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let seen = Arc::clone(&shared);
                std::thread::spawn(move || serve_connection(stream, &seen));
            }
        });
        Origin { port, seen }
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn requests(&self) -> Vec<String> {
        self.seen.0.lock().expect("seen lock").requests.clone()
    }

    /// Waits until the client of a held request to `path` closed its connection; panics with
    /// what the server saw after `limit`.
    fn wait_for_close(&self, path: &str, limit: Duration) {
        let (lock, changed) = &*self.seen;
        let deadline = Instant::now() + limit;
        let mut seen = lock.lock().expect("seen lock");
        while !seen.closed.iter().any(|closed| closed == path) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "the connection of {path} was never closed; requests: {:?}, closed: {:?}",
                seen.requests,
                seen.closed
            );
            seen = changed.wait_timeout(seen, left).expect("seen lock").0;
        }
    }
}

struct IncomingRequest {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn read_request(reader: &mut BufReader<TcpStream>) -> Option<IncomingRequest> {
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let target = parts.next()?.to_owned();
    let mut headers = Vec::new();
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':')?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    let length = headers
        .iter()
        .find(|(name, _)| name == "content-length")
        .map_or(0, |(_, value)| value.parse().unwrap_or(0));
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(IncomingRequest {
        method,
        target,
        headers,
        body,
    })
}

/// Decodes `%XX` escapes and `+` in a query component.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let escaped = bytes
            .get(index + 1..index + 3)
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match (bytes[index], escaped) {
            (b'%', Some(byte)) => {
                decoded.push(byte);
                index += 3;
            }
            (b'+', _) => {
                decoded.push(b' ');
                index += 1;
            }
            (byte, _) => {
                decoded.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

fn respond(stream: &mut TcpStream, status: &str, headers: &[(&str, &str)], body: &[u8]) {
    let mut head = format!("HTTP/1.1 {status}\r\nconnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
}

fn send_chunk(stream: &mut TcpStream, text: &str) {
    let _ = write!(stream, "{:x}\r\n{text}\r\n", text.len());
    let _ = stream.flush();
}

/// Blocks until the client closes the connection, then records it for `path`.
fn wait_for_client_close(
    reader: &mut BufReader<TcpStream>,
    path: &str,
    seen: &(Mutex<Seen>, Condvar),
) {
    let mut buffer = [0u8; 256];
    while matches!(reader.read(&mut buffer), Ok(read) if read > 0) {}
    seen.0
        .lock()
        .expect("seen lock")
        .closed
        .push(path.to_owned());
    seen.1.notify_all();
}

fn serve_connection(stream: TcpStream, seen: &(Mutex<Seen>, Condvar)) {
    let mut writer = stream.try_clone().expect("clone the connection");
    let mut reader = BufReader::new(stream);
    let Some(request) = read_request(&mut reader) else {
        return;
    };
    seen.0
        .lock()
        .expect("seen lock")
        .requests
        .push(format!("{} {}", request.method, request.target));
    let (path, query) = request
        .target
        .split_once('?')
        .unwrap_or((request.target.as_str(), ""));
    let query: HashMap<String, String> = query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(key, value)| (percent_decode(key), percent_decode(value)))
        .collect();
    match path {
        "/json" => respond(
            &mut writer,
            "200 OK",
            &[("content-type", "application/json"), ("x-test", "yes")],
            br#"{"hello":"world","n":1}"#,
        ),
        "/echo" => {
            let headers: serde_json::Map<String, Value> = request
                .headers
                .iter()
                .map(|(name, value)| (name.clone(), Value::from(value.as_str())))
                .collect();
            let body = json!({
                "method": request.method,
                "headers": headers,
                "body": String::from_utf8_lossy(&request.body),
            });
            respond(
                &mut writer,
                "200 OK",
                &[("content-type", "application/json")],
                body.to_string().as_bytes(),
            );
        }
        "/redirect" => {
            let status = match query.get("status").map(String::as_str) {
                Some("301") => "301 Moved Permanently",
                Some("303") => "303 See Other",
                Some("307") => "307 Temporary Redirect",
                _ => "302 Found",
            };
            let location = query.get("to").cloned().unwrap_or_default();
            respond(&mut writer, status, &[("location", &location)], b"");
        }
        "/stream" => {
            let head = "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-type: text/plain\r\n\
                        transfer-encoding: chunked\r\n\r\n";
            let _ = writer.write_all(head.as_bytes());
            send_chunk(&mut writer, "one");
            let (lock, changed) = seen;
            let guard = lock.lock().expect("seen lock");
            let (guard, _) = changed
                .wait_timeout_while(guard, Duration::from_secs(60), |seen| !seen.released)
                .expect("seen lock");
            let released = guard.released;
            drop(guard);
            if released {
                send_chunk(&mut writer, "two");
                send_chunk(&mut writer, "three");
            } else {
                send_chunk(&mut writer, "never released");
            }
            let _ = writer.write_all(b"0\r\n\r\n");
        }
        "/release" => {
            seen.0.lock().expect("seen lock").released = true;
            seen.1.notify_all();
            let _ = writer.write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n");
        }
        "/hang" => wait_for_client_close(&mut reader, "/hang", seen),
        "/hold" => {
            let head = "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-type: text/plain\r\n\
                        transfer-encoding: chunked\r\n\r\n";
            let _ = writer.write_all(head.as_bytes());
            send_chunk(&mut writer, "first");
            wait_for_client_close(&mut reader, "/hold", seen);
        }
        _ => respond(&mut writer, "404 Not Found", &[], b"no such route"),
    }
}

/// Starts `kiln dev` on the outbound test worker with `workers` as the node's `[workers]` keys.
fn start_node(workers: &str) -> DevNode {
    DevNode::start(&worker_dir("outbound"), &format!("[workers]\n{workers}\n"))
}

/// Allows private addresses for exactly the origin's host and port.
fn private_origin(origin: &Origin) -> String {
    format!("outbound_private_hosts = [\"127.0.0.1:{}\"]", origin.port)
}

/// Runs one mode of the worker and returns its `{ value }` or `{ error }` JSON.
fn run_mode(node: &DevNode, origin: &Origin, mode: &str, extra: &[(&str, &str)]) -> Value {
    let mut query = vec![("mode", mode.to_owned()), ("origin", origin.base())];
    query.extend(extra.iter().map(|(key, value)| (*key, (*value).to_owned())));
    let response = node
        .client()
        .get(node.url("/"))
        .query(&query)
        .send()
        .expect("request reaches the node");
    assert_eq!(response.status(), 200, "mode {mode}");
    response.json().expect("JSON from the worker")
}

/// Returns the `{ name, message }` of a rejected call, failing when the call succeeded.
fn rejection(result: &Value) -> (&str, &str) {
    let error = &result["error"];
    assert!(error.is_object(), "expected a rejection, got {result}");
    (
        error["name"].as_str().unwrap_or_default(),
        error["message"].as_str().unwrap_or_default(),
    )
}

#[test]
fn fetch_is_rejected_by_default() {
    let origin = Origin::start();
    let node = start_node("");
    let url = format!("{}/json", origin.base());
    let result = run_mode(&node, &origin, "get", &[("url", &url)]);
    let (name, message) = rejection(&result);
    assert_eq!(name, "TypeError");
    assert!(
        message.contains(&format!("127.0.0.1:{}", origin.port)),
        "{message}"
    );
    // A loopback address needs the private list, which the advice names.
    assert!(
        message.contains("[workers] outbound_private_hosts"),
        "{message}"
    );

    let with_credentials = format!("http://user:secret@127.0.0.1:{}/json", origin.port);
    let result = run_mode(&node, &origin, "get", &[("url", &with_credentials)]);
    let (name, message) = rejection(&result);
    assert_eq!(name, "TypeError");
    assert!(message.contains("credentials"), "{message}");

    for url in [
        "ftp://127.0.0.1/file",
        "file:///etc/hostname",
        "data:text/plain,hi",
    ] {
        let result = run_mode(&node, &origin, "get", &[("url", url)]);
        let (name, message) = rejection(&result);
        assert_eq!(name, "TypeError", "{url}");
        assert!(
            message.contains("only http: and https:"),
            "{url}: {message}"
        );
    }
    assert!(origin.requests().is_empty(), "{:?}", origin.requests());
}

#[test]
fn allowed_host_resolving_to_loopback_is_rejected() {
    let origin = Origin::start();
    let node = start_node(&format!(
        "outbound_hosts = [\"localhost:{port}\", \"127.0.0.1\"]",
        port = origin.port
    ));

    let url = format!("http://localhost:{}/json", origin.port);
    let result = run_mode(&node, &origin, "get", &[("url", &url)]);
    let (name, message) = rejection(&result);
    assert_eq!(name, "TypeError");
    assert!(message.contains("localhost resolves to"), "{message}");
    assert!(message.contains("loopback"), "{message}");
    assert!(
        message.contains("[workers] outbound_private_hosts"),
        "{message}"
    );

    let url = format!("{}/json", origin.base());
    let result = run_mode(&node, &origin, "get", &[("url", &url)]);
    let (name, message) = rejection(&result);
    assert_eq!(name, "TypeError");
    assert!(
        message.contains("127.0.0.1 is a loopback address"),
        "{message}"
    );
    assert!(
        message.contains(&format!("\"127.0.0.1:{}\"", origin.port)),
        "{message}"
    );
    assert!(origin.requests().is_empty(), "{:?}", origin.requests());
}

#[test]
fn private_allowance_admits_named_host() {
    let origin = Origin::start();
    let node = start_node(&format!(
        "outbound_private_hosts = [\"localhost:{}\"]",
        origin.port
    ));
    let url = format!("http://localhost:{}/json", origin.port);
    let result = run_mode(&node, &origin, "get", &[("url", &url)]);
    let value = &result["value"];
    assert_eq!(value["status"], 200, "{result}");
    assert_eq!(value["text"], r#"{"hello":"world","n":1}"#);
    assert_eq!(value["url"], url);
    assert_eq!(origin.requests(), ["GET /json"]);
}

#[test]
fn fetch_returns_status_headers_and_json() {
    let origin = Origin::start();
    let node = start_node(&private_origin(&origin));
    let result = run_mode(&node, &origin, "json", &[]);
    let value = &result["value"];
    assert_eq!(value["status"], 200, "{result}");
    assert_eq!(value["statusText"], "OK");
    assert_eq!(value["testHeader"], "yes");
    assert_eq!(value["contentType"], "application/json");
    assert_eq!(value["body"], json!({"hello": "world", "n": 1}));
    assert_eq!(value["url"], format!("{}/json", origin.base()));
    assert_eq!(value["redirected"], false);
    assert_eq!(value["immutable"]["error"]["name"], "TypeError");
    assert_eq!(origin.requests(), ["GET /json"]);
}

#[test]
fn fetch_streams_response_body() {
    let origin = Origin::start();
    let node = start_node(&private_origin(&origin));
    let result = run_mode(&node, &origin, "stream", &[]);
    let value = &result["value"];
    assert_eq!(value["chunks"][0], "one", "{result}");
    assert_eq!(
        value["chunks"].as_array().map(Vec::len),
        Some(3),
        "{result}"
    );
    assert_eq!(value["chunks"][1], "two", "{result}");
    assert_eq!(value["chunks"][2], "three", "{result}");
    assert_eq!(value["releaseStatus"], 204);
    assert_eq!(value["releaseBody"], Value::Null);
}

#[test]
fn fetch_sends_each_body_type() {
    let origin = Origin::start();
    let node = start_node(&private_origin(&origin));
    let result = run_mode(&node, &origin, "bodies", &[]);
    let value = &result["value"];
    let expected = [
        ("string", "plain text", Some("text/plain;charset=UTF-8")),
        ("bytes", "typed array", None),
        ("buffer", "array buffer", None),
        ("blob", "blob body", Some("application/x-blob")),
        (
            "params",
            "a=1&b=two",
            Some("application/x-www-form-urlencoded;charset=UTF-8"),
        ),
        ("stream", "streamed body", None),
    ];
    for (name, body, content_type) in expected {
        let echo = &value[name];
        assert_eq!(echo["method"], "POST", "{name}: {result}");
        assert_eq!(echo["body"], body, "{name}");
        assert_eq!(echo["headers"]["x-echo"], name, "{name}");
        assert_eq!(
            echo["headers"]["content-length"],
            body.len().to_string(),
            "{name}"
        );
        assert_eq!(
            echo["headers"]["content-type"].as_str(),
            content_type,
            "{name}"
        );
    }
    let form = &value["form"];
    let form_type = form["headers"]["content-type"].as_str().unwrap_or_default();
    assert!(
        form_type.starts_with("multipart/form-data; boundary="),
        "{form}"
    );
    let form_body = form["body"].as_str().unwrap_or_default();
    assert!(
        form_body.contains("Content-Disposition: form-data; name=\"field\"\r\n\r\nvalue\r\n"),
        "{form_body:?}"
    );
}

#[test]
fn fetch_follows_and_reports_redirects() {
    let origin = Origin::start();
    let node = start_node(&private_origin(&origin));
    let other = format!("http://localhost:{}/json", origin.port);
    let result = run_mode(&node, &origin, "redirects", &[("other", &other)]);
    let value = &result["value"];

    let followed = &value["followed"];
    assert_eq!(followed["status"], 200, "{result}");
    assert_eq!(followed["redirected"], true);
    assert_eq!(followed["url"], format!("{}/json", origin.base()));
    assert_eq!(followed["body"]["hello"], "world");

    assert_eq!(value["seeOther"]["method"], "GET");
    assert_eq!(value["seeOther"]["body"], "");
    assert_eq!(value["temporary"]["method"], "POST");
    assert_eq!(value["temporary"]["body"], "kept");

    let manual = &value["manual"];
    assert_eq!(manual["status"], 301);
    assert_eq!(manual["location"], "/json");
    assert_eq!(manual["redirected"], false);

    let (name, message) = rejection(&value["error"]);
    assert_eq!(name, "TypeError");
    assert!(message.contains("redirect mode is \"error\""), "{message}");

    let (name, message) = rejection(&value["offList"]);
    assert_eq!(name, "TypeError");
    assert!(
        message.contains(&format!("localhost:{}", origin.port)),
        "{message}"
    );
    assert!(message.contains("[workers] outbound_hosts"), "{message}");
    // Each redirect hop reached the server once, and the hop to localhost never did.
    let expected = [
        "GET /redirect?status=302&to=/json",
        "GET /json",
        "POST /redirect?status=303&to=/echo",
        "GET /echo",
        "POST /redirect?status=307&to=/echo",
        "POST /echo",
        "GET /redirect?status=301&to=/json",
        "GET /redirect?status=302&to=/json",
    ];
    let requests = origin.requests();
    assert_eq!(requests.len(), expected.len() + 1, "{requests:?}");
    assert_eq!(requests[..expected.len()], expected);
    assert!(
        requests[expected.len()].starts_with("GET /redirect?status=302&to=http"),
        "{requests:?}"
    );
}

#[test]
fn abort_rejects_and_closes_connection() {
    let origin = Origin::start();
    let node = start_node(&private_origin(&origin));
    let result = run_mode(&node, &origin, "abort", &[]);
    let value = &result["value"];
    for case in ["beforeHead", "duringBody", "preAborted"] {
        let error = &value[case]["error"];
        assert_eq!(error["name"], "AbortError", "{case}: {result}");
        assert_eq!(error["isDOMException"], true, "{case}");
    }
    assert_eq!(value["first"], "first");
    origin.wait_for_close("/hang", Duration::from_secs(30));
    origin.wait_for_close("/hold", Duration::from_secs(30));
    let requests = origin.requests();
    assert!(
        !requests.iter().any(|request| request == "GET /json"),
        "a pre-aborted fetch was sent: {requests:?}"
    );
}

#[test]
fn subrequest_limit_rejects_extra_calls() {
    let origin = Origin::start();
    let node = start_node(&private_origin(&origin));
    // The worker's wrangler.toml sets `[limits] subrequests = 10`.
    let result = run_mode(&node, &origin, "many", &[("count", "11"), ("ai", "1")]);
    let value = &result["value"];
    let fetches = value["fetches"].as_array().expect("fetch results");
    assert_eq!(fetches.len(), 11, "{result}");
    for (index, fetched) in fetches[..10].iter().enumerate() {
        assert_eq!(fetched["value"], 200, "fetch {index}: {fetched}");
    }
    let (name, message) = rejection(&fetches[10]);
    assert_eq!(name, "Error");
    assert_eq!(message, "Too many subrequests.");
    let (name, message) = rejection(&value["ai"]);
    assert_eq!(name, "Error");
    assert_eq!(message, "Too many subrequests.");
    assert_eq!(origin.requests().len(), 10);

    node.wait_for_log("\"limit\":\"subrequests\"", Duration::from_secs(30));
    let warnings: Vec<Value> = node
        .log_lines()
        .into_iter()
        .filter(|line| line["limit"] == "subrequests")
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0]["level"], "WARN");
    assert_eq!(warnings[0]["worker"], "outbound");
    let request_id = warnings[0]["request_id"].as_str().unwrap_or_default();
    assert!(!request_id.is_empty(), "{:?}", warnings[0]);

    let result = run_mode(&node, &origin, "many", &[("count", "1")]);
    assert_eq!(result["value"]["fetches"][0]["value"], 200, "{result}");
}

#[test]
fn node_default_subrequest_limit_applies() {
    let origin = Origin::start();
    let dir = dev_node::copy_worker(&worker_dir("outbound"));
    let config = std::fs::read_to_string(dir.path().join("wrangler.toml")).expect("read config");
    let config = config.replace("[limits]\nsubrequests = 10\n", "");
    std::fs::write(dir.path().join("wrangler.toml"), config).expect("write config");
    let node = DevNode::start(
        dir.path(),
        &format!("[workers]\nsubrequests = 2\n{}\n", private_origin(&origin)),
    );
    let result = run_mode(&node, &origin, "many", &[("count", "3")]);
    let fetches = result["value"]["fetches"]
        .as_array()
        .expect("fetch results");
    assert_eq!(fetches[0]["value"], 200, "{result}");
    assert_eq!(fetches[1]["value"], 200, "{result}");
    let (_, message) = rejection(&fetches[2]);
    assert_eq!(message, "Too many subrequests.");
}
