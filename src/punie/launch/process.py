"""One supervised child process: own process group, guarded, output pumped line by line.

A `Child` starts its command through the guard (`punie.launch.guard`) in a
new session, so Ctrl-C on the terminal reaches only `punie up`, and a stop
can signal the whole group: SIGTERM, a grace period, then SIGKILL. Output
lines are prefixed (``server | ...``), handed to a sink (stderr in the CLI),
appended to a log file, kept in a short tail for error messages, and matched
against failure patterns. Log files are size-capped and rotated (`RotatingLog`).

Every child process of every command (up, serve, eval, train) goes through `Child`.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import anyio
from anyio.abc import ByteReceiveStream, Process

from punie.launch.guard import guard_mode, guarded_argv, lifeline_fd

logger = logging.getLogger(__name__)

Sink = Callable[[str], None]
"""Called with each complete output line. A sink that also has a ``partial(text)`` method is
shown a line a child leaves unfinished for a moment (a prompt such as ``punie> ``) early."""
TAIL_LINES = 15
PARTIAL_AFTER = 0.1  # seconds of silence after which an unfinished line is shown
LOG_MAX_BYTES = 10 * 1024 * 1024  # a log file is rotated when it would grow past this
LOG_BACKUPS = 3  # rotated files kept: name.log.1 (newest) .. name.log.3


class RotatingLog:
    """An append-only text log capped at ``max_bytes``, rotated to ``path.1`` .. ``path.N``.

    Written by the supervisor (children write to a pipe, never to the file), so the
    cap holds however chatty a child is.
    """

    def __init__(self, path: str | Path, *, max_bytes: int = LOG_MAX_BYTES, backups: int = LOG_BACKUPS) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: IO[bytes] | None = open(self.path, "ab")  # noqa: SIM115
        self._size = self._fh.tell()

    def write(self, text: str) -> None:
        if self._fh is None:
            return
        data = text.encode("utf-8", errors="replace")
        if self._size and self._size + len(data) > self.max_bytes:
            self._rotate()
        assert self._fh is not None
        self._fh.write(data)
        self._fh.flush()
        self._size += len(data)

    def _rotate(self) -> None:
        assert self._fh is not None
        self._fh.close()
        if self.backups > 0:
            for index in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{index}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{index + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._fh = open(self.path, "wb")  # noqa: SIM115
        self._size = 0

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def process_state(pid: int) -> str | None:
    """The state letter of ``pid`` from /proc (R, S, T for stopped, Z...), or None when unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


GROUP_GONE_TIMEOUT = 10.0  # seconds a stop waits for the group's last process after SIGKILL


def group_alive(pgid: int) -> bool:
    """True while a process of group ``pgid`` still runs. Zombies do not count: the guard's
    watchdog, SIGKILLed with the group, stays a zombie of whoever adopted it until reaped."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    if not os.path.isdir("/proc"):
        return True
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


class StreamSink:
    """A sink writing to a text stream (default: the current sys.stderr), with partial lines.

    Writes happen on a background thread through a bounded queue: when whoever
    reads our stderr (an IDE) stops reading, the supervisor must not block, or
    the children's pipes would fill and the server would hang. Lines that do
    not fit are dropped from the terminal (the log files still have them).
    """

    def __init__(self, stream: IO[str] | None = None, *, max_pending: int = 10_000) -> None:
        self._stream = stream
        self._queue: queue.Queue[str] = queue.Queue(max_pending)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.dropped = 0

    def _put(self, text: str) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="punie-stderr", daemon=True)
                self._thread.start()
        try:
            self._queue.put_nowait(text)
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        while True:
            text = self._queue.get()
            stream = self._stream or sys.stderr
            try:
                stream.write(text)
                stream.flush()
            except (OSError, ValueError):  # stderr closed: keep supervising, the log files have it
                pass
            finally:
                self._queue.task_done()

    def __call__(self, line: str) -> None:
        self._put(line + "\n")

    def partial(self, text: str) -> None:
        self._put(text)

    def flush(self, timeout: float = 1.0) -> None:
        """Wait (at most ``timeout`` seconds) until everything queued was written."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.005)


stderr_sink = StreamSink()


def become_subreaper() -> bool:
    """Make this process the child subreaper of its descendants (Linux PR_SET_CHILD_SUBREAPER).

    Orphans below it (a child's detached grandchildren) are then re-parented here, not to init,
    so `reap_adopted` can end them. False where the kernel has no such thing.
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def reap_adopted(known: set[int] | frozenset[int] = frozenset(), *, grace: float = 0.5) -> list[int]:
    """SIGTERM, then SIGKILL, the processes adopted by this (subreaper) process, and reap them.

    Only direct children that are not in ``known`` (the `Child` processes, reaped by their
    owners) are touched; their own descendants go with their process groups. Returns their pids.
    """
    from punie.net import descendants

    me = os.getpid()
    adopted = []
    for pid in descendants(me):
        if pid == me or pid in known:
            continue
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == me:
            adopted.append(pid)
    # Everything below an adopted process too: it may have its own session and group.
    victims = [p for pid in adopted for p in descendants(pid)]
    for signum in (signal.SIGTERM, signal.SIGKILL):
        for pid in victims:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)
        deadline = time.monotonic() + (grace if signum == signal.SIGTERM else 2.0)
        while time.monotonic() < deadline:
            for pid in victims:  # those re-parented here meanwhile too
                with contextlib.suppress(ChildProcessError, OSError):
                    os.waitpid(pid, os.WNOHANG)
            if not any(process_state(p) not in (None, "Z", "X") for p in victims):
                break
            time.sleep(0.01)
    for pid in victims:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
    return adopted


class Child:
    """A child process in its own process group; see the module docstring.

    ``capture`` is "stdout" (stdout and stderr merged, stdin from /dev/null:
    the server) or "stderr" (stdin and stdout inherited, stderr captured: the
    agent, whose stdout is the ACP stream).
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        log_path: str | None = None,
        sink: Sink = stderr_sink,
        capture: str = "stdout",
        patterns: Mapping[str, str] | None = None,
        on_match: Callable[[str, str], None] | None = None,
        guard: bool = True,
        guard_grace: float = 5.0,
        log_max_bytes: int = LOG_MAX_BYTES,
        log_backups: int = LOG_BACKUPS,
        on_line: Callable[[str], None] | None = None,
        tail_lines: int = TAIL_LINES,
        pass_fds: Sequence[int] = (),
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.log_path = log_path
        self.sink = sink
        self.capture = capture
        self.patterns = dict(patterns or {})
        self.on_match = on_match
        self.guard = guard
        self.guard_grace = guard_grace
        self.log_max_bytes = log_max_bytes
        self.log_backups = log_backups
        #: Set when the child is known not to answer (liveness): a stop then kills it at once.
        self.unresponsive = False
        self.on_line = on_line  # called with every complete output line (no prefix), e.g. to parse progress
        self.pass_fds = tuple(pass_fds)  # descriptors the command inherits (the agent's control channel)
        self.tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
        self.process: Process | None = None
        self.started_at: float | None = None
        self.stopping = False
        self._log: RotatingLog | None = None
        self._pumped = anyio.Event()
        self._shown = ""  # the part of the current line already shown as a partial line
        #: Whether output lines go to the sink; when False they still go to the log file and tail.
        self.echo = True

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def returncode(self) -> int | None:
        return self.process.returncode if self.process else None

    async def start(self) -> None:
        """Start the process (through the guard) in a new session."""
        argv, pass_fds = self.argv, self.pass_fds
        if self.guard:
            fd = lifeline_fd()
            argv = guarded_argv(self.argv, mode=guard_mode(), lifeline=fd, grace=self.guard_grace)
            pass_fds = (*pass_fds, fd)
        if self.log_path:
            self._log = RotatingLog(self.log_path, max_bytes=self.log_max_bytes, backups=self.log_backups)
            self._log.write(f"=== punie: {self.name} started {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                            f"{' '.join(self.argv)}\n")
        kwargs: dict[str, Any] = {"env": self.env, "cwd": self.cwd, "start_new_session": True, "pass_fds": pass_fds}
        if self.capture == "stdout":
            kwargs |= {"stdin": subprocess.DEVNULL, "stdout": subprocess.PIPE, "stderr": subprocess.STDOUT}
        else:
            kwargs |= {"stdin": None, "stdout": None, "stderr": subprocess.PIPE}
        try:
            self.process = await anyio.open_process(argv, **kwargs)
        except OSError:
            self._close_log()
            raise
        self.started_at = time.monotonic()
        logger.info("started %s (pid %s): %s", self.name, self.process.pid, " ".join(self.argv))

    def _stream(self) -> ByteReceiveStream | None:
        assert self.process is not None
        return self.process.stdout if self.capture == "stdout" else self.process.stderr

    def _emit(self, raw: bytes) -> None:
        line = raw.decode("utf-8", errors="replace").rstrip("\r")
        self.tail.append(line)
        if self._shown:
            partial = getattr(self.sink, "partial", None)
            if partial is not None:
                partial(line[len(self._shown):] + "\n")
            self._shown = ""
        elif self.echo:
            self.sink(f"{self.name} | {line}")
        if self._log:
            self._log.write(line + "\n")
        if self.on_line is not None:
            self.on_line(line)
        for pattern, reason in self.patterns.items():
            if pattern in line and self.on_match:
                self.on_match(reason, line)

    def _show_partial(self, raw: bytes) -> None:
        partial = getattr(self.sink, "partial", None)
        if partial is None or not self.echo:
            return
        text = raw.decode("utf-8", errors="ignore")
        if len(text) > len(self._shown):
            partial((f"{self.name} | " if not self._shown else "") + text[len(self._shown):])
            self._shown = text

    async def pump(self) -> None:
        """Copy the child's output line by line until EOF (run as a task)."""
        stream = self._stream()
        buffer = b""
        try:
            if stream is None:
                return
            while True:
                if buffer:
                    with anyio.move_on_after(PARTIAL_AFTER) as scope:
                        chunk = await stream.receive()
                    if scope.cancelled_caught:
                        self._show_partial(buffer)
                        continue
                else:
                    chunk = await stream.receive()
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for raw in lines:
                    self._emit(raw)
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            pass
        finally:
            if buffer:
                self._emit(buffer)
            self._pumped.set()

    async def drained(self, timeout: float) -> None:
        """Wait (at most ``timeout`` seconds) until the output pump has reached EOF."""
        with anyio.move_on_after(timeout):
            await self._pumped.wait()

    async def wait(self) -> int:
        """Wait for the process to exit and return its return code."""
        assert self.process is not None
        return await self.process.wait()

    def signal_group(self, signum: int) -> None:
        """Send ``signum`` to the child's whole process group (no error if it is gone)."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    def frozen(self) -> bool:
        """True when the child cannot act on SIGTERM: stopped (SIGSTOP) or known unresponsive."""
        if self.unresponsive:
            return True
        return self.pid is not None and process_state(self.pid) in ("T", "t")

    async def stop(self, grace: float) -> int | None:
        """SIGTERM the group, wait up to ``grace`` seconds, then SIGKILL it. Returns the return code.

        A frozen child (`frozen`) is SIGKILLed at once: it would only sit out the grace.
        """
        if self.process is None:
            return None
        self.stopping = True
        if self.process.returncode is None and self.frozen():
            logger.warning("%s is frozen: killing it", self.name)
        elif self.process.returncode is None:
            self.signal_group(signal.SIGTERM)
            with anyio.move_on_after(grace):
                await self.process.wait()
            if self.process.returncode is None:
                logger.warning("%s did not stop within %.1fs: killing it", self.name, grace)
        # Also reaches anything the command left behind in its group.
        self.signal_group(signal.SIGKILL)
        rc = await self.process.wait()
        await self._group_gone(GROUP_GONE_TIMEOUT)
        with anyio.move_on_after(0.5):  # let the pump drain what is still in the pipe
            await self._pumped.wait()
        return rc

    async def _group_gone(self, timeout: float) -> None:
        """Wait until no process of the child's group is left (a server's workers, e.g. vLLM's,
        can still be exiting after its main process is gone: SIGKILL is not instantaneous)."""
        assert self.process is not None
        with anyio.move_on_after(timeout):
            while group_alive(self.process.pid):
                await anyio.sleep(0.02)
            return
        logger.warning("%s: processes of its group still exist %.1fs after SIGKILL", self.name, timeout)

    def kill(self) -> None:
        """SIGKILL the group at once (a second Ctrl-C)."""
        self.stopping = True
        self.signal_group(signal.SIGKILL)

    def close(self) -> None:
        """Release the log file and pipes (after the process has exited)."""
        self._close_log()

    def _close_log(self) -> None:
        if self._log:
            self._log.close()
            self._log = None
