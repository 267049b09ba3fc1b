"""Drives a plugind MCP server with the Python `mcp` client, 1.x or 2.x.

Usage: mcp_client.py URL TOKEN MODE CALLS_JSON
MODE is the 2.x client's connect mode ("legacy" or "auto"), or "v1" for the
1.x `ClientSession`. CALLS_JSON is a list of [tool, arguments] or
[tool, arguments, options]; options may hold `cancel_after` (seconds: the
call is cancelled by the client after that long, and `cancelled TOOL` is
written to stderr) and `sleep_after` (seconds
to stay connected once the call is over). Prints one JSON object: the SDK
version, the negotiated protocol version, the listed tools, each call's
result (or `"cancelled": true`) with the progress notifications it received,
and the warnings the SDK logged (such as "Session termination failed" when
the server's answer to the closing DELETE is not one the SDK accepts).
"""

import asyncio
import importlib.metadata
import json
import logging
import sys
import time

import anyio
import httpx
from mcp.client.streamable_http import streamable_http_client


def dump(model) -> dict:
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


async def run_calls(call_tool, calls: list, on_cancel=None) -> list:
    out = []
    for item in calls:
        name, arguments = item[0], item[1]
        options = item[2] if len(item) > 2 else {}
        progress: list = []

        async def on_progress(value, total, message, progress=progress):
            progress.append({"progress": value, "message": message, "at": time.monotonic()})

        entry: dict = {"tool": name, "progress": progress, "started": time.monotonic()}
        cancel_after = options.get("cancel_after")
        if cancel_after is None:
            entry["result"] = dump(await call_tool(name, arguments, on_progress))
        else:
            with anyio.move_on_after(cancel_after) as scope:
                entry["result"] = dump(await call_tool(name, arguments, on_progress))
            entry["cancelled"] = scope.cancelled_caught
            if scope.cancelled_caught:
                if on_cancel is not None:
                    await on_cancel()
                # A marker for the test driving this script, which then
                # checks the plugin session ended while we stay connected.
                print(f"cancelled {name}", file=sys.stderr, flush=True)
        entry["ended"] = time.monotonic()
        out.append(entry)
        if options.get("sleep_after"):
            await anyio.sleep(options["sleep_after"])
    return out


async def main_v2(url: str, token: str, mode: str, calls: list) -> dict:
    from mcp import Client
    from mcp.shared._httpx_utils import create_mcp_http_client

    http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    out: dict = {}
    async with Client(streamable_http_client(url, http_client=http), mode=mode) as client:
        out["protocol_version"] = client.protocol_version
        tools = await client.list_tools()
        out["tools"] = [dump(t) for t in tools.tools]

        async def call_tool(name, arguments, on_progress):
            return await client.call_tool(name, arguments, progress_callback=on_progress)

        out["calls"] = await run_calls(call_tool, calls)
    return out


async def main_v1(url: str, token: str, calls: list) -> dict:
    from mcp import ClientSession, types

    http = httpx.AsyncClient(
        headers={"Authorization": f"Bearer {token}"},
        timeout=httpx.Timeout(30.0, read=300.0),
        follow_redirects=True,
    )
    out: dict = {}
    async with http, streamable_http_client(url, http_client=http) as (read, write, _session_id):
        async with ClientSession(read, write) as session:
            init = await session.initialize()
            out["protocol_version"] = init.protocolVersion
            out["server_name"] = init.serverInfo.name
            tools = await session.list_tools()
            out["tools"] = [dump(t) for t in tools.tools]

            pending: list = []

            async def call_tool(name, arguments, on_progress):
                # 1.x numbers requests from this counter; the id is needed
                # to cancel the request.
                pending[:] = [session._request_id]
                return await session.call_tool(name, arguments, progress_callback=on_progress)

            async def on_cancel():
                # 1.x leaves telling the server to the application (2.x and
                # the TypeScript SDK send it themselves).
                await session.send_notification(
                    types.ClientNotification(
                        types.CancelledNotification(
                            params=types.CancelledNotificationParams(requestId=pending[0], reason="cancelled")
                        )
                    )
                )

            out["calls"] = await run_calls(call_tool, calls, on_cancel)
    return out


class Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


async def main(url: str, token: str, mode: str, calls: list) -> dict:
    warnings = Warnings()
    logging.getLogger("mcp").addHandler(warnings)
    if mode == "v1":
        out = await main_v1(url, token, calls)
    else:
        out = await main_v2(url, token, mode, calls)
    out["sdk_version"] = importlib.metadata.version("mcp")
    out["warnings"] = warnings.messages
    return out


if __name__ == "__main__":
    url, token, mode, calls = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    print(json.dumps(asyncio.run(main(url, token, mode, calls))))
