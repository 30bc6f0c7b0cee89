//! Worker secrets, encrypted at rest. Each worker's secrets are in
//! `workers/NAME/secrets.json` in the data folder, each value sealed with XChaCha20-Poly1305
//! under the node's key, with the worker and secret names as associated data so that a sealed
//! value cannot be moved to another name. The key never touches the data folder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use rand::RngCore;

/// Environment variable with the key when the config names no key file.
pub const SECRETS_KEY_ENV: &str = "KILN_SECRETS_KEY";

const NONCE_BYTES: usize = 24;

/// An error of storing or reading a secret. Messages never contain a secret's value.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error(
        "the node has no secrets key: set {SECRETS_KEY_ENV} to 64 hex digits (for example the \
         output of `openssl rand -hex 32`) or point [deploy] secrets_key_file in kiln.toml at a \
         file that holds them, then restart the node"
    )]
    NoKey,
    #[error("invalid secrets key in {source_name}: expected 64 hex digits (32 bytes)")]
    InvalidKey { source_name: String },
    #[error("secret {name} of worker {worker} cannot be decrypted: the node's secrets key changed or the file was altered")]
    Decrypt { worker: String, name: String },
    #[error("{0}")]
    Io(String),
}

/// The secrets of every worker on the node.
pub struct SecretStore {
    root: PathBuf,
    cipher: Option<XChaCha20Poly1305>,
}

impl SecretStore {
    /// Opens the store under `workers_dir`, with the key from `key_file`, else from
    /// [`SECRETS_KEY_ENV`]. A node without a key still starts; storing or reading a secret then
    /// fails with [`SecretsError::NoKey`].
    pub fn open(workers_dir: &Path, key_file: Option<&Path>) -> Result<Self, SecretsError> {
        let key = match key_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|error| {
                    SecretsError::Io(format!(
                        "failed to read the secrets key file {}: {error}",
                        path.display()
                    ))
                })?;
                Some(parse_key(&text, &path.display().to_string())?)
            }
            None => match std::env::var(SECRETS_KEY_ENV) {
                Ok(text) if !text.trim().is_empty() => Some(parse_key(&text, SECRETS_KEY_ENV)?),
                _ => None,
            },
        };
        Ok(Self {
            root: workers_dir.to_path_buf(),
            cipher: key.map(|key| XChaCha20Poly1305::new(Key::from_slice(&key))),
        })
    }

    fn cipher(&self) -> Result<&XChaCha20Poly1305, SecretsError> {
        self.cipher.as_ref().ok_or(SecretsError::NoKey)
    }

    fn file(&self, worker: &str) -> PathBuf {
        self.root.join(worker).join("secrets.json")
    }

    fn read_sealed(&self, worker: &str) -> Result<BTreeMap<String, String>, SecretsError> {
        match std::fs::read(self.file(worker)) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|error| {
                SecretsError::Io(format!(
                    "the secrets file of worker {worker} is damaged: {error}"
                ))
            }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(error) => Err(SecretsError::Io(format!(
                "failed to read the secrets of worker {worker}: {error}"
            ))),
        }
    }

    fn write_sealed(
        &self,
        worker: &str,
        sealed: &BTreeMap<String, String>,
    ) -> Result<(), SecretsError> {
        let bytes = serde_json::to_vec_pretty(sealed)
            .map_err(|error| SecretsError::Io(error.to_string()))?;
        crate::deploy::write_atomically(&self.file(worker), &bytes)
            .map_err(|error| SecretsError::Io(format!("failed to store the secret: {error}")))
    }

    /// Seals and stores `value` as the secret `name` of `worker`, replacing an earlier value.
    pub fn put(&self, worker: &str, name: &str, value: &str) -> Result<(), SecretsError> {
        let cipher = self.cipher()?;
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rng().fill_bytes(&mut nonce);
        let aad = associated_data(worker, name);
        let sealed = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: value.as_bytes(),
                    aad: &aad,
                },
            )
            .map_err(|_| SecretsError::Io("encryption failed".into()))?;
        let mut stored = nonce.to_vec();
        stored.extend_from_slice(&sealed);
        let mut all = self.read_sealed(worker)?;
        all.insert(
            name.to_owned(),
            base64::engine::general_purpose::STANDARD.encode(stored),
        );
        self.write_sealed(worker, &all)
    }

    /// Removes a secret. Returns whether it existed.
    pub fn delete(&self, worker: &str, name: &str) -> Result<bool, SecretsError> {
        let mut all = self.read_sealed(worker)?;
        let existed = all.remove(name).is_some();
        if existed {
            self.write_sealed(worker, &all)?;
        }
        Ok(existed)
    }

    /// Returns the names of a worker's secrets, without reading any value.
    pub fn names(&self, worker: &str) -> Result<Vec<String>, SecretsError> {
        Ok(self.read_sealed(worker)?.into_keys().collect())
    }

    /// Returns every secret of a worker, decrypted, for its `env`.
    pub fn open_all(&self, worker: &str) -> Result<BTreeMap<String, String>, SecretsError> {
        let sealed = self.read_sealed(worker)?;
        if sealed.is_empty() {
            return Ok(BTreeMap::new());
        }
        let cipher = self.cipher()?;
        sealed
            .into_iter()
            .map(|(name, stored)| {
                let failed = || SecretsError::Decrypt {
                    worker: worker.to_owned(),
                    name: name.clone(),
                };
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(&stored)
                    .map_err(|_| failed())?;
                if bytes.len() < NONCE_BYTES {
                    return Err(failed());
                }
                let (nonce, sealed) = bytes.split_at(NONCE_BYTES);
                let aad = associated_data(worker, &name);
                let plain = cipher
                    .decrypt(
                        XNonce::from_slice(nonce),
                        Payload {
                            msg: sealed,
                            aad: &aad,
                        },
                    )
                    .map_err(|_| failed())?;
                let value = String::from_utf8(plain).map_err(|_| failed())?;
                Ok((name, value))
            })
            .collect()
    }
}

fn associated_data(worker: &str, name: &str) -> Vec<u8> {
    format!("kiln-secret\0{worker}\0{name}").into_bytes()
}

fn parse_key(text: &str, source_name: &str) -> Result<[u8; 32], SecretsError> {
    let invalid = || SecretsError::InvalidKey {
        source_name: source_name.to_owned(),
    };
    let bytes = hex::decode(text.trim()).map_err(|_| invalid())?;
    bytes.try_into().map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn store(dir: &Path, key: &str) -> SecretStore {
        let key_file = dir.join(format!("key-{}", &key[..4]));
        std::fs::write(&key_file, key).unwrap();
        SecretStore::open(&dir.join("workers"), Some(&key_file)).unwrap()
    }

    #[test]
    fn sealed_values_open_with_key() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = store(dir.path(), KEY);
        secrets.put("api", "TOKEN", "hunter2-value").unwrap();
        secrets.put("api", "OTHER", "second").unwrap();
        let on_disk = std::fs::read_to_string(dir.path().join("workers/api/secrets.json")).unwrap();
        assert!(!on_disk.contains("hunter2"), "{on_disk}");
        assert_eq!(secrets.names("api").unwrap(), ["OTHER", "TOKEN"]);
        let opened = secrets.open_all("api").unwrap();
        assert_eq!(opened["TOKEN"], "hunter2-value");
        assert!(secrets.delete("api", "OTHER").unwrap());
        assert!(!secrets.delete("api", "OTHER").unwrap());
        assert_eq!(secrets.names("api").unwrap(), ["TOKEN"]);
    }

    #[test]
    fn other_key_or_moved_value_fails() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path(), KEY).put("api", "TOKEN", "v").unwrap();
        let other = store(dir.path(), &"ab".repeat(32));
        assert!(matches!(
            other.open_all("api"),
            Err(SecretsError::Decrypt { .. })
        ));

        let path = dir.path().join("workers/api/secrets.json");
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("TOKEN", "MOVED");
        std::fs::write(&path, text).unwrap();
        let error = store(dir.path(), KEY).open_all("api").unwrap_err();
        assert!(error.to_string().contains("MOVED"), "{error}");
    }

    #[test]
    fn missing_or_bad_key_explained() {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("bad");
        std::fs::write(&key_file, "xyz").unwrap();
        let error = SecretStore::open(dir.path(), Some(&key_file))
            .err()
            .unwrap();
        assert!(error.to_string().contains("64 hex digits"), "{error}");
        let store = SecretStore {
            root: dir.path().to_path_buf(),
            cipher: None,
        };
        let error = store.put("api", "A", "b").unwrap_err();
        assert!(error.to_string().contains(SECRETS_KEY_ENV), "{error}");
    }
}
