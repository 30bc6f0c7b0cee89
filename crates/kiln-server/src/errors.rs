//! Error responses in the hosted API's two shapes.

use std::any::Any;

use axum::http::StatusCode;
use axum::response::Response;
use kiln_inference::InferenceError;
use serde_json::json;

use crate::json_response;

/// Which response shape an error takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Envelope {
    /// `/ai/run`: the body the `env.AI` binding parses (`internalCode`, `name`, `description`),
    /// plus the v4 `errors` array so REST clients can read it too.
    Bare,
    /// `/client/v4/...`: `{result: null, success: false, errors: [{code, message}], messages}`.
    V4,
}

/// An error on its way to the client.
#[derive(Debug)]
pub struct ApiError {
    pub error: InferenceError,
    pub envelope: Envelope,
}

impl ApiError {
    pub fn new(error: InferenceError, envelope: Envelope) -> Self {
        Self { error, envelope }
    }
}

impl axum::response::IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let error = &self.error;
        if error.status() >= 500 {
            tracing::error!(code = error.code(), error = %error.message, "request failed");
        }
        let status =
            StatusCode::from_u16(error.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let errors = json!([{ "code": error.code(), "message": error.message }]);
        let body = match self.envelope {
            Envelope::V4 => json!({
                "result": null,
                "success": false,
                "errors": errors,
                "messages": [],
            }),
            Envelope::Bare => json!({
                "internalCode": error.code(),
                "name": error.name(),
                "message": format!("{}: {}", error.name(), error.message),
                "description": error.message,
                "success": false,
                "errors": errors,
            }),
        };
        with_retry_after(json_response(status, body))
    }
}

/// Seconds a client should wait after a 429 before retrying. Queues drain in about the time
/// of one short generation, so one second is a reasonable first retry.
const RETRY_AFTER_SECONDS: &str = "1";

/// Adds `Retry-After` to 429 responses.
pub fn with_retry_after(mut response: Response) -> Response {
    if response.status() == StatusCode::TOO_MANY_REQUESTS {
        response.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from_static(RETRY_AFTER_SECONDS),
        );
    }
    response
}

pub async fn no_route(uri: axum::http::Uri) -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        json!({
            "result": null,
            "success": false,
            "errors": [{
                "code": 7000,
                "message": format!(
                    "No route for {}: models run at POST /ai/run/{{model}} or \
                     POST /client/v4/accounts/{{account_id}}/ai/run/{{model}}",
                    uri.path()
                ),
            }],
            "messages": [],
        }),
    )
}

/// Turns a handler panic into a 500, so one bad request never takes the node down.
pub fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response {
    let detail = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    tracing::error!(panic = detail, "request handler panicked");
    let error = InferenceError::internal("the request handler panicked; see the node's log");
    axum::response::IntoResponse::into_response(ApiError::new(error, Envelope::V4))
}
