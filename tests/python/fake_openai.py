"""A loopback stand-in for an OpenAI-compatible API, for model plugins under test.

It answers `POST /v1/chat/completions` the way such servers do: a
`chat.completion` object, or with `"stream": true` one `chat.completion.chunk`
SSE event per word of the reply, the last with `finish_reason` and `usage`,
then `data: [DONE]`. The reply is `echo: <last user message>`. A request whose
`Authorization` is `Bearer bad` gets 401. Every request body is recorded.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def reply_to(body: dict) -> str:
    users = [m for m in body.get("messages", []) if m.get("role") == "user"]
    content = users[-1].get("content", "") if users else ""
    if isinstance(content, list):
        content = " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return f"echo: {content}"


class FakeOpenAI:
    """Serves on 127.0.0.1 (a free port) until `close()`."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                owner.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._json(404, {"error": {"message": f"no route {self.path}"}})
                elif self.headers.get("Authorization") == "Bearer bad":
                    self._json(401, {"error": {"message": "invalid api key"}})
                elif body.get("stream"):
                    self._stream(body)
                else:
                    text = reply_to(body)
                    self._json(
                        200,
                        {
                            "id": "cmpl-1",
                            "object": "chat.completion",
                            "model": body.get("model"),
                            "choices": [
                                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                            ],
                            "usage": {"prompt_tokens": 3, "completion_tokens": len(text.split()), "total_tokens": 3 + len(text.split())},
                        },
                    )

            def _json(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, body: dict) -> None:
                words = reply_to(body).split(" ")
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for i, word in enumerate(words):
                    last = i == len(words) - 1
                    chunk = {
                        "id": "cmpl-1",
                        "object": "chat.completion.chunk",
                        "model": body.get("model"),
                        "choices": [
                            {
                                "index": 0,
                                "delta": {"role": "assistant", "content": word if last else word + " "},
                                "finish_reason": "stop" if last else None,
                            }
                        ],
                    }
                    if last:
                        chunk["usage"] = {"prompt_tokens": 3, "completion_tokens": len(words), "total_tokens": 3 + len(words)}
                    self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                    self.wfile.flush()
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
