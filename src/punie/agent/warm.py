"""Warm start: the server's prompt cache holds the agent's prefix before the first question.

The first request of a session carries the system prompt and the tool definitions (~150
tokens on the builtin model): processing them was most of the 15-24 s of a first answer on a
CPU. mlx_lm.server keeps a prompt cache that matches the longest common token prefix of a new
request with any cached one, trimming a longer entry (``LRUPromptCache.fetch_nearest_cache``),
so one request with the agent's own prefix and a throw-away user turn, answered with one
token, leaves every later first request sharing system prompt, tools and the user turn's
opening already processed.

The prefix is built by the agent's own code: a real turn (`punie.agent.runner.run_turn` on
`build_agent`) is run against a capturing transport, and the captured request is sent to the
server with ``max_tokens`` 1; so the warm request cannot drift from what the agent sends.
Under `punie up` the agent starts with the server and the request is built while the model loads;
it is sent once the server answers and before `punie up` says it is ready (`through_gate`,
`punie.launch.gate`): the question asked at "ready" finds the prefix cached, and what readiness
waits for is what the first answer no longer pays. Elsewhere (``punie agent --warm`` on its own)
it runs in a background thread when the agent process starts; the first turn waits for it
(`settled`, bounded) rather than processing the same prefix a second time concurrently.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import anyio
import anyio.to_thread

logger = logging.getLogger(__name__)

#: The throw-away user turn of the warm request (its tokens after the shared prefix are not reused).
WARM_PROMPT = "hi"
#: How long a first turn waits for an unfinished warm-up (then it goes ahead on its own).
SETTLE_TIMEOUT = 120.0

_done = threading.Event()
_done.set()  # nothing started: nothing to wait for
_thread: threading.Thread | None = None


def enabled(environ: Any = None) -> bool:
    """False when ``PUNIE_WARM=off`` (the old path, for benchmarks)."""
    import os

    from punie import envvars

    return (os.environ if environ is None else environ).get(envvars.WARM, "").strip().lower() != "off"


def captured_request(build: Any, turn: Any) -> dict[str, Any]:
    """The body of the first chat request the agent built by ``build(http_client)`` sends for a turn
    (``turn``: `punie.agent.runner.run_turn`, passed in as the runner waits for us: `settled`).

    The turn is streamed, as the terminal mode's and ACP's are: the request is theirs, and the
    streaming code (the first use of which costs a fraction of a second) has run once in this process."""
    import httpx

    bodies: list[dict[str, Any]] = []
    head = {"id": "warm", "created": 0, "model": "warm"}

    def answer(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        bodies.append(body)
        if not body.get("stream"):
            return httpx.Response(200, json={**head, "object": "chat.completion", "choices": [
                {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "ok"}}]})
        chunks = [{**head, "object": "chat.completion.chunk", "choices": [
                      {"index": 0, "delta": {"role": "assistant", "content": "ok"}, "finish_reason": None}]},
                  {**head, "object": "chat.completion.chunk", "choices": [
                      {"index": 0, "delta": {}, "finish_reason": "stop"}]}]
        events = "".join(f"data: {json.dumps(chunk)}\n\n" for chunk in chunks) + "data: [DONE]\n\n"
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=events.encode())

    async def shown(text: str) -> None:
        """The streamed text goes nowhere."""

    async def run() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
            await turn(build(client), WARM_PROMPT, on_text=shown)

    anyio.run(run)
    return bodies[0]


def warm_request(build: Any, turn: Any) -> dict[str, Any]:
    """The warm request: the agent's first request for WARM_PROMPT, one token, not streamed."""
    body = captured_request(build, turn)
    body.update({"max_tokens": 1, "stream": False})
    body.pop("stream_options", None)
    body.pop("max_completion_tokens", None)
    return body


def warm(base_url: str, build: Any, turn: Any, *, timeout: float = 300.0) -> float | None:
    """Send the warm request to ``base_url``'s chat completions; seconds it took (None: it failed)."""
    try:
        body = warm_request(build, turn)
    except Exception as exc:  # a warm-up never breaks the agent: the first turn pays instead
        logger.info("warm-up of the server's prompt cache failed: %s", exc)
        return None
    return send(base_url, body, timeout=timeout)


def send(base_url: str, body: dict[str, Any], *, timeout: float = 300.0) -> float | None:
    """Send a prepared warm request (`warm_request`); seconds it took (None: it failed)."""
    import httpx

    from punie.net import is_loopback_url, openai_base_url

    start = time.monotonic()
    try:
        url = openai_base_url(base_url).rstrip("/") + "/chat/completions"
        with httpx.Client(timeout=timeout, trust_env=not is_loopback_url(url)) as client:
            client.post(url, json=body).raise_for_status()
    except Exception as exc:  # a warm-up never breaks the agent: the first turn pays instead
        logger.info("warm-up of the server's prompt cache failed: %s", exc)
        return None
    took = time.monotonic() - start
    logger.info("warm-up: the server's prompt cache holds the agent's prefix (%.2fs)", took)
    return took


def through_gate(gate: Any, base_url: str, build: Any, turn: Any, *, warm_cache: bool) -> bool:
    """Under `punie up` (`punie.launch.gate`): while the server loads, prepare the warm request (which
    imports and runs everything a turn needs once); at the go, warm the server, so that its prompt cache
    holds the prefix before `punie up` says it is ready; then say ready and wait for the word to go on.
    False: the session ended first (the agent exits without a word)."""
    from punie.launch.gate import GateClosed

    body = None
    if warm_cache and enabled():
        try:
            body = warm_request(build, turn)
        except Exception as exc:
            logger.info("no warm-up: its request could not be built: %s", exc)
    try:
        gate.wait_go()
        gate.ready(send(base_url, body) if body is not None else None)
    except (GateClosed, OSError) as exc:
        logger.info("the session ended before the agent was let in: %s", exc)
        return False
    return True


def start(base_url: str, build: Any, turn: Any) -> threading.Thread | None:
    """Warm the server in a background thread (unless PUNIE_WARM=off); `settled` waits for it."""
    global _thread
    if not enabled():
        return None
    _done.clear()

    def run() -> None:
        try:
            warm(base_url, build, turn)
        finally:
            _done.set()

    _thread = threading.Thread(target=run, name="punie-warm", daemon=True)
    _thread.start()
    return _thread


async def settled(timeout: float = SETTLE_TIMEOUT) -> None:
    """Return once no warm-up is running (or after ``timeout``)."""
    if not _done.is_set() and threading.current_thread() is not _thread:  # the warm turn itself: no wait
        await anyio.to_thread.run_sync(_done.wait, timeout, abandon_on_cancel=True)
