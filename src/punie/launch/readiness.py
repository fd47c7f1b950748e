"""Is the server really ready? Is its port free?

mlx_lm.server answers ``/health`` before the model (and adapter) is loaded,
so the only real readiness probe is a 1-token chat completion. The probe sends
NO ``model`` field: any model name other than "default_model" makes mlx_lm
serve the base model without the adapter, and the probe must exercise what
the agent will get.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import anyio

PROBE_BODY: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
GENERATION_DIED = "generation thread died"
_LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


class ProbeFailed(Exception):
    """The server answered in a way that will never become ready (reason, detail)."""

    def __init__(self, reason: str, detail: str):
        self.reason = reason
        self.detail = detail
        super().__init__(detail)


def port_in_use(host: str, port: int) -> bool:
    """True when ``host:port`` cannot be bound the way mlx_lm.server binds it.

    mlx_lm hangs forever when its port is taken, so this is checked before it
    is started. SO_REUSEADDR matches http.server (a TIME_WAIT socket is no conflict).
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return False  # let mlx_lm report the bad host itself
    family, socktype, proto, _, address = infos[0]
    with socket.socket(family, socktype, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError:
            return True
    return False


def _is_loopback(url: str) -> bool:
    return (urlsplit(url).hostname or "") in _LOOPBACK


async def wait_ready(
    base_url: str,
    *,
    interval: float = 0.05,
    connect_timeout: float = 1.0,
    request: tuple[str, Mapping[str, Any]] | None = None,
    on_answer: Callable[[dict[str, Any]], None] | None = None,
) -> float:
    """Retry a 1-token completion on ``{base_url}/chat/completions`` until one succeeds.

    No overall timeout here: the caller cancels (it also watches the server
    process and log). Returns the seconds spent. Raises ProbeFailed when the
    server says its generation thread died (a failed model or adapter load).
    ``request`` (path, body) replaces the probe (the adapter canary of
    `punie.launch.canary`); ``on_answer`` is handed the answer that made it ready.
    """
    import httpx

    start = anyio.current_time()
    path, body = request if request is not None else ("/chat/completions", PROBE_BODY)
    url = base_url.rstrip("/") + path
    # A loopback server must not be reached through an HTTP proxy from the environment.
    timeout = httpx.Timeout(None, connect=connect_timeout)
    async with httpx.AsyncClient(timeout=timeout, trust_env=not _is_loopback(url)) as client:
        while True:
            try:
                response = await client.post(url, json=dict(body))
            except httpx.TransportError:
                await anyio.sleep(interval)
                continue
            if response.status_code == 200:
                try:
                    data = response.json()
                except ValueError:
                    data = None
                if isinstance(data, dict) and data.get("choices"):
                    if on_answer is not None:
                        on_answer(data)
                    return anyio.current_time() - start
            elif GENERATION_DIED in response.text:
                raise ProbeFailed("generation-failed", f"HTTP {response.status_code}: {response.text.strip()}")
            await anyio.sleep(interval)
