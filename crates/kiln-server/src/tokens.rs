//! Bearer tokens of the admin API. Each token has one scope. The node keeps only the SHA-256 of
//! each token, in `tokens.json` in its data folder, so a copy of the folder gives no access.

use std::path::{Path, PathBuf};

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// File of the token hashes, in the node's data folder.
pub const TOKENS_FILE: &str = "tokens.json";

/// The permission a token grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Push, list and roll back workers.
    Deploy,
    /// Upload and remove models.
    Models,
    /// Read and write KV namespaces.
    Kv,
    /// Read-only access to every admin endpoint.
    Read,
}

impl Scope {
    /// Returns whether a token of this scope may make a request that needs `needed`. Every
    /// scope may make `read` requests.
    fn allows(self, needed: Scope) -> bool {
        self == needed || needed == Scope::Read
    }

    /// Reads a scope name as `kiln tokens create --scope` takes it.
    pub fn parse(text: &str) -> Result<Scope, String> {
        [Scope::Deploy, Scope::Models, Scope::Kv, Scope::Read]
            .into_iter()
            .find(|scope| scope.as_str() == text)
            .ok_or_else(|| format!("unknown scope {text:?}: use deploy, models, kv or read"))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Deploy => "deploy",
            Scope::Models => "models",
            Scope::Kv => "kv",
            Scope::Read => "read",
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredToken {
    /// Short public id, shown in logs instead of the token.
    id: String,
    scope: Scope,
    sha256: String,
}

/// The reason a request was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("missing bearer token: send `Authorization: Bearer TOKEN` (create one with `kiln tokens create`)")]
    Missing,
    #[error("invalid token")]
    Invalid,
    #[error("token {id} has scope {has}; this request needs scope {needs}")]
    Forbidden {
        id: String,
        has: &'static str,
        needs: &'static str,
    },
}

impl Refusal {
    pub fn status(&self) -> u16 {
        match self {
            Refusal::Missing | Refusal::Invalid => 401,
            Refusal::Forbidden { .. } => 403,
        }
    }
}

/// The token hashes of one data folder.
#[derive(Debug, Clone)]
pub struct TokenStore {
    path: PathBuf,
}

impl TokenStore {
    pub fn new(data_dir: &Path) -> Self {
        Self {
            path: data_dir.join(TOKENS_FILE),
        }
    }

    fn read(&self) -> std::io::Result<Vec<StoredToken>> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(std::io::Error::other),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(error) => Err(error),
        }
    }

    /// Creates a token with `scope` and returns it; only its hash is stored. The file is
    /// replaced atomically, so a node reading it never reads half a file.
    pub fn create(&self, scope: Scope) -> std::io::Result<String> {
        let mut secret = [0u8; 24];
        rand::rng().fill_bytes(&mut secret);
        let token = format!("kiln_{}", hex::encode(secret));
        let mut tokens = self.read()?;
        tokens.push(StoredToken {
            id: hex::encode(&secret[..4]),
            scope,
            sha256: hash(&token),
        });
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let temporary = self.path.with_extension("json.tmp");
        std::fs::write(&temporary, serde_json::to_vec_pretty(&tokens)?)?;
        std::fs::rename(&temporary, &self.path)?;
        Ok(token)
    }

    /// Checks the `Authorization` header value for a token that allows `needed`. Returns the
    /// token's public id.
    pub fn authorize(&self, header: Option<&str>, needed: Scope) -> Result<String, Refusal> {
        // The scheme name is case-insensitive (RFC 7235).
        let token = header
            .and_then(|value| value.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|token| !token.is_empty())
            .ok_or(Refusal::Missing)?;
        let tokens = self.read().map_err(|error| {
            tracing::error!(path = %self.path.display(), error = %error, "cannot read the token file");
            Refusal::Invalid
        })?;
        let digest = hash(token);
        let stored = tokens
            .iter()
            .find(|stored| stored.sha256 == digest)
            .ok_or(Refusal::Invalid)?;
        if !stored.scope.allows(needed) {
            return Err(Refusal::Forbidden {
                id: stored.id.clone(),
                has: stored.scope.as_str(),
                needs: needed.as_str(),
            });
        }
        Ok(stored.id.clone())
    }
}

fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_by_scope_and_stored_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::new(dir.path());
        let kv = store.create(Scope::Kv).unwrap();
        let read = store.create(Scope::Read).unwrap();
        let bearer = |token: &str| format!("Bearer {token}");

        assert!(store.authorize(Some(&bearer(&kv)), Scope::Kv).is_ok());
        assert!(store.authorize(Some(&bearer(&kv)), Scope::Read).is_ok());
        assert!(store.authorize(Some(&bearer(&read)), Scope::Read).is_ok());
        assert!(store
            .authorize(Some(&format!("bearer {kv}")), Scope::Kv)
            .is_ok());
        let refusal = store
            .authorize(Some(&bearer(&read)), Scope::Kv)
            .unwrap_err();
        assert_eq!(refusal.status(), 403);
        assert_eq!(store.authorize(None, Scope::Read), Err(Refusal::Missing));
        assert_eq!(
            store.authorize(Some("Bearer kiln_wrong"), Scope::Read),
            Err(Refusal::Invalid)
        );

        let file = std::fs::read_to_string(dir.path().join(TOKENS_FILE)).unwrap();
        assert!(!file.contains(&kv), "{file}");
        assert!(!file.contains(&read), "{file}");
    }
}
