"""CLI: `punie adapters fuse [NAME|PATH] --base PROFILE` (attached to the `adapters` group by its owner)."""

from __future__ import annotations

import click

from punie.cli._common import complete_adapters, echo_json, format_option, state_of


@click.command("fuse")
@click.argument("adapter", required=False, metavar="[NAME|PATH]", shell_complete=complete_adapters)
@click.option("--base", "profile", required=True, metavar="PROFILE",
              help="Profile whose base model the adapter is fused into (and whose adapter, without NAME).")
@click.option("--dtype", type=click.Choice(["float16", "bfloat16", "float32"]),
              help="dtype of the non-quantized weights (default: the profile's fuse.dtype, else the base's).")
@click.option("--bits", type=click.Choice(["base", "2", "3", "4", "5", "6", "8"]),
              help="Re-quantize the fused weights: like the base (base) or to N bits (default: the profile's "
              "fuse.bits, else dense: de-quantized, which keeps the delta exactly).")
@click.option("--group-size", type=click.Choice(["32", "64", "128"]), help="Quantization group size with --bits.")
@format_option("json: the fused model's directory, whether it was reused, and its canary check.")
@click.pass_context
def fuse_command(ctx: click.Context, adapter: str | None, profile: str, dtype: str | None, bits: str | None,
                 group_size: str | None, fmt: str) -> None:
    """Fuse an adapter into its base model once, verified by its canary, into Punie's cache.

    The fused model must answer the adapter's canary like the adapter applied on the fly; one
    that answers as the base (re-quantization can round the LoRA delta away) or drifts past the
    tolerance is refused with both distances. Without NAME the profile's own adapter (or the
    composition of its adapters) is fused. `fuse.enabled = true` in the profile serves it.
    """
    from punie.api.adapters import fuse

    state = state_of(ctx)
    made = fuse(profile, adapter, state.config, overrides=state.overrides, dtype=dtype, bits=bits,
                group_size=group_size, on_note=lambda note: click.echo(note, err=True))
    fused, adapter_dir, model_dir, spec = made.fused, made.adapter_dir, made.model_dir, made.spec
    if fmt == "json":
        echo_json(fused.to_json())
        return
    how = "reused" if fused.reused else "fused"
    click.echo(f"{how} {adapter_dir} into {model_dir} ({spec.describe()}): {fused.path}")
    click.echo(f"  canary: answers like the adapter applied on the fly; {fused.check.distances()}")


def attach(group: click.Group) -> None:
    """Add `fuse` to the `adapters` click group."""
    if "fuse" not in group.commands:
        group.add_command(fuse_command)
