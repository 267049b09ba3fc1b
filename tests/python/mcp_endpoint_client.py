"""Drives an MCP server served from a plugin endpoint with the Python `mcp`
client of whichever major version is installed (1.x, or 2.x in legacy mode:
the initialize handshake).

Usage: mcp_endpoint_client.py URL ARGUMENTS_JSON

Connects, lists the tools, calls the first one with ARGUMENTS_JSON and
prints one JSON object: the mcp version, the negotiated protocol version,
the MCP session id (1.x only; 2.x does not expose it), the tools, the call's
result, every progress notification with its arrival time, and the time the
result arrived. Times are seconds since the call was sent.
"""

import asyncio
import importlib.metadata
import json
import sys
import time

MCP_VERSION = importlib.metadata.version("mcp")
MAJOR = int(MCP_VERSION.split(".")[0])


def dump(model) -> dict:
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


async def call(session_like, tools, arguments: dict, out: dict) -> None:
    out["tools"] = [dump(t) for t in tools]
    progress: list = []
    started = time.monotonic()

    async def on_progress(value, total, message):
        progress.append({"progress": value, "message": message, "at": time.monotonic() - started})

    result = await session_like.call_tool(tools[0].name, arguments, progress_callback=on_progress)
    out["result_at"] = time.monotonic() - started
    out["result"] = dump(result)
    out["progress"] = progress


async def run_v1(url: str, arguments: dict) -> dict:
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    out: dict = {"mcp_version": MCP_VERSION}
    async with streamable_http_client(url) as (read, write, get_session_id):
        async with ClientSession(read, write) as session:
            init = await session.initialize()
            out["protocol_version"] = init.protocolVersion
            out["session_id"] = get_session_id()
            tools = (await session.list_tools()).tools
            await call(session, tools, arguments, out)
    return out


async def run_v2(url: str, arguments: dict) -> dict:
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    out: dict = {"mcp_version": MCP_VERSION}
    async with Client(streamable_http_client(url), mode="legacy") as client:
        out["protocol_version"] = client.protocol_version
        tools = (await client.list_tools()).tools
        await call(client, tools, arguments, out)
    return out


if __name__ == "__main__":
    url, arguments = sys.argv[1], json.loads(sys.argv[2])
    runner = run_v1 if MAJOR == 1 else run_v2
    print(json.dumps(asyncio.run(runner(url, arguments))))
