/// An error from a KV operation, shaped so that the JS binding and the admin API can turn it into
/// the exception or HTTP status that Workers KV produces.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// A bad argument type or range: the JS binding throws it as a `TypeError`.
    #[error("{0}")]
    Type(String),

    /// Refused by the store's rules. Display: "KV {op} failed: {status} {message}", with the
    /// Workers KV status and message text, for example
    /// "KV PUT failed: 400 Invalid expiration_ttl of 59. Expiration TTL must be at least 60.".
    #[error("KV {op} failed: {status} {message}")]
    Rejected {
        op: &'static str,
        status: u16,
        message: String,
    },

    /// The backend failed or cannot be reached, for example a Redis server that is down. The
    /// message names the backend and the cause and suggests what to check.
    #[error("KV {op} failed: 503 {message}")]
    Unavailable { op: &'static str, message: String },

    /// A namespace that does not exist. Only the namespace-management calls return it, because
    /// reads of an unknown namespace find no keys and writes create it.
    #[error("KV namespace \"{0}\" not found; list the namespaces to check the id")]
    NoSuchNamespace(String),
}

impl KvError {
    /// Returns the HTTP status that matches the error: 400 for `Type`, the stored status for
    /// `Rejected`, 503 for `Unavailable` and 404 for `NoSuchNamespace`.
    pub fn status(&self) -> u16 {
        match self {
            KvError::Type(_) => 400,
            KvError::Rejected { status, .. } => *status,
            KvError::Unavailable { .. } => 503,
            KvError::NoSuchNamespace(_) => 404,
        }
    }

    pub(crate) fn rejected(op: &'static str, status: u16, message: impl Into<String>) -> KvError {
        KvError::Rejected {
            op,
            status,
            message: message.into(),
        }
    }
}

/// Operation names as they appear in error messages ("KV GET failed: ...").
pub(crate) mod op {
    pub const GET: &str = "GET";
    pub const GET_BULK: &str = "GET_BULK";
    pub const PUT: &str = "PUT";
    pub const DELETE: &str = "DELETE";
    pub const LIST: &str = "LIST";
    pub const CREATE_NAMESPACE: &str = "CREATE_NAMESPACE";
    pub const LIST_NAMESPACES: &str = "LIST_NAMESPACES";
    pub const DELETE_NAMESPACE: &str = "DELETE_NAMESPACE";
    pub const PURGE_EXPIRED: &str = "PURGE_EXPIRED";
    pub const OPEN: &str = "OPEN";
}
