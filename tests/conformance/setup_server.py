"""Installs the conformance_tool fixture into a running plugind and creates
the MCP server the conformance suite tests, with each tool under the name the
suite calls. Prints `SERVER_ID TOKEN`.

Usage: setup_server.py DAEMON_URL SERVER_KEY FIXTURE_DIR
"""

import io
import pathlib
import sys
import time
import zipfile

import httpx

TENANT = "00000000-0000-4000-8000-00000000c0f0"
TOOLS = [
    "simple_text",
    "image_content",
    "audio_content",
    "embedded_resource",
    "multiple_content_types",
    "tool_with_logging",
    "error_handling",
    "tool_with_progress",
]


def package(root: pathlib.Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for path in sorted(root.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                z.write(path, path.relative_to(root).as_posix())
    return buf.getvalue()


def data(r: httpx.Response):
    body = r.json()
    if body.get("code") != 0:
        sys.exit(f"setup_server: {r.request.url}: {body}")
    return body["data"]


def main(base: str, key: str, fixture: str) -> None:
    api = f"{base}/plugin/{TENANT}"
    with httpx.Client(headers={"X-Api-Key": key}, timeout=60) as http:
        up = data(http.post(
            f"{api}/management/install/upload/package",
            files={"dify_pkg": ("conformance_tool.difypkg", package(pathlib.Path(fixture)))},
            data={"verify_signature": "false"},
        ))
        ident = up["unique_identifier"]
        task = data(http.post(
            f"{api}/management/install/identifiers",
            json={"plugin_unique_identifiers": [ident], "source": "package", "metas": [{}]},
        ))["task_id"]
        deadline = time.monotonic() + 300
        while True:
            status = data(http.get(f"{api}/management/install/tasks/{task}"))
            if status["status"] in ("success", "failed"):
                break
            if time.monotonic() > deadline:
                sys.exit("setup_server: install did not finish in 300 s")
            time.sleep(0.2)
        if status["status"] != "success":
            sys.exit(f"setup_server: install failed: {status}")
        server = data(http.post(f"{api}/mcp/servers", json={
            "name": "conformance",
            "description": "plugind conformance fixture",
            "user_id": "conformance",
            "tools": [{"provider": "conformance", "tool": t, "name": f"test_{t}"} for t in TOOLS],
        }))
        token = data(http.post(f"{api}/mcp/servers/{server['id']}/tokens", json={"name": "conformance"}))["token"]
        every = data(http.post(f"{api}/mcp/servers", json={
            "name": "conformance, every tool",
            "user_id": "conformance",
            "tools": "all",
        }))
        every_token = data(http.post(f"{api}/mcp/servers/{every['id']}/tokens", json={"name": "inspector"}))["token"]
        print(server["id"], token, every["id"], every_token)


if __name__ == "__main__":
    main(*sys.argv[1:4])
