//! The native side of the global `fetch()`: outbound HTTP requests run on the async runtime
//! under the node's [`OutboundPolicy`], and their response heads come back to the isolate as
//! [`Event::FetchDone`]. Response bodies stream in through the same forwarded streams as AI
//! results.
//!
//! Redirects are followed here, not by the HTTP client, so that every hop passes the policy.
//! Each hop gets its own client whose resolver returns only the addresses that passed.

use std::error::Error as _;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use rquickjs::{Ctx, Exception, Function, Object, TypedArray};
use serde_json::json;
use url::Url;

use crate::host::{copy_bytes, SharedState};
use crate::isolate::Event;
use crate::outbound::OutboundPolicy;

/// Maximum redirects that one `fetch()` follows, the Fetch standard's limit.
const MAX_REDIRECTS: usize = 20;

/// Request headers that the client sets itself from the URL and body, or that describe one
/// connection and must not be forwarded.
const DROPPED_REQUEST_HEADERS: [&str; 9] = [
    "host",
    "content-length",
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
];

/// Headers that describe a request body, removed when a redirect turns the request into a GET.
const BODY_HEADERS: [&str; 4] = [
    "content-encoding",
    "content-language",
    "content-location",
    "content-type",
];

/// Headers with credentials, removed when a redirect leaves the origin.
const CREDENTIAL_HEADERS: [&str; 3] = ["authorization", "cookie", "proxy-authorization"];

/// The `redirect` option of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RedirectMode {
    Follow,
    Manual,
    Error,
}

/// A request as the prelude hands it over, with its body already collected.
struct OutboundRequest {
    method: reqwest::Method,
    url: Url,
    headers: Vec<(String, String)>,
    body: Option<Bytes>,
    redirect: RedirectMode,
}

/// The head of a response, with its body still to be read.
pub(crate) struct FetchHead {
    status: u16,
    status_text: String,
    headers: Vec<(String, String)>,
    /// The final URL after redirects, without its fragment.
    url: String,
    redirected: bool,
    body: BoxStream<'static, Result<Bytes, String>>,
}

/// Result of an outbound request: the response head, or the message of the `TypeError` that
/// `fetch()` rejects with.
pub(crate) type FetchResult = Result<FetchHead, String>;

/// Installs `native.fetchStart(call, method, url, headers, body, redirect)` and
/// `native.fetchCancel(call)`. The result arrives later as [`Event::FetchDone`].
pub(crate) fn install<'js>(
    ctx: &Ctx<'js>,
    native: &Object<'js>,
    state: &SharedState,
) -> rquickjs::Result<()> {
    let start_state = Rc::clone(state);
    native.set(
        "fetchStart",
        Function::new(
            ctx.clone(),
            move |ctx: Ctx<'js>,
                  call: f64,
                  method: String,
                  url: String,
                  headers: Vec<String>,
                  body: Option<TypedArray<'js, u8>>,
                  redirect: String|
                  -> rquickjs::Result<()> {
                let request = parse_request(method, &url, headers, body.as_ref(), &redirect)
                    .map_err(|message| Exception::throw_type(&ctx, &message))?;
                let mut state = start_state.borrow_mut();
                state.count_subrequest(&ctx)?;
                let call = call as u64;
                let owner = state.current;
                state.call_owner.insert(call, owner);
                let policy = Arc::clone(&state.outbound);
                let work = async move { send(&policy, request).await };
                state.spawn_call(call, true, work, |generation, call, result| {
                    Event::FetchDone {
                        generation,
                        call,
                        result,
                    }
                });
                Ok(())
            },
        )?,
    )?;

    let cancel_state = Rc::clone(state);
    native.set(
        "fetchCancel",
        Function::new(ctx.clone(), move |call: f64| {
            let mut state = cancel_state.borrow_mut();
            let call = call as u64;
            state.call_owner.remove(&call);
            if let Some(task) = state.call_tasks.remove(&call) {
                task.abort();
            }
        })?,
    )
}

fn parse_request(
    method: String,
    url: &str,
    flat_headers: Vec<String>,
    body: Option<&TypedArray<'_, u8>>,
    redirect: &str,
) -> Result<OutboundRequest, String> {
    let url = Url::parse(url).map_err(|error| format!("fetch(): invalid URL {url:?}: {error}"))?;
    let upper = method.to_ascii_uppercase();
    if matches!(upper.as_str(), "CONNECT" | "TRACE" | "TRACK") {
        return Err(format!("fetch(): the method {method} is not allowed"));
    }
    let method = reqwest::Method::from_bytes(method.as_bytes())
        .map_err(|_| format!("fetch(): {method:?} is not a valid HTTP method"))?;
    let redirect = match redirect {
        "follow" => RedirectMode::Follow,
        "manual" => RedirectMode::Manual,
        "error" => RedirectMode::Error,
        other => {
            return Err(format!(
                "fetch(): redirect must be \"follow\", \"manual\" or \"error\", not {other:?}"
            ))
        }
    };
    let headers = flat_headers
        .chunks_exact(2)
        .filter(|pair| !DROPPED_REQUEST_HEADERS.contains(&pair[0].as_str()))
        .map(|pair| (pair[0].clone(), pair[1].clone()))
        .collect();
    Ok(OutboundRequest {
        method,
        url,
        headers,
        body: body.map(|bytes| Bytes::from(copy_bytes(bytes))),
        redirect,
    })
}

/// Sends the request, following redirects as its `redirect` mode requires, and returns the
/// final head.
async fn send(policy: &OutboundPolicy, mut request: OutboundRequest) -> FetchResult {
    let mut redirected = false;
    for hop in 0..=MAX_REDIRECTS {
        let addresses = policy.resolve(&request.url).await?;
        let response = send_once(&request, addresses).await?;
        let status = response.status();
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .map(|value| header_text(value.as_bytes()));
        let is_redirect = matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308);
        let Some(location) = location.filter(|_| is_redirect) else {
            return Ok(head(response, &request.url, redirected));
        };
        match request.redirect {
            RedirectMode::Manual => return Ok(head(response, &request.url, redirected)),
            RedirectMode::Error => {
                return Err(format!(
                    "fetch() to {} failed: the server redirected with status {} and the request's \
                     redirect mode is \"error\"",
                    request.url,
                    status.as_u16()
                ))
            }
            RedirectMode::Follow => {}
        }
        if hop == MAX_REDIRECTS {
            break;
        }
        let next = request.url.join(&location).map_err(|error| {
            format!(
                "fetch() to {} failed: the redirect location {location:?} is not a valid URL: {error}",
                request.url
            )
        })?;
        prepare_redirect(&mut request, status.as_u16(), next);
        redirected = true;
    }
    Err(format!(
        "fetch() to {} failed: more than {MAX_REDIRECTS} redirects",
        request.url
    ))
}

/// Rewrites the request for the next hop as the Fetch standard's HTTP-redirect fetch does.
fn prepare_redirect(request: &mut OutboundRequest, status: u16, next: Url) {
    let post_to_get = matches!(status, 301 | 302) && request.method == reqwest::Method::POST;
    let see_other = status == 303
        && request.method != reqwest::Method::GET
        && request.method != reqwest::Method::HEAD;
    if post_to_get || see_other {
        request.method = reqwest::Method::GET;
        request.body = None;
        request
            .headers
            .retain(|(name, _)| !BODY_HEADERS.contains(&name.as_str()));
    }
    if next.origin() != request.url.origin() {
        request
            .headers
            .retain(|(name, _)| !CREDENTIAL_HEADERS.contains(&name.as_str()));
    }
    request.url = next;
}

/// Sends one hop to exactly `addresses`, which the policy has checked.
async fn send_once(
    request: &OutboundRequest,
    addresses: Vec<SocketAddr>,
) -> Result<reqwest::Response, String> {
    // The client skips the resolver for an IP literal host and connects to that address,
    // which the policy checked.
    let name = request
        .url
        .host_str()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .referer(false)
        .dns_resolver(Arc::new(CheckedAddresses { name, addresses }))
        .build()
        .map_err(|error| format!("fetch(): failed to build the HTTP client: {error}"))?;
    let mut outgoing = client.request(request.method.clone(), request.url.clone());
    for (name, value) in &request.headers {
        outgoing = outgoing.header(name.as_str(), value.as_str());
    }
    if let Some(body) = &request.body {
        outgoing = outgoing.body(body.clone());
    }
    outgoing
        .send()
        .await
        .map_err(|error| format!("fetch() to {} failed: {}", request.url, error_chain(&error)))
}

/// A resolver that returns the addresses the policy checked for one host name and fails for
/// any other, so the client never connects to an address that was not checked.
struct CheckedAddresses {
    name: String,
    addresses: Vec<SocketAddr>,
}

impl reqwest::dns::Resolve for CheckedAddresses {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let result: Result<reqwest::dns::Addrs, Box<dyn std::error::Error + Send + Sync>> =
            if name.as_str().eq_ignore_ascii_case(&self.name) {
                Ok(Box::new(self.addresses.clone().into_iter()))
            } else {
                Err(format!("{} was not checked by the outbound policy", name.as_str()).into())
            };
        Box::pin(std::future::ready(result))
    }
}

fn head(response: reqwest::Response, url: &Url, redirected: bool) -> FetchHead {
    let status = response.status();
    let headers = response
        .headers()
        .iter()
        .map(|(name, value)| (name.as_str().to_owned(), header_text(value.as_bytes())))
        .collect();
    let mut url = url.clone();
    url.set_fragment(None);
    let stream_url = url.to_string();
    let body = response
        .bytes_stream()
        .map(move |chunk| {
            chunk.map_err(|error| {
                format!(
                    "fetch() to {stream_url} failed while reading the body: {}",
                    error_chain(&error)
                )
            })
        })
        .boxed();
    FetchHead {
        status: status.as_u16(),
        status_text: status.canonical_reason().unwrap_or("").to_owned(),
        headers,
        url: url.to_string(),
        redirected,
        body,
    }
}

/// Decodes a header value: UTF-8 when valid, else byte by byte as Latin-1, as browsers do.
fn header_text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_owned(),
        Err(_) => bytes.iter().map(|&byte| char::from(byte)).collect(),
    }
}

/// Returns an error's message followed by the messages of its sources.
fn error_chain(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A settled request, in the form the prelude's `fetchDone(call, ok, payload, stream)` takes.
pub(crate) struct FetchSettlement {
    ok: bool,
    /// The head as JSON, or the error message.
    payload: String,
    stream: Option<u64>,
}

/// Starts forwarding the body of a settled request.
pub(crate) fn settle(
    state: &SharedState,
    owner: Option<u64>,
    result: FetchResult,
) -> FetchSettlement {
    let mut state = state.borrow_mut();
    match result {
        Ok(head) => {
            let flat: Vec<&str> = head
                .headers
                .iter()
                .flat_map(|(name, value)| [name.as_str(), value.as_str()])
                .collect();
            let payload = json!({
                "status": head.status,
                "statusText": head.status_text,
                "headers": flat,
                "url": head.url,
                "redirected": head.redirected,
            })
            .to_string();
            // NOTE: the body is forwarded as fast as it arrives, without backpressure, so a body
            // larger than the heap limit breaks the memory limit even if the worker never reads it.
            let stream = state.forward_stream(owner, head.body);
            FetchSettlement {
                ok: true,
                payload,
                stream: Some(stream),
            }
        }
        Err(message) => FetchSettlement {
            ok: false,
            payload: message,
            stream: None,
        },
    }
}

impl FetchSettlement {
    /// Calls the prelude's `fetchDone`.
    pub(crate) fn deliver(self, host: &Object<'_>, call: u64) -> rquickjs::Result<()> {
        let done: Function = host.get("fetchDone")?;
        done.call((
            call as f64,
            self.ok,
            self.payload,
            self.stream.map(|id| id as f64),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: reqwest::Method, url: &str) -> OutboundRequest {
        OutboundRequest {
            method,
            url: Url::parse(url).expect("valid URL"),
            headers: vec![
                ("content-type".into(), "text/plain".into()),
                ("authorization".into(), "Bearer secret".into()),
                ("x-trace".into(), "1".into()),
            ],
            body: Some(Bytes::from_static(b"payload")),
            redirect: RedirectMode::Follow,
        }
    }

    fn header_names(request: &OutboundRequest) -> Vec<&str> {
        request
            .headers
            .iter()
            .map(|(name, _)| name.as_str())
            .collect()
    }

    #[test]
    fn found_turns_post_into_get() {
        let mut post = request(reqwest::Method::POST, "http://a.test/form");
        prepare_redirect(&mut post, 302, Url::parse("http://a.test/done").unwrap());
        assert_eq!(post.method, reqwest::Method::GET);
        assert!(post.body.is_none());
        assert_eq!(header_names(&post), ["authorization", "x-trace"]);
        assert_eq!(post.url.as_str(), "http://a.test/done");
    }

    #[test]
    fn temporary_redirect_keeps_method_and_body() {
        let mut put = request(reqwest::Method::PUT, "http://a.test/item");
        prepare_redirect(&mut put, 307, Url::parse("http://a.test/other").unwrap());
        assert_eq!(put.method, reqwest::Method::PUT);
        assert_eq!(put.body.as_deref(), Some(&b"payload"[..]));
        assert_eq!(
            header_names(&put),
            ["content-type", "authorization", "x-trace"]
        );
    }

    #[test]
    fn see_other_turns_put_into_get() {
        let mut put = request(reqwest::Method::PUT, "http://a.test/item");
        prepare_redirect(&mut put, 303, Url::parse("http://a.test/other").unwrap());
        assert_eq!(put.method, reqwest::Method::GET);
        assert!(put.body.is_none());
    }

    #[test]
    fn cross_origin_redirect_drops_credentials() {
        let mut get = request(reqwest::Method::GET, "http://a.test/");
        prepare_redirect(&mut get, 301, Url::parse("http://a.test:8080/").unwrap());
        assert_eq!(header_names(&get), ["content-type", "x-trace"]);
    }

    fn resolve_checked(resolver: &CheckedAddresses, name: &str) -> Option<Vec<SocketAddr>> {
        use reqwest::dns::Resolve;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let name = name.parse().expect("valid name");
        let addresses = runtime.block_on(resolver.resolve(name)).ok()?;
        Some(addresses.collect())
    }

    #[test]
    fn resolver_returns_only_checked_name() {
        let checked: SocketAddr = "203.0.113.7:443".parse().unwrap();
        let resolver = CheckedAddresses {
            name: "api.example.com".into(),
            addresses: vec![checked],
        };
        assert_eq!(
            resolve_checked(&resolver, "API.example.com"),
            Some(vec![checked])
        );
        assert_eq!(resolve_checked(&resolver, "other.example.com"), None);
    }

    #[test]
    fn header_values_fall_back_to_latin1() {
        assert_eq!(header_text(b"caf\xc3\xa9"), "café");
        assert_eq!(header_text(b"caf\xe9"), "café");
    }
}
