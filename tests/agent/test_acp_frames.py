"""Bad frames on the ACP stdio: answered as JSON-RPC 2.0 says, and the agent keeps serving.

The acp SDK's own transport dropped a non-JSON line with a traceback and died on a JSON
line that is not an object (a batch), ending the IDE's session.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from punie.agent import acp_stdio
from punie.agent.acp_stdio import INVALID_REQUEST, PARSE_ERROR, LineTransport

INITIALIZE = {"jsonrpc": "2.0", "id": 99, "method": "initialize", "params": {"protocolVersion": 1}}

BAD_FRAMES: list[tuple[bytes, int, Any]] = [
    (b"not json", PARSE_ERROR, None),
    (b"\xff\xfe\x00garbage", PARSE_ERROR, None),
    (b'{"jsonrpc":"2.0","id":1,"method":"initialize"', PARSE_ERROR, None),  # cut short
    (b"[1, 2]", INVALID_REQUEST, None),  # a batch
    (b"[]", INVALID_REQUEST, None),
    (b"5", INVALID_REQUEST, None),
    (b'"initialize"', INVALID_REQUEST, None),
    (b"null", INVALID_REQUEST, None),
    (b'{"jsonrpc":"2.0","id":7,"method":5}', INVALID_REQUEST, 7),
    (b'{"jsonrpc":"2.0","id":"s-1","method":"session/new","params":"x"}', INVALID_REQUEST, "s-1"),
    (b'{"jsonrpc":"2.0","id":true,"method":"initialize"}', INVALID_REQUEST, None),
    (b'{"jsonrpc":"2.0","id":{"a":1},"method":"initialize"}', INVALID_REQUEST, None),
    (b'{"jsonrpc":"2.0"}', INVALID_REQUEST, None),
]


@pytest.mark.slow
def test_every_bad_frame_gets_its_error_and_the_agent_still_answers(tmp_path: Path) -> None:
    lines = b"".join(frame + b"\n" for frame, _, _ in BAD_FRAMES)
    lines += b'{"jsonrpc":"2.0","id":3}\n'  # a broken response: dropped, never answered
    lines += json.dumps(INITIALIZE).encode() + b"\n"
    proc = subprocess.run(
        [sys.executable, "-m", "punie", "agent", "--mode", "acp", "--base-url", "http://127.0.0.1:9"],
        input=lines, capture_output=True, cwd=tmp_path, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    replies = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(replies) == len(BAD_FRAMES) + 1, replies
    for (frame, code, request_id), reply in zip(BAD_FRAMES, replies, strict=False):
        assert reply["jsonrpc"] == "2.0" and reply["error"]["code"] == code, (frame, reply)
        assert reply["id"] == request_id, (frame, reply)
    assert replies[-1]["id"] == 99 and replies[-1]["result"]["agentInfo"]["name"] == "punie"
    stderr = proc.stderr.decode()
    assert "Traceback" not in stderr, stderr
    assert stderr.count("ACP: ignored") == len(BAD_FRAMES) + 1


def _drain(chunks: list[bytes], limit: int | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Feed ``chunks`` to a LineTransport; what ``receive`` returned and what it answered."""

    async def run() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=limit or 2**16)
        for chunk in chunks:
            reader.feed_data(chunk)
        reader.feed_eof()
        sent: list[dict[str, Any]] = []

        class Writer:
            def write(self, data: bytes) -> None:
                assert data.endswith(b"\n") and data.count(b"\n") == 1
                sent.append(json.loads(data))

            async def drain(self) -> None:
                await asyncio.sleep(0)

        transport = LineTransport(reader, Writer())  # type: ignore[arg-type]
        received = []
        while (message := await transport.receive()) is not None:
            received.append(message)
        assert loop.is_running()
        return received, sent

    return asyncio.run(run())


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(
        st.sampled_from(["jsonrpc", "id", "method", "params", "result", "error", "x"]), children, max_size=5),
    max_leaves=8,
)


def _oracle(line: bytes) -> str:
    """What JSON-RPC 2.0 says happens to one frame: "pass", "parse", "invalid" or "drop"."""
    try:
        value = json.loads(line)
    except ValueError:
        return "parse"
    if not isinstance(value, dict):
        return "invalid"
    ident = value.get("id")
    id_ok = "id" not in value or ident is None or type(ident) in (str, int)
    if "method" in value:
        params_ok = type(value.get("params")) in (dict, list, type(None))
        return "pass" if id_ok and type(value["method"]) is str and params_ok else "invalid"
    if "id" not in value:
        return "invalid"
    ok = id_ok and ("result" in value or "error" in value) and type(value.get("error")) in (dict, type(None))
    return "pass" if ok else "drop"  # a broken response is never answered: two peers could loop


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=40) | json_values.map(lambda v: json.dumps(v).encode()), max_size=6))
def test_any_bytes_never_stop_the_transport_and_each_frame_meets_the_spec(frames: list[bytes]) -> None:
    lines = [f.replace(b"\n", b" ") for f in frames]
    received, answered = _drain([b"\n".join(lines) + b"\n"])
    expected = [(_oracle(line.strip()), line) for line in lines if line.strip()]
    assert received == [json.loads(line) for outcome, line in expected if outcome == "pass"]
    assert [r["error"]["code"] for r in answered] == [
        PARSE_ERROR if outcome == "parse" else INVALID_REQUEST for outcome, _ in expected
        if outcome in ("parse", "invalid")]


def test_a_line_over_the_limit_is_read_through_answered_and_the_next_one_served(monkeypatch: Any) -> None:
    monkeypatch.setattr(acp_stdio, "MAX_LINE", 1000)
    huge = b'{"jsonrpc":"2.0","id":1,"method":"x","params":{"p":"' + b"a" * 5000 + b'"}}\n'
    received, answered = _drain([huge[:700], huge[700:], json.dumps(INITIALIZE).encode() + b"\n"], limit=256)
    assert [m["id"] for m in received] == [99]
    assert len(answered) == 1 and answered[0]["error"]["code"] == PARSE_ERROR
    assert "longer than 1000" in answered[0]["error"]["data"]["details"]


def test_a_long_line_under_the_limit_is_reassembled() -> None:
    message = dict(INITIALIZE, params={"protocolVersion": 1, "pad": "b" * 3000})
    data = json.dumps(message).encode() + b"\n"
    received, answered = _drain([data[i:i + 100] for i in range(0, len(data), 100)], limit=256)
    assert received == [message] and answered == []
