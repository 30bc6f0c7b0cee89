//! HTTP requests to the hub: file listing, HEAD for the expected size and
//! SHA-256, and resumable downloads.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::header::{
    HeaderMap, HeaderValue, ACCEPT_ENCODING, AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, ETAG,
    LOCATION, RANGE,
};
use reqwest::{StatusCode, Url};
use sha2::{Digest, Sha256};

use super::{HubOptions, Spec, DEFAULT_REVISION};
use crate::error::IoContext;
use crate::store::is_sha256_hex;
use crate::transfer::{hash_reader, progress_bar};
use crate::StoreError;

/// Wait for the TCP (and TLS) connection to the hub.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Wait for response headers, and for each read of a response body, so a
/// stalled download fails instead of hanging. reqwest 0.12's blocking client
/// applies its timeout per operation, so this does not limit a whole download.
const READ_TIMEOUT: Duration = Duration::from_secs(120);
const MAX_HEAD_REDIRECTS: usize = 10;

/// Repo metadata from the hub's model API.
#[derive(Debug)]
pub(super) struct RepoInfo {
    pub(super) files: Vec<String>,
    pub(super) license: Option<String>,
}

/// Size and SHA-256 that the hub reports for a file.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Expected {
    size: Option<u64>,
    sha256: Option<String>,
}

/// One file to download, with what HEAD reported about it.
struct DownloadTarget<'a> {
    url: &'a Url,
    file: &'a str,
    /// Description of the file for a 404 error.
    resource: String,
    partial: &'a Path,
    expected: &'a Expected,
}

/// Outcome of one download attempt.
enum Attempt {
    Done,
    /// The bytes did not match. `resumed` is true when an earlier partial file was reused.
    Mismatch {
        error: StoreError,
        resumed: bool,
    },
}

pub(super) struct HubClient {
    /// Follows redirects, for downloads. reqwest drops the Authorization header
    /// when a redirect leaves the host.
    client: Client,
    /// Follows no redirects, so that the hub's `X-Linked-*` headers on the
    /// redirect for LFS files are not lost.
    head_client: Client,
    endpoint: Url,
    token: Option<String>,
    revision: String,
}

impl HubClient {
    pub(super) fn new(options: &HubOptions) -> Result<Self, StoreError> {
        let invalid_endpoint = |reason: String| StoreError::InvalidEndpoint {
            endpoint: options.endpoint.clone(),
            reason,
        };
        let endpoint = Url::parse(options.endpoint.trim_end_matches('/'))
            .map_err(|error| invalid_endpoint(error.to_string()))?;
        if endpoint.cannot_be_a_base() || !matches!(endpoint.scheme(), "http" | "https") {
            return Err(invalid_endpoint(
                "expected an http or https URL".to_string(),
            ));
        }
        let build = |policy: reqwest::redirect::Policy| {
            Client::builder()
                .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(CONNECT_TIMEOUT)
                .timeout(READ_TIMEOUT)
                .redirect(policy)
                .build()
                .map_err(|error| invalid_endpoint(format!("cannot build an HTTP client: {error}")))
        };
        Ok(HubClient {
            client: build(reqwest::redirect::Policy::limited(MAX_HEAD_REDIRECTS))?,
            head_client: build(reqwest::redirect::Policy::none())?,
            endpoint,
            token: options.token.clone(),
            revision: options.revision.clone(),
        })
    }

    /// Builds `{endpoint}/{segments...}`, percent-encoding each segment.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.endpoint.clone();
        url.path_segments_mut()
            .expect("the endpoint was checked to be a base URL")
            .pop_if_empty()
            .extend(segments);
        url
    }

    fn resolve_url(&self, spec: &Spec<'_>, file: &str) -> Url {
        let mut segments = vec![spec.org, spec.name, "resolve", self.revision.as_str()];
        segments.extend(file.split('/'));
        self.url(&segments)
    }

    /// Adds the token to requests for the endpoint's own origin.
    fn authorize(&self, request: RequestBuilder, url: &Url) -> RequestBuilder {
        let same_origin = url.scheme() == self.endpoint.scheme()
            && url.host_str() == self.endpoint.host_str()
            && url.port_or_known_default() == self.endpoint.port_or_known_default();
        match &self.token {
            Some(token) if same_origin => match HeaderValue::from_str(&format!("Bearer {token}")) {
                Ok(mut value) => {
                    value.set_sensitive(true);
                    request.header(AUTHORIZATION, value)
                }
                Err(_) => {
                    tracing::warn!("HF_TOKEN contains characters not allowed in an HTTP header; sending no token");
                    request
                }
            },
            _ => request,
        }
    }

    fn send(&self, request: RequestBuilder, url: &Url) -> Result<Response, StoreError> {
        let request = self.authorize(request, url);
        request.send().map_err(|source| StoreError::Network {
            url: url.to_string(),
            source,
        })
    }

    /// Maps 401, 403, 404 and other failures to errors. `resource` describes
    /// the requested resource in a 404 error.
    fn check_status(
        &self,
        response: &Response,
        url: &Url,
        resource: &str,
    ) -> Result<(), StoreError> {
        let status = response.status();
        match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(StoreError::HubUnauthorized {
                url: url.to_string(),
                status: status.as_u16(),
                hint: if self.token.is_some() {
                    "the token in HF_TOKEN was rejected or has no access to this repo"
                } else {
                    "set HF_TOKEN to a Hugging Face access token with read access \
                     (the hub also returns 401 for repos that do not exist)"
                },
            }),
            StatusCode::NOT_FOUND => Err(StoreError::HubNotFound {
                resource: resource.to_string(),
                url: url.to_string(),
            }),
            _ if status.is_success() || status.is_redirection() => Ok(()),
            _ => Err(StoreError::HubStatus {
                url: url.to_string(),
                status: status.as_u16(),
            }),
        }
    }

    /// Fetches the repo's file list, from the revision endpoint or, when that
    /// returns 404, from the plain model endpoint (which lists the default branch).
    pub(super) fn repo_info(&self, spec: &Spec<'_>) -> Result<RepoInfo, StoreError> {
        let revision_url = self.url(&[
            "api",
            "models",
            spec.org,
            spec.name,
            "revision",
            &self.revision,
        ]);
        let response = self.send(self.client.get(revision_url.clone()), &revision_url)?;
        let (response, url) = if response.status() == StatusCode::NOT_FOUND {
            let plain_url = self.url(&["api", "models", spec.org, spec.name]);
            tracing::debug!(url = %revision_url, "revision endpoint returned 404, trying {plain_url}");
            let response = self.send(self.client.get(plain_url.clone()), &plain_url)?;
            self.check_status(&response, &plain_url, &format!("repo {}", spec.repo))?;
            if self.revision != DEFAULT_REVISION {
                return Err(StoreError::HubNotFound {
                    resource: format!("revision {} of {}", self.revision, spec.repo),
                    url: revision_url.to_string(),
                });
            }
            (response, plain_url)
        } else {
            self.check_status(&response, &revision_url, &format!("repo {}", spec.repo))?;
            (response, revision_url)
        };

        let invalid = |reason: String| StoreError::HubResponse {
            url: url.to_string(),
            reason,
        };
        let bytes = response.bytes().map_err(|source| StoreError::Network {
            url: url.to_string(),
            source,
        })?;
        let body: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|error| invalid(format!("not JSON: {error}")))?;
        let siblings = body
            .get("siblings")
            .and_then(serde_json::Value::as_array)
            .ok_or_else(|| invalid("no siblings list".to_string()))?;
        let files = siblings
            .iter()
            .filter_map(|sibling| sibling.get("rfilename")?.as_str())
            .map(str::to_string)
            .collect();
        Ok(RepoInfo {
            files,
            license: license_from_info(&body),
        })
    }

    /// Reads the expected size and SHA-256 of a file with HEAD requests. LFS
    /// redirects carry `X-Linked-Size` and `X-Linked-Etag` and are not followed;
    /// other redirects, such as those for renamed repos, are.
    fn head(&self, spec: &Spec<'_>, file: &str) -> Result<Expected, StoreError> {
        let resource = format!("file {file} in {} at revision {}", spec.repo, self.revision);
        let mut url = self.resolve_url(spec, file);
        for _ in 0..=MAX_HEAD_REDIRECTS {
            let response = self.send(
                // Without compression, Content-Length is the file's size.
                self.head_client
                    .head(url.clone())
                    .header(ACCEPT_ENCODING, "identity"),
                &url,
            )?;
            self.check_status(&response, &url, &resource)?;
            let headers = response.headers();
            let linked =
                headers.contains_key("x-linked-etag") || headers.contains_key("x-linked-size");
            if response.status().is_redirection() && !linked {
                let location = header_str(headers, LOCATION.as_str()).ok_or_else(|| {
                    StoreError::HubResponse {
                        url: url.to_string(),
                        reason: format!(
                            "HTTP {} without a Location header",
                            response.status().as_u16()
                        ),
                    }
                })?;
                url = url
                    .join(location)
                    .map_err(|error| StoreError::HubResponse {
                        url: url.to_string(),
                        reason: format!("invalid Location {location:?}: {error}"),
                    })?;
                continue;
            }
            return Ok(expected_from_headers(
                headers,
                response.status().is_success(),
            ));
        }
        Err(StoreError::HubResponse {
            url: url.to_string(),
            reason: format!("more than {MAX_HEAD_REDIRECTS} redirects"),
        })
    }

    /// Downloads `file` into `partial`, resuming from the bytes already there,
    /// and checks the result against what HEAD reported. Data that fails the
    /// check is deleted. A resumed download that fails is retried once from the
    /// start, because the partial file may come from an older revision.
    pub(super) fn download(
        &self,
        spec: &Spec<'_>,
        file: &str,
        partial: &Path,
        progress: bool,
    ) -> Result<(), StoreError> {
        if let Some(folder) = partial.parent() {
            std::fs::create_dir_all(folder).at(folder)?;
        }
        let expected = self.head(spec, file)?;
        let url = self.resolve_url(spec, file);
        let target = DownloadTarget {
            url: &url,
            file,
            resource: format!("file {file} in {} at revision {}", spec.repo, self.revision),
            partial,
            expected: &expected,
        };
        match self.download_attempt(&target, true, progress)? {
            Attempt::Done => Ok(()),
            Attempt::Mismatch {
                error,
                resumed: false,
            } => {
                remove_if_exists(partial)?;
                Err(error)
            }
            Attempt::Mismatch {
                error,
                resumed: true,
            } => {
                tracing::warn!(url = %url, %error, "resumed download does not match, downloading again from the start");
                remove_if_exists(partial)?;
                match self.download_attempt(&target, false, progress)? {
                    Attempt::Done => Ok(()),
                    Attempt::Mismatch { error, .. } => {
                        remove_if_exists(partial)?;
                        Err(error)
                    }
                }
            }
        }
    }

    fn download_attempt(
        &self,
        target: &DownloadTarget<'_>,
        resume: bool,
        progress: bool,
    ) -> Result<Attempt, StoreError> {
        let DownloadTarget {
            url,
            file,
            partial,
            expected,
            ..
        } = *target;
        let mut existing = if resume { file_len(partial)? } else { 0 };
        if expected.size.is_some_and(|size| existing > size) {
            existing = 0;
        }
        // A partial file with other hard links was already linked into a stored
        // model by a pull that stopped before deleting it, and appending would
        // change that model.
        if existing > 0 && has_other_links(partial)? {
            remove_if_exists(partial)?;
            existing = 0;
        }

        let message = file.rsplit('/').next().unwrap_or(file).to_string();
        let bar = progress_bar(expected.size.unwrap_or(0), message, progress);
        let mut hasher = Sha256::new();

        let complete = existing > 0 && expected.size == Some(existing);
        if complete {
            tracing::debug!(url = %url, bytes = existing, "partial file is already complete");
            let mut reader = File::open(partial).at(partial)?;
            hash_reader(&mut reader, &mut hasher, &bar).at(partial)?;
        } else {
            let mut request = self.client.get(url.clone());
            if existing > 0 {
                request = request.header(RANGE, format!("bytes={existing}-"));
            }
            let mut response = self.send(request, url)?;
            if response.status() == StatusCode::RANGE_NOT_SATISFIABLE && existing > 0 {
                drop(response);
                tracing::debug!(url = %url, "server rejected the range, downloading from the start");
                response = self.send(self.client.get(url.clone()), url)?;
                existing = 0;
            }
            self.check_status(&response, url, &target.resource)?;
            if response.status() != StatusCode::PARTIAL_CONTENT {
                existing = 0;
            } else {
                check_content_range(&response, url, existing)?;
                tracing::info!(url = %url, offset = existing, "resuming download");
            }

            let mut output = if existing > 0 {
                let mut reader = File::open(partial).at(partial)?;
                hash_reader(&mut reader, &mut hasher, &bar).at(partial)?;
                OpenOptions::new().append(true).open(partial).at(partial)?
            } else {
                // A new file rather than a truncated one, for the same reason as above.
                remove_if_exists(partial)?;
                File::create(partial).at(partial)?
            };
            if expected.size.is_none() {
                if let Some(length) = response.content_length() {
                    bar.set_length(existing + length);
                }
            }
            copy_response(&mut response, &mut output, &mut hasher, &bar, url, partial)?;
            output.sync_all().at(partial)?;
        }
        bar.finish_and_clear();

        let resumed = existing > 0;
        let actual_size = file_len(partial)?;
        if let Some(size) = expected.size {
            if size != actual_size {
                return Ok(Attempt::Mismatch {
                    error: StoreError::SizeMismatch {
                        file: url.to_string(),
                        expected: size,
                        actual: actual_size,
                    },
                    resumed,
                });
            }
        }
        let actual_sha256 = hex::encode(hasher.finalize());
        if let Some(sha256) = &expected.sha256 {
            if *sha256 != actual_sha256 {
                return Ok(Attempt::Mismatch {
                    error: StoreError::HashMismatch {
                        file: url.to_string(),
                        expected: sha256.clone(),
                        actual: actual_sha256,
                    },
                    resumed,
                });
            }
        }
        Ok(Attempt::Done)
    }
}

/// Streams a response body into `output` while hashing it.
fn copy_response(
    response: &mut Response,
    output: &mut File,
    hasher: &mut Sha256,
    bar: &indicatif::ProgressBar,
    url: &Url,
    partial: &Path,
) -> Result<(), StoreError> {
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = match response.read(&mut buffer) {
            Ok(0) => return Ok(()),
            Ok(read) => read,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => {
                return Err(StoreError::HubResponse {
                    url: url.to_string(),
                    reason: format!(
                        "download interrupted: {error}; run the pull again to resume from {}",
                        partial.display()
                    ),
                })
            }
        };
        output.write_all(&buffer[..read]).at(partial)?;
        hasher.update(&buffer[..read]);
        bar.inc(read as u64);
    }
}

/// Checks that a 206 response starts at the requested offset.
fn check_content_range(response: &Response, url: &Url, offset: u64) -> Result<(), StoreError> {
    let range = header_str(response.headers(), CONTENT_RANGE.as_str()).unwrap_or_default();
    let start = range
        .strip_prefix("bytes ")
        .and_then(|rest| rest.split('-').next())
        .and_then(|start| start.trim().parse::<u64>().ok());
    if start != Some(offset) {
        return Err(StoreError::HubResponse {
            url: url.to_string(),
            reason: format!("requested bytes from {offset} but got Content-Range {range:?}"),
        });
    }
    Ok(())
}

/// Reads the expected size and SHA-256 from HEAD response headers.
/// `Content-Length` counts only on a successful response, because on a
/// redirect it is the length of the redirect's own body.
fn expected_from_headers(headers: &HeaderMap, success: bool) -> Expected {
    let size = header_str(headers, "x-linked-size")
        .or_else(|| {
            success
                .then(|| header_str(headers, CONTENT_LENGTH.as_str()))
                .flatten()
        })
        .and_then(|value| value.trim().parse().ok());
    let sha256 = header_str(headers, "x-linked-etag")
        .or_else(|| header_str(headers, ETAG.as_str()))
        .map(|etag| {
            etag.trim()
                .trim_start_matches("W/")
                .trim_matches('"')
                .to_ascii_lowercase()
        })
        .filter(|etag| is_sha256_hex(etag));
    Expected { size, sha256 }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name)?.to_str().ok()
}

/// Reads the license from the model card metadata, or from a `license:` tag.
fn license_from_info(info: &serde_json::Value) -> Option<String> {
    let card_license = info
        .get("cardData")
        .and_then(|card| card.get("license"))
        .and_then(serde_json::Value::as_str);
    let tag_license = || {
        info.get("tags")?
            .as_array()?
            .iter()
            .filter_map(serde_json::Value::as_str)
            .find_map(|tag| tag.strip_prefix("license:"))
    };
    card_license.or_else(tag_license).map(str::to_string)
}

/// Returns whether the file has more than one hard link. Only Unix reports
/// link counts, so elsewhere it returns false.
fn has_other_links(path: &Path) -> Result<bool, StoreError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Ok(std::fs::metadata(path).at(path)?.nlink() > 1)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Ok(false)
    }
}

fn file_len(path: &Path) -> Result<u64, StoreError> {
    match std::fs::metadata(path) {
        Ok(metadata) => Ok(metadata.len()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(error) => Err(StoreError::io(path, error)),
    }
}

pub(super) fn remove_if_exists(path: &Path) -> Result<(), StoreError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(StoreError::io(path, error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_reads_linked_headers() {
        let sha = "ab".repeat(32);
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-linked-etag",
            HeaderValue::from_str(&format!("\"{}\"", sha.to_uppercase())).unwrap(),
        );
        headers.insert("x-linked-size", HeaderValue::from_static("1234"));
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        let expected = expected_from_headers(&headers, false);
        assert_eq!(expected.size, Some(1234));
        assert_eq!(expected.sha256.as_deref(), Some(sha.as_str()));
    }

    #[test]
    fn expected_ignores_git_sha1_etag() {
        let mut headers = HeaderMap::new();
        headers.insert(
            ETAG,
            HeaderValue::from_static("W/\"3f786850e387550fdab836ed7e6dc881de23001b\""),
        );
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static("42"));
        let expected = expected_from_headers(&headers, true);
        assert_eq!(expected.size, Some(42));
        assert_eq!(expected.sha256, None);

        let redirect = expected_from_headers(&headers, false);
        assert_eq!(redirect.size, None);
    }

    #[test]
    fn license_from_card_or_tag() {
        let card =
            serde_json::json!({"cardData": {"license": "apache-2.0"}, "tags": ["license:mit"]});
        assert_eq!(license_from_info(&card).as_deref(), Some("apache-2.0"));
        let tags = serde_json::json!({"tags": ["gguf", "license:mit"]});
        assert_eq!(license_from_info(&tags).as_deref(), Some("mit"));
        assert_eq!(license_from_info(&serde_json::json!({})), None);
    }
}
