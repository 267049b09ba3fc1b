"""Calls one tool of a plugind MCP server with the Python `mcp` 2.x client
in auto mode (the per-request 2026-07-28 revision) and prints the
`notifications/message` records it received while the call ran.

Usage: mcp_logging_client.py URL TOKEN TOOL LEVEL
LEVEL is the `io.modelcontextprotocol/logLevel` every request carries, or
"none" for requests without it. Prints one JSON object: the negotiated
protocol version, the call's result and the log records.
"""

import asyncio
import json
import sys

from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


def dump(model) -> dict:
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


async def main(url: str, token: str, tool: str, level: str) -> dict:
    logs: list = []

    async def on_log(params) -> None:
        logs.append(dump(params))

    http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    client = Client(
        streamable_http_client(url, http_client=http),
        mode="auto",
        logging_callback=on_log,
        log_level=None if level == "none" else level,
    )
    async with client:
        result = await client.call_tool(tool, {})
        return {"protocol_version": client.protocol_version, "result": dump(result), "logs": logs}


if __name__ == "__main__":
    url, token, tool, level = sys.argv[1:5]
    print(json.dumps(asyncio.run(main(url, token, tool, level))))
