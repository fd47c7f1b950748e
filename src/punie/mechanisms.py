"""THE table of platform mechanisms: which way each OS-dependent job is done, chosen in one place.

Linux has kernel facilities the other platforms (macOS first) lack: /proc (who holds a socket,
the process tree), ``PR_SET_PDEATHSIG`` and ``PR_SET_CHILD_SUBREAPER``. For each job below there
is a *native* mechanism (those facilities) and a *portable* one (psutil, polling, a pipe watchdog)
that works everywhere. `mechanism` picks one the same way on every platform: the native one
where the kernel has it, else the portable one; ``$PUNIE_MECHANISMS=portable`` forces every
job onto the portable path (``port-owner=portable,descendants=native`` picks per job), so CI on
Linux runs the code macOS users get.

Jobs:

- ``port-owner``: does the process tree of our server hold the socket listening on its port?
  native: /proc/net/tcp inodes against /proc/PID/fd; portable: psutil's per-process connections.
- ``descendants``: keep every process a ``run_command`` command starts (setsid, double fork) in
  reach until the end. native: the reaper is a child subreaper; portable: the reaper polls the
  process table (psutil) for its descendants, process group and session, and marks the command's
  environment with a token it looks for at the end.
- ``guard``: a child dies with the supervisor. native: ``PR_SET_PDEATHSIG`` (plus the watchdog);
  portable: the lifeline watchdog alone (``$PUNIE_GUARD_MODE`` still forces this one, as before).

And one safeguard with no portable equivalent, `hide_environ`: the supervisor and the agent hold the
user's secrets (API keys) in their environment, which a ``run_command`` command could read through
``/proc/<pid>/environ``. See there for what stops whom.
"""

from __future__ import annotations

import os
import sys

from punie import envvars
from punie.procfs import ENV_END, ENV_START, stat_fields

NATIVE = "native"
PORTABLE = "portable"
JOBS = ("port-owner", "descendants", "guard")


def native_available(job: str) -> bool:
    """Whether this platform has the kernel facility the native mechanism of ``job`` needs."""
    linux = sys.platform.startswith("linux")
    if job == "port-owner":
        return linux and os.path.exists("/proc/net/tcp") and os.path.isdir("/proc/self/fd")
    if job in ("descendants", "guard"):
        return linux
    raise ValueError(f"unknown mechanism job {job!r} (one of {', '.join(JOBS)})")


def forced() -> dict[str, str]:
    """The jobs ``$PUNIE_MECHANISMS`` forces: ``portable``/``native`` (all jobs) or ``job=way,...``."""
    raw = os.environ.get(envvars.MECHANISMS, "").strip()
    if not raw:
        return {}
    if raw in (NATIVE, PORTABLE):
        return dict.fromkeys(JOBS, raw)
    out: dict[str, str] = {}
    for item in raw.split(","):
        job, _, way = item.partition("=")
        if job.strip() in JOBS and way.strip() in (NATIVE, PORTABLE):
            out[job.strip()] = way.strip()
    return out


def mechanism(job: str) -> str:
    """``native`` or ``portable`` for ``job``: forced by the environment, else native where available.
    Forcing ``native`` where the kernel lacks the facility still gives ``portable``."""
    available = native_available(job)
    way = forced().get(job)
    if way == PORTABLE or not available:
        return PORTABLE
    return NATIVE


PR_SET_DUMPABLE = 4


def hide_environ() -> bool:
    """Make this process's environment (the user's API keys) unreadable by the commands it runs (Linux).

    Two steps, measured on Linux 6.18 as root and as a user:

    * ``PR_SET_DUMPABLE`` 0: a process of the same user can no longer read ``/proc/<pid>/environ``,
      ``/proc/<pid>/mem`` or ptrace it; a root process only with ``CAP_SYS_PTRACE``, which the
      run_command reaper drops from a command started as root (`punie.agent.reaper`).
    * The kernel still lets root read ``/proc/<pid>/environ`` without CAP_SYS_PTRACE, so the block
      that file shows (the environment this process was started with) is overwritten with zeros,
      after every variable was copied out of it (``setenv``: C code's getenv keeps working; Python's
      ``os.environ`` is a copy anyway).

    What this does not stop: root keeping CAP_SYS_PTRACE (outside Punie), or a command that gains
    capabilities some other way: commands run as the same user, Punie is not a sandbox. macOS has
    neither switch (there only the same user, or root, can read a process's environment).
    Idempotent; True when the environment block was cleared.
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    return _clear_environ_block()


def _clear_environ_block() -> bool:
    try:
        fields = stat_fields("self") or []
        start, end = int(fields[ENV_START]), int(fields[ENV_END])
    except (ValueError, IndexError):
        return False
    if not 0 < start < end or end - start > 1 << 24:
        return False
    for name, value in os.environb.items():  # fresh copies: the block below is no longer pointed to
        os.putenv(name, value)
    try:
        with open("/proc/self/mem", "r+b", buffering=0) as mem:
            mem.seek(start)
            mem.write(b"\0" * (end - start))
    except OSError:
        return False
    return True
