//! Models over the admin API: listing, uploads and removal.
//!
//! An upload's body (one `.onnx` or `.gguf` file) streams to a staging file in the node's data
//! folder and is then imported as `kiln models import` does, with the same hashing, checks and
//! manifest. The staging file is removed either way. Uploading an installed id replaces that
//! model: requests in flight finish on the old one, and the next ones load the new files.

use std::path::Path as FilePath;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use futures::StreamExt;
use kiln_models::{ImportOptions, StoreError, Task};
use serde::Deserialize;
use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::admin::{authorize, success, AdminError, AdminResult};
use crate::tokens::Scope;
use crate::AppState;

/// Folder under the data folder where uploads are staged.
const STAGING_DIR: &str = "uploads";

/// `GET /admin/v1/models`: the installed manifests, each with `loaded` (whether it is in
/// memory now), and the node's `memory` use: `{"budget": BYTES or null, "loaded_bytes": N}`.
pub async fn list(State(state): State<Arc<AppState>>, headers: HeaderMap) -> AdminResult {
    authorize(&state, &headers, Scope::Read)?;
    let manifests = state
        .inference
        .store()
        .list()
        .map_err(|error| AdminError::new(500, error.to_string()))?;
    let loaded = state.inference.loaded_models();
    let mut models = Vec::with_capacity(manifests.len());
    for manifest in manifests {
        let is_loaded = loaded.iter().any(|model| model.id == manifest.id);
        let mut model = json!(manifest);
        model["loaded"] = json!(is_loaded);
        models.push(model);
    }
    let loaded_bytes: u64 = loaded.iter().map(|model| model.bytes).sum();
    Ok(success(json!({
        "models": models,
        "memory": {
            "budget": state.inference.memory_budget(),
            "loaded_bytes": loaded_bytes,
        },
    })))
}

/// `DELETE /admin/v1/models/{id}`: deletes an installed model and its files and unloads it.
/// Requests that already run on it finish.
pub async fn remove(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> AdminResult {
    authorize(&state, &headers, Scope::Models)?;
    state.inference.remove(&id).await.map_err(|error| {
        let status = match error {
            StoreError::NotFound { .. } => 404,
            StoreError::InvalidId { .. } => 400,
            _ => {
                tracing::error!(model = %id, error = %error, "failed to remove a model");
                500
            }
        };
        AdminError::new(status, error.to_string())
    })?;
    tracing::info!(model = %id, "model removed over the admin API");
    Ok(success(json!({ "id": id })))
}

#[derive(Deserialize)]
pub struct UploadQuery {
    /// Name of the uploaded file; its extension selects the format.
    filename: String,
    task: Option<String>,
    /// Expected SHA-256 of the file, in hex.
    sha256: Option<String>,
}

pub async fn upload(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    query: Result<Query<UploadQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> AdminResult {
    // The token is checked before the query, so that a request without one gets 401.
    authorize(&state, &headers, Scope::Models)?;
    let Query(query) = query.map_err(|error| {
        AdminError::new(
            400,
            format!(
                "{error}: pass ?filename=NAME.onnx or NAME.gguf, and optionally task and sha256"
            ),
        )
    })?;
    let name = FilePath::new(&query.filename)
        .file_name()
        .and_then(|name| name.to_str())
        .filter(|name| name.ends_with(".onnx") || name.ends_with(".gguf"))
        .ok_or_else(|| {
            AdminError::new(
                400,
                format!(
                    "invalid filename {:?}: give the uploaded file's name, ending in .onnx or .gguf",
                    query.filename
                ),
            )
        })?
        .to_owned();
    let task = query
        .task
        .as_deref()
        .map(str::parse::<Task>)
        .transpose()
        .map_err(|error| AdminError::new(400, format!("invalid task: {error}")))?;

    let staging_root = state.data_dir.join(STAGING_DIR);
    let staging = tokio::fs::create_dir_all(&staging_root)
        .await
        .and_then(|()| tempfile::tempdir_in(&staging_root))
        .map_err(|error| {
            tracing::error!(error = %error, dir = %staging_root.display(), "failed to stage an upload");
            AdminError::new(500, format!("failed to stage the upload: {error}"))
        })?;
    let path = staging.path().join(&name);
    let bytes = receive(body, &path).await?;

    let options = ImportOptions {
        task,
        expected_sha256: query.sha256,
        source: Some(format!("upload:{name}")),
        ..ImportOptions::new(id.clone())
    };
    let imported = state.inference.install(path, options).await;
    drop(staging);
    let manifest =
        imported.map_err(|error| AdminError::new(import_status(&error), error.to_string()))?;
    tracing::info!(model = %id, bytes, task = %manifest.task, "model uploaded");
    Ok(success(json!(manifest)))
}

/// Writes the request body to `path` and returns its size.
async fn receive(body: Body, path: &FilePath) -> Result<u64, AdminError> {
    let write_error = |error: std::io::Error| {
        tracing::error!(error = %error, path = %path.display(), "failed to write an upload");
        AdminError::new(500, format!("failed to write the upload: {error}"))
    };
    let mut file = tokio::fs::File::create(path).await.map_err(write_error)?;
    let mut stream = body.into_data_stream();
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|error| {
            AdminError::new(400, format!("the upload was interrupted: {error}"))
        })?;
        size += chunk.len() as u64;
        file.write_all(&chunk).await.map_err(write_error)?;
    }
    file.flush().await.map_err(write_error)?;
    if size == 0 {
        return Err(AdminError::new(
            400,
            "the upload is empty: send the model file as the body",
        ));
    }
    Ok(size)
}

/// Returns the status of a failed import: 4xx for the uploader's mistake, 500 for the node's.
fn import_status(error: &StoreError) -> u16 {
    match error {
        StoreError::AlreadyExists { .. } | StoreError::NameInUse { .. } => 409,
        StoreError::Io { .. } | StoreError::MissingFile { .. } => 500,
        _ => 400,
    }
}
