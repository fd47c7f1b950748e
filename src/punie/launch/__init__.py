"""punie.launch: the supervisor behind `punie up`.

    from punie.launch import run_up
    outcome = run_up(resolved_profile)          # check, plan, start, supervise
    plan = run_up(resolved_profile, dry_run=True).plan

`punie.launch.backends` holds the engines (one table, one module each) and their pure plan
builders (what would be started); `supervise` / `run_plan` are the process part (start the
server, wait for a real 1-token completion, start the agent, stop both on exit or signal).
The backends are imported here (a `LaunchPlan` is complete once they are); the supervisor
only when asked for, so `punie check` does not pay for it.
"""

from typing import Any

from punie.errors import LaunchFailed, LaunchReason
from punie.launch.backends import BACKENDS, backend_of
from punie.launch.backends.mlx import build_plan
from punie.launch.plan import LaunchPlan, RestartPolicy
from punie.launch.prepare import prepare  # the function shadows the submodule's name, as it always did

__all__ = [
    "BACKENDS",
    "LaunchFailed",
    "LaunchPlan",
    "LaunchReason",
    "RestartPolicy",
    "UpOutcome",
    "backend_of",
    "build_plan",
    "prepare",
    "run_plan",
    "run_up",
    "supervise",
]

_LAZY = {"UpOutcome": "punie.launch.supervisor",
         "run_plan": "punie.launch.supervisor", "run_up": "punie.launch.supervisor",
         "supervise": "punie.launch.supervisor"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'punie.launch' has no attribute {name!r}")
