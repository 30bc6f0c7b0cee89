//! Reading request bodies with a size limit and a time limit.

use std::time::Duration;

use axum::body::{Body, Bytes};
use kiln_inference::{ErrorKind, InferenceError};

/// Reads the whole body: 413 over `limit` bytes, 408 when it takes longer than `timeout`. The
/// timeout stops a client that stalls mid-body from holding its connection open for good.
pub async fn read_body(
    body: Body,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, InferenceError> {
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(_)) => Err(InferenceError::new(
            ErrorKind::RequestTooLarge,
            format!(
                "Request is too large: the body is over the node's limit of {limit} bytes \
                 (limits.max_body_bytes in kiln.toml)"
            ),
        )),
        Err(_) => Err(InferenceError::new(
            ErrorKind::Timeout,
            format!(
                "Request timeout: the body did not arrive within {} seconds \
                 (limits.body_timeout_seconds in kiln.toml)",
                timeout.as_secs()
            ),
        )),
    }
}
