"""The result of `punie check`: problems per profile, rendered as text or JSON."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from punie.findings import Severity

#: Problems of one kind in one file: how many a report keeps before "... and N more like this".
GROUP_LIMIT = 50
TEXT_GROUP_LIMIT = GROUP_LIMIT


class Problem(BaseModel):
    """One problem: which profile, how bad, a stable code, the place, and what is wrong."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    profile: str
    severity: Severity
    code: str
    where: str | None
    message: str

    def render(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message


class ProfileReport(BaseModel):
    """The checks of one profile: what passed, what is wrong, and the paths it resolved to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    model_path: str | None = None
    adapter_path: str | None = None
    passed: list[str] = Field(default_factory=list)
    problems: list[Problem] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(p.severity == "error" for p in self.problems)


class Report(BaseModel):
    """All profiles checked in one run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    profiles: list[ProfileReport] = Field(default_factory=list)

    @property
    def problems(self) -> list[Problem]:
        return [p for prof in self.profiles for p in prof.problems]

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_json(self) -> dict[str, Any]:
        """``{"ok", "profiles": [{"name", "ok", "model_path", "adapter_path", "passed", "problems"}]}``."""
        return {
            "ok": self.ok,
            "profiles": [
                {
                    "name": prof.name,
                    "ok": prof.ok,
                    "model_path": prof.model_path,
                    "adapter_path": prof.adapter_path,
                    "passed": list(prof.passed),
                    "problems": [p.model_dump() for p in prof.problems],
                }
                for prof in self.profiles
            ],
        }

    def render_text(self, *, limit: int = TEXT_GROUP_LIMIT) -> str:
        """One block per profile with a line per passed check and per problem.

        Repeated problems with one code in one file are summarised after ``limit``
        lines (``... and 12 more``); the JSON output lists all of them.
        """
        lines: list[str] = []
        for prof in self.profiles:
            status = "ok" if prof.ok else "FAILED"
            lines.append(f"profile {prof.name}: {status}")
            lines += [f"  ✓ {text}" for text in prof.passed]
            groups: dict[tuple[str, str, str], list[Problem]] = defaultdict(list)
            for problem in prof.problems:
                file = (problem.where or "").split(": ", 1)[0]
                groups[(problem.severity, problem.code, file)].append(problem)
            for (severity, _code, _file), items in groups.items():
                mark = "✗" if severity == "error" else "!"
                label = "" if severity == "error" else "warning: "
                capped = [p for p in items if not p.message.startswith("... and ")]
                already = sum(int(p.message.split()[2]) for p in items if p.message.startswith("... and "))
                lines += [f"  {mark} {label}{p.render()}".replace("\n", "\n    ") for p in capped[:limit]]
                more = len(capped) - min(len(capped), limit) + already
                if more:
                    lines.append(f"    ... and {more} more like this")
        errors, warnings = len(self.errors), len(self.warnings)
        summary = f"{len(self.profiles)} profile(s) checked: {errors} error(s), {warnings} warning(s)"
        lines.append(summary)
        return "\n".join(lines)
