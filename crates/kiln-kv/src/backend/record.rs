//! The byte layout of one entry in the embedded store.
//!
//! ```text
//! version (1 byte, = 1) | flags (1 byte)
//! [expiration: i64 little-endian, when flags & 1]
//! [metadata length: u32 little-endian, metadata JSON, when flags & 2]
//! value bytes (the rest)
//! ```
//!
//! Listing decodes only the header, so it never copies values.

const VERSION: u8 = 1;
const HAS_EXPIRATION: u8 = 1;
const HAS_METADATA: u8 = 2;

/// A decoded record that borrows from the stored bytes.
pub(crate) struct Record<'a> {
    pub expiration: Option<i64>,
    pub metadata: Option<&'a [u8]>,
    pub value: &'a [u8],
}

impl Record<'_> {
    /// Returns whether the record has expired at `now` (Unix seconds).
    pub fn is_expired(&self, now: i64) -> bool {
        self.expiration.is_some_and(|expiration| expiration <= now)
    }

    /// Parses the metadata JSON. The store wrote it from a `serde_json::Value`, so a parse
    /// failure means a damaged record.
    pub fn metadata_json(&self) -> Result<Option<serde_json::Value>, String> {
        self.metadata
            .map(serde_json::from_slice)
            .transpose()
            .map_err(|error| format!("stored metadata is not valid JSON: {error}"))
    }
}

/// Encodes an entry; `metadata` is the serialised JSON.
pub(crate) fn encode(value: &[u8], expiration: Option<i64>, metadata: Option<&[u8]>) -> Vec<u8> {
    let metadata_len = metadata.map_or(0, |json| 4 + json.len());
    let mut bytes = Vec::with_capacity(2 + 8 + metadata_len + value.len());

    let mut flags = 0;
    if expiration.is_some() {
        flags |= HAS_EXPIRATION;
    }
    if metadata.is_some() {
        flags |= HAS_METADATA;
    }
    bytes.push(VERSION);
    bytes.push(flags);

    if let Some(expiration) = expiration {
        bytes.extend_from_slice(&expiration.to_le_bytes());
    }
    if let Some(json) = metadata {
        // Metadata is at most 1024 bytes, far below u32::MAX.
        bytes.extend_from_slice(&(json.len() as u32).to_le_bytes());
        bytes.extend_from_slice(json);
    }
    bytes.extend_from_slice(value);
    bytes
}

/// Decodes a record, returning a message when the bytes are not a record of this layout.
pub(crate) fn decode(bytes: &[u8]) -> Result<Record<'_>, String> {
    let [version, flags, rest @ ..] = bytes else {
        return Err(format!("stored record is {} bytes, too short", bytes.len()));
    };
    if *version != VERSION {
        return Err(format!(
            "stored record has unknown format version {version}"
        ));
    }

    let mut rest = rest;
    let mut expiration = None;
    if flags & HAS_EXPIRATION != 0 {
        let (head, tail) = split(rest, 8)?;
        let head: [u8; 8] = head.try_into().expect("split returned exactly 8 bytes");
        expiration = Some(i64::from_le_bytes(head));
        rest = tail;
    }

    let mut metadata = None;
    if flags & HAS_METADATA != 0 {
        let (head, tail) = split(rest, 4)?;
        let head: [u8; 4] = head.try_into().expect("split returned exactly 4 bytes");
        let (json, tail) = split(tail, u32::from_le_bytes(head) as usize)?;
        metadata = Some(json);
        rest = tail;
    }

    Ok(Record {
        expiration,
        metadata,
        value: rest,
    })
}

fn split(bytes: &[u8], at: usize) -> Result<(&[u8], &[u8]), String> {
    if bytes.len() < at {
        return Err("stored record is truncated".to_string());
    }
    Ok(bytes.split_at(at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_all_fields() {
        let bytes = encode(b"\x00\xffvalue", Some(-7), Some(br#"{"a":1}"#));
        let record = decode(&bytes).unwrap();
        assert_eq!(record.value, b"\x00\xffvalue");
        assert_eq!(record.expiration, Some(-7));
        assert_eq!(record.metadata, Some(&br#"{"a":1}"#[..]));
        assert_eq!(
            record.metadata_json().unwrap(),
            Some(serde_json::json!({"a": 1}))
        );
    }

    #[test]
    fn round_trip_bare_value() {
        let bytes = encode(b"", None, None);
        let record = decode(&bytes).unwrap();
        assert_eq!(record.value, b"");
        assert_eq!(record.expiration, None);
        assert_eq!(record.metadata, None);
        assert!(!record.is_expired(i64::MAX));
    }

    #[test]
    fn damaged_records_fail() {
        assert!(decode(b"").is_err());
        assert!(decode(&[2, 0]).is_err());
        assert!(decode(&[1, HAS_EXPIRATION, 1, 2]).is_err());
        assert!(decode(&[1, HAS_METADATA, 9, 0, 0, 0, b'{']).is_err());
    }

    #[test]
    fn expiry_is_inclusive() {
        let bytes = encode(b"v", Some(100), None);
        let record = decode(&bytes).unwrap();
        assert!(!record.is_expired(99));
        assert!(record.is_expired(100));
    }
}
