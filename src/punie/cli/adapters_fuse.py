"""CLI: `punie adapters fuse [NAME|PATH] --base PROFILE` (attached to the `adapters` group by its owner)."""

from __future__ import annotations

from pathlib import Path

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
    from punie.adapters.fuse import FuseSpec
    from punie.adapters.locate import resolve_adapter
    from punie.adapters.metadata import read_canary
    from punie.adapters.registry import effective_adapter
    from punie.config import load_profile
    from punie.errors import UsageError
    from punie.launch.fuse import ensure_fused
    from punie.launch.prepare import resolve_model_path

    state = state_of(ctx)
    resolved = load_profile(profile, config=state.config, overrides=state.overrides)
    project = Path(resolved.project_dir)
    if adapter is not None:
        direct = Path(adapter).expanduser()
        adapter_dir = direct if direct.is_dir() else resolve_adapter(adapter, project)
    else:
        found = effective_adapter(resolved)
        if found is None:
            raise UsageError(f"profile {profile!r} has no adapter: name the adapter to fuse")
        adapter_dir = found
    options = resolved.profile.fuse
    if dtype or bits or group_size:
        options = options.model_copy(update={"dtype": dtype or options.dtype,
                                             "bits": (bits if bits == "base" else int(bits)) if bits else options.bits,
                                             "group_size": int(group_size) if group_size else options.group_size})
    spec = FuseSpec.of(options, where="--group-size")
    model_dir = resolve_model_path(resolved, provision=True)
    canary = read_canary(adapter_dir)
    if canary is None:
        from punie.launch.stamp import stamp_canary

        click.echo(f"{adapter_dir} has no canary: computing it on {model_dir} (once)", err=True)
        canary = stamp_canary(adapter_dir, model_dir)
    fused = ensure_fused(model_dir, adapter_dir, spec, canary=canary)
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
