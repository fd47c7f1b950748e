"""The start gate: `punie up` starts the agent with the model server, and lets it in once the server answers.

On a CPU the agent's imports (pydantic-ai, the OpenAI client: seconds of Python) and the model's
load take about as long as each other. Started together, they overlap: the agent imports, builds
itself and prepares its warm request (`punie.agent.warm`) while the server loads, then waits.

The supervisor hands the agent one end of a socket pair by descriptor (``PUNIE_GATE_FD``; no file,
no port) and the two speak lines of text:

* supervisor -> agent ``go``: the server answers (readiness, foreign-server check and canary
  passed). The agent warms the server's prompt cache with its own prefix (system prompt and tool
  definitions), unless ``PUNIE_WARM=off``.
* agent -> supervisor ``ready SECONDS`` (the warm-up's time) or ``ready -`` (none, or it failed):
  the agent takes questions. Only now does `punie up` say it is ready.
* supervisor -> agent ``on``: that was said; the agent may draw its prompt (no status line of
  the supervisor lands in the middle of it).

An agent that dies while it waits ends the session like any agent exit; a server that never
answers ends it with the agent stopped, as every child is. End of file before ``on`` means the
session is over: the agent exits without a word.
"""

from __future__ import annotations

import logging
import os
import socket

import anyio

from punie import envvars

logger = logging.getLogger(__name__)

GO = "go"
READY = "ready"
ON = "on"
NO_WARM = "-"
MAX_LINE = 256


class GateClosed(Exception):
    """The supervisor's end was closed before the gate opened (the session is over)."""


def pair() -> tuple[socket.socket, socket.socket]:
    """(the supervisor's end, non-blocking; the agent's end, inheritable, to be passed by fd)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    theirs.set_inheritable(True)
    ours.setblocking(False)
    return ours, theirs


class SupervisorGate:
    """The supervisor's end: ``go``, then wait for the agent's ``ready``, then ``on``."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = b""

    async def _send(self, word: str) -> bool:
        try:
            await anyio.wait_writable(self.sock)
            self.sock.send((word + "\n").encode())
        except OSError as exc:  # the agent is gone: its exit says why
            logger.debug("start gate: %s", exc)
            return False
        return True

    async def go(self) -> bool:
        """Let the agent in (False: it is gone)."""
        return await self._send(GO)

    async def on(self) -> None:
        """Tell the agent `punie up` said it is ready."""
        await self._send(ON)

    async def ready(self) -> float | None:
        """Wait for the agent's ``ready``: the warm-up's seconds (None: no warm-up). Raises GateClosed
        when the agent closed its end first (it exited: the caller learns how from its exit status)."""
        while b"\n" not in self._buffer:
            await anyio.wait_readable(self.sock)
            try:
                chunk = self.sock.recv(MAX_LINE)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:
                raise GateClosed(str(exc)) from None
            if not chunk:
                raise GateClosed("the agent closed the start gate")
            self._buffer += chunk
            if len(self._buffer) > MAX_LINE:
                raise GateClosed("the agent sent an overlong line on the start gate")
        line, self._buffer = self._buffer.split(b"\n", 1)
        word, _, value = line.decode(errors="replace").strip().partition(" ")
        if word != READY:
            raise GateClosed(f"the agent said {line[:60]!r} on the start gate, not {READY!r}")
        try:
            return float(value)
        except ValueError:
            return None

    def close(self) -> None:
        self.sock.close()


class AgentGate:
    """The agent's end (blocking calls: the agent waits here before its event loop runs)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._file = sock.makefile("rb")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> AgentGate | None:
        """The gate the supervisor passed (``PUNIE_GATE_FD``), or None (not started by `punie up`).
        The variable is removed, so that nothing the agent starts believes it is gated."""
        env = os.environ if environ is None else environ
        value = env.pop(envvars.GATE_FD, None)
        if not value:
            return None
        try:
            fd = int(value)
            os.set_inheritable(fd, False)  # never handed on to the commands the agent runs
            return cls(socket.socket(fileno=fd))
        except (ValueError, OSError) as exc:
            logger.warning("%s=%s is not a usable start gate: %s", envvars.GATE_FD, value, exc)
            return None

    def _expect(self, word: str) -> None:
        line = self._file.readline(MAX_LINE)
        if not line:
            raise GateClosed("the supervisor closed the start gate")
        if line.decode(errors="replace").strip() != word:
            raise GateClosed(f"expected {word!r} on the start gate, got {line[:60]!r}")

    def wait_go(self) -> None:
        """Block until the server answers (GateClosed: the session ended first)."""
        self._expect(GO)

    def ready(self, warm_seconds: float | None) -> None:
        """Say the agent takes questions, then block until `punie up` has said so (GateClosed: it ended)."""
        self.sock.sendall(f"{READY} {NO_WARM if warm_seconds is None else f'{warm_seconds:.3f}'}\n".encode())
        self._expect(ON)
        self._file.close()
        self.sock.close()
