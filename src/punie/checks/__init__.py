"""`punie check`: validate profiles and adapters against their base models before launching.

    from punie.checks import check_profiles
    report = check_profiles(load_profiles())
    report.ok, report.problems, report.to_json()

Never imports mlx and never loads weights: only JSON files and safetensors headers are read.
"""

from __future__ import annotations

from collections.abc import Iterable

from punie.checks.profile import adapter_fits, check_adapter, check_profile, check_profile_report
from punie.checks.report import Problem, ProfileReport, Report
from punie.config.models import ResolvedProfile

__all__ = [
    "Problem",
    "ProfileReport",
    "Report",
    "adapter_fits",
    "check_adapter",
    "check_profile",
    "check_profile_report",
    "check_profiles",
]


def check_profiles(profiles: Iterable[ResolvedProfile]) -> Report:
    """Check every profile and collect all problems in one report (nothing is raised for problems)."""
    from punie.checks.ports import shared_port_problems

    resolved = list(profiles)
    shared = shared_port_problems(resolved)
    reports = [check_profile_report(r) for r in resolved]
    return Report(profiles=[
        r.model_copy(update={"problems": [*r.problems, *shared[r.name]]}) if r.name in shared else r for r in reports
    ])
