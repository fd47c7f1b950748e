"""The model client's retry of connection failures that happen before any answer (punie.agent.transient)."""

from __future__ import annotations

import asyncio
import socket
import struct

import httpx2
import pytest

from punie.agent.transient import ATTEMPTS, RetryTransport, budget, delays
from tests.support.ports import free_port

OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\nConnection: close\r\n\r\n{"ok": true}'


async def _flaky_server(resets: int, closes: int) -> tuple[asyncio.AbstractServer, list[str]]:
    """Resets the first ``resets`` connections (RST), closes the next ``closes`` without an answer, then answers."""
    seen: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n = len(seen)
        if n < resets:
            seen.append("reset")
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return
        await reader.readuntil(b"\r\n\r\n")
        if n < resets + closes:
            seen.append("closed")
            writer.close()
            return
        seen.append("answered")
        writer.write(OK)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, seen


def test_resets_and_closes_before_an_answer_are_retried() -> None:
    async def main() -> tuple[int, list[str], int]:
        server, seen = await _flaky_server(resets=2, closes=1)
        port = server.sockets[0].getsockname()[1]
        transport = RetryTransport(base_delay=0.01)
        async with server, httpx2.AsyncClient(transport=transport) as client:
            response = await client.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={"x": 1})
        return response.status_code, seen, transport.retried

    status, seen, retried = asyncio.run(main())
    assert status == 200
    assert seen == ["reset", "reset", "closed", "answered"]
    assert retried == 3


def test_a_dead_server_is_reported_after_the_bounded_tries() -> None:
    port = free_port()

    async def main() -> RetryTransport:
        transport = RetryTransport(attempts=4, base_delay=0.01)
        async with httpx2.AsyncClient(transport=transport) as client:
            with pytest.raises(httpx2.ConnectError):
                await client.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={})
        return transport

    assert asyncio.run(main()).retried == 3


def test_an_answer_is_never_retried_even_an_error_status() -> None:
    async def main() -> tuple[int, int]:
        calls = 0

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal calls
            calls += 1
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server, httpx2.AsyncClient(transport=RetryTransport(base_delay=0.01)) as client:
            response = await client.post(f"http://127.0.0.1:{port}/", json={})
        return response.status_code, calls

    assert asyncio.run(main()) == (503, 1)


def test_the_backoff_is_bounded() -> None:
    waits = delays()
    assert len(waits) == ATTEMPTS - 1
    assert waits == sorted(waits) and waits[-1] <= 2.0
    assert budget() <= 10.0  # a dead server is still reported within seconds
