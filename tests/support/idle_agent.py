"""A stand-in for `punie agent` that uses the real agent code (build_agent, run_turn) under `punie up`
with idle unload: one turn, wait until the idle server is gone, a second turn (which must wake it).

    idle_agent.py RESULT.json BASE_URL HOST PORT

Writes {"answers", "statuses", "gone_after", "wake_turn_seconds"} to RESULT.json and exits 0.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time

from punie.agent.runner import build_agent, run_turn
from punie.config.models import AgentOptions

result_path, base_url, host, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])


def listening() -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) == 0


async def main() -> None:
    agent = build_agent(AgentOptions(tools=[], max_tokens=4, temperature=0.0), base_url, timeout=120.0)
    statuses: list[str] = []

    async def on_status(text: str) -> None:
        statuses.append(text)

    first = await run_turn(agent, "hello", on_status=on_status)
    start = time.monotonic()
    while listening():  # the supervisor stops the idle server
        if time.monotonic() - start > 120:
            raise SystemExit("the idle server was never stopped")
        await asyncio.sleep(0.1)
    gone_after = time.monotonic() - start
    statuses.append("-- server gone --")
    t0 = time.monotonic()
    second = await run_turn(agent, "hello again", on_status=on_status)
    wake_turn = time.monotonic() - t0
    with open(result_path, "w") as fh:
        json.dump({"answers": [first.answer, second.answer], "statuses": statuses, "gone_after": gone_after,
                   "wake_turn_seconds": wake_turn}, fh)


asyncio.run(main())
