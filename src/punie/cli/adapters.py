"""CLI: `punie adapters list` (and `adapters compose`, attached from punie.cli.adapters_compose).

Other modules attach subcommands to the same group::

    from punie.cli.adapters import adapters_group
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from punie.cli._common import echo_json, state_of


@click.group("adapters", invoke_without_command=True)
@click.pass_context
def adapters_group(ctx: click.Context) -> None:
    """LoRA adapters under adapters/ (list; compose several into one)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_command)


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _table(rows: list[list[str]], heads: list[str]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


@adapters_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the adapters as JSON.")
@click.pass_context
def list_command(ctx: click.Context, as_json: bool) -> None:
    """Every adapter under adapters/: base model, rank, layers, size, date, score, fits."""
    from punie.adapters.registry import adapter_fits, adapters_root, list_adapters
    from punie.config import load_profiles

    state = state_of(ctx)
    profiles = load_profiles(config=state.config, overrides=state.overrides)
    project = Path(profiles[0].project_dir) if profiles else Path.cwd()
    infos = list_adapters(project)
    fits: dict[str, dict[str, Any]] = {
        info.name: {p.name: dict(zip(("fits", "reason"), adapter_fits(info, p), strict=True)) for p in profiles}
        for info in infos
    }
    if as_json:
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
            f"{info.score:.2f}" if info.score is not None else "-",
            fit if not info.problem else f"{fit} ({info.problem})",
        ])
    click.echo(_table(rows, ["name", "base model", "rank", "layers", "size", "created", "score", "fits"]))


def register(group: click.Group) -> None:
    """Add the `adapters` group, with `compose` from punie.cli.adapters_compose."""
    from punie.cli.adapters_compose import attach

    if "compose" not in adapters_group.commands:
        attach(adapters_group)
    if "export" not in adapters_group.commands:
        from punie.cli.adapters_peft import attach as attach_peft

        attach_peft(adapters_group)
    group.add_command(adapters_group)
