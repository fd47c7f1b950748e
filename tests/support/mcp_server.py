"""A tiny real MCP server for the ACP tests, on the official MCP SDK (``mcp``).

usage: python -m tests.support.mcp_server NAME LOG [stdio | http PORT]

Tools: ``shout(text)`` answers the text in capitals; ``fail(text)`` is a tool error.
Every call is appended to LOG as a JSON line (``{"server", "tool", "args", "pid"}``), so a
test sees which calls really reached which server process.
"""

from __future__ import annotations

import json
import os
import sys

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError


def main() -> None:
    name, log = sys.argv[1], sys.argv[2]
    transport = sys.argv[3] if len(sys.argv) > 3 else "stdio"
    server = MCPServer(name)

    def note(tool: str, args: dict[str, str]) -> None:
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"server": name, "tool": tool, "args": args, "pid": os.getpid()}) + "\n")

    @server.tool()
    def shout(text: str) -> str:
        """Say the text in capital letters."""
        note("shout", {"text": text})
        return text.upper()

    @server.tool()
    def fail(text: str) -> str:
        """Always fails."""
        note("fail", {"text": text})
        raise ToolError(f"cannot do {text}")  # a ToolError's message reaches the client

    if transport == "http":
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[4]))
    else:
        server.run()


if __name__ == "__main__":
    main()
