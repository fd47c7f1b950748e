"""Orphan-proofing: children of `punie up` die with it, even when it is SIGKILLed.

Every child is started through a tiny guard (`guarded_argv`): ``python -I -S -c
GUARD_CODE PARENT_PID -- CMD...``. On Linux the guard asks the kernel to send
it SIGTERM when its parent dies (``prctl(PR_SET_PDEATHSIG)``, which survives
exec), re-checks that the parent is still the one that started it (closing the
race where the parent died before prctl), then ``execvp``s the real command,
so the pid, process group and signals are the command's own. On every platform
a forked watchdog also stays in the child's process group, blocked on reading a
"lifeline" pipe whose write end only the supervisor holds; when the supervisor
dies, however it dies, the pipe reaches EOF and the watchdog SIGTERMs the group,
waits a grace period, then SIGKILLs the group: a child that ignores SIGTERM (or
workers it spawned, as vLLM does) cannot outlive the supervisor. The watchdog
ignores SIGTERM/SIGINT/SIGHUP, so a normal stop (SIGTERM to the group, then
SIGKILL to the group) ends it last.

The guard is an inline ``-c`` script run with ``-S`` (no site import) so it
costs a few milliseconds (bench/up_overhead.py measures it). To try it by hand:
``python -c 'import subprocess; from punie.launch.guard import guarded_argv;
subprocess.run(guarded_argv(["sleep", "60"]))'`` then kill that python with -9.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from punie import envvars
from punie.limits import STOP_GRACE
from punie.mechanisms import NATIVE, mechanism

# Keep this short and stdlib-only: it runs before every child, without site-packages.
GUARD_CODE = """\
import os, signal, sys, time
parent, lifeline, mode, grace = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
cmd = sys.argv[5:]
if cmd[:1] == ['--']: cmd = cmd[1:]
if mode == 'auto':
    mode = 'pdeathsig' if sys.platform.startswith('linux') else 'watchdog'
if mode == 'pdeathsig':
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        sys.exit(143)
if lifeline >= 0:
    main = os.getpid()
    if os.fork() == 0:
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        try:
            while os.read(lifeline, 1):
                pass
        except OSError:
            pass
        os.killpg(0, signal.SIGTERM)
        end = time.monotonic() + grace
        while time.monotonic() < end and os.getppid() == main:
            time.sleep(0.02)
        os.killpg(0, signal.SIGKILL)
        os._exit(0)
    os.close(lifeline)
try:
    os.execvp(cmd[0], cmd)
except OSError as exc:
    sys.stderr.write(f"punie: cannot start {cmd[0]}: {exc.strerror}\\n")
    sys.exit(127)
"""

_lifeline: tuple[int, int] | None = None


def guard_mode() -> str:
    """``pdeathsig`` where the kernel has it, else ``watchdog`` (`punie.mechanisms`, job ``guard``);
    $PUNIE_GUARD_MODE forces one (tests, debugging), as does $PUNIE_MECHANISMS."""
    forced = os.environ.get(envvars.GUARD_MODE)
    if forced in ("pdeathsig", "watchdog"):
        return forced
    return "pdeathsig" if mechanism("guard") == NATIVE else "watchdog"


def lifeline_fd() -> int:
    """Read end of a pipe whose write end only this process holds: EOF there means we died.

    Created once per process; neither end is inherited except where passed explicitly
    (``pass_fds``), so the write end closes exactly when this process exits, however it exits.
    """
    global _lifeline
    if _lifeline is None:
        _lifeline = os.pipe()
    return _lifeline[0]


def guarded_argv(
    argv: Sequence[str],
    *,
    parent_pid: int | None = None,
    python: str | None = None,
    mode: str = "auto",
    lifeline: int = -1,
    grace: float = STOP_GRACE,
) -> list[str]:
    """``argv`` wrapped in the guard, so the command dies when ``parent_pid`` (default: us) dies.

    ``mode`` is pdeathsig, watchdog or auto. With a ``lifeline`` (see `lifeline_fd`; the
    caller must pass it to the child, pass_fds) a watchdog also stays in the child's
    process group: when the lifeline reaches EOF it SIGTERMs the group, waits up to
    ``grace`` seconds for the command to exit, then SIGKILLs the whole group (a child
    that ignores SIGTERM, and workers the command spawned, included).
    """
    pid = os.getpid() if parent_pid is None else parent_pid
    return [python or sys.executable, "-I", "-S", "-c", GUARD_CODE, str(pid), str(lifeline), mode, repr(float(grace)),
            "--", *argv]
