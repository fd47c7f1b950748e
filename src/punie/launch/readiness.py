"""Is the server really ready? Is its port free?

mlx_lm.server answers ``/health`` before the model (and adapter) is loaded,
so the only real readiness probe is a 1-token chat completion. The probe sends
NO ``model`` field: any model name other than "default_model" makes mlx_lm
serve the base model without the adapter, and the probe must exercise what
the agent will get.

Two more questions are answered here: is the answer from OUR child (`owner_problem`:
on Linux the socket listening on the port must belong to the child's process tree,
else a foreign server that took the port between the check and the bind would be
used), and, once ready, is the server still alive (`liveness_probe`: a cheap
``GET /health`` with a timeout; a frozen server never answers it, mlx_lm whose
generation thread died answers 503).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import anyio

from punie.errors import LaunchReason, ProbeFailed
from punie.net import is_loopback_url, owns_listener, port_in_use, server_root

PROBE_BODY: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
GENERATION_DIED = "generation thread died"

__all__ = ["GENERATION_DIED", "PROBE_BODY", "ProbeFailed", "liveness_probe", "model_not_served", "owner_problem",
           "port_in_use", "served_ids_problem", "wait_ready"]


def owner_problem(pid: int, host: str, port: int) -> str | None:
    """Why the server answering on ``host:port`` is not process ``pid``'s (tree), or None.

    Every socket listening on the port (overlapping ``host``) must belong to ``pid`` or its
    descendants (`punie.net.owns_listener`: /proc on Linux, psutil elsewhere); None when
    that holds or cannot be told.
    """
    owned = owns_listener(pid, port, host)
    if owned is False:
        return (f"another process answers on port {port}: the socket listening there does not belong to "
                f"the server Punie started (pid {pid})")
    return None


async def served_ids_problem(base_url: str, expected: tuple[str, ...], *, timeout: float = 5.0) -> str | None:
    """The second witness of who answers: the server's own ``GET /v1/models`` must list one of the
    ``expected`` ids (mlx_lm lists the resolved path of the model it loaded; vLLM its served names).

    None when it does, or when the answer says nothing either way (no list, an empty list, an
    error: mlx_lm without a hub cache answers an empty body); else why the server is not ours.
    """
    import httpx

    if not expected:
        return None
    url = base_url.rstrip("/") + "/models"
    try:
        async with httpx.AsyncClient(timeout=timeout, trust_env=not is_loopback_url(url)) as client:
            response = await client.get(url)
        data = response.json() if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None
    entries = data.get("data") if isinstance(data, dict) else None
    ids = {e.get("id") for e in entries if isinstance(e, dict)} if isinstance(entries, list) else set()
    ids.discard(None)
    if not ids or ids & set(expected):
        return None
    shown = ", ".join(sorted(str(i) for i in ids)[:5])
    return (f"the server answering on {server_root(base_url)} does not list the model Punie started it with "
            f"({expected[0]}) in GET /v1/models (it lists: {shown})")


async def liveness_probe(base_url: str, *, timeout: float) -> str | None:
    """One cheap liveness probe (``GET /health``): None when alive, else what was wrong.

    A SIGSTOPped server accepts the connection (the kernel does) but never answers:
    the timeout catches it. mlx_lm whose generation thread died answers 503.
    """
    import httpx

    url = server_root(base_url) + "/health"
    try:
        async with httpx.AsyncClient(timeout=timeout, trust_env=not is_loopback_url(url)) as client:
            response = await client.get(url)
    except httpx.TimeoutException:
        return f"GET /health did not answer within {timeout:g}s"
    except httpx.TransportError as exc:
        return f"GET /health failed: {exc.__class__.__name__}: {exc}"
    if response.status_code != 200:
        return f"GET /health answered HTTP {response.status_code}: {response.text.strip()[:200]}"
    return None


def model_not_served(status: int, text: str, model: object) -> str | None:
    """What the server said when it does not serve the probe's ``model`` id (vLLM: HTTP 404
    NotFoundError "The model `X` does not exist. Valid aliases: ..."), else None."""
    if status != 404 or not isinstance(model, str) or "does not exist" not in text:
        return None
    try:
        said = json.loads(text)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        said = text.strip()[:300]
    return f"it does not serve the model id {model!r} (HTTP 404: {said})"


async def wait_ready(
    base_url: str,
    *,
    interval: float = 0.05,
    connect_timeout: float = 1.0,
    request: tuple[str, Mapping[str, Any]] | None = None,
    on_answer: Callable[[dict[str, Any]], None] | None = None,
    model: str | None = None,
) -> float:
    """Retry a 1-token completion on ``{base_url}/chat/completions`` until one succeeds.

    No overall timeout here: the caller cancels (it also watches the server
    process and log). Returns the seconds spent. Raises ProbeFailed when the
    server says its generation thread died (a failed model or adapter load), or, when the probe names
    a model id, that the server does not serve it (vLLM: HTTP 404 "The model `X` does not exist.",
    which no wait fixes: its LoRAs are loaded before it listens).
    ``request`` (path, body) replaces the probe (the adapter canary of
    `punie.launch.canary`); ``on_answer`` is handed the answer that made it ready.
    ``model`` is sent as the plain probe's model id (vLLM: the LoRA the agent will use).
    """
    import httpx

    start = anyio.current_time()
    plain = PROBE_BODY if model is None else {**PROBE_BODY, "model": model}
    path, body = request if request is not None else ("/chat/completions", plain)
    url = base_url.rstrip("/") + path
    # A loopback server must not be reached through an HTTP proxy from the environment.
    timeout = httpx.Timeout(None, connect=connect_timeout)
    async with httpx.AsyncClient(timeout=timeout, trust_env=not is_loopback_url(url)) as client:
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
                detail = f"HTTP {response.status_code}: {response.text.strip()}"
                raise ProbeFailed(LaunchReason.GENERATION_FAILED, detail)
            elif (problem := model_not_served(response.status_code, response.text, body.get("model"))):
                raise ProbeFailed(LaunchReason.MODEL_NOT_SERVED, problem)
            await anyio.sleep(interval)
