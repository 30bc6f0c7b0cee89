//! The installed-model catalog in the hosted search endpoint's shape.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use kiln_inference::{catalog_entry, InferenceError};
use serde_json::{json, Value};

use crate::errors::{ApiError, Envelope};
use crate::{json_response, AppState};

/// Rows per page when `per_page` is absent, as the hosted search returns.
const DEFAULT_PER_PAGE: usize = 50;

/// `GET /ai/models`: every installed model, as a bare array.
pub async fn list_bare(State(state): State<Arc<AppState>>) -> Response {
    match entries(&state, &HashMap::new()) {
        Ok(entries) => json_response(StatusCode::OK, Value::Array(entries)),
        Err(error) => ApiError::new(error, Envelope::Bare).into_response(),
    }
}

/// `GET .../ai/models/search?task=&search=&page=&per_page=` in the v4 envelope.
pub async fn search_enveloped(
    State(state): State<Arc<AppState>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    match entries(&state, &query) {
        Ok(entries) => json_response(
            StatusCode::OK,
            json!({ "result": entries, "success": true, "errors": [], "messages": [] }),
        ),
        Err(error) => ApiError::new(error, Envelope::V4).into_response(),
    }
}

fn entries(
    state: &AppState,
    query: &HashMap<String, String>,
) -> Result<Vec<Value>, InferenceError> {
    let page = parse_positive(query, "page", 1)?;
    let per_page = parse_positive(query, "per_page", DEFAULT_PER_PAGE)?;
    let task = query.get("task").map(|task| task.to_lowercase());
    let search = query.get("search").map(|text| text.to_lowercase());

    let manifests = state
        .inference
        .store()
        .list()
        .map_err(InferenceError::internal)?;
    let entries = manifests
        .iter()
        .filter(|manifest| {
            task.as_deref().is_none_or(|task| {
                let kebab = serde_json::to_value(manifest.task).ok();
                task == manifest.task.catalog_id()
                    || task == manifest.task.display_name().to_lowercase()
                    || kebab.as_ref().and_then(Value::as_str) == Some(task)
            })
        })
        .filter(|manifest| {
            search.as_deref().is_none_or(|text| {
                manifest.id.to_lowercase().contains(text)
                    || manifest
                        .description
                        .as_deref()
                        .unwrap_or("")
                        .to_lowercase()
                        .contains(text)
                    || manifest
                        .aliases
                        .iter()
                        .any(|alias| alias.to_lowercase().contains(text))
            })
        })
        .skip((page - 1) * per_page)
        .take(per_page)
        .map(|manifest| {
            catalog_entry(
                manifest,
                state.inference.loaded_context_tokens(&manifest.id),
            )
        })
        .collect();
    Ok(entries)
}

fn parse_positive(
    query: &HashMap<String, String>,
    name: &str,
    default: usize,
) -> Result<usize, InferenceError> {
    match query.get(name) {
        None => Ok(default),
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|value| *value >= 1)
            .ok_or_else(|| {
                InferenceError::invalid_input(format!(
                    "query parameter `{name}` must be a whole number of at least 1, got {text:?}"
                ))
            }),
    }
}
