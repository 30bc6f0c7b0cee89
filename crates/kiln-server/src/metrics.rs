//! `GET /metrics`: Prometheus text format counters of the node's batch workers.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::AppState;

pub async fn prometheus(State(state): State<Arc<AppState>>) -> Response {
    let mut text = String::new();
    let stats = state.inference.batch_stats();
    let counters: [(&str, &str); 3] = [
        (
            "kiln_batch_forward_passes_total",
            "Forward passes run by a model's batch worker.",
        ),
        (
            "kiln_batch_items_total",
            "Texts, images or tensors run by a model's batch worker, over all passes.",
        ),
        (
            "kiln_batch_rejected_total",
            "Requests rejected with 429 because the model's queue was full.",
        ),
    ];
    for (name, help) in counters {
        let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} counter");
        for (model, stats) in &stats {
            let value = match name {
                "kiln_batch_forward_passes_total" => &stats.forward_passes,
                "kiln_batch_items_total" => &stats.items,
                _ => &stats.rejected,
            };
            let _ = writeln!(
                text,
                "{name}{{model=\"{}\"}} {}",
                escape(model),
                value.load(Ordering::Relaxed)
            );
        }
    }
    let name = "kiln_batch_size_passes_total";
    let _ = writeln!(
        text,
        "# HELP {name} Forward passes by batch size: the size_min label is a power of two, and a \
         pass of n items counts under the largest size_min not above n.\n# TYPE {name} counter"
    );
    for (model, stats) in &stats {
        for (index, bucket) in stats.size_buckets.iter().enumerate() {
            let _ = writeln!(
                text,
                "{name}{{model=\"{}\",size_min=\"{}\"}} {}",
                escape(model),
                1u64 << index,
                bucket.load(Ordering::Relaxed)
            );
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
