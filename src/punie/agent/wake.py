"""The agent's end of idle unload: wake the model server before a request, report when it is over.

Under `punie up` with ``server.idle_unload``, the supervisor hands the agent one end of a socket
pair (``PUNIE_CONTROL_FD``; the protocol is in punie.launch.idle). Every model request goes through
the transport of :func:`waking_client`: before it, ``wake`` (the answer ``loading`` means the server was stopped
while idle and is being started again: the turn's status callback says "loading the model..." so
the IDE or the terminal shows it instead of a request timing out); when its response is over,
``done``. Without the variable nothing changes: the plain httpx transport.
"""

from __future__ import annotations

import contextvars
import importlib
import logging
import os
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio.to_thread

from punie import envvars

logger = logging.getLogger(__name__)

LOADING = "loading the model (it was unloaded while idle)..."
#: The current turn's status callback (set by run_turn), told when the model must be loaded first.
status_callback: contextvars.ContextVar[Callable[[str], Awaitable[None]] | None] = contextvars.ContextVar(
    "punie_status_callback", default=None)


class WakeFailed(ConnectionError):
    """The supervisor could not start the model server again (its reason is the message)."""


class Waker:
    """The control channel: blocking line I/O on the agent's end, one wake exchange at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._exchange = threading.Lock()  # held from "wake" to its final answer
        self._send_lock = threading.Lock()
        self._buffer = b""

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Waker | None:
        """The channel the supervisor passed (``PUNIE_CONTROL_FD``), or None."""
        value = (environ if environ is not None else os.environ).get(envvars.CONTROL_FD)
        if not value:
            return None
        try:
            fd = int(value)
            os.set_inheritable(fd, False)  # never handed on to the commands the agent runs
            return cls(socket.socket(fileno=fd))
        except (ValueError, OSError) as exc:
            logger.warning("%s=%s is not a usable control channel: %s", envvars.CONTROL_FD, value, exc)
            return None

    @classmethod
    def connect(cls, path: str | os.PathLike[str]) -> Waker | None:
        """The channel of a running `punie up` through its control socket (`punie ask`), or None when it
        cannot be reached (the session just ended: the request then fails or finds a server as usual)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(os.fspath(path))
        except OSError as exc:
            sock.close()
            logger.warning("cannot reach the control socket %s: %s", path, exc)
            return None
        return cls(sock)

    def send(self, line: str) -> None:
        with self._send_lock:
            self.sock.sendall((line + "\n").encode())

    def _line(self) -> str:
        while b"\n" not in self._buffer:
            chunk = self.sock.recv(1024)
            if not chunk:
                raise WakeFailed("the supervisor closed the control channel")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode("utf-8", errors="replace").strip()

    def begin(self) -> str:
        """Send ``wake``; the first answer (``ready``, ``loading``, ``failed: ...``). After ``loading`` the
        exchange stays taken until :meth:`finish`."""
        self._exchange.acquire()
        try:
            self.send("wake")
            answer = self._line()
        except BaseException:
            self._exchange.release()
            raise
        if answer != "loading":
            self._exchange.release()
        return answer

    def finish(self) -> str:
        """The answer after ``loading``: ``ready`` or ``failed: REASON``."""
        try:
            return self._line()
        finally:
            self._exchange.release()


_waker: Waker | None = None
_checked = False


def current_waker() -> Waker | None:
    """This process's control channel (read once from the environment, or given by :func:`use_control`)."""
    global _waker, _checked
    if not _checked:
        _waker, _checked = Waker.from_env(), True
    return _waker


def use_control(path: str | os.PathLike[str]) -> Waker | None:
    """Make the control socket at ``path`` this process's channel (`punie ask` beside a `punie up` that
    unloads its idle server): its model requests then wake the server first."""
    global _waker, _checked
    waker = Waker.connect(path)
    if waker is not None:
        _waker, _checked = waker, True
    return waker


async def ensure_awake(waker: Waker) -> None:
    """Before a model request: make sure the server runs (telling the turn's status callback when it
    must be loaded first). Raises WakeFailed when it cannot be started."""
    answer = await anyio.to_thread.run_sync(waker.begin, abandon_on_cancel=True)
    if answer == "loading":
        notify = status_callback.get()
        if notify is not None:
            try:
                await notify(LOADING)
            except Exception:  # a display callback must not fail the request
                logger.exception("status callback failed")
        answer = await anyio.to_thread.run_sync(waker.finish, abandon_on_cancel=True)
    if answer != "ready":
        _say_done(waker)  # nothing will be in flight
        raise WakeFailed(f"the model server could not be started again: {answer.removeprefix('failed: ')}")


def _transport_class(hx: Any) -> type:
    """The transport class for the httpx module ``hx`` (the one the OpenAI client is built on: httpx,
    or httpx2 in later releases)."""

    class Done(hx.AsyncByteStream):  # type: ignore[misc,name-defined]
        """A response body that says ``done`` on the channel once it is closed (read to its end or cut)."""

        def __init__(self, inner: Any, waker: Waker) -> None:
            self.inner, self.waker, self._said = inner, waker, False

        async def __aiter__(self) -> AsyncIterator[bytes]:
            async for chunk in self.inner:
                yield chunk

        async def aclose(self) -> None:
            try:
                await self.inner.aclose()
            finally:
                if not self._said:
                    self._said = True
                    _say_done(self.waker)

    class WakingTransport(hx.AsyncBaseTransport):  # type: ignore[misc,name-defined]
        """``wake`` before each request, ``done`` after its response (see the module doc)."""

        def __init__(self, waker: Waker, inner: Any = None) -> None:
            self.waker = waker
            self.inner = inner if inner is not None else hx.AsyncHTTPTransport()

        async def handle_async_request(self, request: Any) -> Any:
            await ensure_awake(self.waker)
            try:
                response = await self.inner.handle_async_request(request)
            except BaseException:
                _say_done(self.waker)
                raise
            return hx.Response(status_code=response.status_code, headers=response.headers,
                               stream=Done(response.stream, self.waker), extensions=response.extensions)

        async def aclose(self) -> None:
            await self.inner.aclose()

    return WakingTransport


def _say_done(waker: Waker) -> None:
    try:
        waker.send("done")
    except OSError:
        pass


def waking_client(waker: Waker, inner: Any = None, timeout: float | None = None) -> Any:
    """An OpenAI-ready async http client whose requests wake the server first (its own transport,
    sending through ``inner`` when given: the retrying one of :mod:`punie.agent.transient`)."""
    from openai import DefaultAsyncHttpxClient

    base = next(c for c in DefaultAsyncHttpxClient.__mro__ if c.__name__ == "AsyncClient")
    hx = importlib.import_module(base.__module__.split(".")[0])
    kwargs: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
    return DefaultAsyncHttpxClient(transport=_transport_class(hx)(waker, inner), **kwargs)
