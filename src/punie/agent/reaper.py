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

Without /proc (macOS) only the command's process group is signalled.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

PR_SET_CHILD_SUBREAPER = 36


def _subreaper() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


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


def _signal_tree(main: int, pgid_alive: bool, sig: int) -> None:
    if pgid_alive:
        try:
            os.killpg(main, sig)
        except OSError:
            pass
    for pid in descendants(os.getpid()):
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
    lifeline, grace = int(argv[1]), float(argv[2])
    cmd = argv[3:]
    if cmd[:1] == ["--"]:
        cmd = cmd[1:]
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
    while state["code"] is None and not stop["term"]:
        for fd, events in poller.poll(1000):
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
    _signal_tree(pid, state["code"] is None, signal.SIGTERM)
    _signal_tree(pid, state["code"] is None, signal.SIGCONT)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if not _reap(pid, state) and not descendants(os.getpid()):
            break
        time.sleep(0.02)
    while True:
        _signal_tree(pid, state["code"] is None, signal.SIGKILL)
        if not _reap(pid, state) and not descendants(os.getpid()):
            break
        time.sleep(0.005)
    code = state["code"]
    return code if code is not None else 128 + signal.SIGTERM


if __name__ == "__main__":
    sys.exit(main(sys.argv))
