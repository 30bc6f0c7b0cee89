//! A minimal HTTP/1.1 server on 127.0.0.1 with the parts of the Hugging Face
//! hub API that `kiln_models::hub` uses. It handles one request per connection
//! and records every request for the tests to inspect.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use super::sha256_hex;

/// The token that protected repos accept.
pub const TOKEN: &str = "hf_test_token_5d1c";

pub struct HubFile {
    pub path: String,
    pub bytes: Vec<u8>,
    /// Served like a Git LFS file: HEAD and GET on `resolve` redirect to `/lfs/...`,
    /// and the redirect carries `X-Linked-Etag` and `X-Linked-Size`.
    pub lfs: bool,
    /// SHA-256 to advertise instead of the real one, to simulate a corrupt download.
    pub advertised_sha256: Option<String>,
    /// Close the connection after this many body bytes on the first full GET,
    /// to simulate an interrupted download.
    pub cut_first_download_at: Option<usize>,
    cut_done: AtomicBool,
}

impl HubFile {
    pub fn new(path: &str, bytes: Vec<u8>, lfs: bool) -> Self {
        HubFile {
            path: path.to_string(),
            bytes,
            lfs,
            advertised_sha256: None,
            cut_first_download_at: None,
            cut_done: AtomicBool::new(false),
        }
    }

    fn etag(&self) -> String {
        if self.lfs {
            self.advertised_sha256
                .clone()
                .unwrap_or_else(|| sha256_hex(&self.bytes))
        } else {
            // Plain git files carry the 40-hex git blob id, which is not a SHA-256.
            sha256_hex(&self.bytes)[..40].to_string()
        }
    }
}

pub struct HubRepo {
    pub id: String,
    pub files: Vec<HubFile>,
    /// Requires `Authorization: Bearer TOKEN` on the API and `resolve` URLs.
    pub protected: bool,
    /// Serves `/api/models/{repo}/revision/main`; when false only `/api/models/{repo}`.
    pub revision_api: bool,
    pub license: Option<String>,
}

impl HubRepo {
    pub fn new(id: &str, files: Vec<HubFile>) -> Self {
        HubRepo {
            id: id.to_string(),
            files,
            protected: false,
            revision_api: true,
            license: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl RecordedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

struct State {
    repos: Vec<HubRepo>,
    requests: Mutex<Vec<RecordedRequest>>,
    stopping: AtomicBool,
}

pub struct HubServer {
    pub endpoint: String,
    address: SocketAddr,
    state: Arc<State>,
}

impl HubServer {
    /// Starts the server on a free port of 127.0.0.1.
    pub fn start(repos: Vec<HubRepo>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let state = Arc::new(State {
            repos,
            requests: Mutex::new(Vec::new()),
            stopping: AtomicBool::new(false),
        });
        let accept_state = Arc::clone(&state);
        thread::spawn(move || {
            for stream in listener.incoming() {
                if accept_state.stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let connection_state = Arc::clone(&accept_state);
                thread::spawn(move || handle(stream, &connection_state));
            }
        });
        HubServer {
            endpoint: format!("http://{address}"),
            address,
            state,
        }
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.requests.lock().unwrap().clone()
    }

    pub fn clear_requests(&self) {
        self.state.requests.lock().unwrap().clear();
    }
}

impl Drop for HubServer {
    fn drop(&mut self) {
        self.state.stopping.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it reads the flag and exits.
        let _ = TcpStream::connect(self.address);
    }
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Send only this many body bytes, then close.
    cut_at: Option<usize>,
}

impl Response {
    fn new(status: u16) -> Self {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            cut_at: None,
        }
    }

    fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    fn body(mut self, body: Vec<u8>) -> Self {
        self.body = body;
        self
    }
}

fn handle(stream: TcpStream, state: &State) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default();
    let path = target.split('?').next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
    }
    let request = RecordedRequest {
        method,
        path,
        headers,
    };
    state.requests.lock().unwrap().push(request.clone());

    let response = route(&request, state);
    write_response(stream, &request, response);
}

fn write_response(mut stream: TcpStream, request: &RecordedRequest, response: Response) {
    let reason = match response.status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        401 => "Unauthorized",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        _ => "Other",
    };
    let mut head = format!("HTTP/1.1 {} {reason}\r\n", response.status);
    let has_length = response
        .headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("content-length"));
    for (name, value) in &response.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !has_length {
        head.push_str(&format!("Content-Length: {}\r\n", response.body.len()));
    }
    head.push_str("Connection: close\r\n\r\n");
    let _ = stream.write_all(head.as_bytes());
    if request.method != "HEAD" {
        let end = response
            .cut_at
            .unwrap_or(response.body.len())
            .min(response.body.len());
        let _ = stream.write_all(&response.body[..end]);
    }
    let _ = stream.flush();
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

fn authorized(repo: &HubRepo, request: &RecordedRequest) -> bool {
    !repo.protected || request.header("authorization") == Some(&format!("Bearer {TOKEN}"))
}

fn unauthorized() -> Response {
    Response::new(401)
        .header("Content-Type", "application/json")
        .body(br#"{"error":"Invalid credentials in Authorization header"}"#.to_vec())
}

fn not_found(message: &str) -> Response {
    Response::new(404)
        .header("Content-Type", "application/json")
        .body(
            serde_json::json!({ "error": message })
                .to_string()
                .into_bytes(),
        )
}

fn route(request: &RecordedRequest, state: &State) -> Response {
    if let Some(rest) = request.path.strip_prefix("/api/models/") {
        return listing(rest, request, state);
    }
    let segments: Vec<&str> = request.path.trim_start_matches('/').split('/').collect();
    if segments.len() >= 4 && segments[0] == "lfs" {
        let repo_id = format!("{}/{}", segments[1], segments[2]);
        let file_path = segments[3..].join("/");
        let Some(file) = find_file(state, &repo_id, &file_path) else {
            return not_found("Entry not found");
        };
        return serve_content(file, request);
    }
    if segments.len() >= 5 && segments[2] == "resolve" {
        let repo_id = format!("{}/{}", segments[0], segments[1]);
        let Some(repo) = state.repos.iter().find(|repo| repo.id == repo_id) else {
            return not_found("Repository not found");
        };
        if !authorized(repo, request) {
            return unauthorized();
        }
        if segments[3] != "main" {
            return not_found("Revision not found");
        }
        let file_path = segments[4..].join("/");
        let Some(file) = repo.files.iter().find(|file| file.path == file_path) else {
            return not_found("Entry not found");
        };
        let etag = format!("\"{}\"", file.etag());
        if file.lfs {
            return Response::new(302)
                .header("Location", format!("/lfs/{repo_id}/{file_path}"))
                .header("X-Linked-Etag", etag)
                .header("X-Linked-Size", file.bytes.len().to_string());
        }
        if request.method == "HEAD" {
            return Response::new(200)
                .header("ETag", etag)
                .header("Content-Length", file.bytes.len().to_string());
        }
        return serve_content(file, request).header("ETag", etag);
    }
    not_found("Not found")
}

fn listing(rest: &str, request: &RecordedRequest, state: &State) -> Response {
    let (repo_id, by_revision) = match rest.strip_suffix("/revision/main") {
        Some(repo_id) => (repo_id, true),
        None => (rest, false),
    };
    let Some(repo) = state.repos.iter().find(|repo| repo.id == repo_id) else {
        return not_found("Repository not found");
    };
    if by_revision && !repo.revision_api {
        return not_found("Repository not found");
    }
    if !authorized(repo, request) {
        return unauthorized();
    }
    let siblings: Vec<serde_json::Value> = repo
        .files
        .iter()
        .map(|file| serde_json::json!({ "rfilename": file.path }))
        .collect();
    let mut body = serde_json::json!({
        "id": repo.id,
        "sha": "0123456789abcdef0123456789abcdef01234567",
        "siblings": siblings,
    });
    if let Some(license) = &repo.license {
        body["cardData"] = serde_json::json!({ "license": license });
    }
    Response::new(200)
        .header("Content-Type", "application/json")
        .body(body.to_string().into_bytes())
}

fn find_file<'a>(state: &'a State, repo_id: &str, path: &str) -> Option<&'a HubFile> {
    state
        .repos
        .iter()
        .find(|repo| repo.id == repo_id)?
        .files
        .iter()
        .find(|file| file.path == path)
}

/// Serves a file's bytes, honoring `Range: bytes=N-`.
fn serve_content(file: &HubFile, request: &RecordedRequest) -> Response {
    let len = file.bytes.len();
    let start = request
        .header("range")
        .and_then(|range| range.strip_prefix("bytes="))
        .and_then(|range| range.strip_suffix('-'))
        .and_then(|start| start.parse::<usize>().ok());
    let mut response = match start {
        Some(start) if start >= len => {
            return Response::new(416).header("Content-Range", format!("bytes */{len}"));
        }
        Some(start) => Response::new(206)
            .header("Content-Range", format!("bytes {start}-{}/{len}", len - 1))
            .body(file.bytes[start..].to_vec()),
        None => Response::new(200).body(file.bytes.clone()),
    };
    response = response.header("Accept-Ranges", "bytes");
    if start.is_none() && request.method == "GET" {
        if let Some(cut) = file.cut_first_download_at {
            if !file.cut_done.swap(true, Ordering::SeqCst) {
                response.cut_at = Some(cut);
            }
        }
    }
    response
}
