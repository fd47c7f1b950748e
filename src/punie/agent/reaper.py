"""Runs one run_command command and makes sure nothing it started outlives it.

Started by :mod:`punie.agent.procs` as ``python -I -S reaper.py LIFELINE GRACE
-- CMD...`` in a session of its own (so a signal to the agent's process group
does not kill it before it has cleaned up). Standalone on purpose: stdlib
only, no punie import, a few milliseconds to start.

* It makes itself a child subreaper (Linux ``PR_SET_CHILD_SUBREAPER``), so
  every descendant that is orphaned (``setsid cmd &``, ``nohup cmd &``, a
  double fork) is re-parented to it instead of to init: they all stay in its
  process tree, which it can enumerate through ``/proc``.
* It runs the command in its own process group and waits for whichever comes
  first: the command exits, SIGTERM from the agent (timeout, cancel), or EOF on
  the *lifeline*, a pipe whose only write end the agent holds, so EOF means
  the agent is gone however it died (SIGKILL included).
* Then it kills its whole tree: SIGTERM (and SIGCONT, for stopped ones), up to
  GRACE seconds for them to go (no grace when the agent is gone), then SIGKILL
  in rounds until nothing is left and every child is reaped; and exits with
  the command's exit code (128 + signal when it was killed).

Where there is no subreaper (macOS), or when the agent asks for it (``MODE`` ``portable``,
chosen by `punie.mechanisms`, job ``descendants``), a *tracker* takes its place: every
TRACK_INTERVAL seconds it reads the process table through psutil (whose folder the agent
passes, since this runs without site-packages) and remembers, with its start time, every
process below the reaper, in the command's process group or in the reaper's session; the
command's environment also carries a token (``MARK``, ``NAME=value``) that a detached
process keeps, so at the end every process still carrying it is found even if no poll saw
it. All of them are killed the same way. Without psutil only the command's group is signalled.

Usage: ``reaper.py LIFELINE GRACE MODE MARK PSUTIL_DIR -- CMD...`` (MODE: native or portable;
MARK and PSUTIL_DIR may be empty).
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

PR_SET_CHILD_SUBREAPER = 36
TRACK_INTERVAL = 0.1  # seconds between two looks at the process table (portable tracker)


def _subreaper() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


CAP_SYS_PTRACE = 19
PR_CAPBSET_DROP = 24


def _drop_ptrace() -> None:
    """A command run as root loses CAP_SYS_PTRACE (bounding, effective, permitted, inheritable sets),
    so it cannot read the agent's or the supervisor's environment and memory (they are not dumpable:
    punie.mechanisms.hide_environ). Linux only; nothing to do for other users."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        return
    import ctypes

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_CAPBSET_DROP, CAP_SYS_PTRACE, 0, 0, 0)
        header, data = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3
        if libc.capget(ctypes.byref(header), data) == 0:
            keep = ~(1 << CAP_SYS_PTRACE) & 0xFFFFFFFF
            data[0].effective &= keep
            data[0].permitted &= keep
            data[0].inheritable &= keep
            libc.capset(ctypes.byref(header), data)
    except (OSError, AttributeError):
        pass


def descendants(root: int) -> list[int]:
    """Live (not zombie) processes below ``root``, from /proc (empty without /proc)."""
    children: dict[int, list[int]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    live: set[int] = set()
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                data = fh.read()
        except OSError:
            continue
        fields = data[data.rfind(b")") + 2:].split()
        if len(fields) < 2:
            continue
        pid = int(name)
        children.setdefault(int(fields[1]), []).append(pid)
        if fields[0] != b"Z":
            live.add(pid)
    found: list[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return [p for p in found if p in live]


class Tracker:
    """The portable descendant tracker (see the module docstring): psutil polling plus a token."""

    def __init__(self, psutil: object, mark: str) -> None:
        self.psutil = psutil
        self.mark = mark.encode()
        self.me = os.getpid()
        self.session = os.getsid(0)
        self.seen: dict[int, float] = {}  # pid -> create time (a reused pid is not ours)

    def poll(self, main: int) -> None:
        """Remember every process that is ours right now."""
        ps = self.psutil
        parents: dict[int, int] = {}
        times: dict[int, float] = {}
        for proc in ps.process_iter(["ppid", "create_time"]):  # type: ignore[attr-defined]
            info = proc.info
            if info.get("ppid") is None or info.get("create_time") is None:
                continue
            parents[proc.pid] = info["ppid"]
            times[proc.pid] = info["create_time"]
        for pid in parents:
            if pid == self.me or pid in self.seen:
                continue
            ours = self._below(pid, parents)
            if not ours:
                try:
                    ours = os.getpgid(pid) == main or os.getsid(pid) == self.session
                except OSError:
                    continue
            if ours:
                self.seen[pid] = times[pid]

    def _below(self, pid: int, parents: dict[int, int]) -> bool:
        for _ in range(256):
            parent = parents.get(pid)
            if parent is None or parent <= 1:
                return False
            if parent == self.me or parent in self.seen:
                return True
            pid = parent
        return False

    def marked(self) -> None:
        """Add every process whose environment carries the token (detached ones no poll saw)."""
        if not self.mark:
            return
        ps = self.psutil
        for proc in ps.process_iter(["create_time"]):  # type: ignore[attr-defined]
            if proc.pid == self.me or proc.pid in self.seen:
                continue
            try:
                env = proc.environ()
            except Exception:  # psutil.Error: gone, or not ours to read
                continue
            name, _, value = self.mark.decode().partition("=")
            if env.get(name) == value:
                self.seen[proc.pid] = proc.info["create_time"]

    def alive(self) -> list[int]:
        """The remembered processes that still run (same pid and start time, not a zombie)."""
        ps = self.psutil
        out = []
        for pid, created in list(self.seen.items()):
            try:
                proc = ps.Process(pid)  # type: ignore[attr-defined]
                if proc.create_time() != created or proc.status() == ps.STATUS_ZOMBIE:  # type: ignore[attr-defined]
                    raise ProcessLookupError
            except Exception:
                del self.seen[pid]
                continue
            out.append(pid)
        return out


def _tracker(mode: str, mark: str, psutil_dir: str) -> Tracker | None:
    if mode != "portable":
        return None
    if psutil_dir and psutil_dir not in sys.path:
        sys.path.append(psutil_dir)
    try:
        import psutil
    except ImportError:
        return None
    return Tracker(psutil, mark)


def _reap(main: int, state: dict[str, int | None]) -> bool:
    """Reap every exited child; False when no child is left at all."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return False
        if pid == 0:
            return True
        if pid == main:
            code = os.waitstatus_to_exitcode(status)
            state["code"] = code if code >= 0 else 128 - code


def _remaining(tracker: Tracker | None) -> list[int]:
    """Our processes still running: the subreaper's descendants, or what the tracker saw."""
    return descendants(os.getpid()) if tracker is None else tracker.alive()


def _signal_tree(main: int, pgid_alive: bool, sig: int, tracker: Tracker | None = None) -> None:
    if pgid_alive:
        try:
            os.killpg(main, sig)
        except OSError:
            pass
    for pid in _remaining(tracker):
        try:
            os.kill(pid, sig)
        except OSError:
            pass


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except OSError:  # BlockingIOError: nothing more to read
        pass


def main(argv: list[str]) -> int:
    lifeline, grace, mode, mark, psutil_dir = int(argv[1]), float(argv[2]), argv[3], argv[4], argv[5]
    cmd = argv[6:]
    if cmd[:1] == ["--"]:
        cmd = cmd[1:]
    tracker = _tracker(mode, mark, psutil_dir)
    if mode != "portable":
        _subreaper()
    os.set_inheritable(lifeline, False)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    stop = {"term": False}

    def on_stop(signum: int, frame: object) -> None:
        stop["term"] = True

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_stop)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # a handler, so the wakeup fd hears it

    pid = os.fork()
    if pid == 0:  # the command: its own process group, default signal dispositions, then exec
        try:
            os.setpgid(0, 0)
            _drop_ptrace()
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGPIPE,
                        signal.SIGXFSZ):
                signal.signal(sig, signal.SIG_DFL)
            os.execvp(cmd[0], cmd)
        except OSError as exc:
            os.write(2, f"punie: cannot run {cmd[0]}: {exc.strerror}\n".encode())
        os._exit(127)
    try:
        os.setpgid(pid, pid)
    except OSError:
        pass  # the child did it first (or already exec'd)

    state: dict[str, int | None] = {"code": None}
    poller = select.poll()
    poller.register(wake_r, select.POLLIN)
    poller.register(lifeline, select.POLLIN | select.POLLHUP)
    orphaned = False
    timeout = 1000 if tracker is None else int(TRACK_INTERVAL * 1000)
    while state["code"] is None and not stop["term"]:
        if tracker is not None:
            tracker.poll(pid)
        for fd, events in poller.poll(timeout):
            if fd == wake_r:
                _drain(wake_r)
            elif fd == lifeline:
                try:
                    orphaned = events & (select.POLLHUP | select.POLLERR) != 0 or not os.read(lifeline, 1)
                except OSError:
                    orphaned = True
        if orphaned:
            break
        _reap(pid, state)

    # Clean up the whole tree.
    wait = 0.0 if orphaned else grace
    _reap(pid, state)
    if tracker is not None:
        tracker.poll(pid)
        tracker.marked()
    _signal_tree(pid, state["code"] is None, signal.SIGTERM, tracker)
    _signal_tree(pid, state["code"] is None, signal.SIGCONT, tracker)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if not _reap(pid, state) and not _remaining(tracker):
            break
        time.sleep(0.02)
    while True:
        _signal_tree(pid, state["code"] is None, signal.SIGKILL, tracker)
        if tracker is not None:  # what the dying ones started meanwhile
            tracker.poll(pid)
            tracker.marked()
        if not _reap(pid, state) and not _remaining(tracker):
            break
        time.sleep(0.005)
    code = state["code"]
    return code if code is not None else 128 + signal.SIGTERM


if __name__ == "__main__":
    sys.exit(main(sys.argv))
