//! `kiln dev` running a worker's `scheduled` handler: on its cron triggers, through
//! `/__scheduled` with `--test-scheduled`, and the errors around both. The test worker records
//! each event in a KV namespace and its `fetch` reads the records back.

mod common;
mod dev_node;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dev_node::{copy_worker, worker_dir, DevNode};
use serde_json::Value;

const TEST_SCHEDULED: &[&str] = &["--test-scheduled"];

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// Returns `GET path` as (status, body).
fn get(node: &DevNode, path: &str) -> (u16, String) {
    let response = node
        .client()
        .get(node.url(path))
        .send()
        .expect("request reaches the node");
    let status = response.status().as_u16();
    (status, response.text().expect("body"))
}

/// Returns the scheduled events that the worker recorded for `cron`.
fn runs_of(node: &DevNode, cron: &str) -> Vec<Value> {
    let (status, body) = get(node, "/");
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).expect("JSON body");
    body["runs"]
        .as_array()
        .expect("runs is an array")
        .iter()
        .filter(|run| run["cron"] == cron)
        .cloned()
        .collect()
}

/// Polls until the worker has recorded an event for `cron`, for up to `limit`.
fn wait_for_run(node: &DevNode, cron: &str, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(run) = runs_of(node, cron).into_iter().next() {
            return run;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!(
        "no scheduled event for {cron:?} within {limit:?}; log:\n{}",
        node.log_text()
    );
}

#[test]
fn scheduled_path_runs_handler_once() {
    let node = DevNode::start_with_args(&worker_dir("scheduled"), "", TEST_SCHEDULED);
    let (status, body) = get(&node, "/__scheduled?cron=*/5+*+*+*+*&time=1764892800000");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, "Ran scheduled event");

    // The record was written through ctx.waitUntil, and the response came after the write.
    let runs = runs_of(&node, "*/5 * * * *");
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["scheduledTime"], 1_764_892_800_000u64);

    // Without `time`, scheduledTime is the time of the request.
    let before = now_ms();
    let (status, body) = get(&node, "/__scheduled?cron=0%209%20*%20*%20MON");
    let after = now_ms();
    assert_eq!(status, 200, "{body}");
    let runs = runs_of(&node, "0 9 * * MON");
    assert_eq!(runs.len(), 1, "{runs:?}");
    let scheduled_time = runs[0]["scheduledTime"].as_u64().expect("integer time");
    assert!(
        (before..=after).contains(&scheduled_time),
        "{scheduled_time} not in {before}..={after}"
    );
    node.wait_for_log("\"outcome\":\"ok\"", Duration::from_secs(10));
}

#[test]
fn throwing_handler_gives_500_then_recovers() {
    let node = DevNode::start_with_args(&worker_dir("scheduled"), "", TEST_SCHEDULED);
    let (status, body) = get(&node, "/__scheduled?cron=throw");
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("Error: scheduled boom"), "{body}");
    node.wait_for_log("\"outcome\":\"exception\"", Duration::from_secs(10));

    let (status, body) = get(&node, "/after");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"path\":\"/after\""), "{body}");
}

#[test]
fn scheduled_path_without_flag_goes_to_fetch() {
    let node = DevNode::start(&worker_dir("scheduled"), "");
    let (status, body) = get(&node, "/__scheduled?cron=by-path");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"path\":\"/__scheduled\""), "{body}");
    assert!(runs_of(&node, "by-path").is_empty());
}

#[test]
fn every_minute_cron_fires_at_boundary() {
    let started = now_ms();
    let node = DevNode::start(&worker_dir("scheduled"), "");
    let run = wait_for_run(&node, "* * * * *", Duration::from_secs(75));
    let scheduled_time = run["scheduledTime"].as_u64().expect("integer time");
    assert_eq!(scheduled_time % 60_000, 0, "not a minute boundary: {run}");
    assert!(
        scheduled_time > started,
        "fired for {scheduled_time}, before the node started"
    );
}

#[test]
fn reload_picks_up_changed_crons() {
    let folder = copy_worker(&worker_dir("scheduled"));
    let config = folder.path().join("wrangler.toml");
    let yearly = std::fs::read_to_string(&config)
        .expect("read wrangler.toml")
        .replace("crons = [\"* * * * *\"]", "crons = [\"0 0 1 JAN *\"]");
    std::fs::write(&config, &yearly).expect("write wrangler.toml");
    let node = DevNode::start(folder.path(), "");
    node.wait_for_log(
        "\"crons\":\"[\\\"0 0 1 JAN *\\\"]\"",
        Duration::from_secs(10),
    );

    let every_minute = yearly.replace("0 0 1 JAN *", "*/1 * * * *");
    std::fs::write(&config, every_minute).expect("edit wrangler.toml");
    let run = wait_for_run(&node, "*/1 * * * *", Duration::from_secs(90));
    assert_eq!(
        run["scheduledTime"].as_u64().map(|ms| ms % 60_000),
        Some(0),
        "{run}"
    );
    assert!(runs_of(&node, "0 0 1 JAN *").is_empty());
}

#[test]
fn invalid_cron_fails_load() {
    let folder = copy_worker(&worker_dir("scheduled"));
    let config = folder.path().join("wrangler.toml");
    let text = std::fs::read_to_string(&config).expect("read wrangler.toml");
    std::fs::write(&config, text.replace("* * * * *", "0 9 * * 8")).expect("edit");
    let node = DevNode::start(folder.path(), "");
    let (status, body) = get(&node, "/");
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("\"0 9 * * 8\""), "{body}");
    assert!(body.contains("day-of-week field \"8\""), "{body}");
}

#[test]
fn crons_without_handler_log_warning() {
    let folder = copy_worker(&worker_dir("scheduled"));
    std::fs::write(
        folder.path().join("index.js"),
        "export default { fetch() { return new Response('no scheduled'); } };\n",
    )
    .expect("replace index.js");
    let node = DevNode::start(folder.path(), "");
    let warning = "has no scheduled(controller, env, ctx) method";
    node.wait_for_log(warning, Duration::from_secs(10));
    let line = node
        .log_lines()
        .into_iter()
        .find(|line| {
            line["message"]
                .as_str()
                .is_some_and(|text| text.contains(warning))
        })
        .expect("warning line");
    assert_eq!(line["level"], "WARN", "{line}");
    assert_eq!(get(&node, "/").1, "no scheduled");
}
