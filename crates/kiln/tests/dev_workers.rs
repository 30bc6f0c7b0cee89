//! `kiln dev` serving the acceptance workers (copied unchanged into `tests/workers`) with the
//! real binary and the bundled models, plus reloading and the isolate limits.

mod common;
mod dev_node;

use std::time::{Duration, Instant};

use dev_node::{copy_worker, worker_dir, DevNode};
use reqwest::blocking::Response;
use serde_json::{json, Value};

fn post_json(node: &DevNode, path: &str, body: &Value) -> Response {
    node.client()
        .post(node.url(path))
        .json(body)
        .send()
        .expect("request reaches the node")
}

/// Returns the log lines that the AI binding wrote for model runs. The log reaches the test
/// through a pipe, so callers wait for the line they expect before they count.
fn model_runs(node: &DevNode) -> Vec<Value> {
    node.log_lines()
        .into_iter()
        .filter(|line| line["message"] == "env.AI.run")
        .collect()
}

#[test]
fn chat_worker_answers_question() {
    let node = DevNode::start(&worker_dir("chat"), "");
    let response = post_json(
        &node,
        "/",
        &json!({"question": "What is the capital of France?"}),
    );
    assert_eq!(response.status(), 200);
    let body: Value = response.json().expect("JSON body");
    let answer = body["answer"].as_str().expect("answer is a string");
    assert!(!answer.trim().is_empty(), "empty answer: {body}");

    node.wait_for_log("\"message\":\"env.AI.run\"", Duration::from_secs(30));
    let runs = model_runs(&node);
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["model"], "@cf/meta/llama-2-7b-chat-int8");
    assert_eq!(runs[0]["ran"], common::CHAT_MODEL);
    // The run carries the worker request's id and the tokens the model used.
    let request_id = runs[0]["request_id"].as_str().unwrap_or_default();
    assert!(!request_id.is_empty(), "{:?}", runs[0]);
    let request_line = node.wait_for_log("\"message\":\"request\"", Duration::from_secs(30));
    let request_line: Value = serde_json::from_str(&request_line).expect("JSON log line");
    assert_eq!(request_line["request_id"], request_id);
    assert!(
        runs[0]["output_tokens"]
            .as_u64()
            .is_some_and(|tokens| tokens > 0),
        "{:?}",
        runs[0]
    );
}

#[test]
fn chat_worker_rejects_get() {
    let node = DevNode::start(&worker_dir("chat"), "");
    let response = node
        .client()
        .get(node.url("/any/path"))
        .send()
        .expect("request");
    assert_eq!(response.status(), 405);
    assert!(model_runs(&node).is_empty());
}

/// Splits an SSE body into its `data:` payloads.
fn sse_payloads(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter(|event| !event.trim().is_empty())
        .map(|event| {
            event
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("event without `data: `: {event:?}"))
                .to_owned()
        })
        .collect()
}

#[test]
fn streaming_worker_passes_events_through() {
    let node = DevNode::start(&worker_dir("streaming"), "");
    let response = node
        .client()
        .get(node.url("/?q=Say%20hi"))
        .send()
        .expect("request");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let body = response.text().expect("body");
    let payloads = sse_payloads(&body);
    assert_eq!(
        payloads.last().map(String::as_str),
        Some("[DONE]"),
        "{body}"
    );
    let fragments: Vec<String> = payloads[..payloads.len() - 1]
        .iter()
        .map(|payload| serde_json::from_str::<Value>(payload).expect("JSON event"))
        .filter_map(|event| event["response"].as_str().map(str::to_owned))
        .collect();
    assert!(fragments.len() >= 2, "expected several fragments: {body}");
    assert!(!fragments.concat().trim().is_empty(), "{body}");
}

#[test]
fn validated_worker_rejects_invalid_input() {
    let node = DevNode::start(&worker_dir("validated"), "");
    for body in [
        json!({"text": ""}),
        json!({"text": 5}),
        json!({"text": "hi", "temperature": 3}),
    ] {
        let response = post_json(&node, "/", &body);
        assert_eq!(response.status(), 400, "{body}");
        let reply: Value = response.json().expect("JSON body");
        assert_eq!(reply, json!({"error": "invalid input"}), "{body}");
    }
    assert!(
        model_runs(&node).is_empty(),
        "a model ran for invalid input"
    );

    let response = post_json(&node, "/", &json!({"text": "hi"}));
    assert_eq!(response.status(), 200);
    let reply: Value = response.json().expect("JSON body");
    assert!(reply["response"].is_string(), "{reply}");
    node.wait_for_log("\"message\":\"env.AI.run\"", Duration::from_secs(30));
    assert_eq!(model_runs(&node).len(), 1);
}

#[test]
fn observed_worker_logs_one_json_line() {
    let node = DevNode::start(
        &worker_dir("observed"),
        "[workers]\ncolo = \"AMS\"\ncountry_header = \"x-client-country\"\n",
    );
    let response = node
        .client()
        .post(node.url("/"))
        .header("x-client-country", "NL")
        .json(&json!({
            "model": common::CHAT_MODEL,
            "inputs": {"prompt": "Say hi.", "max_tokens": 8}
        }))
        .send()
        .expect("request");
    assert_eq!(response.status(), 200);
    let result: Value = response.json().expect("JSON body");
    assert!(result["response"].is_string(), "{result}");

    node.wait_for_log("\"target\":\"kiln::worker\"", Duration::from_secs(30));
    let lines: Vec<Value> = node
        .log_lines()
        .into_iter()
        .filter(|line| line["target"] == "kiln::worker")
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["worker"], "observed");
    assert!(!lines[0]["request_id"].as_str().unwrap_or("").is_empty());
    let message = lines[0]["message"].as_str().expect("message");
    let entry: Value = serde_json::from_str(message).expect("the worker logged JSON");
    assert_eq!(entry["model"], common::CHAT_MODEL);
    assert_eq!(entry["status"], "ok");
    assert_eq!(entry["colo"], "AMS");
    assert_eq!(entry["country"], "NL");
    assert!(entry["ms"].as_f64().is_some(), "{entry}");

    // The node's own line for the request carries the same id and the outcome.
    let request_line = node
        .log_lines()
        .into_iter()
        .find(|line| line["message"] == "request" && line["request_id"] == lines[0]["request_id"])
        .unwrap_or_else(|| panic!("no request line:\n{}", node.log_text()));
    assert_eq!(request_line["worker"], "observed");
    assert_eq!(request_line["outcome"], "ok");
    assert_eq!(request_line["status"], 200);
    assert_eq!(request_line["colo"], "AMS");
    assert_eq!(request_line["country"], "NL");
}

#[test]
fn deadline_worker_degrades_then_answers() {
    let node = DevNode::start(&worker_dir("deadline"), "");
    let prompt = json!({"prompt": "Say hi."});
    let response = post_json(&node, "/?ms=1", &prompt);
    assert_eq!(response.status(), 202);
    let body: Value = response.json().expect("JSON body");
    assert_eq!(body["fallback"]["degraded"], true, "{body}");

    let response = post_json(&node, "/?ms=60000", &prompt);
    assert_eq!(response.status(), 200, "{}", node.log_text());
    let body: Value = response.json().expect("JSON body");
    assert!(body["response"].is_string(), "{body}");
}

/// Checks a classification result: `{label, score}` objects, scores in [0, 1] and sorted.
fn assert_labels(result: &Value) {
    let labels = result.as_array().expect("an array of labels");
    assert!(!labels.is_empty(), "{result}");
    let scores: Vec<f64> = labels
        .iter()
        .map(|label| label["score"].as_f64().expect("numeric score"))
        .collect();
    for label in labels {
        assert!(label["label"].is_string(), "{result}");
    }
    for score in &scores {
        assert!((0.0..=1.0).contains(score), "{result}");
    }
    for pair in scores.windows(2) {
        assert!(pair[0] >= pair[1], "scores are not sorted: {result}");
    }
}

#[test]
fn tiered_worker_routes_by_tier() {
    let node = DevNode::start(&worker_dir("tiered"), "");
    let simple = post_json(&node, "/", &json!({"tier": "simple", "text": "great"}));
    assert_eq!(simple.status(), 200);
    let simple: Value = simple.json().expect("JSON body");
    assert_eq!(simple["tier"], "simple");
    assert_labels(&simple["result"]);

    let complex = post_json(
        &node,
        "/",
        &json!({"tier": "complex", "text": "Explain KV."}),
    );
    assert_eq!(complex.status(), 200);
    let complex: Value = complex.json().expect("JSON body");
    assert_eq!(complex["tier"], "complex");
    assert!(complex["result"]["response"].is_string(), "{complex}");

    node.wait_for_log("\"ran\":\"smollm2", Duration::from_secs(30));
    let runs = model_runs(&node);
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(runs[0]["model"], "@cf/huggingface/distilbert-sst-2-int8");
    assert_ne!(
        runs[0]["ran"],
        common::CHAT_MODEL,
        "the classifier tier ran the chat model"
    );
    assert_eq!(runs[1]["ran"], common::CHAT_MODEL);
}

#[test]
fn batch_worker_scores_twenty_items() {
    let node = DevNode::start(&worker_dir("batch"), "");
    let texts = [
        "I love it",
        "terrible service",
        "a great day",
        "awful and slow",
    ];
    let items: Vec<Value> = (0..20)
        .map(|id| json!({"id": id, "text": texts[id % texts.len()]}))
        .collect();
    let response = post_json(&node, "/", &json!({ "items": items }));
    assert_eq!(response.status(), 200);
    let body: Value = response.json().expect("JSON body");
    assert_eq!(body["count"], 20);
    let results = body["results"].as_array().expect("results array");
    assert_eq!(results.len(), 20);
    for (index, result) in results.iter().enumerate() {
        assert_eq!(result["id"], index, "{result}");
        assert_labels(&result["sentiment"]);
    }

    // The node's metrics show that the twenty items shared forward passes.
    let metrics = node
        .client()
        .get(node.url("/__kiln/metrics"))
        .send()
        .expect("metrics")
        .text()
        .expect("metrics text");
    let passes: f64 = metrics
        .lines()
        .filter(|line| line.starts_with("kiln_batch_forward_passes_total{"))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert!(passes >= 1.0, "{metrics}");
    assert!(passes < 20.0, "20 items ran in {passes} forward passes");
    let gauge = |name: &str| -> f64 {
        let prefix = format!("{name}{{worker=\"batch\"}} ");
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(&prefix)?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} for the worker in:\n{metrics}"))
    };
    assert!(gauge("kiln_worker_isolates") >= 1.0);
    assert!(gauge("kiln_worker_isolate_memory_bytes") > 0.0);
}

/// A 1×1 RGBA PNG of one orange pixel.
const PIXEL_PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4,
    0x89, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x44, 0x41, 0x54, 0x78, 0xda, 0x63, 0xfc, 0xcf, 0xc0, 0x50,
    0x0f, 0x00, 0x04, 0x85, 0x01, 0x80, 0x84, 0xa9, 0x8c, 0x21, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45,
    0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];

/// Builds a multipart/form-data body with the file part `photo` and the text part `note`.
fn photo_form(boundary: &str, photo: &[u8], note: &str) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"photo\"; filename=\"pixel.png\"\r\n\
             Content-Type: image/png\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(photo);
    body.extend_from_slice(
        format!(
            "\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\n\
             {note}\r\n--{boundary}--\r\n"
        )
        .as_bytes(),
    );
    body
}

#[test]
fn pipeline_worker_chains_three_models() {
    let node = DevNode::start(&worker_dir("pipeline"), "");
    let boundary = "kiln-test-boundary";
    let response = node
        .client()
        .post(node.url("/"))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(photo_form(boundary, PIXEL_PNG, "I love this house"))
        .send()
        .expect("request");
    let status = response.status();
    let text = response.text().expect("body");
    assert_eq!(status, 200, "{text}");
    let body: Value = serde_json::from_str(&text).expect("JSON body");

    assert_labels(&body["labels"]);
    assert!(body["labels"].as_array().map_or(0, Vec::len) <= 5, "{body}");
    assert_labels(&body["mood"]);
    let mood = body["mood"].as_array().expect("mood array");
    let mut names: Vec<&str> = mood
        .iter()
        .filter_map(|label| label["label"].as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["NEGATIVE", "POSITIVE"]);
    let total: f64 = mood
        .iter()
        .filter_map(|label| label["score"].as_f64())
        .sum();
    assert!((total - 1.0).abs() < 0.01, "mood scores sum to {total}");
    let reply = body["reply"].as_str().expect("reply is a string");
    assert!(!reply.trim().is_empty(), "{body}");
}

#[test]
fn edited_worker_reloads_and_reports_errors() {
    let folder = copy_worker(&worker_dir("chat"));
    let node = DevNode::start(folder.path(), "");
    let client = node.client();
    assert_eq!(
        client.get(node.url("/")).send().expect("request").status(),
        405
    );

    std::fs::write(
        folder.path().join("index.js"),
        "export default { fetch() { return new Response('edited'); } };\n",
    )
    .expect("edit the worker");
    wait_for_body(&node, "edited");

    std::fs::write(
        folder.path().join("index.js"),
        "export default {\n  fetch() { return new Response(; }\n};\n",
    )
    .expect("break the worker");
    node.wait_for_log("index.js:2:", Duration::from_secs(30));
    // The last good version keeps serving.
    let body = client.get(node.url("/")).send().expect("request").text();
    assert_eq!(body.expect("body"), "edited");
}

/// Polls until `GET /` returns `expected`, for up to 30 s.
fn wait_for_body(node: &DevNode, expected: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(response) = node.client().get(node.url("/")).send() {
            last = response.text().unwrap_or_default();
            if last == expected {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("GET / never returned {expected:?}; last body {last:?}");
}

/// Breaks one limit with `mode`, then checks the failure, the log line and that a normal
/// request succeeds on the rebuilt isolate.
fn assert_limit(mode: &str, limit: &str) {
    let node = DevNode::start(&worker_dir("limits"), "[workers]\nmemory_mib = 32\n");
    let client = node.client();
    let first = client.get(node.url("/")).send().expect("request");
    assert_eq!(first.text().expect("body"), "served 1");

    let response = client
        .get(node.url(&format!("/?mode={mode}")))
        .send()
        .expect("request");
    assert_eq!(response.status(), 503, "mode {mode}");

    node.wait_for_log("\"limit\":", Duration::from_secs(30));
    let breaches: Vec<Value> = node
        .log_lines()
        .into_iter()
        .filter(|line| line["limit"].is_string())
        .collect();
    assert_eq!(breaches.len(), 1, "{}", node.log_text());
    assert_eq!(breaches[0]["limit"], limit);
    assert_eq!(breaches[0]["worker"], "limits");

    let after = client.get(node.url("/")).send().expect("request");
    assert_eq!(after.status(), 200);
    assert_eq!(
        after.text().expect("body"),
        "served 1",
        "the isolate was not rebuilt"
    );
}

#[test]
fn endless_loop_fails_with_cpu_limit() {
    assert_limit("loop", "cpu_ms");
}

#[test]
fn unbounded_allocation_fails_with_memory_limit() {
    assert_limit("memory", "memory");
}

#[test]
fn endless_recursion_fails_with_stack_limit() {
    assert_limit("recursion", "stack");
}

#[test]
fn microtask_flood_fails_with_cpu_limit() {
    assert_limit("microtasks", "cpu_ms");
}

#[test]
fn hanging_request_fails_with_wall_limit() {
    let node = DevNode::start(&worker_dir("limits"), "");
    let client = node.client();
    let response = client.get(node.url("/?mode=hang")).send().expect("request");
    assert_eq!(response.status(), 503);
    let breach = node.wait_for_log("\"limit\":\"wall_ms\"", Duration::from_secs(30));
    assert!(breach.contains("\"worker\":\"limits\""), "{breach}");
    // Only that request failed; the isolate kept its state.
    let after = client.get(node.url("/")).send().expect("request");
    assert_eq!(after.text().expect("body"), "served 2");
}

#[test]
fn unhandled_rejection_fails_the_request() {
    let node = DevNode::start(&worker_dir("limits"), "");
    let client = node.client();
    let response = client
        .get(node.url("/?mode=reject"))
        .send()
        .expect("request");
    assert_eq!(response.status(), 500);
    let text = response.text().expect("body");
    assert!(
        text.contains("Uncaught (in promise) RangeError: nobody handles this"),
        "{text}"
    );
    let line = node.wait_for_log("unhandled promise rejection", Duration::from_secs(30));
    assert!(line.contains("\"outcome\":\"exception\""), "{line}");
    let after = client.get(node.url("/")).send().expect("request");
    assert_eq!(after.status(), 200);
}

#[test]
fn client_disconnect_cancels_the_request() {
    let node = DevNode::start(&worker_dir("limits"), "");
    let impatient = reqwest::blocking::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .expect("client");
    assert!(impatient.get(node.url("/?mode=tick")).send().is_err());
    let line = node.wait_for_log("\"outcome\":\"canceled\"", Duration::from_secs(30));
    assert!(line.contains("\"worker\":\"limits\""), "{line}");

    let client = node.client();
    let count = || -> u64 {
        let response = client
            .get(node.url("/?mode=ticks"))
            .send()
            .expect("request");
        response.text().expect("body").parse().expect("a count")
    };
    let first = count();
    assert!(first > 0, "the interval never ran");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        count(),
        first,
        "the canceled request's interval kept running"
    );
}

/// Returns scikit-learn's prediction for `row` from the test rows that
/// scripts/custom-models/train_home_value.py wrote beside the `@custom/home-value` model.
fn home_value_prediction(row: &[f64]) -> f64 {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/custom/home-value.expected.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("read {}: {error}", path.display()));
    let expected: Value = serde_json::from_str(&text).expect("expected predictions are JSON");
    let rows: Vec<Vec<f64>> =
        serde_json::from_value(expected["rows"].clone()).expect("rows of numbers");
    let index = rows
        .iter()
        .position(|candidate| candidate == row)
        .unwrap_or_else(|| panic!("{row:?} is not a test row of {}", path.display()));
    expected["predictions"][index]
        .as_f64()
        .expect("numeric prediction")
}

#[test]
fn valuation_worker_predicts_price() {
    let node = DevNode::start(&worker_dir("valuation"), "");
    let home = json!({"sqft": 1800, "bedrooms": 3, "bathrooms": 2, "lot_size": 5000,
                      "year_built": 1995, "walk_score": 70});
    let expected = home_value_prediction(&[1800.0, 3.0, 2.0, 5000.0, 1995.0, 70.0]);
    let response = post_json(&node, "/", &json!({ "home": home }));
    let status = response.status();
    let text = response.text().expect("body");
    assert_eq!(status, 200, "{text}");
    let body: Value = serde_json::from_str(&text).expect("JSON body");
    let prediction = body["prediction"][0]
        .as_f64()
        .unwrap_or_else(|| panic!("no numeric prediction: {body}"));
    assert!(
        (prediction - expected).abs() < 1e-5,
        "the worker returned {prediction}, scikit-learn predicts {expected}"
    );

    node.wait_for_log("\"message\":\"env.AI.run\"", Duration::from_secs(30));
    let runs = model_runs(&node);
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["model"], "@custom/home-value");
}

#[test]
fn valuation_worker_rejects_missing_field() {
    let node = DevNode::start(&worker_dir("valuation"), "");
    let home = json!({"sqft": 1800, "bedrooms": 3, "bathrooms": 2, "lot_size": 5000,
                      "year_built": 1995});
    let response = post_json(&node, "/", &json!({ "home": home }));
    assert_eq!(response.status(), 400);
    let body: Value = response.json().expect("JSON body");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.contains("walk_score"), "{body}");
    assert!(
        model_runs(&node).is_empty(),
        "a model ran for invalid input"
    );
}

#[test]
fn commonjs_packages_import() {
    let node = DevNode::start(&worker_dir("commonjs"), "");
    let response = node.client().get(node.url("/")).send().expect("request");
    let status = response.status();
    let text = response.text().expect("body");
    assert_eq!(status, 200, "{text}\nlog:\n{}", node.log_text());
    let body: Value = serde_json::from_str(&text).expect("JSON body");

    // ms@2.1.3 from npm, unchanged.
    assert_eq!(body["ms"], json!([172_800_000, "1m", "10 hours"]));
    // CommonJS only, as named and as default export.
    assert_eq!(body["greet"], "hello, kiln");
    assert_eq!(body["defaultGreet"], "hello, default");
    // CommonJS requiring a package and a relative file.
    assert_eq!(body["welcome"], "HELLO, KILN!");
    // CommonJS requiring JSON.
    assert_eq!(body["region"], "eu-west");
    assert_eq!(body["retries"], 3);
    // A circular pair: b gets the part of a's exports that was set before the require, as in
    // Node.
    assert_eq!(
        body["cycle"],
        json!({"name": "a", "bSawA": {"name": "a", "done": false}, "done": true})
    );
    // `exports` conditions: `import` from ESM, `require` from CommonJS.
    assert_eq!(body["build"], "esm");
    assert_eq!(body["requiredBuild"], "cjs");
    // Object.defineProperty exports and the wrapper's `process`.
    assert_eq!(body["sides"], 4);
    assert_eq!(body["env"], "production");
    assert_eq!(body["processGlobal"], "undefined");
    // The package.json `browser` field: a file mapped to `false` is an empty object, and a
    // file mapped to another file loads that file.
    assert_eq!(body["browserMap"], json!(["object", 0, "browser"]));
}

#[test]
fn commonjs_stack_names_original_line() {
    let node = DevNode::start(&worker_dir("commonjs"), "");
    let response = node
        .client()
        .get(node.url("/throw"))
        .send()
        .expect("request");
    assert_eq!(response.status(), 500);
    node.wait_for_log("greeter failed on purpose", Duration::from_secs(30));
    let log = node.log_text();
    // `throw new Error(...)` is on line 8 of greeter/index.js. QuickJS names the column of
    // `Error`.
    assert!(
        log.contains("node_modules/greeter/index.js:8:13"),
        "log:\n{log}"
    );
    assert!(!log.contains("kiln-commonjs:"), "log:\n{log}");
}

#[test]
fn dev_vars_secrets_override_vars() {
    let node = DevNode::start(&worker_dir("secrets"), "");
    let response = node.client().get(node.url("/")).send().expect("request");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().expect("JSON body");
    assert_eq!(body["API_KEY"], "sk-test-4f9a2c71");
    assert_eq!(body["DB_PASSWORD"], "correct horse battery staple");
    assert_eq!(body["MULTILINE"], "first\nsecond");
    assert_eq!(body["GREETING"], "hello");

    let response = node
        .client()
        .get(node.url("/throw"))
        .send()
        .expect("request");
    assert_eq!(response.status(), 500);
    node.wait_for_log(
        "failed while the secrets were loaded",
        Duration::from_secs(30),
    );

    let log = node.log_text();
    assert!(
        log.contains("API_KEY"),
        "the load line names the secrets:\n{log}"
    );
    for value in ["sk-test-4f9a2c71", "correct horse battery staple"] {
        assert!(
            !log.contains(value),
            "the log contains the secret {value:?}:\n{log}"
        );
    }
}

#[test]
fn dev_vars_change_reloads_worker() {
    let folder = copy_worker(&worker_dir("secrets"));
    let node = DevNode::start(folder.path(), "");
    let read_key = || -> Value {
        let response = node.client().get(node.url("/")).send().expect("request");
        response.json::<Value>().expect("JSON body")["API_KEY"].clone()
    };
    assert_eq!(read_key(), "sk-test-4f9a2c71");

    std::fs::write(folder.path().join(".dev.vars"), "API_KEY=rotated-91b3\n")
        .expect("edit .dev.vars");
    node.wait_for_log("change detected", Duration::from_secs(30));
    let deadline = Instant::now() + Duration::from_secs(30);
    while read_key() != "rotated-91b3" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(read_key(), "rotated-91b3");

    // A line that is not KEY=value fails the reload; the error names the line, not its text.
    std::fs::write(
        folder.path().join(".dev.vars"),
        "API_KEY=rotated-91b3\nleaked-c0ffee\n",
    )
    .expect("break .dev.vars");
    node.wait_for_log(".dev.vars:2: expected KEY=value", Duration::from_secs(30));
    let log = node.log_text();
    assert!(!log.contains("leaked-c0ffee"), "log:\n{log}");
    assert!(!log.contains("rotated-91b3"), "log:\n{log}");
    // The last good version keeps serving.
    assert_eq!(read_key(), "rotated-91b3");
}
