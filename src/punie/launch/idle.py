"""Idle unload: the supervisor's end of the control channel the agent uses to wake the model server.

With ``server.idle_unload`` set, `punie up` stops the model server once nobody asked anything for
that long (its memory goes back to the machine) and keeps the agent; the next prompt starts it
again. The agent cannot start a server, so it asks the supervisor, over a socket pair the
supervisor creates and hands to the agent by descriptor (``PUNIE_CONTROL_FD``; no file, no port).

The protocol is lines of text. From the agent:

* ``wake``: a model request is about to be sent. The answer is ``ready`` when the server answers
  (at once when it runs), else ``loading`` first, then ``ready`` or ``failed: REASON`` once the
  server was started again (readiness and canary checked) or could not be. Until the matching
  ``done`` the request counts as in flight: the server is never stopped under it.
* ``done``: that request's response is over (activity).
* ``touch``: activity, nothing in flight.

A closed channel (the agent exited) counts as nothing in flight. The idle timer runs from the last
``wake``/``done``/``touch`` (or from when the server became ready) and only while nothing is in flight.
"""

from __future__ import annotations

import logging
import socket

import anyio

logger = logging.getLogger(__name__)

MAX_LINE = 1024


class IdleControl:
    """The supervisor's view of the agent's requests: in flight, last activity, who waits for a wake."""

    def __init__(self, idle_after: float) -> None:
        self.idle_after = idle_after
        self.awake = True
        self.in_flight = 0
        self.last = anyio.current_time()
        self.waiting = 0  # wakes answered "loading", to be answered "ready" or "failed"
        self.wake_asked = anyio.Event()
        self.wakes = 0  # how many times a request woke the server (tests, status)
        self._changed = anyio.Event()
        self._sock: socket.socket | None = None
        self._closed = False

    # -- the channel --------------------------------------------------------------------------

    @staticmethod
    def pair() -> tuple[socket.socket, socket.socket]:
        """(the supervisor's end, the agent's end); the agent's is inheritable, to be passed by fd."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        theirs.set_inheritable(True)
        ours.setblocking(False)
        return ours, theirs

    async def serve(self, sock: socket.socket) -> None:
        """Read the agent's lines until it closes the channel (run as a task; cancelled at the stop)."""
        self._sock = sock
        buffer = b""
        try:
            while True:
                await anyio.wait_readable(sock)
                try:
                    chunk = sock.recv(4096)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    chunk = b""
                if not chunk:
                    break
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                if len(buffer) > MAX_LINE:
                    logger.warning("control channel: a line longer than %d bytes; closing it", MAX_LINE)
                    break
                for raw in lines:
                    self._on_line(raw.decode("utf-8", errors="replace").strip())
        finally:
            self.in_flight = 0  # an agent gone has nothing in flight
            self._closed = True
            self._activity()
            sock.close()

    def _send(self, line: str) -> None:
        if self._sock is None or self._closed:
            return
        try:
            self._sock.send((line + "\n").encode())
        except OSError as exc:  # the agent is gone: its wakes need no answer
            logger.debug("control channel: %s", exc)

    def _on_line(self, line: str) -> None:
        if line == "wake":
            self.in_flight += 1
            self._activity()
            if self.awake:
                self._send("ready")
            else:
                self._send("loading")
                self.waiting += 1
                self.wake_asked.set()
        elif line == "done":
            self.in_flight = max(0, self.in_flight - 1)
            self._activity()
        elif line == "touch":
            self._activity()
        elif line:
            logger.warning("control channel: unknown line %r", line[:80])

    def _activity(self) -> None:
        self.last = anyio.current_time()
        self._changed.set()
        self._changed = anyio.Event()

    # -- the supervisor's side ----------------------------------------------------------------

    async def idle(self) -> None:
        """Return once nothing was in flight for ``idle_after`` seconds; the server then counts as asleep
        (decided in the same step as the check, so a wake arriving next is answered "loading")."""
        while True:
            changed = self._changed
            if self.in_flight == 0:
                remaining = self.last + self.idle_after - anyio.current_time()
                if remaining <= 0:
                    self.awake = False
                    self.wake_asked = anyio.Event()
                    return
                with anyio.move_on_after(remaining):
                    await changed.wait()
            else:
                await changed.wait()

    async def wait_wake(self) -> None:
        """Until the agent asks for the server (a ``wake`` while it sleeps)."""
        if not self.waiting:
            await self.wake_asked.wait()

    def ready(self) -> None:
        """The server answers (again): tell whoever waits, restart the idle timer."""
        if not self.awake:
            self.wakes += 1
        self.awake = True
        self._activity()
        for _ in range(self.waiting):
            self._send("ready")
        self.waiting = 0

    def failed(self, reason: str) -> None:
        """The server could not be started again: tell whoever waits."""
        for _ in range(self.waiting):
            self._send(f"failed: {reason}")
        self.waiting = 0
