"""The words of `punie up` failures: what failed, why, and the last log lines."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from punie.launch.backends import backend_of
from punie.launch.plan import LaunchPlan

_LOG_PREFIX = re.compile(r"^\s*(\d{4}-\d\d-\d\d[ T][\d:,.]+\s*-\s*)?([A-Z]+\s*-\s*|[A-Z]+:[\w.]*:)?")


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_TAG = re.compile(r"^\[(WARN|ERROR|INFO)\]\s*")


def strip_log_prefix(line: str) -> str:
    """``2026-01-01 10:00:00,123 - ERROR - text``, ``ERROR:root:text`` or mlx.launch's colored
    ``[WARN] text`` -> ``text``."""
    line = _TAG.sub("", _ANSI.sub("", line).strip())
    return _LOG_PREFIX.sub("", line, count=1).strip()


_DIED = "generation thread died"

#: reason -> the headline of that failure, from (where, detail, plan); one table, as uvicorn maps names.
_HEADLINES: dict[str, Callable[[str, str, LaunchPlan], str]] = {
    "adapter-failed": lambda where, detail, plan: (
        f"{where}: the adapter {plan.adapter} did not load ({detail or _DIED})"),
    "adapter-not-applied": lambda where, detail, plan: (
        f"{where}: {detail}; refused: nothing is started on a server without its adapter"),
    "generation-failed": lambda where, detail, plan: f"{where}: the model did not load ({detail or _DIED})",
    "port-busy": lambda where, detail, plan: f"{where}: port {plan.port} is already in use ({detail})",
    "foreign-server": lambda where, detail, plan: f"{where}: {detail}; not starting the agent against it",
    "server-unresponsive": lambda where, detail, plan: f"{where} stopped answering: {detail}",
    "ready-timeout": lambda where, detail, plan: (
        f"{where} did not answer a 1-token completion within {plan.ready_timeout:g}s"),
}


def headline(reason: str, detail: str, plan: LaunchPlan) -> str:
    """One line naming the server and the cause (``reason`` is a LaunchFailed/UpOutcome code)."""
    where = plan.server_url if plan.external else f"{plan.engine} on {plan.server_url}"
    if (make := _HEADLINES.get(reason)) is not None:
        return make(where, detail, plan)
    return f"{where}: {detail}" if detail else f"{where} failed ({reason})"


def hint(reason: str, plan: LaunchPlan) -> str | None:
    """What to do about a failure, when there is something obvious."""
    backend = backend_of(plan)
    if (own := backend.hint(reason, plan)) is not None:  # the engine's word first (adapter-not-applied...)
        return own
    if reason == "adapter-failed":
        return "the adapter does not fit the base model: run `punie check` on this profile"
    if reason == "model-not-served":
        base = backend.model_ids(plan)[1]
        return (f"the server serves other model ids (GET {plan.base_url}/models lists them); a server Punie did "
                f"not start must serve the base as {base or 'base'!r} and each profile's LoRA under "
                "the profile's name")
    if reason == "port-busy":
        return "stop the other server, or pick another port: --set server.port=PORT"
    if reason == "foreign-server":
        return "another server took the port: stop it, or pick another port: --set server.port=PORT"
    if reason == "ready-timeout":
        return "a large model may need more time: --set server.readiness.timeout=SECONDS"
    return None


def quote(lines: Sequence[str], name: str, log: str | None) -> str:
    """The last log lines of a child, indented, naming the full log file."""
    if not lines:
        return ""
    where = f" ({log})" if log else ""
    return f"\n  last {name} log lines{where}:\n" + "\n".join(f"    {line}" for line in lines)
