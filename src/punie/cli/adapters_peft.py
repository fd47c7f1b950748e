"""CLI: `punie adapters export NAME --format peft --out DIR` and `punie adapters import PEFT_DIR`.

Attached to the `adapters` group by its owner (punie.cli.adapters).
"""

from __future__ import annotations

import click

from punie.cli._common import echo_json, format_option, state_of


@click.command("export")
@click.argument("adapter")
@click.option("--format", "fmt", type=click.Choice(["peft"]), default="peft", show_default=True,
              help="Format to write (PEFT: what Hugging Face and vLLM load).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Directory to write.")
@click.option("--force", is_flag=True, help="Replace --out if it is not empty.")
@click.pass_context
def export_command(ctx: click.Context, adapter: str, fmt: str, out: str, force: bool) -> None:
    """Write the exact PEFT equivalent of an mlx_lm ADAPTER (a directory or a name under adapters/).

    --format here is the adapter format written (the PEFT config is in DIR/adapter_config.json).
    """
    from punie.api.adapters import export_peft

    source, plan = export_peft(adapter, out, state_of(ctx).config, force=force)
    click.echo(f"exported {source} to {out} (PEFT): r {plan.rank}, lora_alpha {plan.lora_alpha:g}, "
               f"{len(plan.modules)} modules, target_modules {', '.join(plan.target_modules)}")


@click.command("import")
@click.argument("peft_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--name", help="Name under adapters/ (default: the PEFT directory's name).")
@click.option("--out", type=click.Path(file_okay=False), help="Directory to write instead of adapters/NAME.")
@click.option("--num-layers", type=click.IntRange(min=1),
              help="The base model's layer count (needed when the adapter skips the first layers).")
@click.option("--force", is_flag=True, help="Replace the target if it is not empty.")
@format_option("json: the path and the mlx_lm config as JSON.")
@click.pass_context
def import_command(ctx: click.Context, peft_dir: str, name: str | None, out: str | None, num_layers: int | None,
                   force: bool, fmt: str) -> None:
    """Write an mlx_lm adapter from the PEFT LoRA adapter in PEFT_DIR (so Hugging Face adapters run on MLX)."""
    from punie.api.adapters import import_peft

    target, config = import_peft(peft_dir, state_of(ctx).config, name=name, out=out, num_layers=num_layers,
                                 force=force)
    if fmt == "json":
        echo_json({"path": str(target), "adapter_config": config})
        return
    params = config["lora_parameters"]
    click.echo(f"imported {peft_dir} to {target} (mlx_lm): rank {params['rank']}, scale {params['scale']:g}, "
               f"num_layers {config['num_layers']}")


def attach(group: click.Group) -> None:
    """Add `export` and `import` to the `adapters` click group."""
    group.add_command(export_command)
    group.add_command(import_command)
