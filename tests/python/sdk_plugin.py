"""Run a fixture plugin the way a daemon does: `python -m main` over stdio.

The helper speaks the session protocol as the `dify_plugin` SDK implements it:
it writes one request line per session on stdin and reads the plugin's
newline-delimited JSON from stdout (manifest line, heartbeats, logs, session
messages). It is the test-side mirror of plugind's local runtime.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


@dataclass
class Line:
    """One stdout line of the plugin, raw and (if it is JSON) parsed."""

    raw: str
    obj: Any = None


@dataclass
class SessionResult:
    """Everything the plugin sent for one session, in order."""

    messages: list[dict] = field(default_factory=list)
    raw_lines: list[str] = field(default_factory=list)

    @property
    def types(self) -> list[str]:
        return [m["type"] for m in self.messages]

    @property
    def chunks(self) -> list[Any]:
        return [m["data"] for m in self.messages if m["type"] == "stream"]

    @property
    def last(self) -> dict:
        return self.messages[-1]


class PluginProcess:
    """A fixture plugin running as a child process with stdio pipes."""

    def __init__(self, fixture: str, python: str | None = None, env: dict | None = None):
        self.fixture = FIXTURES / fixture
        child_env = dict(os.environ)
        # No bytecode in fixture folders: they are packaged as they are.
        child_env.update({"INSTALL_METHOD": "local", "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"})
        child_env.update(env or {})
        self.proc = subprocess.Popen(
            [python or sys.executable, "-m", "main"],
            cwd=self.fixture,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=child_env,
        )
        self.lines: queue.Queue[Line | None] = queue.Queue(maxsize=100_000)
        self.stderr: list[str] = []
        self.seen: list[Line] = []
        threading.Thread(target=self._pump_stdout, daemon=True).start()
        threading.Thread(target=self._pump_stderr, daemon=True).start()

    def _pump_stdout(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            text = raw.decode("utf-8", errors="replace").rstrip("\n")
            try:
                obj = json.loads(text) if text.strip() else None
            except ValueError:
                obj = None
            self.lines.put(Line(text, obj))
        self.lines.put(None)

    def _pump_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self.stderr.append(raw.decode("utf-8", errors="replace"))

    def next_line(self, timeout: float) -> Line:
        """The next stdout line, blank ones included (the SDK writes a blank after each)."""
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no stdout line within {timeout}s; stderr: {''.join(self.stderr)[-2000:]}") from None
        if line is None:
            raise EOFError(f"plugin stdout closed; stderr: {''.join(self.stderr)[-2000:]}")
        self.seen.append(line)
        return line

    def next_json(self, timeout: float) -> Line:
        """The next non-blank stdout line."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.next_line(max(0.01, deadline - time.monotonic()))
            if line.raw.strip():
                return line

    def wait_ready(self, timeout: float = 60.0) -> tuple[dict, list[Line]]:
        """Read up to the first heartbeat; returns the manifest line and every line before the heartbeat."""
        first = self.next_json(timeout)
        assert isinstance(first.obj, dict) and "event" not in first.obj, f"first line is not the manifest: {first.raw!r}"
        before = [first]
        while True:
            line = self.next_json(timeout)
            before.append(line)
            if isinstance(line.obj, dict) and line.obj.get("event") == "heartbeat":
                return first.obj, before

    def send(self, obj: dict) -> str:
        """Write one request line; returns the exact bytes sent (without the newline)."""
        assert self.proc.stdin is not None
        text = json.dumps(obj, separators=(",", ":"))
        self.proc.stdin.write(text.encode() + b"\n")
        self.proc.stdin.flush()
        return text

    def request(self, data: dict, session_id: str | None = None, **envelope: Any) -> tuple[str, str]:
        """Send a daemon→plugin request line shaped like the reference daemon's; returns (session_id, line)."""
        session_id = session_id or str(uuid.uuid4())
        line = {
            "session_id": session_id,
            "conversation_id": envelope.get("conversation_id"),
            "message_id": envelope.get("message_id"),
            "app_id": envelope.get("app_id"),
            "endpoint_id": envelope.get("endpoint_id"),
            "context": envelope.get("context", {}),
            "event": "request",
            "data": data,
        }
        return session_id, self.send(line)

    def collect(self, session_id: str, timeout: float = 30.0) -> SessionResult:
        """Session messages of one session until its `end` or `error` message."""
        result = SessionResult()
        deadline = time.monotonic() + timeout
        while True:
            line = self.next_json(max(0.01, deadline - time.monotonic()))
            obj = line.obj
            if not isinstance(obj, dict) or obj.get("event") != "session" or obj.get("session_id") != session_id:
                continue
            result.messages.append(obj["data"])
            result.raw_lines.append(line.raw)
            if obj["data"]["type"] in ("end", "error"):
                return result

    def close(self) -> None:
        # The SDK does not exit on stdin EOF, so the child is killed explicitly.
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
