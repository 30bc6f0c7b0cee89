//! A client's limit on the time to the first byte of its response, as the hosted gateway's
//! `cf-aig-request-timeout` header and the binding's `gateway.requestTimeoutMs` option set it.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::{ErrorKind, InferenceError};

/// The time by which a request must have its result, or no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Deadline {
    limit: Option<(Instant, u64)>,
}

impl Deadline {
    /// Returns a deadline `ms` milliseconds from now.
    pub fn after_ms(ms: u64) -> Self {
        Self {
            limit: Some((Instant::now() + Duration::from_millis(ms), ms)),
        }
    }

    /// Parses a timeout in milliseconds, as a positive integer, from `source` (named in the
    /// error message). `None` gives no deadline.
    pub fn parse(value: Option<&str>, source: &str) -> Result<Self, InferenceError> {
        let Some(value) = value else {
            return Ok(Self::default());
        };
        match value.trim().parse::<u64>() {
            Ok(ms) if ms > 0 => Ok(Self::after_ms(ms)),
            _ => Err(InferenceError::invalid_input(format!(
                "invalid {source} {value:?}: give the milliseconds the request may wait for its \
                 first byte, as a positive integer"
            ))),
        }
    }

    /// Runs `work` until the deadline. Past it, `work` is dropped, which takes a queued request
    /// out of its model's queue, and the result is a 408 `Timeout` error (code 3007).
    pub async fn run<T>(
        self,
        work: impl Future<Output = Result<T, InferenceError>>,
    ) -> Result<T, InferenceError> {
        let Some((at, ms)) = self.limit else {
            return work.await;
        };
        match tokio::time::timeout_at(at.into(), work).await {
            Ok(result) => result,
            Err(_) => Err(InferenceError::new(
                ErrorKind::Timeout,
                format!(
                    "Request timeout: no result within the request's timeout of {ms} ms; raise \
                     cf-aig-request-timeout (gateway.requestTimeoutMs in env.AI.run) or retry \
                     when the model is less busy"
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn late_work_times_out() {
        let deadline = Deadline::after_ms(20);
        let error = deadline
            .run(async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok::<_, InferenceError>(())
            })
            .await
            .expect_err("the work outlives the deadline");
        assert_eq!(error.status(), 408);
        assert_eq!(error.code(), 3007);
    }

    #[tokio::test]
    async fn prompt_work_finishes() {
        let result = Deadline::after_ms(5_000).run(async { Ok(7) }).await;
        assert_eq!(result.expect("in time"), 7);
    }

    #[test]
    fn parse_rejects_non_numbers() {
        for value in ["abc", "0", "-5", "1.5"] {
            let error = Deadline::parse(Some(value), "cf-aig-request-timeout header")
                .expect_err("invalid timeout");
            assert_eq!(error.status(), 400, "{value}");
            assert!(
                error.message.contains("cf-aig-request-timeout"),
                "{}",
                error.message
            );
        }
        assert_eq!(
            Deadline::parse(None, "x").expect("no header"),
            Deadline::default()
        );
    }
}
