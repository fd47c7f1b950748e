"""CLI: `punie adapters stamp NAME --base PROFILE` (attached to the `adapters` group by its owner).

For adapters Punie did not train: records the base model's fingerprint and the
adapter's canary (top-k first-token logprobs of the base alone and with the
adapter, computed once with mlx_lm) in its punie-adapter.json.
"""

from __future__ import annotations

import click

from punie.cli._common import echo_json, format_option, state_of


@click.command("stamp")
@click.argument("name", metavar="NAME")
@click.option("--base", "base", required=True, metavar="PROFILE", help="The profile whose model is the base.")
@format_option()
@click.pass_context
def stamp_command(ctx: click.Context, name: str, base: str, fmt: str) -> None:
    """Record the base fingerprint and the canary of adapter NAME (a directory or a name under adapters/)."""
    from punie.adapters.canary import stamp_canary
    from punie.adapters.registry import resolve_adapter
    from punie.config import load_profile
    from punie.launch.prepare import resolve_model_path

    state = state_of(ctx)
    resolved = load_profile(base, config=state.config, overrides=state.overrides)
    adapter_dir = resolve_adapter(name, resolved.project_dir)
    model_dir = resolve_model_path(resolved, provision=True)
    canary = stamp_canary(adapter_dir, model_dir, base_model=resolved.profile.model)
    if fmt == "json":
        echo_json({"adapter": str(adapter_dir), "model": str(model_dir), "canary": canary.model_dump(mode="json")})
        return
    top = lambda tokens: ", ".join(f"{t.text!r} {t.logprob:.2f}" for t in tokens[:3])  # noqa: E731
    click.echo(f"stamped {adapter_dir}: base {resolved.profile.model} (fingerprint {canary.base_fingerprint})")
    click.echo(f"  canary base alone:    {top(canary.base)}")
    click.echo(f"  canary with adapter:  {top(canary.adapter)}")
