"""Checks Kiln's OpenAI-compatible API with the official `openai` Python SDK.

Usage: python sdk_checks.py BASE_URL CHAT_MODEL EMBEDDING_MODEL

Each check raises AssertionError with the offending value; the script exits non-zero on the
first failure and prints one line per passed check.
"""

import base64
import json
import struct
import sys

import openai

BASE_URL, CHAT_MODEL, EMBEDDING_MODEL = sys.argv[1:4]
client = openai.OpenAI(base_url=BASE_URL + "/v1", api_key="unused", max_retries=0)

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current temperature in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 40}},
            "required": ["city"],
        },
    },
}


def check_chat():
    reply = client.chat.completions.create(
        model="@cf/meta/llama-2-7b-chat-int8",
        messages=[
            {"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": "What is the capital of France?"},
        ],
        max_tokens=32,
        seed=11,
    )
    choice = reply.choices[0]
    assert reply.object == "chat.completion", reply
    assert choice.message.role == "assistant", choice
    assert choice.message.content and choice.message.content.strip(), choice
    assert choice.finish_reason in ("stop", "length"), choice
    usage = reply.usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens, usage
    assert usage.completion_tokens >= 1, usage


def check_content_parts():
    reply = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": [{"type": "text", "text": "Say hello."}]}],
        max_tokens=8,
    )
    assert reply.choices[0].message.content, reply


def check_streamed_chat_with_usage():
    request = dict(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": "Name three colours."}],
        max_tokens=24,
        seed=5,
        temperature=0.7,
    )
    expected = client.chat.completions.create(**request).choices[0].message.content
    pieces, usage_chunks, finish_reasons = [], [], []
    for chunk in client.chat.completions.create(
        **request, stream=True, stream_options={"include_usage": True}
    ):
        assert chunk.object == "chat.completion.chunk", chunk
        if chunk.usage is not None:
            usage_chunks.append(chunk)
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            if choice.finish_reason:
                finish_reasons.append(choice.finish_reason)
    assert len(pieces) > 2, pieces
    assert "".join(pieces) == expected, ("".join(pieces), expected)
    assert len(usage_chunks) == 1, usage_chunks
    assert usage_chunks[0].choices == [], usage_chunks[0]
    assert usage_chunks[0].usage.completion_tokens >= 1, usage_chunks[0]
    assert len(finish_reasons) == 1, finish_reasons


def check_json_mode():
    reply = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": "Give a JSON object describing a cat."}],
        response_format={"type": "json_object"},
        # Enough room for the object to close: a reply cut at max_tokens is not valid JSON.
        max_tokens=600,
        seed=3,
    )
    content = reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "stop", (reply.choices[0].finish_reason, content)
    assert isinstance(json.loads(content), dict), content

    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 30},
            "population": {"type": "integer"},
        },
        "required": ["city", "population"],
        "additionalProperties": False,
    }
    reply = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": "Which is the largest city in Japan?"}],
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}},
        max_tokens=200,
        seed=3,
    )
    parsed = json.loads(reply.choices[0].message.content)
    assert set(parsed) == {"city", "population"}, parsed
    assert isinstance(parsed["city"], str) and isinstance(parsed["population"], int), parsed


def check_tool_call_loop():
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = client.chat.completions.create(
        model=CHAT_MODEL, messages=messages, tools=[WEATHER_TOOL], tool_choice="required",
        max_tokens=64, seed=1,
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert choice.message.content is None, choice.message
    calls = choice.message.tool_calls
    assert len(calls) == 1, calls
    assert calls[0].function.name == "get_weather", calls
    arguments = json.loads(calls[0].function.arguments)
    assert isinstance(arguments.get("city"), str), arguments

    messages.append(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": calls[0].id,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": calls[0].function.arguments},
                }
            ],
        }
    )
    messages.append({"role": "tool", "tool_call_id": calls[0].id, "content": '{"celsius": 21}'})
    second = client.chat.completions.create(
        model=CHAT_MODEL, messages=messages, tools=[WEATHER_TOOL], tool_choice="none",
        max_tokens=48, seed=1,
    )
    assert second.choices[0].message.content, second


def check_text_completion():
    reply = client.completions.create(model=CHAT_MODEL, prompt="The sky is", max_tokens=8, seed=2)
    assert reply.object == "text_completion", reply
    assert reply.choices[0].text, reply
    assert reply.usage.completion_tokens >= 1, reply.usage


def check_embeddings():
    texts = ["A cat sits on the mat.", "Stocks fell sharply today."]
    floats = client.embeddings.create(model=EMBEDDING_MODEL, input=texts, encoding_format="float")
    assert [item.index for item in floats.data] == [0, 1], floats.data
    dimensions = len(floats.data[0].embedding)
    assert dimensions > 100, dimensions

    raw = client.with_options().embeddings.with_raw_response.create(
        model=EMBEDDING_MODEL, input=texts, encoding_format="base64"
    )
    encoded = json.loads(raw.text)["data"][0]["embedding"]
    decoded = struct.unpack(f"<{dimensions}f", base64.b64decode(encoded))
    for left, right in zip(decoded, floats.data[0].embedding):
        assert abs(left - right) < 1e-6, (left, right)


def check_model_list():
    ids = [model.id for model in client.models.list().data]
    assert CHAT_MODEL in ids, ids


def check_errors():
    try:
        client.chat.completions.create(
            model=CHAT_MODEL, messages=[{"role": "user", "content": "hi"}], n=2
        )
        raise AssertionError("n=2 was accepted")
    except openai.BadRequestError as error:
        assert error.status_code == 400, error
        assert error.body["param"] == "n", error.body
    try:
        client.chat.completions.create(
            model="@cf/nobody/missing", messages=[{"role": "user", "content": "hi"}]
        )
        raise AssertionError("an unknown model was accepted")
    except openai.NotFoundError as error:
        assert error.status_code == 404, error
        assert error.body["code"] == "model_not_found", error.body


CHECKS = [
    check_chat,
    check_content_parts,
    check_streamed_chat_with_usage,
    check_json_mode,
    check_tool_call_loop,
    check_text_completion,
    check_embeddings,
    check_model_list,
    check_errors,
]

if __name__ == "__main__":
    only = sys.argv[4:]
    for check in CHECKS:
        if only and check.__name__ not in only:
            continue
        check()
        print(f"passed {check.__name__}", flush=True)
