"""CLI: `punie adapters compose A B --out DIR` (attached to the `adapters` group by its owner)."""

from __future__ import annotations

import click

from punie.cli._common import complete_adapters, echo_json, format_option, state_of


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
    from punie.api.adapters import compose

    state = state_of(ctx)
    composed = compose(adapters, out, state.config, overrides=state.overrides, force=force, base=base)
    result, config, meta = composed.path, composed.adapter_config, composed.punie_adapter
    if fmt == "json":
        echo_json({"path": str(result), "adapter_config": config, "punie_adapter": meta})
        return
    params = config["lora_parameters"]
    click.echo(
        f"composed {len(adapters)} adapters into {result}: rank {params['rank']}, "
        f"num_layers {config['num_layers']}, keys {', '.join(params['keys'])}"
    )
    for note in meta.get("composition_notes", []):
        click.echo(f"  note: {note}")


def attach(group: click.Group) -> None:
    """Add `compose` to the `adapters` click group."""
    if "compose" not in group.commands:
        group.add_command(compose_command)
