"""CLI: `punie adapters list`, `adapters stamp` (`adapters compose` is attached by punie.cli from adapters_compose)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from punie.cli._common import echo_json, format_option, state_of, table


@click.group("adapters", invoke_without_command=True)
@click.pass_context
def adapters_group(ctx: click.Context) -> None:
    """LoRA adapters under adapters/ (list; stamp with a base identity; compose several into one)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_command)


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


@adapters_group.command("list")
@format_option()
@click.pass_context
def list_command(ctx: click.Context, fmt: str = "text") -> None:
    """Every adapter under adapters/: base model, rank, layers, size, date, score, canary, fits."""
    from punie.adapters.registry import adapters_root, list_adapters
    from punie.config import load_profiles
    from punie.launch.backends import adapter_fits  # each profile's backend rules

    state = state_of(ctx)
    profiles = load_profiles(config=state.config, overrides=state.overrides)
    project = Path(profiles[0].project_dir) if profiles else Path.cwd()
    infos = list_adapters(project)
    fits: dict[str, dict[str, Any]] = {
        info.name: {p.name: dict(zip(("fits", "reason"), adapter_fits(info, p), strict=True)) for p in profiles}
        for info in infos
    }
    if fmt == "json":
        echo_json([info.model_dump(mode="json") | {"fits": fits[info.name]} for info in infos])
        return
    if not infos:
        click.echo(f"no adapters under {adapters_root(project)} (train one with `punie train PROFILE --data DIR`)")
        return
    rows = []
    for info in infos:
        fit = ", ".join(f"{name}:{v['fits']}" for name, v in fits[info.name].items()) or "-"
        rows.append([
            info.name,
            info.base_model or "?",
            str(info.rank) if info.rank is not None else "?",
            str(info.num_layers) if info.num_layers is not None else "?",
            _size(info.size_bytes),
            (info.created or "?")[:16].replace("T", " "),
            _score(info),
            {True: "yes", False: "no", None: "bad"}[info.canary],
            fit if not info.problem else f"{fit} ({info.problem})",
        ])
    heads = ["name", "base model", "rank", "layers", "size", "created", "score", "canary", "fits"]
    click.echo("\n".join(table(heads, rows)))


def _score(info: Any) -> str:
    """``0.80`` or, with its interval (what ``best`` ranks by), ``0.80 [0.70, 0.90]``."""
    if info.score is None:
        return "-"
    if info.score_interval is None:
        return f"{info.score:.2f}"
    low, high = info.score_interval
    return f"{info.score:.2f} [{low:.2f}, {high:.2f}]"


@adapters_group.command("stamp")
@click.argument("name")
@click.option("--base", "profile", required=True, metavar="PROFILE",
              help="Profile whose base model the adapter is for.")
@click.option("--force", is_flag=True, help="Stamp even if the adapter does not fit the base model.")
@click.option("--canary/--no-canary", default=True, show_default=True,
              help="Also record the adapter's canary (computed once with mlx_lm; checked at readiness).")
@click.pass_context
def stamp_command(ctx: click.Context, name: str, profile: str, force: bool, canary: bool) -> None:
    """Record the base model identity and the canary of adapter NAME (one Punie did not train).

    Afterwards `punie check` tells the same base from a different one with the
    same shapes, as for adapters trained by `punie train`, and `punie up` proves
    at readiness that the server applies the adapter (its first-token logprobs).
    """
    from punie.adapters.registry import resolve_adapter, stamp_adapter
    from punie.config import load_profiles
    from punie.errors import CheckFailed, UsageError
    from punie.launch.backends import check_adapter  # the profile's backend rules
    from punie.weights.resolve import resolve_model

    state = state_of(ctx)
    resolved = load_profiles((profile,), config=state.config, overrides=state.overrides)[0]
    if not resolved.profile.model:
        raise UsageError(f"profile {profile!r} names no base model")
    project = Path(resolved.project_dir)
    adapter_dir = resolve_adapter(name, project)
    model_dir = resolve_model(resolved.profile.model, project)
    errors = [p for p in check_adapter(adapter_dir, resolved) if p.severity == "error"]
    if errors and not force:
        lines = "\n".join(f"  {p.render()}" for p in errors[:10])
        raise CheckFailed(f"adapter {name!r} does not fit profile {profile!r}'s base model:\n{lines}\n"
                          "  (use --force to stamp anyway)")
    meta = stamp_adapter(adapter_dir, model_dir, base_spec=resolved.profile.model)
    assert meta.base is not None
    click.echo(f"stamped {adapter_dir}: base {meta.base_model} (weights {meta.base.weights[:12]}, "
               f"shapes {meta.base.shapes[:12]})")
    if canary:
        from punie.launch.stamp import stamp_canary

        recorded = stamp_canary(adapter_dir, model_dir)
        top = ", ".join  # the three likeliest first tokens of each side
        click.echo("  canary, base alone:   " + top(f"{t.text!r} {t.logprob:.2f}" for t in recorded.base[:3]))
        click.echo("  canary, with adapter: " + top(f"{t.text!r} {t.logprob:.2f}" for t in recorded.adapter[:3]))


def register(group: click.Group) -> None:
    """Add the `adapters` group to the top-level group."""
    group.add_command(adapters_group)
