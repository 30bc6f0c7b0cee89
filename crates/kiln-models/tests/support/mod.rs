//! Builders for small but well-formed model files, shared by the integration tests.

#![allow(dead_code)]

pub mod hub_server;

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Returns a GGUF v3 header with no tensors and no metadata, followed by
/// `padding` bytes of deterministic filler so that files can be split and resumed.
pub fn gguf_bytes(padding: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(24 + padding);
    bytes.extend_from_slice(b"GGUF");
    bytes.extend_from_slice(&3u32.to_le_bytes());
    bytes.extend_from_slice(&0u64.to_le_bytes());
    bytes.extend_from_slice(&0u64.to_le_bytes());
    bytes.extend(filler(padding, 7));
    bytes
}

/// Returns a safetensors file with one F32 tensor `weight` of shape [2].
pub fn safetensors_bytes() -> Vec<u8> {
    let data: Vec<u8> = [1.5f32, -2.0f32]
        .iter()
        .flat_map(|value| value.to_le_bytes())
        .collect();
    let mut header = serde_json::json!({
        "__metadata__": {"format": "pt"},
        "weight": {"dtype": "F32", "shape": [2], "data_offsets": [0, data.len()]},
    })
    .to_string()
    .into_bytes();
    // The format pads the header with spaces to a multiple of 8 bytes.
    while header.len() % 8 != 0 {
        header.push(b' ');
    }
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&(header.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&header);
    bytes.extend_from_slice(&data);
    bytes
}

/// Returns a few bytes standing in for an ONNX protobuf, which the importer
/// checks only for being non-empty.
pub fn onnx_bytes() -> Vec<u8> {
    let mut bytes = vec![0x08, 0x07, 0x12, 0x04];
    bytes.extend_from_slice(b"kiln");
    bytes
}

/// Deterministic pseudo-random bytes (a linear congruential generator).
pub fn filler(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed;
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 56) as u8
        })
        .collect()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Writes `bytes` to `base/relative`, creating folders, and returns the path.
pub fn write(base: &Path, relative: &str, bytes: &[u8]) -> PathBuf {
    let path = base.join(relative);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Returns the names of the entries in `folder`, sorted.
pub fn entries(folder: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(folder)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}
