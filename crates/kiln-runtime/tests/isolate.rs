//! Isolate behaviour: module loading, requests, the AI binding and limits.

mod support;

use std::sync::atomic::Ordering;

use kiln_runtime::{Limit, Limits, WorkerError};
use serde_json::json;
use support::{runtime, start, start_pool};

const ECHO_WORKER: &str = r#"
let served = 0;
export default {
  async fetch(request, env) {
    served += 1;
    const url = new URL(request.url);
    const body = request.method === "POST" ? await request.json() : null;
    return Response.json({ served, method: request.method, path: url.pathname, body, cf: request.cf, greeting: env.GREETING, limit: env.LIMIT });
  },
};
"#;

#[test]
fn hello_world_responds() {
    let worker = start(
        &[(
            "index.js",
            "export default { fetch(request) { return new Response('hi ' + new URL(request.url).pathname); } };",
        )],
        Limits::default(),
    )
    .expect("worker starts");
    let reply = worker.get("/there");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "hi /there");
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain;charset=UTF-8")
    );
}

#[test]
fn globals_persist_between_requests() {
    let worker = start(&[("index.js", ECHO_WORKER)], Limits::default()).expect("worker starts");
    assert_eq!(worker.get("/").json()["served"], 1);
    let reply = worker
        .request(
            "POST",
            "/a",
            &[("content-type", "application/json")],
            br#"{"x": [1, 2]}"#,
        )
        .expect("request succeeds");
    let body = reply.json();
    assert_eq!(body["served"], 2);
    assert_eq!(body["method"], "POST");
    assert_eq!(body["path"], "/a");
    assert_eq!(body["body"], json!({"x": [1, 2]}));
    assert_eq!(body["cf"], json!({"colo": "TST", "country": "NL"}));
    assert_eq!(body["greeting"], "hello");
    assert_eq!(body["limit"], 3);
}

#[test]
fn typescript_json_and_relative_imports_load() {
    let worker = start(
        &[
            (
                "src/index.ts",
                r#"
import { double } from "./lib/math";
import config from "../config.json";
import { Ai } from "@cloudflare/ai";
interface Env { AI: unknown }
export default {
  async fetch(request: Request, env: Env): Promise<Response> {
    const ai = new Ai(env.AI);
    const result = await ai.run("@cf/test", { n: double(config.n as number) });
    return Response.json(result);
  },
};
"#,
            ),
            (
                "src/lib/math.ts",
                "export const double = (n: number): number => n * 2;",
            ),
            ("config.json", r#"{"n": 21}"#),
        ],
        Limits::default(),
    )
    .expect("worker starts");
    let body = worker.get("/").json();
    assert_eq!(body, json!({"model": "@cf/test", "inputs": {"n": 42}}));
}

#[test]
fn syntax_error_names_file_line_and_column() {
    let error = start(
        &[(
            "index.js",
            "export default {\n  fetch() { return new Response(; }\n};\n",
        )],
        Limits::default(),
    )
    .err()
    .expect("the worker fails to start");
    assert!(error.0.starts_with("index.js:2:"), "{}", error.0);
    assert!(error.0.contains("new Response(;"), "{}", error.0);
}

#[test]
fn typescript_error_names_file_line_and_column() {
    let error = start(
        &[(
            "index.ts",
            "const a: number = 1;\nconst b: = 2;\nexport default {};\n",
        )],
        Limits::default(),
    )
    .err()
    .expect("the worker fails to start");
    assert!(error.0.starts_with("index.ts:2:"), "{}", error.0);
}

#[test]
fn missing_import_fails_start() {
    let error = start(
        &[(
            "index.js",
            "import { x } from './nope.js';\nexport default { fetch() {} };\n",
        )],
        Limits::default(),
    )
    .err()
    .expect("the worker fails to start");
    assert!(error.0.contains("nope.js"), "{}", error.0);
}

#[test]
fn missing_fetch_handler_fails_start() {
    let error = start(&[("index.js", "export default {};")], Limits::default())
        .err()
        .expect("the worker fails to start");
    assert!(error.0.contains("fetch"), "{}", error.0);
}

#[test]
fn thrown_exception_gives_500() {
    let worker = start(
        &[(
            "index.js",
            "export default { fetch() { throw new TypeError('boom'); } };",
        )],
        Limits::default(),
    )
    .expect("worker starts");
    let error = worker
        .request("GET", "/", &[], b"")
        .err()
        .expect("request fails");
    assert_eq!(error.status(), 500);
    assert!(
        matches!(&error, WorkerError::Exception { message, .. } if message == "TypeError: boom"),
        "{error:?}"
    );
}

#[test]
fn ai_binding_errors_carry_code_and_name() {
    let worker = start(
        &[(
            "index.js",
            r#"export default { async fetch(request, env) {
                 try { await env.AI.run("@cf/bad", {}); return new Response("no error"); }
                 catch (error) { return Response.json({ name: error.name, message: error.message, status: env.AI.lastRequestHttpStatusCode }); }
               } };"#,
        )],
        Limits::default(),
    )
    .expect("worker starts");
    let body = worker.get("/").json();
    assert_eq!(body["name"], "InvalidInput");
    assert_eq!(
        body["message"],
        "3010: Invalid or incomplete input for the model"
    );
    assert_eq!(body["status"], 400);
}

#[test]
fn ai_stream_passes_through_response() {
    let worker = start(
        &[(
            "index.js",
            r#"export default { async fetch(request, env) {
                 const stream = await env.AI.run("@cf/chat", { prompt: "hi", stream: true });
                 return new Response(stream, { headers: { "content-type": "text/event-stream" } });
               } };"#,
        )],
        Limits::default(),
    )
    .expect("worker starts");
    let reply = worker.get("/");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("text/event-stream"));
    assert_eq!(
        reply.body,
        "data: {\"response\":\"a\"}\n\ndata: {\"response\":\"b\"}\n\ndata: [DONE]\n\n"
    );
}

#[test]
fn ai_stream_can_be_read_in_the_worker() {
    let worker = start(
        &[(
            "index.js",
            r#"export default { async fetch(request, env) {
                 const stream = await env.AI.run("@cf/chat", { prompt: "hi", stream: true });
                 let text = "";
                 for await (const chunk of stream.pipeThrough(new TextDecoderStream())) text += chunk;
                 return new Response(text.split("\n\n").filter(Boolean).length + " events");
               } };"#,
        )],
        Limits::default(),
    )
    .expect("worker starts");
    assert_eq!(worker.get("/").body, "3 events");
}

#[test]
fn concurrent_requests_share_one_isolate() {
    let worker = start(
        &[(
            "index.js",
            r#"export default { async fetch(request, env) {
                 const n = Number(new URL(request.url).searchParams.get("n"));
                 await new Promise((resolve) => setTimeout(resolve, 20));
                 const result = await env.AI.run("@cf/echo", { n });
                 return Response.json(result.inputs);
               } };"#,
        )],
        Limits::default(),
    )
    .expect("worker starts");
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|n| {
                let worker = &worker;
                scope.spawn(move || worker.get(&format!("/?n={n}")).json()["n"].clone())
            })
            .collect();
        for (n, handle) in handles.into_iter().enumerate() {
            assert_eq!(handle.join().expect("thread"), json!(n));
        }
    });
    assert_eq!(worker.ai.calls.load(Ordering::SeqCst), 8);
}

#[test]
fn timers_fire_in_order_and_clear() {
    let worker = start(
        &[(
            "index.js",
            r#"export default { async fetch() {
                 const order = [];
                 await new Promise((resolve) => {
                   setTimeout(() => order.push("b"), 10);
                   setTimeout(() => order.push("a"), 1);
                   const cancelled = setTimeout(() => order.push("never"), 5);
                   clearTimeout(cancelled);
                   queueMicrotask(() => order.push("micro"));
                   setTimeout(resolve, 30);
                 });
                 return Response.json(order);
               } };"#,
        )],
        Limits::default(),
    )
    .expect("worker starts");
    assert_eq!(worker.get("/").json(), json!(["micro", "a", "b"]));
}

/// Limits small enough that each test breaks them quickly.
fn tight_limits() -> Limits {
    Limits {
        cpu_ms: 200,
        wall_ms: 2_000,
        memory_bytes: 32 * 1024 * 1024,
        stack_bytes: 256 * 1024,
        ..Limits::default()
    }
}

const LIMITED_WORKER: &str = r#"
let requests = 0;
function recurse(n) { return recurse(n + 1) + 1; }
export default {
  async fetch(request) {
    requests += 1;
    const mode = new URL(request.url).searchParams.get("mode");
    if (mode === "loop") { for (;;) {} }
    if (mode === "memory") { const hoard = []; for (;;) hoard.push(new Array(100000).fill(requests)); }
    if (mode === "recursion") { return new Response(String(recurse(0))); }
    if (mode === "microtasks") { const storm = () => queueMicrotask(storm); storm(); await new Promise(() => {}); }
    if (mode === "promises") { for (;;) await null; }
    return new Response("ok " + requests);
  },
};
"#;

fn assert_limit_then_recovery(mode: &str, limit: Limit) {
    let worker = start(&[("index.js", LIMITED_WORKER)], tight_limits()).expect("worker starts");
    assert_eq!(worker.get("/").body, "ok 1");
    let error = worker
        .request("GET", &format!("/?mode={mode}"), &[], b"")
        .err()
        .unwrap_or_else(|| panic!("mode {mode} should fail"));
    assert!(
        matches!(error, WorkerError::LimitExceeded(broken) if broken == limit),
        "mode {mode}: {error:?}"
    );
    assert_eq!(error.status(), 503);
    // The isolate was rebuilt: module state starts over.
    assert_eq!(worker.get("/").body, "ok 1");
}

#[test]
fn endless_loop_hits_cpu_limit() {
    assert_limit_then_recovery("loop", Limit::Cpu);
}

#[test]
fn unbounded_allocation_hits_memory_limit() {
    assert_limit_then_recovery("memory", Limit::Memory);
}

#[test]
fn endless_recursion_hits_stack_limit() {
    assert_limit_then_recovery("recursion", Limit::Stack);
}

#[test]
fn microtask_flood_hits_cpu_limit() {
    assert_limit_then_recovery("microtasks", Limit::Cpu);
}

#[test]
fn await_loop_hits_cpu_limit() {
    assert_limit_then_recovery("promises", Limit::Cpu);
}

#[test]
fn hanging_request_hits_wall_limit() {
    let worker = start(
        &[(
            "index.js",
            r#"let served = 0;
               export default { async fetch(request) {
                 served += 1;
                 if (new URL(request.url).pathname === "/hang") await new Promise(() => {});
                 return new Response("ok " + served);
               } };"#,
        )],
        Limits {
            wall_ms: 300,
            ..Limits::default()
        },
    )
    .expect("worker starts");
    assert_eq!(worker.get("/").body, "ok 1");
    let error = worker
        .request("GET", "/hang", &[], b"")
        .err()
        .expect("a request that never answers fails");
    assert!(
        matches!(error, WorkerError::LimitExceeded(Limit::Wall)),
        "{error:?}"
    );
    assert_eq!(error.status(), 503);
    // Only the request failed: the isolate and its globals stay.
    assert_eq!(worker.get("/").body, "ok 3");
}

const REJECTING_WORKER: &str = r#"
const pause = () => new Promise((resolve) => setTimeout(resolve, 20));
export default {
  async fetch(request) {
    const mode = new URL(request.url).pathname;
    if (mode === "/unhandled") {
      Promise.reject(new TypeError("nobody listens"));
      await pause();
    }
    if (mode === "/handled-later") {
      const late = Promise.reject(new Error("caught"));
      late.catch(() => {});
      await pause();
    }
    return new Response("answered " + mode);
  },
};
"#;

#[test]
fn unhandled_rejection_fails_the_request() {
    let worker = start(&[("index.js", REJECTING_WORKER)], Limits::default()).expect("starts");
    let error = worker
        .request("GET", "/unhandled", &[], b"")
        .err()
        .expect("an unhandled rejection fails the request");
    match &error {
        WorkerError::Exception {
            message, status, ..
        } => {
            assert_eq!(message, "Uncaught (in promise) TypeError: nobody listens");
            assert_eq!(*status, 500);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(worker.get("/handled-later").body, "answered /handled-later");
    assert_eq!(worker.get("/").body, "answered /");
}

#[test]
fn canceled_request_stops_its_timers() {
    let worker = start(
        &[(
            "index.js",
            r#"let ticks = 0;
               export default { async fetch(request) {
                 if (new URL(request.url).pathname === "/tick") {
                   setInterval(() => { ticks += 1; }, 5);
                   await new Promise(() => {});
                 }
                 return new Response(String(ticks));
               } };"#,
        )],
        Limits::default(),
    )
    .expect("worker starts");
    let request = worker.request_for("/tick");
    let abandoned = runtime().block_on(async {
        tokio::time::timeout(
            std::time::Duration::from_millis(100),
            worker.worker.fetch(request),
        )
        .await
    });
    assert!(abandoned.is_err(), "the hanging request answered");
    let first: u64 = worker.get("/").body.parse().expect("a count");
    assert!(first > 0, "the interval never ran");
    std::thread::sleep(std::time::Duration::from_millis(100));
    let second: u64 = worker.get("/").body.parse().expect("a count");
    assert_eq!(
        first, second,
        "the canceled request's interval kept running"
    );
}

const POOL_WORKER: &str = r#"
const isolate = crypto.randomUUID();
let served = 0;
export default {
  async fetch(request) {
    served += 1;
    const wait = Number(new URL(request.url).searchParams.get("wait") ?? 0);
    if (wait) await new Promise((resolve) => setTimeout(resolve, wait));
    return Response.json({ isolate, served });
  },
};
"#;

#[test]
fn pool_grows_while_every_isolate_is_busy() {
    let worker = start_pool(&[("index.js", POOL_WORKER)], Limits::default(), 2).expect("starts");
    let first = worker.get("/").json();
    let second = worker.get("/").json();
    assert_eq!(
        first["isolate"], second["isolate"],
        "idle isolate not reused"
    );
    assert_eq!(second["served"], 2);
    assert_eq!(worker.worker.isolates(), 1);

    let slow = runtime().spawn({
        let handle = worker.worker.clone();
        let request = worker.request_for("/?wait=1000");
        async move { handle.fetch(request).await.map(|response| response.status) }
    });
    std::thread::sleep(std::time::Duration::from_millis(100));
    let beside = worker.get("/").json();
    assert_ne!(
        beside["isolate"], first["isolate"],
        "a busy isolate took the request"
    );
    assert_eq!(beside["served"], 1);
    assert_eq!(worker.worker.isolates(), 2);
    let status = runtime()
        .block_on(slow)
        .expect("task")
        .expect("slow request");
    assert_eq!(status, 200);
}

#[test]
fn waiting_on_a_model_costs_no_cpu() {
    let worker = start(
        &[(
            "index.js",
            r#"export default { async fetch(request, env) {
                 await new Promise((resolve) => setTimeout(resolve, 400));
                 return Response.json(await env.AI.run("@cf/echo", {}));
               } };"#,
        )],
        Limits {
            cpu_ms: 50,
            ..Limits::default()
        },
    )
    .expect("worker starts");
    assert_eq!(worker.get("/").json()["model"], "@cf/echo");
}

#[test]
fn typescript_stack_names_source_line() {
    let worker = start(
        &[(
            "index.ts",
            "interface Env {\n  AI: unknown;\n}\n\nexport default {\n  fetch(request: Request, env: Env): Response {\n    throw new Error(\"from line 7\");\n  },\n};\n",
        )],
        Limits::default(),
    )
    .expect("worker starts");
    let error = worker
        .request("GET", "/", &[], b"")
        .err()
        .expect("request fails");
    let WorkerError::Exception { message, stack, .. } = error else {
        panic!("expected an exception, got {error:?}");
    };
    assert_eq!(message, "Error: from line 7");
    assert!(stack.contains("index.ts:7:"), "{stack}");
}

#[test]
fn promise_flood_after_response_hits_memory_limit() {
    let worker = start(
        &[(
            "index.js",
            r#"let served = 0;
               export default { async fetch(request) {
                 served += 1;
                 if (new URL(request.url).pathname === "/flood") {
                   const chain = () => Promise.resolve().then(chain);
                   chain();
                   return new Response("answered first");
                 }
                 return new Response("ok " + served);
               } };"#,
        )],
        Limits {
            memory_bytes: 32 * 1024 * 1024,
            ..Limits::default()
        },
    )
    .expect("worker starts");
    assert_eq!(worker.get("/").body, "ok 1");
    assert_eq!(worker.get("/flood").body, "answered first");
    // The flood ran out of heap after the response: the isolate was rebuilt.
    assert_eq!(worker.get("/").body, "ok 1");
}

#[test]
fn throw_in_timer_fails_the_request() {
    let worker = start(
        &[(
            "index.js",
            r#"export default { async fetch() {
                 setTimeout(() => { throw new TypeError("thrown in a timer"); }, 5);
                 await new Promise((resolve) => setTimeout(resolve, 50));
                 return new Response("too late");
               } };"#,
        )],
        Limits::default(),
    )
    .expect("worker starts");
    let error = worker
        .request("GET", "/", &[], b"")
        .err()
        .expect("the timer's exception fails the request");
    match error {
        WorkerError::Exception {
            message, status, ..
        } => {
            assert_eq!(message, "Uncaught TypeError: thrown in a timer");
            assert_eq!(status, 500);
        }
        other => panic!("{other:?}"),
    }
}
