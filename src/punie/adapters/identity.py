"""Which base model an adapter was trained on, as a `BaseIdentity` (one rule for check, compose and up).

The identity recorded in ``punie-adapter.json`` (by `punie train` or
`punie adapters stamp`) wins; otherwise the ``model`` named in
adapter_config.json is resolved like a profile's model (relative to the
project, the HF cache, ``builtin:``) and fingerprinted, so one model named by
a relative and an absolute path, or copied elsewhere, is one base.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from punie.adapters.metadata import AdapterMeta, read_meta
from punie.errors import PunieError
from punie.weights.fingerprint import BaseIdentity, base_identity

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecordedBase:
    """What an adapter says about its base: the identity (if known), a label, and where it came from."""

    identity: BaseIdentity | None
    label: str | None
    source: str  # "metadata", "config" or "none"


def identity_of_spec(spec: str, project_dir: str | Path | None) -> BaseIdentity | None:
    """Fingerprint the model ``spec`` names, if it is available locally (never raises)."""
    from punie.weights.resolve import resolve_model

    if not spec or len(spec) > 4096:
        return None
    try:
        model_dir = resolve_model(spec, project_dir or os.getcwd())
        return base_identity(model_dir, spec=spec)
    except (PunieError, OSError, ValueError, RuntimeError) as exc:
        logger.debug("base %r not fingerprinted: %s", spec, exc)
        return None


def recorded_base(meta: AdapterMeta | None, config_model: str | None,
                  project_dir: str | Path | None) -> RecordedBase:
    """The base an adapter records (metadata first, then adapter_config.json's ``model``)."""
    if meta is not None and meta.base is not None:
        return RecordedBase(meta.base, meta.base_model, "metadata")
    spec = config_model or (meta.base_model if meta is not None and meta.base_model != "unknown" else None)
    if not spec:
        return RecordedBase(None, None, "none")
    return RecordedBase(identity_of_spec(spec, project_dir), spec, "config")


def adapter_base(adapter_dir: str | Path, config_model: str | None,
                 project_dir: str | Path | None) -> RecordedBase:
    """`recorded_base` reading the adapter's metadata (CorruptFileError when it is corrupt)."""
    return recorded_base(read_meta(adapter_dir), config_model, project_dir)


def same_base(a: RecordedBase, b: RecordedBase) -> bool | None:
    """One base? By identity when both are known, else by the labels as paths (None: nothing recorded)."""
    if a.identity is not None and b.identity is not None:
        return a.identity.same_weights(b.identity)
    if a.label is None or b.label is None:
        return None
    return os.path.normpath(os.path.expanduser(a.label)) == os.path.normpath(os.path.expanduser(b.label))
