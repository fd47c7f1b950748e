"""CLI: `punie adapters compose A B --out DIR` (attached to the `adapters` group by its owner)."""

from __future__ import annotations

from pathlib import Path

import click

from punie.cli._common import complete_adapters, echo_json, format_option, state_of
from punie.errors import UsageError


def parse_part(text: str) -> tuple[str, float]:
    """``SPEC`` or ``SPEC:WEIGHT`` (the weight is what follows the last colon, if it is a number)."""
    spec, sep, tail = text.rpartition(":")
    if sep and spec:
        try:
            return spec, float(tail)
        except ValueError:
            pass
    return text, 1.0


def _resolve(spec: str, project_dir: Path) -> Path:
    direct = Path(spec).expanduser()
    if direct.is_dir():
        return direct
    from punie.adapters.compose import resolve_refs
    from punie.config.models import AdapterRef

    return resolve_refs([AdapterRef(path=spec)], project_dir)[0][0]


@click.command("compose")
@click.argument("adapters", nargs=-1, required=True, metavar="ADAPTER[:WEIGHT]...", shell_complete=complete_adapters)
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Directory to write.")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
@format_option("json: the composed adapter's config.")
@click.option("--base", "base", metavar="PROFILE",
              help="Also record the composed adapter's canary on this profile's model (needs mlx).")
@click.pass_context
def compose_command(ctx: click.Context, adapters: tuple[str, ...], out: str, force: bool, fmt: str,
                    base: str | None) -> None:
    """Compose LoRA adapters into one (ranks concatenated: exact).

    Each ADAPTER is a directory or a name under adapters/, optionally followed
    by :WEIGHT (default 1), e.g. `general-v1 tool-calling-v1:0.5`.
    """
    from punie.adapters.compose import compose

    state = state_of(ctx)
    project_dir = Path(state.config).resolve().parent if state.config else Path.cwd()
    parts = []
    for text in adapters:
        spec, weight = parse_part(text)
        if not spec:
            raise UsageError(f"empty adapter in '{text}'")
        parts.append((_resolve(spec, project_dir), weight))
    result = compose(parts, Path(out), force=force)
    if base is not None:
        from punie.config import load_profile
        from punie.launch.prepare import resolve_model_path
        from punie.launch.stamp import stamp_canary

        resolved = load_profile(base, config=state.config, overrides=state.overrides)
        stamp_canary(result, resolve_model_path(resolved, provision=True))
    from punie.jsonio import load_json_file

    config = load_json_file(result / "adapter_config.json")
    meta = load_json_file(result / "punie-adapter.json")
    if fmt == "json":
        echo_json({"path": str(result), "adapter_config": config, "punie_adapter": meta})
        return
    params = config["lora_parameters"]
    click.echo(
        f"composed {len(parts)} adapters into {result}: rank {params['rank']}, "
        f"num_layers {config['num_layers']}, keys {', '.join(params['keys'])}"
    )
    for note in meta.get("composition_notes", []):
        click.echo(f"  note: {note}")


def attach(group: click.Group) -> None:
    """Add `compose` to the `adapters` click group."""
    if "compose" not in group.commands:
        group.add_command(compose_command)
