//! Errors of the inference service, with the hosted API's internal codes and HTTP statuses.

/// What went wrong, which decides the internal code and HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The input does not match the model's schema (code 3010, HTTP 400).
    InvalidInput,
    /// No installed model matches the id (code 5007, HTTP 400).
    NoSuchModel,
    /// The body is over the node's limit (code 3006, HTTP 413).
    RequestTooLarge,
    /// The model is installed but cannot be loaded or run (code 7009, HTTP 503).
    ModelUnavailable,
    /// The model's queue is full (code 3040, HTTP 429).
    OutOfCapacity,
    /// The client sent the request too slowly (code 3007, HTTP 408).
    Timeout,
    /// A bug in Kiln (code 3001, HTTP 500).
    Internal,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InferenceError {
    pub kind: ErrorKind,
    pub message: String,
}

impl InferenceError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// An invalid-input error whose message starts with the hosted API's text for code 3010.
    pub fn invalid_input(detail: impl std::fmt::Display) -> Self {
        Self::new(
            ErrorKind::InvalidInput,
            format!("Invalid or incomplete input for the model: {detail}"),
        )
    }

    pub fn no_such_model(model: &str) -> Self {
        Self::new(
            ErrorKind::NoSuchModel,
            format!(
                "No such model {model} or task. List the installed models with `kiln models list` \
                 or GET /ai/models/search; install one with `kiln models import PATH --id ID` or \
                 `kiln models pull ORG/REPO`"
            ),
        )
    }

    pub fn internal(detail: impl std::fmt::Display) -> Self {
        Self::new(
            ErrorKind::Internal,
            format!("Internal server error: {detail}"),
        )
    }

    /// Returns the hosted API's internal error code.
    pub fn code(&self) -> u32 {
        match self.kind {
            ErrorKind::InvalidInput => 3010,
            ErrorKind::NoSuchModel => 5007,
            ErrorKind::RequestTooLarge => 3006,
            ErrorKind::ModelUnavailable => 7009,
            ErrorKind::OutOfCapacity => 3040,
            ErrorKind::Timeout => 3007,
            ErrorKind::Internal => 3001,
        }
    }

    pub fn status(&self) -> u16 {
        match self.kind {
            ErrorKind::InvalidInput | ErrorKind::NoSuchModel => 400,
            ErrorKind::RequestTooLarge => 413,
            ErrorKind::ModelUnavailable => 503,
            ErrorKind::OutOfCapacity => 429,
            ErrorKind::Timeout => 408,
            ErrorKind::Internal => 500,
        }
    }

    /// The error class name that the `env.AI` binding exposes as `err.name`.
    pub fn name(&self) -> &'static str {
        match self.kind {
            ErrorKind::InvalidInput => "InvalidInput",
            ErrorKind::NoSuchModel => "NoSuchModel",
            ErrorKind::RequestTooLarge => "RequestTooLarge",
            ErrorKind::ModelUnavailable => "ModelUnavailable",
            ErrorKind::OutOfCapacity => "OutOfCapacity",
            ErrorKind::Timeout => "Timeout",
            ErrorKind::Internal => "InternalError",
        }
    }
}
