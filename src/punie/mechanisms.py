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
"""

from __future__ import annotations

import os
import sys

from punie import envvars

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
