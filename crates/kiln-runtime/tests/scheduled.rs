//! Scheduled events: the default export's `scheduled(controller, env, ctx)` handler, when it
//! ends, and how it fails.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kiln_runtime::{Limit, Limits, WorkerError};
use serde_json::json;
use support::{runtime, start, TestWorker};

/// Records what each scheduled event saw; `fetch` returns the records as JSON.
const RECORDING_WORKER: &str = r#"
const seen = [];
export default {
  async fetch() {
    return Response.json(seen);
  },
  async scheduled(controller, env, ctx) {
    const record = {
      cron: controller.cron,
      scheduledTime: controller.scheduledTime,
      noRetry: typeof controller.noRetry,
      greeting: env.GREETING,
      later: false,
      nested: false,
    };
    seen.push(record);
    if (controller.cron === "throw") throw new RangeError("scheduled boom");
    if (controller.cron === "reject-later") {
      ctx.waitUntil(new Promise((_, reject) => setTimeout(() => reject(new Error("late boom")), 20)));
    }
    if (controller.cron === "loop") { for (;;) {} }
    // A waitUntil promise that settles after the handler returns, and one that it adds itself.
    ctx.waitUntil(new Promise((resolve) => setTimeout(() => {
      record.later = true;
      ctx.waitUntil(new Promise((done) => setTimeout(() => { record.nested = true; done(); }, 20)));
      resolve();
    }, 20)));
  },
};
"#;

fn run_scheduled(worker: &TestWorker, cron: &str, time: SystemTime) -> Result<(), WorkerError> {
    runtime().block_on(worker.worker.scheduled(cron, time))
}

fn at_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

#[test]
fn controller_and_env_reach_the_handler() {
    let worker = start(&[("index.js", RECORDING_WORKER)], Limits::default()).expect("starts");
    assert!(worker.worker.has_scheduled_handler());
    run_scheduled(&worker, "*/5 * * * *", at_ms(1_764_892_800_000)).expect("event succeeds");
    let seen = worker.get("/").json();
    assert_eq!(seen[0]["cron"], "*/5 * * * *");
    assert_eq!(seen[0]["scheduledTime"], 1_764_892_800_000u64);
    assert_eq!(seen[0]["noRetry"], "function");
    assert_eq!(seen[0]["greeting"], "hello");
}

#[test]
fn event_ends_after_wait_until_promises() {
    let worker = start(&[("index.js", RECORDING_WORKER)], Limits::default()).expect("starts");
    run_scheduled(&worker, "0 * * * *", at_ms(0)).expect("event succeeds");
    // Both flags are set by timers that fire after the handler returned, so they are true only
    // if the event waited for the waitUntil promise and the one that promise added.
    let seen = worker.get("/").json();
    assert_eq!(seen[0]["later"], true);
    assert_eq!(seen[0]["nested"], true);
}

#[test]
fn thrown_exception_is_the_outcome() {
    let worker = start(&[("index.js", RECORDING_WORKER)], Limits::default()).expect("starts");
    let error = run_scheduled(&worker, "throw", at_ms(0)).expect_err("event fails");
    assert!(
        matches!(&error, WorkerError::Exception { message, .. } if message == "RangeError: scheduled boom"),
        "{error:?}"
    );
    // The isolate keeps serving: the record of the failed event is still there.
    assert_eq!(worker.get("/").json()[0]["cron"], "throw");
}

#[test]
fn rejected_wait_until_is_an_exception() {
    let worker = start(&[("index.js", RECORDING_WORKER)], Limits::default()).expect("starts");
    let error = run_scheduled(&worker, "reject-later", at_ms(0)).expect_err("event fails");
    assert!(
        matches!(&error, WorkerError::Exception { message, .. } if message == "Error: late boom"),
        "{error:?}"
    );
}

#[test]
fn endless_loop_hits_cpu_limit() {
    let limits = Limits {
        cpu_ms: 200,
        ..Limits::default()
    };
    let worker = start(&[("index.js", RECORDING_WORKER)], limits).expect("starts");
    run_scheduled(&worker, "first", at_ms(0)).expect("event succeeds");
    let error = run_scheduled(&worker, "loop", at_ms(0)).expect_err("event fails");
    assert!(
        matches!(error, WorkerError::LimitExceeded(Limit::Cpu)),
        "{error:?}"
    );
    // The isolate was rebuilt, so the records start over.
    assert_eq!(worker.get("/").json(), json!([]));
}

#[test]
fn missing_scheduled_handler_fails_the_event() {
    let worker = start(
        &[(
            "index.js",
            "export default { fetch() { return new Response('ok'); } };",
        )],
        Limits::default(),
    )
    .expect("starts");
    assert!(!worker.worker.has_scheduled_handler());
    let error = run_scheduled(&worker, "* * * * *", at_ms(0)).expect_err("event fails");
    assert!(
        matches!(&error, WorkerError::Exception { message, .. } if message.starts_with("TypeError") && message.contains("scheduled(controller, env, ctx)")),
        "{error:?}"
    );
    assert_eq!(worker.get("/").body, "ok");
}

#[test]
fn worker_with_only_scheduled_starts() {
    let worker = start(
        &[("index.js", "export default { scheduled() {} };")],
        Limits::default(),
    )
    .expect("starts");
    assert!(worker.worker.has_scheduled_handler());
    run_scheduled(&worker, "* * * * *", at_ms(0)).expect("event succeeds");
    let error = worker
        .request("GET", "/", &[], b"")
        .err()
        .expect("fetch fails");
    assert_eq!(error.status(), 500);
    assert!(
        matches!(&error, WorkerError::Exception { message, .. } if message.contains("no fetch(request, env, ctx) method")),
        "{error:?}"
    );
}
