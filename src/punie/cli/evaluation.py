"""CLI: `punie eval A [--vs B] [--samples K] [--gate better|not-worse]`: the paired A/B of two profiles."""

from __future__ import annotations

from typing import Any

import click

from punie.cli._common import complete_profiles, echo_json, format_option, say, set_option, state_of


def _load(ctx: click.Context, name: str | None, overrides: tuple[str, ...]) -> Any:
    from punie.api import load_profile

    state = state_of(ctx)
    return load_profile(name, state.config, overrides=state.with_overrides(overrides))


def _fmt(score: float | None) -> str:
    return "-" if score is None else f"{score:.2f}"


def _table(heads: tuple[str, ...], rows: list[tuple[str, ...]], *, numbers: set[int],
           footer: tuple[str, ...] | None = None) -> list[str]:
    """Columns padded to their widest cell, the ``numbers`` columns right-aligned; ``footer`` below a rule."""
    every = [*rows, *([footer] if footer else [])]
    widths = [max(len(heads[i]), *(len(r[i]) for r in every)) for i in range(len(heads))]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c.rjust(w) if i in numbers else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    rule = "  ".join("-" * w for w in widths if w).rstrip()
    lines = [line(heads), rule, *(line(r) for r in rows)]
    if footer:
        lines += [rule, line(footer)]
    return lines


def _comparison_rows(comparison: Any) -> list[tuple[str, ...]]:
    from punie.api.training import OVERALL

    rows = []
    for name, c in [(OVERALL, comparison.overall), *comparison.categories.items()]:
        d, r = c.difference, c.record
        rows.append((name, str(c.n), _fmt(c.baseline_mean), _fmt(c.candidate_mean), f"{d.mean:+.3f}",
                     f"[{d.low:+.3f}, {d.high:+.3f}]", f"{r.wins}/{r.ties}/{r.losses}",
                     f"{c.baseline_passed}->{c.candidate_passed}", f"{c.mcnemar.p_value:.3g}", c.verdict))
    return rows


def render_report(report: Any) -> str:
    """The A/B of an EvalReport as text: every case, every category with its statistics, the verdict."""
    base, cand = report.baseline, report.candidate
    outcomes = {o.id: o for o in report.outcomes}
    rows = []
    for b, c in zip(base.cases, cand.cases, strict=True):
        o = outcomes.get(c.id)
        rows.append((c.id, o.category if o else "", _fmt(b.score), _fmt(c.score), o.outcome if o else "",
                     (c.error or b.error or "")[:40]))
    heads = ("case", "category", base.label, cand.label, "outcome", "")
    lines = _table(heads, rows, numbers={2, 3}, footer=("total", "", _fmt(base.score), _fmt(cand.score), "", ""))
    stat_heads = ("category", "cases", base.label, cand.label, "diff", "95% CI", "W/T/L", "passed", "McNemar p",
                  "verdict")
    for title, comparison in (("greedy", report.greedy), (f"{report.samples} samples per case", report.sampled)):
        if comparison is None:
            continue
        confidence = f"{comparison.overall.difference.confidence:.0%} CI"
        lines += ["", f"per category ({title}):",
                  *_table((*stat_heads[:5], confidence, *stat_heads[6:]), _comparison_rows(comparison),
                          numbers={1, 2, 3, 4, 8})]
    lines.append("")
    summary = (f"suite {report.suite}: {cand.label} {_fmt(cand.score)} vs {base.label} {_fmt(base.score)} "
               f"({report.delta:+.2f})")
    if report.greedy is not None:
        d = report.greedy.overall.difference
        summary += f", {d.confidence:.0%} CI [{d.low:+.2f}, {d.high:+.2f}]: {report.greedy.overall.verdict}"
    lines.append(summary)
    if report.gate is not None:
        lines.append(f"gate {report.gate.gate}: {'passed' if report.gate.passed else 'FAILED'} ({report.gate.reason})")
    if report.stored_in:
        lines.append(f"score recorded in {report.stored_in}/punie-adapter.json")
    if report.files:
        lines.append("report: " + ", ".join(report.files))
    if report.saved_to:
        lines.append(f"results written to {report.saved_to}")
    return "\n".join(lines)


@click.command("eval")
@click.argument("profile", required=False, shell_complete=complete_profiles)
@click.option("--vs", "vs", metavar="OTHER", shell_complete=complete_profiles,
              help="Baseline profile (default: PROFILE without its adapter).")
@click.option("--suite", "suite", metavar="NAME|FILE", help="Eval suite (default: the shipped tool-calling suite).")
@click.option("--samples", type=click.IntRange(min=0), default=0, show_default=True, metavar="K",
              help="Also ask every case K times at each profile's temperature (agent.temperature, else "
                   "server.temperature, else 0.7) and compare the per-case means.")
@click.option("--gate", type=click.Choice(["better", "not-worse"]),
              help="CI gate: exit 1 unless PROFILE is significantly better than the baseline (better), or when it "
                   "is significantly worse (not-worse); significant: the 95% CI of the mean difference of the greedy "
                   "answers excludes 0.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the bootstrap and of the samples (the report is reproducible).")
@click.option("--record", is_flag=True,
              help="Record the score and its interval in the adapter's punie-adapter.json (adapter = \"best\" ranks "
                   "by the interval's lower bound).")
@click.option("--no-store", is_flag=True, hidden=True, help="Deprecated: the score is recorded only with --record.")
@format_option("json: the report as JSON.")
@set_option("adapter=latest")
@click.pass_context
def eval_command(ctx: click.Context, profile: str | None, vs: str | None, suite: str | None, samples: int,
                 gate: str | None, seed: int, record: bool, no_store: bool, fmt: str,
                 overrides: tuple[str, ...]) -> None:
    """Score PROFILE (with its adapter) against a baseline on an eval suite: a paired A/B.

    Both are served in turn on a free port and answer the same cases (greedy;
    with --samples K also K sampled answers each). The report gives win/tie/loss,
    the mean score difference with a paired bootstrap 95% confidence interval and
    McNemar's exact test on pass/fail, per case, per category and overall. It is
    written under .punie/eval/ as PROFILE-vs-OTHER-TIME.json, .md and a .png
    chart (with matplotlib: pip install 'punie[report]'). Progress goes to stderr.
    """
    from punie.api import evaluate
    from punie.api.training import eval_results_dir
    from punie.errors import GateFailed

    as_json = fmt == "json"
    resolved = _load(ctx, profile, overrides)
    other = _load(ctx, vs, overrides) if vs else None

    def progress(event: Any) -> None:
        if event.kind in ("server", "case"):
            say(event.describe())

    result = evaluate(resolved, baseline=other or True, suite=suite, record=record and not no_store,
                      on_event=progress, results_dir=eval_results_dir(resolved),
                      samples=samples, gate=gate, seed=seed)
    report = result.report
    if as_json:
        echo_json(report.model_dump(mode="json") | {"delta": report.delta})
    else:
        click.echo(render_report(report))
    if report.gate is not None and not report.gate.passed:
        raise GateFailed(f"gate {report.gate.gate} failed: {report.gate.reason}",
                         hint="the report above has the per-category numbers")


def register(group: click.Group) -> None:
    """Add `eval` to the top-level group."""
    group.add_command(eval_command)
