"""The A/B report of `punie eval A --vs B`: Markdown, with a per-category chart.

The chart is drawn by matplotlib (the ``report`` extra: ``pip install 'punie[report]'``) on its
Agg canvas, through the object API (no pyplot, no global backend switch, no display needed).
Without matplotlib the Markdown is written all the same, with one line saying how to get the
chart.
"""

from __future__ import annotations

import logging
from pathlib import Path

from punie.training.ab import Comparison, EvalReport
from punie.training.stats import PairedComparison

logger = logging.getLogger(__name__)

#: The line the report carries instead of the chart when matplotlib is not installed.
NO_CHART = "Chart not drawn: matplotlib is not installed (`pip install 'punie[report]'` draws it)."
OVERALL = "all cases"


def _pct(x: float) -> str:
    return f"{x:.2f}"


def _signed(x: float) -> str:
    return f"{x:+.3f}"


def _p(p: float) -> str:
    return "1" if p >= 1.0 else f"{p:.3g}" if p >= 1e-4 else f"{p:.1e}"


def _cell(text: str) -> str:
    """Text for a Markdown table cell (a ``|`` in a label would split it)."""
    return text.replace("|", "\\|").replace("\n", " ")


def _row(name: str, c: PairedComparison) -> str:
    d = c.difference
    r = c.record
    return (f"| {_cell(name)} | {c.n} | {_pct(c.baseline_mean)} | {_pct(c.candidate_mean)} | {_signed(d.mean)} | "
            f"[{_signed(d.low)}, {_signed(d.high)}] | {r.wins}/{r.ties}/{r.losses} | "
            f"{c.baseline_passed} → {c.candidate_passed} | {_p(c.mcnemar.p_value)} | {c.verdict} |")


def _comparison_table(comparison: Comparison, baseline: str, candidate: str) -> list[str]:
    conf = f"{comparison.overall.difference.confidence:.0%}"
    lines = [
        f"| category | cases | {_cell(baseline)} | {_cell(candidate)} | difference | {conf} CI | win/tie/loss | "
        "passed | McNemar p | verdict |",
        "| --- | ---: | ---: | ---: | ---: | --- | --- | --- | ---: | --- |",
        _row(f"**{OVERALL}**", comparison.overall),
    ]
    lines += [_row(name, c) for name, c in comparison.categories.items()]
    return lines


def markdown(report: EvalReport, *, chart: str | None = None, chart_note: str | None = None) -> str:
    """The report as Markdown: the verdict, the per-category table, the chart (``chart``: its file name,
    relative to the Markdown file) or ``chart_note`` instead, and every case."""
    base, cand = report.baseline, report.candidate
    lines = [f"# {cand.label} vs {base.label} on {report.suite}", ""]
    if report.greedy is not None:
        o = report.greedy.overall
        d = o.difference
        lines += [
            f"**{cand.label}** scores {_pct(cand.score)} against {_pct(base.score)} for **{base.label}** over "
            f"{o.n} cases: a difference of {_signed(d.mean)}, {d.confidence:.0%} confidence interval "
            f"[{_signed(d.low)}, {_signed(d.high)}] (paired bootstrap, {d.resamples} resamples, seed {d.seed}). "
            f"Verdict: **{o.verdict}**. Cases won/tied/lost: {o.record.wins}/{o.record.ties}/{o.record.losses}; "
            f"passed {o.baseline_passed} → {o.candidate_passed}, McNemar exact p = {_p(o.mcnemar.p_value)}.",
            "",
        ]
    if report.gate is not None:
        mark = "passed" if report.gate.passed else "FAILED"
        lines += [f"Gate `{report.gate.gate}`: **{mark}** ({report.gate.reason}).", ""]
    if report.greedy is not None:
        lines += ["## Per category (greedy answers)", "", *_comparison_table(report.greedy, base.label, cand.label),
                  ""]
    if chart is not None:
        lines += [f"![Per-category scores and differences]({chart})", ""]
    elif chart_note:
        lines += [chart_note, ""]
    if report.sampled is not None:
        temps = f"temperature {cand.temperature} / {base.temperature}"
        lines += [f"## Per category ({report.samples} samples per case, {temps})", "",
                  "A case's score is the mean of its samples; it passes when more than half of them pass.", "",
                  *_comparison_table(report.sampled, base.label, cand.label), ""]
    lines += ["## Cases", "", f"| case | category | {_cell(base.label)} | {_cell(cand.label)} | outcome |",
              "| --- | --- | ---: | ---: | --- |"]
    for o in report.outcomes:
        lines.append(f"| {_cell(o.id)} | {_cell(o.category)} | {_pct(o.baseline)} | {_pct(o.candidate)} | "
                     f"{o.outcome} |")
    lines += ["", "A case passes with full marks. Significance: the interval of the mean difference excludes 0."]
    return "\n".join(lines) + "\n"


def draw_chart(report: EvalReport, path: Path) -> bool:
    """Draw the per-category chart (mean scores of both sides; the difference with its interval) as
    PNG at ``path``. Returns False, drawing nothing, when matplotlib is not installed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    if report.greedy is None:
        return False
    names = [OVERALL, *report.greedy.categories]
    stats = [report.greedy.overall, *report.greedy.categories.values()]
    rows = list(range(len(names)))[::-1]  # the overall row on top
    height = 1.2 + 0.45 * len(names)
    fig = Figure(figsize=(10, height), layout="constrained")
    FigureCanvasAgg(fig)
    scores, diffs = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [3, 2]})
    bar = 0.38
    scores.barh([y + bar / 2 for y in rows], [s.baseline_mean for s in stats], height=bar,
                label=report.baseline.label, color="#9aa5b1")
    scores.barh([y - bar / 2 for y in rows], [s.candidate_mean for s in stats], height=bar,
                label=report.candidate.label, color="#2f6db5")
    scores.set_yticks(rows, [f"{n} ({s.n})" for n, s in zip(names, stats, strict=True)])
    scores.set_xlim(0, 1)
    scores.set_xlabel("mean score")
    scores.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncols=2, frameon=False, fontsize="small")
    for axes in (scores, diffs):  # the overall row apart from the categories
        axes.axhline(rows[0] - 0.5, color="#cccccc", linewidth=0.8)
    colors = {"better": "#2e8b57", "worse": "#c0392b", "inconclusive": "#7f8c8d"}
    for y, s in zip(rows, stats, strict=True):
        d = s.difference
        diffs.errorbar([d.mean], [y], xerr=[[d.mean - d.low], [d.high - d.mean]], fmt="o", capsize=4,
                       color=colors[s.verdict])
    diffs.axvline(0.0, color="black", linewidth=0.8)
    diffs.set_xlim(-1.05, 1.05)
    conf = report.greedy.overall.difference.confidence
    diffs.set_xlabel(f"difference ({report.candidate.label} − {report.baseline.label}), {conf:.0%} CI")
    fig.suptitle(f"{report.candidate.label} vs {report.baseline.label} on {report.suite}")
    fig.savefig(path, format="png", dpi=110)
    return True


def write_markdown(report: EvalReport, path: Path) -> list[Path]:
    """Write the Markdown report at ``path`` and its chart next to it (same name, ``.png``).

    Returns the files written (the chart only when matplotlib drew it).
    """
    chart_path = path.with_suffix(".png")
    drawn = False
    note = NO_CHART
    try:
        drawn = draw_chart(report, chart_path)
    except (OSError, ValueError, RuntimeError) as exc:  # a chart that fails must not lose the report
        logger.warning("the eval chart could not be drawn: %s", exc)
        note = f"Chart not drawn: {exc}"
    path.write_text(markdown(report, chart=chart_path.name if drawn else None, chart_note=note), encoding="utf-8")
    return [path, chart_path] if drawn else [path]


__all__ = ["NO_CHART", "draw_chart", "markdown", "write_markdown"]
