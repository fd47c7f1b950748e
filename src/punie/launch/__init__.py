"""punie.launch: the supervisor behind `punie up`.

    from punie.launch import run_up
    outcome = run_up(resolved_profile)          # check, plan, start, supervise
    plan = run_up(resolved_profile, dry_run=True).plan

`build_plan` is the pure part (what would be started), `supervise` /
`run_plan` the process part (start mlx_lm.server, wait for a real 1-token
completion, start the agent, stop both on exit or signal).
"""

from punie.errors import LaunchFailed, LaunchReason
from punie.launch.plan import LaunchPlan, RestartPolicy, build_plan
from punie.launch.prepare import prepare
from punie.launch.supervisor import UpOutcome, run_plan, run_up, supervise

__all__ = [
    "LaunchFailed",
    "LaunchPlan",
    "LaunchReason",
    "RestartPolicy",
    "UpOutcome",
    "build_plan",
    "prepare",
    "run_plan",
    "run_up",
    "supervise",
]
