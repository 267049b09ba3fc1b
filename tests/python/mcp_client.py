"""Drives a plugind MCP server with the Python `mcp` client.

Usage: mcp_client.py URL TOKEN MODE CALLS_JSON
MODE is the client's connect mode ("legacy" or "auto"); CALLS_JSON is a list
of [tool, arguments]. Prints one JSON object: the listed tools, each call's
result and the progress notifications it received.
"""

import asyncio
import json
import sys

from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


async def main(url: str, token: str, mode: str, calls: list) -> dict:
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    out: dict = {"calls": []}
    async with Client(streamable_http_client(url, http_client=http), mode=mode) as client:
        tools = await client.list_tools()
        out["tools"] = [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in tools.tools]
        for name, arguments in calls:
            progress: list = []

            async def on_progress(value, total, message, progress=progress):
                progress.append({"progress": value, "message": message})

            result = await client.call_tool(name, arguments, progress_callback=on_progress)
            out["calls"].append({
                "tool": name,
                "result": result.model_dump(mode="json", by_alias=True, exclude_none=True),
                "progress": progress,
            })
    return out


if __name__ == "__main__":
    url, token, mode, calls = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    print(json.dumps(asyncio.run(main(url, token, mode, calls))))
