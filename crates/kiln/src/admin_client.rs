//! A client of a running node's admin API (`/admin/v1/…`), shared by the commands that take
//! `--node` and `--token`.

use anyhow::{bail, Context};
use serde_json::Value;

pub struct AdminClient {
    client: reqwest::Client,
    base: reqwest::Url,
    token: String,
}

impl AdminClient {
    /// Connects to the admin API of `node`, with paths under `/admin/v1/` followed by `prefix`.
    /// `scope` names the token scope the command needs, for the error when no token is given.
    pub fn new(
        node: &str,
        token: Option<&str>,
        scope: &str,
        prefix: &[&str],
    ) -> anyhow::Result<Self> {
        let Some(token) = token else {
            bail!("--node needs --token (or KILN_TOKEN): create one on the node with `kiln tokens create --scope {scope}`");
        };
        let mut base =
            reqwest::Url::parse(node).with_context(|| format!("invalid --node URL {node:?}"))?;
        base.path_segments_mut()
            .map_err(|()| anyhow::anyhow!("invalid --node URL {node:?}"))?
            .pop_if_empty()
            .extend(["admin", "v1"])
            .extend(prefix);
        Ok(Self {
            client: reqwest::Client::new(),
            base,
            token: token.to_owned(),
        })
    }

    /// Returns the URL of the path segments after the base, each escaped.
    pub fn url(&self, path: &[&str]) -> reqwest::Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("the base URL has a path")
            .extend(path);
        url
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// Starts a request to the path segments after the base.
    pub fn request(&self, method: reqwest::Method, path: &[&str]) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(&self.token)
    }

    /// Sends a request without a body and returns the `result` of a successful response.
    pub async fn json(&self, method: reqwest::Method, path: &[&str]) -> anyhow::Result<Value> {
        self.send_json(self.request(method, path)).await
    }

    /// Sends the request and returns the `result` of a successful response.
    pub async fn send_json(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let response = Self::check(
            request
                .send()
                .await
                .context("the request to the node failed")?,
        )
        .await?;
        let mut body: Value = response
            .json()
            .await
            .context("the node sent invalid JSON")?;
        Ok(body["result"].take())
    }

    /// Turns an error response into an error with the node's message.
    pub async fn check(response: reqwest::Response) -> anyhow::Result<reqwest::Response> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body: Value = response.json().await.unwrap_or(Value::Null);
        Err(failure(status, &body))
    }
}

/// Returns the error of a failed admin API response: its status and the node's message.
pub fn failure(status: reqwest::StatusCode, body: &Value) -> anyhow::Error {
    let message = body["errors"][0]["message"]
        .as_str()
        .unwrap_or("no error message");
    anyhow::anyhow!("the node returned {status}: {message}")
}
