"""A stand-in for Dify's inner API (`/inner/api/...`), for integration tests.

Standard library only. Usage:

    python3 server.py [PORT] [INNER_API_KEY]

Binds 127.0.0.1 (port 0 = any free port) and prints the port on its first
stdout line. Requests must carry `X-Inner-Api-Key` (default `inner-key`);
otherwise the answer is 404, as Dify's `plugin_inner_api_only` does.

Struct paths answer one `{"data": ..., "error": ""}` object. Stream paths
answer length-prefixed frames (magic 0x0f, reserved byte, u16 LE header
length 10, u32 LE data length, 6 reserved bytes, JSON data) over chunked
transfer, one flushed chunk per frame with a short pause between frames.

Test controls (no key needed):
  GET  /__requests   every inner API request received, as JSON
                     ({"method","path","headers" (names lowercased),"body"})
  POST /__behaviour  {"path": "invoke/llm", "kind": K} changes how a path
                     answers: "http500", "error" (error field set),
                     "stream_error" (one good frame then an error frame),
                     "bad_magic", "json_lines" (old line format),
                     "truncated" (a frame cut short), "normal".
"""

import base64
import json
import struct
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FRAME_DELAY = 0.05
MAGIC = 0x0F

STATE_LOCK = threading.Lock()
REQUESTS = []
BEHAVIOUR = {}
API_KEY = "inner-key"


def frame(payload: dict, magic: int = MAGIC) -> bytes:
    data = json.dumps(payload).encode()
    return struct.pack("<BBHI", magic, 0, 10, len(data)) + b"\x00" * 6 + data


def ok(data) -> dict:
    return {"data": data, "error": ""}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "prompt_unit_price": "0.001",
        "prompt_price_unit": "0.001",
        "prompt_price": "0.0000010",
        "completion_tokens": completion_tokens,
        "completion_unit_price": "0.002",
        "completion_price_unit": "0.001",
        "completion_price": "0.0000020",
        "total_tokens": prompt_tokens + completion_tokens,
        "total_price": "0.0000030",
        "currency": "USD",
        "latency": 0.42,
    }


def embedding_usage(tokens: int) -> dict:
    return {
        "tokens": tokens,
        "total_tokens": tokens,
        "unit_price": "0.0001",
        "price_unit": "0.001",
        "total_price": "0.0000001",
        "currency": "USD",
        "latency": 0.05,
    }


def last_user_text(body: dict) -> str:
    for message in reversed(body.get("prompt_messages") or []):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
    return ""


# ---------------------------------------------------------------- streams


def llm_chunks(body: dict, structured: bool = False):
    model = body.get("model", "")
    answer = "Echo: " + last_user_text(body)
    pieces = [answer[i : i + 5] for i in range(0, len(answer), 5)] or [""]
    if not body.get("stream", True):
        pieces = [answer]
    for index, piece in enumerate(pieces):
        last = index == len(pieces) - 1
        chunk = {
            "model": model,
            "prompt_messages": [],
            "system_fingerprint": None,
            "delta": {
                "index": index,
                "message": {"role": "assistant", "content": piece, "name": None, "tool_calls": []},
                "usage": usage(7, len(pieces)) if last else None,
                "finish_reason": "stop" if last else None,
            },
        }
        if structured and last:
            chunk["structured_output"] = {"answer": answer}
        yield chunk


def tool_chunks(body: dict):
    params = body.get("tool_parameters") or {}
    yield {"type": "text", "message": {"text": "tool %s/%s says hi" % (body.get("provider"), body.get("tool"))}, "meta": None}
    yield {"type": "json", "message": {"json_object": {"echo": params}}, "meta": None}


def tts_chunks(body: dict):
    audio = body.get("content_text", "").encode()
    for i in range(0, max(len(audio), 1), 4):
        yield {"result": audio[i : i + 4].hex()}


def workflow_events(body: dict):
    run_id = str(uuid.uuid4())
    task_id = str(uuid.uuid4())
    workflow_id = str(uuid.uuid4())
    now = int(time.time())
    inputs = body.get("inputs") or {}
    text = "Hello, " + str(inputs.get("name", "world")) + "!"
    base = {"task_id": task_id, "workflow_run_id": run_id}
    yield {**base, "event": "workflow_started", "data": {"id": run_id, "workflow_id": workflow_id, "inputs": inputs, "created_at": now}}
    nodes = [("1700000000001", "start", "Start"), ("1700000000002", "llm", "LLM"), ("1700000000003", "end", "End")]
    previous = None
    for index, (node_id, node_type, title) in enumerate(nodes, start=1):
        execution_id = str(uuid.uuid4())
        yield {
            **base,
            "event": "node_started",
            "data": {
                "id": execution_id,
                "node_id": node_id,
                "node_type": node_type,
                "title": title,
                "index": index,
                "predecessor_node_id": previous,
                "inputs": inputs if node_type == "start" else None,
                "created_at": now,
            },
        }
        if node_type == "llm":
            for i in range(0, len(text), 4):
                yield {**base, "event": "text_chunk", "data": {"text": text[i : i + 4], "from_variable_selector": [node_id, "text"]}}
        outputs = {"text": text} if node_type != "start" else inputs
        yield {
            **base,
            "event": "node_finished",
            "data": {
                "id": execution_id,
                "node_id": node_id,
                "node_type": node_type,
                "title": title,
                "index": index,
                "predecessor_node_id": previous,
                "inputs": inputs if node_type == "start" else None,
                "process_data": None,
                "outputs": outputs,
                "status": "succeeded",
                "error": None,
                "elapsed_time": 0.01,
                "execution_metadata": None,
                "created_at": now,
                "finished_at": now,
            },
        }
        previous = node_id
    yield {
        **base,
        "event": "workflow_finished",
        "data": {
            "id": run_id,
            "workflow_id": workflow_id,
            "status": "succeeded",
            "outputs": {"text": text},
            "error": None,
            "elapsed_time": 0.05,
            "total_tokens": 12,
            "total_steps": 3,
            "created_by": {"id": body.get("user_id"), "user": body.get("user_id")},
            "created_at": now,
            "finished_at": now,
        },
    }


def chat_events(body: dict):
    conversation_id = body.get("conversation_id") or str(uuid.uuid4())
    message_id = str(uuid.uuid4())
    task_id = str(uuid.uuid4())
    answer = "You said: " + str(body.get("query", ""))
    now = int(time.time())
    for i in range(0, len(answer), 6):
        yield {"event": "message", "task_id": task_id, "id": message_id, "message_id": message_id,
               "conversation_id": conversation_id, "answer": answer[i : i + 6], "created_at": now}
    yield {"event": "message_end", "task_id": task_id, "id": message_id, "message_id": message_id,
           "conversation_id": conversation_id, "metadata": {"usage": usage(5, 3)}}


def app_stream(body: dict):
    app_id = body.get("app_id")
    if app_id not in APPS:
        raise ValueError("app not found")
    mode = APPS[app_id]["mode"]
    if mode in ("chat", "advanced-chat", "agent-chat") and not body.get("query"):
        raise ValueError("missing query")
    events = list(workflow_events(body) if mode == "workflow" else chat_events(body))
    if body.get("response_mode") != "streaming":
        # Blocking mode: one mapping, as Dify's generators return.
        if mode == "workflow":
            finished = events[-1]
            return iter([{"task_id": finished["task_id"], "workflow_run_id": finished["workflow_run_id"], "data": finished["data"]}])
        answer = "".join(e.get("answer", "") for e in events if e["event"] == "message")
        return iter([{"event": "message", "message_id": events[0]["message_id"], "conversation_id": events[0]["conversation_id"],
                      "mode": mode, "answer": answer, "metadata": {}, "created_at": events[0]["created_at"]}])
    return iter(events)


STREAMS = {
    "invoke/llm": llm_chunks,
    "invoke/llm/structured-output": lambda body: llm_chunks(body, structured=True),
    "invoke/tool": tool_chunks,
    "invoke/tts": tts_chunks,
    "invoke/app": app_stream,
}

# ---------------------------------------------------------------- structs

APPS = {
    "workflow-app": {
        "mode": "workflow",
        "form": [{"text-input": {"label": "Name", "variable": "name", "required": True, "max_length": 48, "default": ""}}],
    },
    "chat-app": {
        "mode": "advanced-chat",
        "form": [{"select": {"label": "Tone", "variable": "tone", "required": False, "options": ["calm", "lively"], "default": "calm"}}],
    },
}


def app_parameters(app: dict) -> dict:
    return {
        "opening_statement": None,
        "suggested_questions": [],
        "suggested_questions_after_answer": {"enabled": False},
        "speech_to_text": {"enabled": False},
        "text_to_speech": {"enabled": False},
        "retriever_resource": {"enabled": False},
        "annotation_reply": {"enabled": False},
        "more_like_this": {"enabled": False},
        "user_input_form": app["form"],
        "sensitive_word_avoidance": {"enabled": False},
        "file_upload": {"image": {"enabled": False, "number_limits": 3, "detail": "high", "transfer_methods": ["remote_url", "local_file"]}},
        "system_parameters": {"image_file_size_limit": 10, "video_file_size_limit": 100, "audio_file_size_limit": 50,
                              "file_size_limit": 15, "workflow_file_upload_limit": 10},
    }


def fetch_app_info(body):
    app = APPS.get(body.get("app_id"))
    if app is None:
        raise ValueError("app not found")
    return {"data": app_parameters(app)}


def embed(text: str) -> list:
    return [round(len(text) / 100.0, 4), round(sum(map(ord, text)) % 97 / 97.0, 4), 1.0]


def text_embedding(body):
    texts = body.get("texts") or []
    return {"model": body.get("model"), "embeddings": [embed(t) for t in texts], "usage": embedding_usage(sum(len(t.split()) for t in texts))}


def multimodal_embedding(body):
    documents = body.get("documents") or []
    vectors = [embed(str(d.get("content", "")) if isinstance(d, dict) else str(d)) for d in documents]
    return {"model": body.get("model"), "embeddings": vectors, "usage": embedding_usage(len(documents))}


def rerank(body):
    query = set(str(body.get("query", "")).lower().split())
    docs = body.get("docs") or body.get("documents") or []
    scored = []
    for index, doc in enumerate(docs):
        text = doc if isinstance(doc, str) else str(doc.get("content", ""))
        words = set(text.lower().split())
        score = round(len(query & words) / max(len(query), 1), 4)
        scored.append({"index": index, "text": text, "score": score})
    scored.sort(key=lambda d: -d["score"])
    threshold = body.get("score_threshold")
    if threshold is not None:
        scored = [d for d in scored if d["score"] >= threshold]
    if body.get("top_n"):
        scored = scored[: body["top_n"]]
    return {"model": body.get("model"), "docs": scored}


def speech2text(body):
    audio = bytes.fromhex(body.get("file", "") or "")
    return {"result": audio.decode(errors="replace") or "(silence)"}


def moderation(body):
    return {"result": "forbidden" in str(body.get("text", "")).lower()}


def parameter_extractor(body):
    query = body.get("query", "")
    outputs = {"__is_success": 1, "__reason": None}
    for parameter in body.get("parameters") or []:
        outputs[parameter["name"]] = query if parameter.get("type") == "string" else None
    return {"inputs": {"query": query}, "process_data": {"model_mode": body["model"].get("mode"), "usage": usage(9, 4)}, "outputs": outputs}


def question_classifier(body):
    query = str(body.get("query", "")).lower()
    classes = body.get("classes") or []
    chosen = next((c for c in classes if c["name"].lower() in query), classes[0] if classes else {"id": "", "name": ""})
    return {"inputs": {"query": body.get("query")}, "process_data": {"usage": usage(6, 1)},
            "outputs": {"class_name": chosen["name"], "class_id": chosen["id"]}}


def summary(body):
    text = str(body.get("text", ""))
    return {"summary": text[:40] + ("..." if len(text) > 40 else "")}


def upload_file_request(body, server_port):
    return {"url": "http://127.0.0.1:%d/files/upload/for-plugin?timestamp=%d&nonce=%s&sign=c2lnbg%%3D%%3D&tenant_id=%s&user_id=%s"
                   % (server_port, int(time.time()), uuid.uuid4().hex, body.get("tenant_id"), body.get("user_id"))}


def encrypt(body):
    secret = {c["name"] for c in body.get("config") or [] if c.get("type") == "secret-input"}
    data = dict(body.get("data") or {})
    opt = body.get("opt")
    if opt == "encrypt":
        for key in secret & data.keys():
            data[key] = "enc:" + base64.b64encode(str(data[key]).encode()).decode()
        return {"data": data}
    if opt == "decrypt":
        for key in secret & data.keys():
            value = str(data[key])
            if value.startswith("enc:"):
                data[key] = base64.b64decode(value[4:]).decode()
        return {"data": data}
    if opt == "clear":
        return {"data": {}}
    raise ValueError("Invalid opt: %s" % opt)


STRUCTS = {
    "invoke/text-embedding": text_embedding,
    "invoke/multimodal-embedding": multimodal_embedding,
    "invoke/rerank": rerank,
    "invoke/multimodal-rerank": rerank,
    "invoke/speech2text": speech2text,
    "invoke/moderation": moderation,
    "invoke/parameter-extractor": parameter_extractor,
    "invoke/question-classifier": question_classifier,
    "invoke/summary": summary,
    "invoke/encrypt": encrypt,
    "fetch/app/info": fetch_app_info,
}

# ---------------------------------------------------------------- http


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle on, the body
    # waits for the client's delayed ACK (~40 ms a request). Dify's gunicorn
    # sets TCP_NODELAY too.
    disable_nagle_algorithm = True

    def log_message(self, format, *args):  # noqa: A002 - stdlib signature
        sys.stderr.write("dify_double: " + (format % args) + "\n")

    def send_json(self, status: int, payload) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/__requests":
            with STATE_LOCK:
                snapshot = list(REQUESTS)
            self.send_json(200, snapshot)
        else:
            self.send_json(404, {"message": "not found", "status": 404})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.path == "/__behaviour":
            control = json.loads(raw or b"{}")
            with STATE_LOCK:
                BEHAVIOUR[control["path"].strip("/")] = control.get("kind", "normal")
            self.send_json(200, {"ok": True})
            return

        prefix = "/inner/api/"
        if not self.path.startswith(prefix):
            self.send_json(404, {"message": "not found", "status": 404})
            return
        path = self.path[len(prefix):].split("?")[0].strip("/")
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = None
        with STATE_LOCK:
            REQUESTS.append({"method": "POST", "path": path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})
            kind = BEHAVIOUR.get(path, "normal")

        if self.headers.get("X-Inner-Api-Key") != API_KEY:
            self.send_json(404, {"message": "The requested URL was not found on the server.", "status": 404})
            return
        if not isinstance(body, dict) or not body.get("tenant_id"):
            self.send_json(400, {"message": "invalid payload: tenant_id is required", "status": 400})
            return
        if kind == "http500":
            self.send_json(500, {"message": "Internal Server Error", "code": "internal_server_error", "status": 500})
            return
        if kind == "error":
            self.send_json(200, {"data": None, "error": "simulated failure in %s" % path})
            return

        if path in STREAMS:
            self.stream(path, body, kind)
        elif path in STRUCTS:
            try:
                self.send_json(200, ok(STRUCTS[path](body)))
            except Exception as e:  # Dify answers errors inside the body
                self.send_json(200, {"data": None, "error": str(e)})
        elif path == "upload/file/request":
            self.send_json(200, ok(upload_file_request(body, self.server.server_address[1])))
        else:
            self.send_json(404, {"message": "The requested URL was not found on the server.", "status": 404})

    def write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def stream(self, path: str, body: dict, kind: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            try:
                items = list(STREAMS[path](body))
            except Exception as e:
                # Dify's generator catches the failure and sends it as a frame.
                self.write_chunk(frame({"data": None, "error": str(e)}))
                return
            for index, item in enumerate(items):
                if kind == "stream_error" and index == 1:
                    self.write_chunk(frame({"data": None, "error": "simulated failure after first chunk"}))
                    return
                if kind == "bad_magic":
                    self.write_chunk(frame(ok(item), magic=0x0E))
                    return
                if kind == "truncated":
                    self.write_chunk(frame(ok(item))[:-3])
                    return
                if kind == "json_lines":
                    self.write_chunk(json.dumps(ok(item)).encode() + b"\n\n")
                else:
                    self.write_chunk(frame(ok(item)))
                time.sleep(FRAME_DELAY)
        finally:
            try:
                self.write_chunk(b"")
            except OSError:
                pass


def main() -> None:
    global API_KEY
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    if len(sys.argv) > 2:
        API_KEY = sys.argv[2]
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
