//! End-to-end text generation through the real binary and the bundled chat model.

mod common;

use common::{Node, CHAT_MODEL};
use reqwest::blocking::Response;
use serde_json::{json, Value};

const HOSTED_CHAT_ID: &str = "@cf/meta/llama-2-7b-chat-int8";

fn run(node: &Node, model: &str, input: &Value) -> Response {
    node.client()
        .post(node.url(&format!("/ai/run/{model}")))
        .json(input)
        .send()
        .expect("request reaches the node")
}

fn json_body(response: Response) -> Value {
    response.json().expect("JSON body")
}

/// Splits an SSE body into the `data:` payloads, in order.
fn sse_payloads(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter(|event| !event.trim().is_empty())
        .map(|event| {
            event
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("event without `data: `: {event:?}"))
                .to_string()
        })
        .collect()
}

#[test]
fn chat_through_hosted_id_answers() {
    let node = Node::start("");
    let response = run(
        &node,
        HOSTED_CHAT_ID,
        &json!({
            "messages": [
                {"role": "system", "content": "You are a concise assistant."},
                {"role": "user", "content": "What is the capital of France?"}
            ],
            "max_tokens": 32
        }),
    );
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(response.headers()["x-kiln-model"], CHAT_MODEL);
    assert!(response.headers().contains_key("cf-ai-req-id"));
    let body = json_body(response);
    let text = body["response"].as_str().expect("response is a string");
    assert!(!text.trim().is_empty(), "empty answer: {body}");
    let usage = &body["usage"];
    let prompt_tokens = usage["prompt_tokens"].as_u64().expect("prompt_tokens");
    let completion_tokens = usage["completion_tokens"]
        .as_u64()
        .expect("completion_tokens");
    assert!(prompt_tokens > 10, "{usage}");
    assert!((1..=32).contains(&completion_tokens), "{usage}");
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(prompt_tokens + completion_tokens)
    );
}

#[test]
fn v4_route_wraps_result_in_envelope() {
    let node = Node::start("");
    let response = node
        .client()
        .post(node.url(&format!("/client/v4/accounts/abc123/ai/run/{CHAT_MODEL}")))
        .json(&json!({"prompt": "Say hi.", "max_tokens": 8}))
        .send()
        .expect("request");
    assert_eq!(response.status(), 200);
    let body = json_body(response);
    assert_eq!(body["success"], true);
    assert_eq!(body["errors"], json!([]));
    assert!(body["result"]["response"].is_string(), "{body}");
}

#[test]
fn same_seed_gives_same_text() {
    let node = Node::start("");
    for temperature in [0.0, 0.9] {
        let input = json!({
            "prompt": "Write one sentence about the sea.",
            "max_tokens": 24,
            "seed": 42,
            "temperature": temperature
        });
        let first = json_body(run(&node, CHAT_MODEL, &input));
        let second = json_body(run(&node, CHAT_MODEL, &input));
        assert!(
            !first["response"].as_str().unwrap_or("").is_empty(),
            "{first}"
        );
        assert_eq!(
            first["response"], second["response"],
            "temperature {temperature}"
        );
    }
}

#[test]
fn stream_joins_to_unstreamed_text() {
    let node = Node::start("");
    let input = json!({
        "messages": [{"role": "user", "content": "Name three colours."}],
        "max_tokens": 24,
        "seed": 7,
        "temperature": 0.7
    });
    let expected = json_body(run(&node, HOSTED_CHAT_ID, &input));

    let mut streamed_input = input.clone();
    streamed_input["stream"] = json!(true);
    let response = run(&node, HOSTED_CHAT_ID, &streamed_input);
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let payloads = sse_payloads(&response.text().expect("stream body"));

    assert_eq!(payloads.last().map(String::as_str), Some("[DONE]"));
    let events: Vec<Value> = payloads[..payloads.len() - 1]
        .iter()
        .map(|payload| serde_json::from_str(payload).expect("event is JSON"))
        .collect();
    assert!(events.len() > 2, "expected several events, got {events:?}");
    let joined: String = events
        .iter()
        .map(|event| event["response"].as_str().expect("event has response"))
        .collect();
    assert_eq!(joined, expected["response"].as_str().expect("text"));
    let usage = &events.last().expect("usage event")["usage"];
    assert_eq!(usage, &expected["usage"]);
}

#[test]
fn bad_inputs_get_400_naming_field() {
    let node = Node::start("");
    let cases = [
        (json!({"prompt": "hi", "temperature": 9}), "temperature"),
        (json!({"prompt": "hi", "max_tokens": "many"}), "max_tokens"),
        (json!({"prompt": "hi", "top_k": 0}), "top_k"),
        (json!({"prompt": "hi", "seed": -1}), "seed"),
        (json!({"prompt": ""}), "prompt"),
        (json!({"messages": "hello"}), "messages"),
        (
            json!({"messages": [{"role": "user"}]}),
            "messages[0].content",
        ),
        (json!({"prompt": "a", "messages": []}), "mutually exclusive"),
    ];
    for (input, needle) in cases {
        let response = run(&node, CHAT_MODEL, &input);
        assert_eq!(response.status(), 400, "{input}");
        assert_eq!(response.headers()["content-type"], "application/json");
        let body = json_body(response);
        assert_eq!(body["internalCode"], 3010, "{input}: {body}");
        assert_eq!(body["errors"][0]["code"], 3010, "{input}: {body}");
        let message = body["errors"][0]["message"].as_str().expect("message");
        assert!(message.contains(needle), "{input}: {message}");
    }
}

#[test]
fn invalid_json_gets_400() {
    let node = Node::start("");
    let response = node
        .client()
        .post(node.url(&format!("/client/v4/accounts/x/ai/run/{CHAT_MODEL}")))
        .header("content-type", "application/json")
        .body("{\"prompt\": ")
        .send()
        .expect("request");
    assert_eq!(response.status(), 400);
    let body = json_body(response);
    assert_eq!(body["success"], false);
    assert_eq!(body["result"], Value::Null);
    let message = body["errors"][0]["message"].as_str().expect("message");
    assert!(message.contains("not valid JSON"), "{message}");
}

#[test]
fn unknown_model_gets_5007_with_hint() {
    let node = Node::start("");
    let response = run(&node, "@cf/nobody/no-such-model", &json!({"prompt": "hi"}));
    assert_eq!(response.status(), 400);
    let body = json_body(response);
    assert_eq!(body["internalCode"], 5007);
    let message = body["description"].as_str().expect("description");
    assert!(message.contains("@cf/nobody/no-such-model"), "{message}");
    assert!(message.contains("kiln models list"), "{message}");
}

#[test]
fn oversized_body_gets_413() {
    let node = Node::start("[limits]\nmax_body_bytes = 2048\n");
    let input = json!({"prompt": "x".repeat(4096)});
    let response = run(&node, CHAT_MODEL, &input);
    assert_eq!(response.status(), 413);
    let body = json_body(response);
    assert_eq!(body["internalCode"], 3006);
}

#[test]
fn long_prompt_gets_400_with_token_counts() {
    let node = Node::start("[llama]\ncontext_tokens = 64\n");
    let input = json!({"prompt": "word ".repeat(200), "raw": true});
    let response = run(&node, CHAT_MODEL, &input);
    assert_eq!(response.status(), 400);
    let body = json_body(response);
    let message = body["description"].as_str().expect("description");
    assert!(message.contains("context window is 64 tokens"), "{message}");
    let prompt_tokens: u32 = message
        .split("prompt has ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("no token count in {message}"));
    assert!(prompt_tokens >= 200, "{message}");
}

#[test]
fn model_search_lists_chat_model() {
    let node = Node::start("");
    let client = node.client();
    let body: Value = client
        .get(node.url("/client/v4/accounts/x/ai/models/search?task=Text%20Generation"))
        .send()
        .expect("request")
        .json()
        .expect("JSON");
    assert_eq!(body["success"], true);
    let names: Vec<&str> = body["result"]
        .as_array()
        .expect("result array")
        .iter()
        .filter_map(|entry| entry["name"].as_str())
        .collect();
    assert_eq!(names, vec![CHAT_MODEL]);
    assert_eq!(
        body["result"][0]["task"]["id"],
        "c329a1f9-323d-4e91-b2aa-582dd4188d34"
    );

    let empty: Value = client
        .get(node.url("/ai/models/search?search=no-such-text"))
        .send()
        .expect("request")
        .json()
        .expect("JSON");
    assert_eq!(empty["result"], json!([]));

    let bare: Value = client
        .get(node.url("/ai/models"))
        .send()
        .expect("request")
        .json()
        .expect("JSON");
    assert!(
        bare.as_array().is_some_and(|models| !models.is_empty()),
        "{bare}"
    );
}

#[test]
fn disconnected_stream_stops_generation() {
    let node = Node::start("[llama]\nparallel_sequences = 1\ncontext_tokens = 2048\n");
    let input = json!({"prompt": "Tell a very long story.", "stream": true, "max_tokens": 1500,
                       "temperature": 0.8, "seed": 3});
    let mut response = run(&node, CHAT_MODEL, &input);
    assert_eq!(response.status(), 200);
    let mut first_bytes = [0u8; 64];
    let read = std::io::Read::read(&mut response, &mut first_bytes).expect("first stream bytes");
    assert!(read > 0);
    drop(response);

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let line = loop {
        let log = node.log_text();
        if let Some(line) = log
            .lines()
            .find(|line| line.contains("generation cancelled"))
        {
            break line.to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no cancellation logged:\n{log}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let entry: Value = serde_json::from_str(&line).expect("JSON log line");
    let generated = entry["completion_tokens"]
        .as_u64()
        .expect("completion_tokens in log");
    assert!(generated < 1500, "{line}");

    // The only sequence slot is free again, so a new request completes.
    let body = json_body(run(
        &node,
        CHAT_MODEL,
        &json!({"prompt": "Hi", "max_tokens": 4}),
    ));
    assert!(body["response"].is_string(), "{body}");
}

#[test]
fn native_tools_return_tool_calls() {
    let node = Node::start("");
    let tools = json!([{
        "name": "get_weather",
        "description": "Current temperature in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}},
                       "required": ["city"]}
    }]);
    let input = json!({
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "tools": tools,
        "tool_choice": "required",
        "seed": 1
    });
    let body = json_body(run(&node, HOSTED_CHAT_ID, &input));
    let calls = body["tool_calls"]
        .as_array()
        .unwrap_or_else(|| panic!("no tool_calls: {body}"));
    assert_eq!(calls.len(), 1, "{body}");
    assert_eq!(calls[0]["name"], "get_weather");
    assert!(calls[0]["arguments"]["city"].is_string(), "{body}");

    let mut streamed = input.clone();
    streamed["stream"] = json!(true);
    let text = run(&node, HOSTED_CHAT_ID, &streamed)
        .text()
        .expect("stream body");
    let events: Vec<Value> = sse_payloads(&text)
        .iter()
        .filter(|payload| payload.as_str() != "[DONE]")
        .map(|payload| serde_json::from_str(payload).expect("event is JSON"))
        .collect();
    let call_event = events
        .iter()
        .find(|event| event.get("tool_calls").is_some())
        .unwrap_or_else(|| panic!("no tool_calls event in {events:?}"));
    assert_eq!(call_event["tool_calls"][0]["name"], "get_weather");
}

#[test]
fn json_mode_returns_object() {
    let node = Node::start("");
    let input = json!({
        "messages": [{"role": "user", "content": "Describe a dog as JSON."}],
        "response_format": {"type": "json_schema", "json_schema": {
            "type": "object",
            "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
            "required": ["name", "age"]
        }},
        "max_tokens": 120,
        "seed": 2
    });
    let body = json_body(run(&node, CHAT_MODEL, &input));
    assert!(body["response"]["name"].is_string(), "{body}");
    assert!(body["response"]["age"].is_i64(), "{body}");

    let mut streamed = input.clone();
    streamed["stream"] = json!(true);
    let response = run(&node, CHAT_MODEL, &streamed);
    assert_eq!(response.status(), 400);
    let error = json_body(response);
    assert!(
        error["description"]
            .as_str()
            .is_some_and(|text| text.contains("streaming")),
        "{error}"
    );
}

/// Reads `kiln_prompt_cached_tokens_total` of the chat model from `GET /metrics`, or 0 before
/// the first generation records it.
fn cached_prompt_tokens(node: &Node) -> u64 {
    node.metric("kiln_prompt_cached_tokens_total", &[("model", CHAT_MODEL)])
        .unwrap_or(0.0) as u64
}

#[test]
fn shared_system_prompt_reuses_cache() {
    let system = "You are the help desk assistant of the Riverside public library. The library \
                  opens at nine in the morning and closes at eight in the evening on weekdays, \
                  and it opens from ten to four on Saturdays. It is closed on Sundays and public \
                  holidays. Members may borrow up to twelve books, four films and two board games \
                  at a time. Books are lent for three weeks, films for one week. Late returns \
                  cost ten cents a day per item. The reading room on the second floor is a quiet \
                  area. Printing costs ten cents a page in black and white and fifty cents in \
                  colour. Members can book the two meeting rooms on the ground floor for up to \
                  three hours a week, and the children's corner holds a story hour every \
                  Wednesday at four. Lost cards are replaced for two dollars. Answer questions \
                  briefly and politely.";
    let request = |question: &str| {
        json!({
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": question}
            ],
            "max_tokens": 32,
            "seed": 11,
            "temperature": 0.8
        })
    };
    let first = request("When does the library open on Saturday?");
    let second = request("How many films can I borrow?");

    let node = Node::start("");
    let first_body = json_body(run(&node, CHAT_MODEL, &first));
    assert!(first_body["response"].is_string(), "{first_body}");
    let cached_before = cached_prompt_tokens(&node);
    assert_eq!(cached_before, 0, "the first request found nothing to reuse");
    let reused_body = json_body(run(&node, CHAT_MODEL, &second));
    let cached = cached_prompt_tokens(&node) - cached_before;
    let prompt_tokens = reused_body["usage"]["prompt_tokens"]
        .as_u64()
        .expect("prompt_tokens");
    // The system prompt alone is over 170 tokens and the user turn differs. With flash
    // attention, a prompt of 64 tokens or more decodes its last 64 again (see the scheduler).
    assert!(cached >= 100, "reused {cached} tokens: {reused_body}");
    assert!(cached < prompt_tokens, "reused {cached} of {prompt_tokens}");

    let fresh = Node::start("");
    let fresh_body = json_body(run(&fresh, CHAT_MODEL, &second));
    assert_eq!(cached_prompt_tokens(&fresh), 0);
    let reused_text = reused_body["response"].as_str().expect("response text");
    assert!(!reused_text.is_empty(), "{reused_body}");
    assert_eq!(
        reused_text, fresh_body["response"],
        "same seed, with and without reuse"
    );
    assert_eq!(reused_body["usage"], fresh_body["usage"]);
}

/// Runs `inputs` on `node` all at once, the i-th starting i * 40 ms after the first so that
/// some join while others decode, and returns the texts in input order.
fn run_concurrently(node: &Node, inputs: &[Value]) -> Vec<String> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = inputs
            .iter()
            .enumerate()
            .map(|(index, input)| {
                scope.spawn(move || {
                    std::thread::sleep(std::time::Duration::from_millis(40 * index as u64));
                    let body = json_body(run(node, CHAT_MODEL, input));
                    body["response"]
                        .as_str()
                        .unwrap_or_else(|| panic!("no response text: {body}"))
                        .to_string()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("request thread"))
            .collect()
    })
}

#[test]
fn concurrent_chats_match_their_text_alone() {
    // Chunks of 64 tokens: the long prompts are prefilled in several chunks, with the tiled
    // attention kernel and without it, while the other sequences decode. The context window
    // leaves room for request 0's prompt of about 300 tokens.
    let config = "[llama]\nparallel_sequences = 8\nbatch_tokens = 64\ncontext_tokens = 512\n";
    let long_context = "The harbour town keeps a ledger of every ship that docks there: its name, \
                        its cargo, the weather on the day it arrived and the number of sailors \
                        aboard. Last spring a schooner brought salt and cedar, a trawler brought \
                        cod, and a small ferry brought forty passengers and a piano. ";
    let inputs: Vec<Value> = (0..8)
        .map(|index| {
            let question =
                format!("Question {index}: describe a day in this town in two sentences.");
            // Request 0 runs past position 256, where a sequence alone in its ubatch would take
            // another flash attention kernel than beside others.
            let content = match index {
                0 => format!("{}{question}", long_context.repeat(4)),
                3 | 6 => format!("{long_context}{question}"),
                _ => question,
            };
            json!({
                "messages": [{"role": "user", "content": content}],
                "max_tokens": 40,
                "seed": 100 + index,
                "temperature": 0.9
            })
        })
        .collect();

    let solo = Node::start(config);
    let alone: Vec<String> = inputs
        .iter()
        .map(|input| {
            let body = json_body(run(&solo, CHAT_MODEL, input));
            body["response"]
                .as_str()
                .expect("response text")
                .to_string()
        })
        .collect();
    drop(solo);

    let node = Node::start(config);
    let together = run_concurrently(&node, &inputs);
    for (index, (alone, together)) in alone.iter().zip(&together).enumerate() {
        assert!(!alone.is_empty(), "request {index} gave no text");
        assert_eq!(
            alone, together,
            "request {index}: alone, then beside 7 others"
        );
    }
}
