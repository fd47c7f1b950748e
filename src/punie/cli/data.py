"""CLI: `punie data from-sessions` (training data from the agent's sessions) and `punie data stats DIR`."""

from __future__ import annotations

from typing import Any

import click

from punie.cli._common import echo_json, format_option, say, state_of


def _report_lines(report: Any, out: str) -> list[str]:
    lines = [f"wrote {report.train} train and {report.valid} valid examples to {out} "
             f"({len(report.train_sessions)}/{len(report.valid_sessions)} sessions)",
             f"sessions: {report.sessions_read} read, {report.sessions_filtered} filtered out, "
             f"{len(report.sessions_unreadable)} unreadable; turns: {report.turns}, duplicates removed: "
             f"{report.duplicates}"]
    if report.dropped_turns:
        lines.append("turns left out: " + ", ".join(f"{k} {v}" for k, v in report.dropped_turns.items()))
    if report.scrubbed:
        lines.append("secrets scrubbed: " + ", ".join(f"{k} {v}" for k, v in report.scrubbed.items()))
    for name, why in report.sessions_unreadable.items():
        lines.append(f"skipped {name}: {why}")
    return lines


def _stats_lines(stats: Any) -> list[str]:
    lines = [f"{stats.path} (token lengths: {stats.tokens_by})"]
    for name, split in stats.splits.items():
        tok = split.tokens
        lengths = (f"tokens min {tok.min} median {tok.median:g} mean {tok.mean:g} p95 {tok.p95} max {tok.max}"
                   if tok else "no rows")
        lines.append(f"{name}: {split.rows} rows, {split.duplicates} duplicates; {lengths}")
        lines.append("  " + ", ".join(f"{tool} {n}" for tool, n in split.tools.items()))
    if stats.shared:
        lines.append(f"warning: {stats.shared} validation/test rows are also in train")
    return lines


def register(group: click.Group) -> None:
    """Add `data` and its subcommands to the top-level group."""

    @group.group("data")
    def data() -> None:
        """Training data: from your own sessions, and what a data directory holds."""

    @data.command("from-sessions")
    @click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Data directory to write.")
    @click.option("--project", type=click.Path(file_okay=False, exists=True), default=".", show_default=True,
                  help="Project whose .punie/sessions/ are read.")
    @click.option("--since", metavar="DATE", help="Only sessions updated at or after this ISO date(-time).")
    @click.option("--profile", "profile", help="Only sessions that ran with this profile.")
    @click.option("--valid-fraction", type=click.FloatRange(0.0, 0.9), default=0.2, show_default=True,
                  help="About this share of sessions goes to valid.jsonl.")
    @format_option("json: the report as JSON.")
    @click.pass_context
    def from_sessions(ctx: click.Context, out: str, project: str, since: str | None, profile: str | None,
                      valid_fraction: float, fmt: str) -> None:
        """Turn the agent's sessions into mlx_lm chat+tools training data.

        Turns whose tool calls all ran and were allowed become examples; turns with a
        refused, failed, malformed or cancelled call are left out and counted.
        Secret-looking strings are replaced. The split is by session.
        """
        from punie.api.training import sessions_dataset

        report = sessions_dataset(project, out, tools=_profile_tools(ctx, profile), since=since, profile=profile,
                                  valid_fraction=valid_fraction)
        if fmt == "json":
            echo_json(report.model_dump(mode="json"))
            return
        for line in _report_lines(report, out):
            click.echo(line)

    @data.command("generate")
    @click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Data directory to write.")
    @click.option("--train", "train", type=click.IntRange(min=1), default=1200, show_default=True,
                  help="Training rows (about).")
    @click.option("--valid", "valid", type=click.IntRange(min=1), default=120, show_default=True,
                  help="Validation rows (about).")
    @click.option("--seed", type=int, default=0, show_default=True, help="Random seed (same seed, same data).")
    @click.option("--suite", metavar="NAME|FILE", help="Eval suite whose system prompt and tools the rows use and "
                  "whose prompts are held out (default: the shipped tool-calling suite).")
    def generate(out: str, train: int, valid: int, seed: int, suite: str | None) -> None:
        """Generate tool-calling training data from templates (never the eval prompts)."""
        from punie.api.training import generate_dataset

        counts = generate_dataset(out, train=train, valid=valid, seed=seed, suite=suite)
        click.echo(f"wrote {counts['train']} train and {counts['valid']} valid rows to {out}")

    @data.command("stats")
    @click.argument("directory", type=click.Path(file_okay=False))
    @click.option("--model", "model", type=click.Path(file_okay=False, exists=True),
                  help="Count tokens with this model's tokenizer and chat template (default: an estimate).")
    @format_option("json: the numbers as JSON.")
    def stats(directory: str, model: str | None, fmt: str) -> None:
        """Rows, tool calls per tool, token lengths and duplicates of a data directory."""
        from punie.api.training import data_stats

        result = data_stats(directory, model)
        if fmt == "json":
            echo_json(result.model_dump(mode="json"))
            return
        for line in _stats_lines(result):
            click.echo(line)


def _profile_tools(ctx: click.Context, profile: str | None) -> list[str] | None:
    """The tools the named profile's agent offers (None: every tool, when there is no such profile)."""
    if profile is None:
        return None
    from punie.api import load_profile
    from punie.errors import PunieError

    state = state_of(ctx)
    try:
        return list(load_profile(profile, state.config, overrides=state.with_overrides(())).profile.agent.tools)
    except PunieError as exc:
        say(f"note: profile '{profile}' not loaded ({exc.render()}): every tool is offered in the examples")
        return None
