"""Connection errors to the model server that are worth another try, and the bounded retry.

mlx_lm.server is a ``ThreadingHTTPServer`` listening with a backlog of 5: when
many sessions ask at once (50 IDE sessions, a burst of eval requests), some
connections are refused or reset before the server ever saw the request. The
OpenAI client is built without its own retries (those would also repeat
requests the server *did* get: timeouts, 5xx), so this transport retries
exactly the failures that happen before any response arrived, with
exponential backoff and jitter, a bounded number of times.

A server that is really gone is still reported, after the retries
(:data:`ATTEMPTS` tries, about :func:`budget` seconds in all).
"""

from __future__ import annotations

import logging
import random
from typing import Any

import anyio

# The OpenAI client (and pydantic-ai) are built on httpx2, httpx's successor: its transport and errors.
import httpx2 as httpx

logger = logging.getLogger(__name__)

#: Tries of one request (the first one included).
ATTEMPTS = 6
#: Backoff before the second try; doubles each time up to :data:`MAX_DELAY` (plus up to 50 % jitter).
BASE_DELAY = 0.1
MAX_DELAY = 2.0

#: Failures raised before a response existed: the request did not produce an answer.
#: (Timeouts are not here: a read timeout means the server is working on it.)
TRANSIENT = (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


def delays(attempts: int = ATTEMPTS, base: float = BASE_DELAY, cap: float = MAX_DELAY) -> list[float]:
    """The waits between tries, without jitter."""
    return [min(base * 2 ** i, cap) for i in range(max(attempts - 1, 0))]


def budget(attempts: int = ATTEMPTS) -> float:
    """The longest a request can spend waiting between tries (jitter included)."""
    return 1.5 * sum(delays(attempts))


class RetryTransport(httpx.AsyncBaseTransport):
    """An httpx transport that retries :data:`TRANSIENT` failures of ``inner`` with backoff.

    The request body is bytes the OpenAI client built (re-readable), so the
    same request can be sent again. Only failures raised before a response
    was returned are retried; a response, once returned, is the caller's.
    """

    def __init__(self, inner: httpx.AsyncBaseTransport | None = None, *, attempts: int = ATTEMPTS,
                 base_delay: float = BASE_DELAY, max_delay: float = MAX_DELAY) -> None:
        self._inner = inner or httpx.AsyncHTTPTransport()
        self._delays = delays(attempts, base_delay, max_delay)
        self.retried = 0  # how many retries this transport made (tests and logs)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        for attempt, delay in enumerate([*self._delays, None]):
            try:
                return await self._inner.handle_async_request(request)
            except TRANSIENT as exc:
                if delay is None:
                    raise
                wait = delay * (1 + random.random() / 2)  # jitter: a burst of refused clients spreads out
                logger.info("model server %s: %s (%s); try %d in %.2f s", request.url.host,
                            type(exc).__name__, exc, attempt + 2, wait)
                self.retried += 1
                await anyio.sleep(wait)
        raise AssertionError("unreachable")  # the loop returns or raises

    async def aclose(self) -> None:
        await self._inner.aclose()


def retrying_http_client(timeout: float, **kwargs: Any) -> httpx.AsyncClient:
    """The OpenAI client's HTTP client: the OpenAI defaults, with :class:`RetryTransport`."""
    from openai import DefaultAsyncHttpxClient

    return DefaultAsyncHttpxClient(transport=RetryTransport(**kwargs), timeout=timeout)
