"""Adapters as the ``punie adapters`` commands see them: the listing with fits, stamping a base
identity and canary, fusing, composing, and the PEFT export and import.

Each function is one command's work; the command only parses and renders. Errors are
`PunieError` subclasses (CheckFailed, AdapterError, UsageError...).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from punie.adapters.registry import adapters_root as adapters_root
from punie.adapters.registry import resolve_adapter as resolve_adapter

if TYPE_CHECKING:
    from punie.adapters.canary import Canary
    from punie.adapters.fuse import FuseSpec
    from punie.adapters.metadata import AdapterMeta
    from punie.adapters.peft import PeftPlan
    from punie.adapters.registry import AdapterInfo
    from punie.config.models import ResolvedProfile
    from punie.launch.fuse import FusedModel

__all__ = ["AdapterListing", "Composed", "Fused", "Stamped", "adapter_listing", "adapter_names", "adapters_root",
           "compose", "export_peft", "fuse", "import_peft", "parse_part", "resolve_adapter", "stamp"]

_Config = str | os.PathLike[str] | None


def _project_of(config: _Config) -> Path:
    from punie.api.profiles import project_dir

    return project_dir(config)


def adapter_names(config: _Config = None) -> list[str]:
    """The names an adapter may be given by in the project: every adapter under adapters/, then the
    special ones (``latest``, ``best``). What shell completion offers."""
    from punie.adapters.files import SPECIAL_SPECS
    from punie.adapters.locate import adapter_dirs

    return [*(d.name for d in adapter_dirs(_project_of(config))), *SPECIAL_SPECS]


def _adapter_dir(spec: str, project: Path) -> Path:
    """A directory as given on the command line (relative to here), else ``spec`` as the project names it."""
    direct = Path(spec).expanduser()
    return direct if direct.is_dir() else resolve_adapter(spec, project)


@dataclass(frozen=True)
class AdapterListing:
    """``punie adapters list``: every adapter of the project and, per profile, whether it fits."""

    project: Path
    root: Path  # where the adapters are (``<project>/adapters``)
    adapters: list[AdapterInfo]
    #: adapter name -> profile name -> ``{"fits": "yes"|"no"|"unknown", "reason": str | None}``
    fits: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)


def adapter_listing(config: _Config = None, *, overrides: Sequence[str] = ()) -> AdapterListing:
    """Every adapter under the project's adapters/ with its fit against every profile of ``config``."""
    from punie.adapters.registry import list_adapters
    from punie.api import load_profiles
    from punie.launch.backends import adapter_fits  # each profile's backend rules

    profiles = load_profiles(config, overrides=overrides)
    project = Path(profiles[0].project_dir) if profiles else Path.cwd()
    infos = list_adapters(project)
    fits = {info.name: {p.name: dict(zip(("fits", "reason"), adapter_fits(info, p), strict=True)) for p in profiles}
            for info in infos}
    return AdapterListing(project=project, root=adapters_root(project), adapters=infos, fits=fits)


@dataclass(frozen=True)
class Stamped:
    """What ``stamp`` recorded: the adapter, its metadata (with the base identity), its canary if asked."""

    adapter_dir: Path
    meta: AdapterMeta
    canary: Canary | None


def stamp(name: str, profile: str, config: _Config = None, *, overrides: Sequence[str] = (), force: bool = False,
          canary: bool = False) -> Stamped:
    """Record the base identity of profile ``profile``'s model in adapter ``name`` (and its canary).

    Raises CheckFailed when the adapter does not fit the base model (unless ``force``)."""
    from punie.adapters.registry import stamp_adapter
    from punie.api import load_profiles
    from punie.errors import CheckFailed, UsageError
    from punie.launch.backends import check_adapter  # the profile's backend rules
    from punie.weights.resolve import resolve_model

    resolved = load_profiles(config, (profile,), overrides=overrides)[0]
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
    recorded = None
    if canary:
        from punie.launch.stamp import stamp_canary

        recorded = stamp_canary(adapter_dir, model_dir)
    return Stamped(adapter_dir=adapter_dir, meta=meta, canary=recorded)


@dataclass(frozen=True)
class Fused:
    """What ``fuse`` made or reused: the fused model (``fused.path``, ``fused.reused``, its canary check)."""

    adapter_dir: Path
    model_dir: Path
    spec: FuseSpec
    fused: FusedModel


def fuse(profile: str, adapter: str | None = None, config: _Config = None, *, overrides: Sequence[str] = (),
         dtype: str | None = None, bits: str | None = None, group_size: str | None = None,
         on_note: Callable[[str], None] | None = None) -> Fused:
    """Fuse ``adapter`` (a directory or name; None: the profile's own) into profile ``profile``'s base
    model once, verified by the adapter's canary (computed first when it has none: ``on_note`` hears it).
    ``dtype``, ``bits`` (a number or ``base``), ``group_size`` override the profile's ``fuse`` table."""
    from punie.adapters.fuse import FuseSpec
    from punie.adapters.metadata import read_canary
    from punie.adapters.registry import effective_adapter
    from punie.api import load_profile
    from punie.errors import UsageError
    from punie.launch.fuse import ensure_fused
    from punie.launch.prepare import resolve_model_path

    resolved = load_profile(profile, config, overrides=overrides)
    if adapter is not None:
        adapter_dir = _adapter_dir(adapter, Path(resolved.project_dir))
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
    known = read_canary(adapter_dir)
    if known is None:
        from punie.launch.stamp import stamp_canary

        if on_note is not None:
            on_note(f"{adapter_dir} has no canary: computing it on {model_dir} (once)")
        known = stamp_canary(adapter_dir, model_dir)
    return Fused(adapter_dir=adapter_dir, model_dir=model_dir, spec=spec,
                 fused=ensure_fused(model_dir, adapter_dir, spec, canary=known))


def parse_part(text: str) -> tuple[str, float]:
    """``SPEC`` or ``SPEC:WEIGHT`` (the weight is what follows the last colon, if it is a number)."""
    spec, sep, tail = text.rpartition(":")
    if sep and spec:
        try:
            return spec, float(tail)
        except ValueError:
            pass
    return text, 1.0


@dataclass(frozen=True)
class Composed:
    """``compose``'s result: the directory, its mlx_lm config and its punie-adapter.json."""

    path: Path
    adapter_config: dict[str, Any]
    punie_adapter: dict[str, Any]


def compose(parts: Sequence[str], out: str | os.PathLike[str], config: _Config = None, *,
            overrides: Sequence[str] = (), force: bool = False, base: str | None = None) -> Composed:
    """``punie adapters compose``: ``parts`` are ``SPEC[:WEIGHT]`` texts (a directory or a name under the
    project's adapters/); ``base``: a profile whose model the composition's canary is stamped on."""
    from punie.adapters.files import CONFIG_FILE, METADATA_FILE
    from punie.api import compose_adapters, load_profile
    from punie.errors import UsageError
    from punie.jsonio import load_json_file

    project = _project_of(config)
    weighted: list[tuple[str | os.PathLike[str], float]] = []
    for text in parts:
        spec, weight = parse_part(text)
        if not spec:
            raise UsageError(f"empty adapter in '{text}'")
        weighted.append((_adapter_dir(spec, project), weight))
    result = compose_adapters(weighted, out, project_dir=project, force=force)
    if base is not None:
        from punie.launch.prepare import resolve_model_path
        from punie.launch.stamp import stamp_canary

        resolved: ResolvedProfile = load_profile(base, config, overrides=overrides)
        stamp_canary(result, resolve_model_path(resolved, provision=True))
    return Composed(path=result, adapter_config=load_json_file(result / CONFIG_FILE),
                    punie_adapter=load_json_file(result / METADATA_FILE))


def export_peft(adapter: str, out: str | os.PathLike[str], config: _Config = None, *,
                force: bool = False) -> tuple[Path, PeftPlan]:
    """Write the exact PEFT equivalent of the mlx_lm ``adapter`` (a directory or a name) to ``out``."""
    from punie.adapters.peft import export_peft as _export

    source = resolve_adapter(adapter, _project_of(config))
    return source, _export(source, Path(out), overwrite=force)


def import_peft(peft_dir: str | os.PathLike[str], config: _Config = None, *, name: str | None = None,
                out: str | os.PathLike[str] | None = None, num_layers: int | None = None,
                force: bool = False) -> tuple[Path, dict[str, Any]]:
    """Write an mlx_lm adapter from a PEFT LoRA adapter: to ``out``, else ``adapters/NAME`` of the project
    (NAME: ``name``, else the PEFT directory's). Returns the directory and its mlx_lm config."""
    from punie.adapters.peft import import_peft as _import

    target = Path(out) if out else adapters_root(_project_of(config)) / (name or Path(peft_dir).resolve().name)
    return target, _import(Path(peft_dir), target, num_layers=num_layers, overwrite=force)
