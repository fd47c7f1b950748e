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

Besides the agent's socket pair, the supervisor serves the same protocol on a Unix socket beside its
instance file (``.punie/run/NAME.sock``, mode 0600), so that `punie ask --profile NAME` wakes the
server too. A closed channel (the agent exited) counts as nothing in flight. The idle timer runs from the last
``wake``/``done``/``touch`` (or from when the server became ready) and only while nothing is in flight.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from pathlib import Path

import anyio
from anyio.abc import TaskStatus

logger = logging.getLogger(__name__)

MAX_LINE = 1024


class _Channel:
    """One connected peer: the agent's socket pair end, or a `punie ask` on the control socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.in_flight = 0
        self.waiting = 0  # its wakes answered "loading", to be answered "ready" or "failed"
        self.closed = False

    def send(self, line: str) -> None:
        if self.closed:
            return
        try:
            self.sock.send((line + "\n").encode())
        except OSError as exc:  # the peer is gone: its wakes need no answer
            logger.debug("control channel: %s", exc)


class IdleControl:
    """The supervisor's view of the requests: in flight, last activity, who waits for a wake.

    Several peers may talk to it at once: the agent `punie up` started (a socket pair) and any
    `punie ask --profile NAME` of the same project (the control socket, :meth:`listen`).
    """

    def __init__(self, idle_after: float) -> None:
        self.idle_after = idle_after
        self.awake = True
        self.last = anyio.current_time()
        self.wake_asked = anyio.Event()
        self.wakes = 0  # how many times a request woke the server (tests, status)
        self._changed = anyio.Event()
        self._channels: set[_Channel] = set()

    @property
    def in_flight(self) -> int:
        """Requests between their ``wake`` and their ``done``, over every peer."""
        return sum(c.in_flight for c in self._channels)

    @property
    def waiting(self) -> int:
        """Wakes answered ``loading`` and not yet ``ready``/``failed``, over every peer."""
        return sum(c.waiting for c in self._channels)

    # -- the channel --------------------------------------------------------------------------

    @staticmethod
    def pair() -> tuple[socket.socket, socket.socket]:
        """(the supervisor's end, the agent's end); the agent's is inheritable, to be passed by fd."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        theirs.set_inheritable(True)
        ours.setblocking(False)
        return ours, theirs

    async def listen(self, path: Path, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve the protocol on a Unix socket at ``path`` (mode 0600: only this user) until cancelled, for
        `punie ask` run beside `punie up`; the socket file is removed at the end."""
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a stale one of a killed session (the instance file was ours to take)
        old = os.umask(0o177)
        try:
            listener.bind(str(path))
        finally:
            os.umask(old)
        listener.listen(8)
        listener.setblocking(False)
        try:
            async with anyio.create_task_group() as tg:
                task_status.started()
                while True:
                    await anyio.wait_readable(listener)
                    try:
                        conn, _ = listener.accept()
                    except (BlockingIOError, InterruptedError):
                        continue
                    conn.setblocking(False)
                    tg.start_soon(self.serve, conn)
        finally:
            listener.close()
            with contextlib.suppress(OSError):
                path.unlink()

    async def serve(self, sock: socket.socket) -> None:
        """Read one peer's lines until it closes the channel (run as a task; cancelled at the stop)."""
        channel = _Channel(sock)
        self._channels.add(channel)
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
                    self._on_line(channel, raw.decode("utf-8", errors="replace").strip())
        finally:
            channel.closed = True  # a peer gone has nothing in flight
            self._channels.discard(channel)
            self._activity()
            sock.close()

    def _on_line(self, channel: _Channel, line: str) -> None:
        if line == "wake":
            channel.in_flight += 1
            self._activity()
            if self.awake:
                channel.send("ready")
            else:
                channel.send("loading")
                channel.waiting += 1
                self.wake_asked.set()
        elif line == "done":
            channel.in_flight = max(0, channel.in_flight - 1)
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
        """Until a peer asks for the server (a ``wake`` while it sleeps)."""
        if not self.waiting:
            await self.wake_asked.wait()

    def ready(self) -> None:
        """The server answers (again): tell whoever waits, restart the idle timer."""
        if not self.awake:
            self.wakes += 1
        self.awake = True
        self._activity()
        self._answer("ready")

    def failed(self, reason: str) -> None:
        """The server could not be started again: tell whoever waits."""
        self._answer(f"failed: {reason}")

    def _answer(self, line: str) -> None:
        for channel in list(self._channels):
            for _ in range(channel.waiting):
                channel.send(line)
            channel.waiting = 0
