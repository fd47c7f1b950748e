"""Run a LaunchPlan (JSON file) with the real supervisor in its own process: tests send it signals.

    run_plan.py PLAN.json [GRACE]
"""

import sys

from punie.launch import LaunchPlan, run_plan
from punie.launch.supervisor import LaunchFailed

plan = LaunchPlan.model_validate_json(open(sys.argv[1]).read())
grace = float(sys.argv[2]) if len(sys.argv) > 2 else 5.0
try:
    outcome = run_plan(plan, grace=grace, subreaper=True)
except LaunchFailed as exc:
    sys.stderr.write(f"LAUNCH-FAILED {exc.reason}: {exc}\n")
    sys.exit(1)
sys.stderr.write(f"OUTCOME {outcome.reason} {outcome.exit_code}\n")
sys.exit(outcome.exit_code)
