"""Each fixture plugin really runs under the `dify_plugin` SDK over stdio.

These tests start `python -m main` in a fixture folder with
INSTALL_METHOD=local, the way a daemon's local runtime does, and check the
lines the SDK writes. They document the session protocol as the SDK speaks it
(see tests/fixtures/README.md) so the Rust runtime has a ground truth.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from pathlib import Path

import pytest
import yaml

pytest.importorskip("dify_plugin", reason="needs the dify_plugin SDK (run scripts/setup-python.sh)")

from sdk_plugin import FIXTURES, PluginProcess  # noqa: E402

TOOL_BASE = {
    "user_id": "user-1",
    "type": "tool",
    "action": "invoke_tool",
    "provider": "echo_tool",
    "credentials": {"api_key": "good"},
    "credential_type": "api-key",
}
MODEL_BASE = {
    "user_id": "user-1",
    "type": "model",
    "provider": "echo_model",
    "credentials": {"api_key": "good"},
}


def start(fixture: str):
    plugin = PluginProcess(fixture)
    try:
        manifest, before = plugin.wait_ready(timeout=90)
    except BaseException:
        plugin.close()
        raise
    return plugin, manifest, before


@pytest.fixture(scope="module")
def echo_tool():
    plugin, _, _ = start("echo_tool")
    yield plugin
    plugin.close()


@pytest.fixture(scope="module")
def echo_model():
    plugin, _, _ = start("echo_model")
    yield plugin
    plugin.close()


@pytest.fixture(scope="module")
def echo_agent():
    plugin, _, _ = start("echo_agent")
    yield plugin
    plugin.close()


@pytest.fixture(scope="module")
def echo_endpoint():
    plugin, _, _ = start("echo_endpoint")
    yield plugin
    plugin.close()


# --- start-up -------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["echo_tool", "echo_model", "echo_agent", "echo_endpoint"])
def test_plugin_prints_manifest_then_heartbeat(fixture: str):
    plugin = PluginProcess(fixture)
    try:
        first = plugin.next_line(timeout=90)
        manifest = json.loads(first.raw)
        # The manifest line has no `event`: a daemon must skip it.
        assert "event" not in manifest
        declared = yaml.safe_load((FIXTURES / fixture / "manifest.yaml").read_text())
        assert manifest["author"] == declared["author"] == "plugind"
        assert manifest["name"] == declared["name"] == fixture
        assert manifest["version"] == declared["version"]
        assert manifest["meta"]["runner"] == {"language": "python", "version": "3.12", "entrypoint": "main"}
        # The SDK writes a blank line after each message.
        assert plugin.next_line(timeout=5).raw == ""

        events = []
        while "heartbeat" not in events:
            line = plugin.next_json(timeout=30)
            events.append(line.obj["event"])
            if line.obj["event"] == "heartbeat":
                assert line.raw == '{"event":"heartbeat","session_id":null,"data":{}}'
            elif line.obj["event"] == "log":
                assert set(line.obj["data"]) == {"level", "message", "timestamp"}
                assert "session_id" not in line.obj
        assert events[-1] == "heartbeat"
    finally:
        plugin.close()


def test_requirements_pin_dify_plugin_010():
    for fixture in ("echo_tool", "echo_model", "echo_agent", "echo_endpoint"):
        lines = (FIXTURES / fixture / "requirements.txt").read_text().split()
        assert "dify_plugin>=0.10,<0.11" in lines, fixture
        assert (FIXTURES / fixture / "_assets" / "icon.svg").is_file(), fixture


# --- tool plugin ------------------------------------------------------------------------------


def test_echo_tool_streams_one_text_chunk_then_end(echo_tool: PluginProcess):
    sid, _ = echo_tool.request({**TOOL_BASE, "tool": "echo", "tool_parameters": {"text": "hi there"}})
    result = echo_tool.collect(sid)
    assert result.types == ["stream", "end"]
    assert result.chunks == [{"type": "text", "message": {"text": "hi there"}, "meta": None}]
    assert result.last == {"type": "end", "data": {}}
    first = json.loads(result.raw_lines[0])
    assert list(first) == ["event", "session_id", "data"]
    assert first["event"] == "session" and first["session_id"] == sid


def test_json_tool_sends_json_object(echo_tool: PluginProcess):
    sid, _ = echo_tool.request({**TOOL_BASE, "tool": "json", "tool_parameters": {"text": "abc"}})
    result = echo_tool.collect(sid)
    assert result.types == ["stream", "end"]
    assert result.chunks == [{"type": "json", "message": {"json_object": {"echo": "abc", "length": 3}}, "meta": None}]


def test_blob_tool_splits_blob_into_8k_base64_chunks(echo_tool: PluginProcess):
    size = 300 * 1024
    sid, _ = echo_tool.request({**TOOL_BASE, "tool": "blob", "tool_parameters": {"size": size}})
    result = echo_tool.collect(sid, timeout=60)
    assert result.types[-1] == "end"
    chunks = result.chunks
    assert all(c["type"] == "blob_chunk" for c in chunks)
    expected_parts = -(-size // 8192)
    assert len(chunks) == expected_parts + 1  # data chunks + an empty closing chunk
    ids = {c["message"]["id"] for c in chunks}
    assert len(ids) == 1
    assert [c["message"]["sequence"] for c in chunks] == list(range(expected_parts + 1))
    assert all(c["message"]["total_length"] == size for c in chunks)
    assert [c["message"]["end"] for c in chunks] == [False] * expected_parts + [True]
    assert chunks[-1]["message"]["blob"] == ""
    assert all(c["meta"] == {"mime_type": "application/octet-stream", "filename": "pattern.bin"} for c in chunks)
    blob = b"".join(base64.b64decode(c["message"]["blob"]) for c in chunks)
    assert blob == bytes(i % 251 for i in range(size))


def test_fail_tool_ends_session_with_error(echo_tool: PluginProcess):
    sid, _ = echo_tool.request({**TOOL_BASE, "tool": "fail", "tool_parameters": {"reason": "boom"}})
    result = echo_tool.collect(sid)
    assert result.types == ["error"]
    error = result.last["data"]
    assert error["error_type"] == "ValueError"
    assert error["message"] == "boom"
    assert "traceback" in error["args"]


def test_slow_tool_streams_chunks_with_delay(echo_tool: PluginProcess):
    sid, _ = echo_tool.request({**TOOL_BASE, "tool": "slow", "tool_parameters": {"count": 3, "delay": 0.2}})
    started = time.monotonic()
    result = echo_tool.collect(sid)
    assert result.types == ["stream", "stream", "stream", "end"]
    assert [c["message"]["text"] for c in result.chunks] == ["chunk 0", "chunk 1", "chunk 2"]
    # Behavioural, not a timing goal: the tool sleeps 3 × 0.2 s before its chunks.
    assert time.monotonic() - started >= 0.5


def test_sessions_interleave_on_one_process(echo_tool: PluginProcess):
    slow_sid, _ = echo_tool.request({**TOOL_BASE, "tool": "slow", "tool_parameters": {"count": 2, "delay": 0.5}})
    fast_sid, _ = echo_tool.request({**TOOL_BASE, "tool": "echo", "tool_parameters": {"text": "fast"}})
    order: list[str] = []
    done: set[str] = set()
    deadline = time.monotonic() + 30
    while done != {slow_sid, fast_sid}:
        line = echo_tool.next_json(timeout=max(0.01, deadline - time.monotonic()))
        if line.obj.get("event") != "session":
            continue
        order.append(line.obj["session_id"])
        if line.obj["data"]["type"] == "end":
            done.add(line.obj["session_id"])
    # The fast session finishes while the slow one is still sleeping.
    assert order.index(fast_sid) < order.index(slow_sid)


def test_unknown_tool_is_a_session_error(echo_tool: PluginProcess):
    sid, _ = echo_tool.request({**TOOL_BASE, "tool": "nope", "tool_parameters": {}})
    result = echo_tool.collect(sid)
    assert result.types == ["error"]
    assert result.last["data"]["error_type"] == "ValueError"
    assert "nope" in result.last["data"]["message"]


def test_tool_credentials_validate(echo_tool: PluginProcess):
    data = {"user_id": "user-1", "type": "tool", "action": "validate_tool_credentials", "provider": "echo_tool"}
    sid, _ = echo_tool.request({**data, "credentials": {"api_key": "good"}})
    ok = echo_tool.collect(sid)
    assert ok.types == ["stream", "end"]
    assert ok.chunks == [{"result": True}]

    sid, _ = echo_tool.request({**data, "credentials": {"api_key": "bad"}})
    bad = echo_tool.collect(sid)
    assert bad.types == ["error"]
    assert bad.last["data"]["error_type"] == "ToolProviderCredentialValidationError"
    assert bad.last["data"]["message"] == "api_key is bad"


def test_malformed_request_line_yields_error_event(echo_tool: PluginProcess):
    echo_tool.send({"event": "request", "data": {}})  # no session_id
    while True:
        line = echo_tool.next_json(timeout=10)
        if line.obj.get("event") == "error":
            break
    assert line.obj["session_id"] is None
    assert "session_id" in line.obj["data"]["error"]


# --- model plugin -----------------------------------------------------------------------------


def test_llm_streams_deterministic_answer(echo_model: PluginProcess):
    sid, _ = echo_model.request(
        {
            **MODEL_BASE,
            "action": "invoke_llm",
            "model_type": "llm",
            "model": "echo-llm",
            "model_parameters": {"temperature": 0.1},
            "prompt_messages": [{"role": "user", "content": "hello there world"}],
            "tools": [],
            "stop": [],
            "stream": True,
        }
    )
    result = echo_model.collect(sid)
    assert result.types == ["stream"] * 4 + ["end"]
    deltas = [c["delta"] for c in result.chunks]
    assert "".join(d["message"]["content"] for d in deltas) == "echo: hello there world"
    assert [d["index"] for d in deltas] == [0, 1, 2, 3]
    assert all(c["model"] == "echo-llm" for c in result.chunks)
    assert deltas[-1]["finish_reason"] == "stop"
    usage = deltas[-1]["usage"]
    assert usage["prompt_tokens"] == 3 and usage["completion_tokens"] == 4 and usage["total_tokens"] == 7
    # Decimals travel as strings.
    assert isinstance(usage["total_price"], str) and usage["currency"] == "USD"
    assert all(d["usage"] is None for d in deltas[:-1])


def test_llm_num_tokens(echo_model: PluginProcess):
    sid, _ = echo_model.request(
        {
            **MODEL_BASE,
            "action": "get_llm_num_tokens",
            "model_type": "llm",
            "model": "echo-llm",
            "prompt_messages": [{"role": "user", "content": "one two three four"}],
            "tools": [],
        }
    )
    result = echo_model.collect(sid)
    assert result.types == ["stream", "end"]
    assert result.chunks == [{"num_tokens": 4}]


def test_text_embedding_is_deterministic(echo_model: PluginProcess):
    request = {
        **MODEL_BASE,
        "action": "invoke_text_embedding",
        "model_type": "text-embedding",
        "model": "echo-embedding",
        "texts": ["a b", "c"],
        "input_type": "document",
    }
    first = echo_model.collect(echo_model.request(request)[0])
    second = echo_model.collect(echo_model.request(request)[0])
    assert first.types == ["stream", "end"]
    body = first.chunks[0]
    assert body["model"] == "echo-embedding"
    assert len(body["embeddings"]) == 2 and all(len(v) == 8 for v in body["embeddings"])
    assert body["embeddings"][0] != body["embeddings"][1]
    assert body["usage"]["tokens"] == 3
    assert second.chunks[0]["embeddings"] == body["embeddings"]


def test_text_embedding_num_tokens_per_text(echo_model: PluginProcess):
    sid, _ = echo_model.request(
        {
            **MODEL_BASE,
            "action": "get_text_embedding_num_tokens",
            "model_type": "text-embedding",
            "model": "echo-embedding",
            "texts": ["a b", "c"],
        }
    )
    assert echo_model.collect(sid).chunks == [{"num_tokens": [2, 1]}]


def test_model_schema_is_predefined(echo_model: PluginProcess):
    sid, _ = echo_model.request(
        {**MODEL_BASE, "action": "get_ai_model_schemas", "model_type": "llm", "model": "echo-llm"}
    )
    result = echo_model.collect(sid)
    assert result.types == ["stream", "end"]
    schema = result.chunks[0]["model_schema"]
    assert schema["model"] == "echo-llm"
    assert schema["model_type"] == "llm"
    assert schema["fetch_from"] == "predefined-model"
    assert schema["model_properties"] == {"mode": "chat", "context_size": 4096}
    assert [r["name"] for r in schema["parameter_rules"]] == ["temperature", "max_tokens"]


def test_llm_polling_runs_then_succeeds(echo_model: PluginProcess):
    base = {**MODEL_BASE, "model_type": "llm", "model": "echo-llm"}
    started = echo_model.collect(
        echo_model.request(
            {
                **base,
                "action": "start_polling",
                "model_parameters": {},
                "prompt_messages": [{"role": "user", "content": "hi there"}],
                "tools": [],
                "stop": [],
                "stream": False,
            }
        )[0]
    )
    # One result per action, like the other single-result actions.
    assert started.types == ["stream", "end"]
    assert started.chunks[0] == {
        "status": "running",
        "plugin_state": {"text": "hi there", "left": 1},
        "result": None,
        "error": None,
        "next_check_after_seconds": 1,
        "expires_after_seconds": 60,
        "max_attempts": 2,
    }
    state = started.chunks[0]["plugin_state"]
    statuses = []
    for _ in range(2):
        checked = echo_model.collect(echo_model.request({**base, "action": "check_polling", "plugin_state": state})[0])
        assert checked.types == ["stream", "end"]
        statuses.append(checked.chunks[0]["status"])
        state = checked.chunks[0]["plugin_state"] or state
    assert statuses == ["running", "succeeded"]
    assert checked.chunks[0]["result"]["message"]["content"] == "echo: hi there"
    # The SDK refuses a check without a state before the model sees it.
    refused = echo_model.collect(echo_model.request({**base, "action": "check_polling", "plugin_state": {}})[0])
    assert refused.types == ["error"]


@pytest.mark.parametrize(
    ("action", "extra"),
    [
        ("validate_provider_credentials", {}),
        ("validate_model_credentials", {"model_type": "llm", "model": "echo-llm"}),
    ],
)
def test_model_credentials_validate(echo_model: PluginProcess, action: str, extra: dict):
    data = {"user_id": "user-1", "type": "model", "action": action, "provider": "echo_model", **extra}
    ok = echo_model.collect(echo_model.request({**data, "credentials": {"api_key": "good"}})[0])
    assert ok.types == ["stream", "end"]
    assert ok.chunks[0]["result"] is True
    assert ok.chunks[0]["credentials"] == {"api_key": "good"}

    bad = echo_model.collect(echo_model.request({**data, "credentials": {"api_key": "bad"}})[0])
    assert bad.types == ["error"]
    assert bad.last["data"]["error_type"] == "CredentialsValidateFailedError"
    assert bad.last["data"]["message"] == "api_key is bad"


# --- agent strategy plugin --------------------------------------------------------------------


def test_agent_strategy_yields_log_text_json_log(echo_agent: PluginProcess):
    sid, _ = echo_agent.request(
        {
            "user_id": "user-1",
            "type": "agent_strategy",
            "action": "invoke_agent_strategy",
            "agent_strategy_provider": "echo_agent",
            "agent_strategy": "echo",
            "agent_strategy_params": {"query": "hi", "rounds": 2},
        }
    )
    result = echo_agent.collect(sid)
    assert result.types == ["stream"] * 5 + ["end"]
    chunks = result.chunks
    assert [c["type"] for c in chunks] == ["log", "text", "text", "json", "log"]
    assert chunks[0]["message"]["status"] == "start"
    assert chunks[0]["message"]["data"] == {"query": "hi", "rounds": 2}
    assert [c["message"]["text"] for c in chunks[1:3]] == ["round 0: hi\n", "round 1: hi\n"]
    assert chunks[3]["message"] == {"json_object": {"query": "hi", "rounds": 2}}
    assert chunks[4]["message"]["status"] == "success"
    assert chunks[4]["message"]["parent_id"] == chunks[0]["message"]["id"]


# --- endpoint plugin --------------------------------------------------------------------------


def endpoint_request(plugin: PluginProcess, raw: bytes, settings: dict | None = None):
    sid, _ = plugin.request(
        {
            "user_id": "",
            "type": "endpoint",
            "action": "invoke_endpoint",
            "settings": settings or {},
            "raw_http_request": binascii.hexlify(raw).decode(),
        }
    )
    return plugin.collect(sid)


def test_endpoint_hello_returns_text_in_one_chunk(echo_endpoint: PluginProcess):
    raw = b"GET /hello?name=plugind HTTP/1.1\r\nHost: localhost\r\n\r\n"
    result = endpoint_request(echo_endpoint, raw, {"greeting": "hi"})
    assert result.types == ["stream", "end"]
    chunk = result.chunks[0]
    assert chunk["status"] == 200
    assert chunk["headers"]["Content-Type"] == "text/plain; charset=utf-8"
    assert chunk["headers"]["X-Echo-Endpoint"] == "hello"
    assert binascii.unhexlify(chunk["result"]) == b"hi, plugind"


def test_endpoint_stream_sends_head_then_hex_body_chunks(echo_endpoint: PluginProcess):
    body = b'{"count": 2, "delay": 0.01}'
    raw = (
        b"POST /stream HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    result = endpoint_request(echo_endpoint, raw)
    assert result.types == ["stream"] * 4 + ["end"]
    head, *parts = result.chunks
    assert head == {"status": 200, "headers": {"Content-Type": "text/event-stream"}}
    assert [binascii.unhexlify(p["result"]) for p in parts] == [
        b'data: {"index": 0}\n\n',
        b'data: {"index": 1}\n\n',
        b"data: [DONE]\n\n",
    ]


def test_endpoint_unknown_path_is_404_response_not_error(echo_endpoint: PluginProcess):
    result = endpoint_request(echo_endpoint, b"GET /missing HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert result.types == ["stream", "end"]
    assert result.chunks[0]["status"] == 404
