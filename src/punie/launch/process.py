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
import stat
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
from punie.limits import COMMAND_GRACE, STOP_GRACE
from punie.mechanisms import hide_environ
from punie.procfs import PGRP, STATE, all_stats, parent_pid, process_state

logger = logging.getLogger(__name__)

Sink = Callable[[str], None]
"""Called with each complete output line. A sink that also has a ``partial(text)`` method is
shown a line a child leaves unfinished for a moment (a prompt such as ``punie> ``) early."""
TAIL_LINES = 15
PARTIAL_AFTER = 0.1  # seconds of silence after which an unfinished line is shown
LOG_MAX_BYTES = 10 * 1024 * 1024  # a log file is rotated when it would grow past this
LOG_BACKUPS = 3  # rotated files kept: name.log.1 (newest) .. name.log.3
#: A longer output line is cut to its first LINE_MAX_BYTES bytes (the rest is counted, never held in
#: memory), so a child writing 100 MB without a newline costs the supervisor a bounded amount of memory.
LINE_MAX_BYTES = 64 * 1024


class RotatingLog:
    """An append-only text log capped at ``max_bytes``, rotated to ``path.1`` .. ``path.N``.

    Written by the supervisor (children write to a pipe, never to the file), so the
    cap holds however chatty a child is. A log is a witness, never a reason to stop:
    no method raises OSError. A write that fails (full disk, EIO, a file that cannot be
    opened) drops that text, counts it (``dropped_lines``, ``dropped_bytes``) and calls
    ``on_problem`` once with what went wrong; later writes are tried again, so the log
    resumes when the disk has room again. Only a regular file is ever rotated.
    """

    def __init__(self, path: str | Path, *, max_bytes: int = LOG_MAX_BYTES, backups: int = LOG_BACKUPS,
                 on_problem: Callable[[str], None] | None = None) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self.on_problem = on_problem
        self.dropped_lines = 0
        self.dropped_bytes = 0
        self.problem: str | None = None  # the first failure, said once
        self._fd: int | None = None
        self._regular = False
        self._size = 0
        self._closed = False
        self._open(append=True)

    def _open(self, *, append: bool) -> bool:
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_APPEND if append else os.O_TRUNC)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, flags, 0o644)
            self._size = os.fstat(self._fd).st_size
            self._regular = stat.S_ISREG(os.fstat(self._fd).st_mode)
        except OSError as exc:
            self._fd = None
            self._failed("cannot open", exc)
            return False
        return True

    def _failed(self, what: str, exc: OSError) -> None:
        if self.problem is None:
            self.problem = f"{what} {self.path}: {exc.strerror or exc}"
            if self.on_problem is not None:
                with contextlib.suppress(Exception):  # a broken reporter must not break the pump either
                    self.on_problem(f"{self.problem}: lines are dropped (the output is still drained)")

    def _drop(self, size: int) -> None:
        self.dropped_lines += 1
        self.dropped_bytes += size

    def write(self, text: str) -> None:
        """Append ``text`` (one line); on failure count it as dropped. Never raises OSError."""
        if self._closed:
            return
        data = text.encode("utf-8", errors="replace")
        if self._fd is None and not self._open(append=True):
            self._drop(len(data))
            return
        if self._size and self._size + len(data) > self.max_bytes and self._regular:
            self._rotate()
            if self._fd is None:
                self._drop(len(data))
                return
        assert self._fd is not None
        view = memoryview(data)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
                self._size += written
        except OSError as exc:
            self._failed("cannot write", exc)
            self._drop(len(view))

    def _rotate(self) -> None:
        assert self._fd is not None
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._fd = None
        try:
            if self.backups > 0:
                for index in range(self.backups - 1, 0, -1):
                    older = self.path.with_name(f"{self.path.name}.{index}")
                    if older.exists():
                        os.replace(older, self.path.with_name(f"{self.path.name}.{index + 1}"))
                os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        except OSError as exc:
            self._failed("cannot rotate", exc)
        self._open(append=False)

    def close(self) -> None:
        """Close the file, writing a last line that says what was dropped (if it can). Never raises."""
        if self._closed:
            return
        if self.dropped_lines and self._fd is not None:
            note = f"=== punie: {self.dropped_lines} log lines ({self.dropped_bytes} bytes) were dropped ===\n"
            with contextlib.suppress(OSError):
                os.write(self._fd, note.encode())
        self._closed = True
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.close(fd)


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
    return any(fields[PGRP] == str(pgid) and fields[STATE] not in ("Z", "X") for _, fields in all_stats())


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


def reap_adopted(known: set[int] | frozenset[int] = frozenset(), *, grace: float = COMMAND_GRACE) -> list[int]:
    """SIGTERM, then SIGKILL, the processes adopted by this (subreaper) process, and reap them.

    Only direct children that are not in ``known`` (the `Child` processes, reaped by their
    owners) are touched; their own descendants go with their process groups. Returns their pids.
    """
    from punie.net import descendants

    me = os.getpid()
    adopted = []
    for pid in descendants(me):
        if pid != me and pid not in known and parent_pid(pid) == me:
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


def _append_capped(head: bytearray, chunk: bytes, start: int, end: int) -> int:
    """Append ``chunk[start:end]`` to ``head`` up to LINE_MAX_BYTES; the number of bytes left out."""
    room = max(LINE_MAX_BYTES - len(head), 0)
    take = min(room, end - start)
    head += chunk[start:start + take]
    return end - start - take


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
        guard_grace: float = STOP_GRACE,
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
        hide_environ()  # the user's secrets in our environment: not readable by what the children run
        if self.guard:
            fd = lifeline_fd()
            argv = guarded_argv(self.argv, mode=guard_mode(), lifeline=fd, grace=self.guard_grace)
            pass_fds = (*pass_fds, fd)
        if self.log_path:
            self._log = RotatingLog(self.log_path, max_bytes=self.log_max_bytes, backups=self.log_backups,
                                    on_problem=self._log_problem)
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

    def _emit(self, raw: bytes, cut: int = 0) -> None:
        line = raw.decode("utf-8", errors="replace").rstrip("\r")
        if cut:
            line += f" [punie: line truncated, {cut} more bytes dropped]"
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
        """Copy the child's output line by line until EOF (run as a task).

        Never stops before EOF because of where the lines go (the log file handles its own
        failures), and holds at most LINE_MAX_BYTES of an unfinished line: the rest of a
        longer line is counted and dropped (the line is marked as truncated).
        """
        stream = self._stream()
        head = bytearray()  # the current line so far (capped)
        cut = 0  # bytes of the current line dropped past the cap
        try:
            if stream is None:
                return
            while True:
                if head or cut:
                    with anyio.move_on_after(PARTIAL_AFTER) as scope:
                        chunk = await stream.receive()
                    if scope.cancelled_caught:
                        self._show_partial(bytes(head))
                        continue
                else:
                    chunk = await stream.receive()
                start = 0
                while (newline := chunk.find(b"\n", start)) >= 0:
                    cut += _append_capped(head, chunk, start, newline)
                    self._emit(bytes(head), cut)
                    head.clear()
                    cut = 0
                    start = newline + 1
                cut += _append_capped(head, chunk, start, len(chunk))
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            pass
        finally:
            if head or cut:
                self._emit(bytes(head), cut)
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

    def _log_problem(self, message: str) -> None:
        """Said once per log (RotatingLog.on_problem): the output goes on being drained and shown."""
        logger.warning("%s log: %s", self.name, message)
        self.sink(f"punie | {self.name} log: {message}")

    def _close_log(self) -> None:
        log, self._log = self._log, None
        if log is not None:
            log.close()
            if log.dropped_lines:
                logger.warning("%s: %d log lines (%d bytes) were dropped: %s", self.name, log.dropped_lines,
                               log.dropped_bytes, log.problem)
