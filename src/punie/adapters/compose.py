"""Compose several LoRA adapters into one mlx_lm adapter, exactly.

mlx_lm's ``LoRALinear`` computes ``y = W x + s * (x @ A) @ B`` with ``A`` of
shape (in, r) and ``B`` of shape (r, out). A weighted sum of such updates is
itself one LoRA of rank ``r1 + r2 + ...``::

    w1 s1 (x A1) B1 + w2 s2 (x A2) B2 = S * (x [A1 A2]) [[c1 B1], [c2 B2]]

with ``ci = wi si / S``: the ``A`` matrices are concatenated along the rank
axis and each ``B`` is scaled by ``ci`` before it is concatenated. A module
present in only some parts gets zero blocks for the others (zero blocks add
nothing), so the result is exact up to float32 rounding. The same holds for
mlx_lm's ``LoRAEmbedding`` (same layout) and ``LoRASwitchLinear`` (A: (E, r,
in), B: (E, out, r)).

DoRA parts cannot be composed this way (their magnitude vectors rescale the
whole updated weight, so deltas do not add) and are refused, as are parts
trained on another base model or whose tensors disagree in shape.

The composition itself uses numpy only (no mlx), reading and writing the
safetensors format directly.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import re
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from punie.adapters.files import CONFIG_FILE, METADATA_FILE, WEIGHTS_FILE
from punie.adapters.identity import RecordedBase, recorded_base, same_base
from punie.adapters.tensors import load_tensor, numpy_module, tensor_index
from punie.config.atomic import publish_dir, replace_dir
from punie.errors import AdapterError
from punie.jsonio import load_json_file, open_regular
from punie.limits import CHUNK_BYTES
from punie.paths import state_dir
from punie.weights.safetensors import TensorInfo, write_safetensors

if TYPE_CHECKING:
    import numpy as np

    from punie.config.models import AdapterRef

logger = logging.getLogger(__name__)

COMPOSED_SCALE = 1.0
# Bumped when the output format changes, so old cache entries are not reused.
FORMAT_VERSION = "punie-compose-1"

_LEAF = re.compile(r"^(?P<module>.+)\.(?P<leaf>lora_a|lora_b|m)$")
_LAYER = re.compile(r"^(?P<prefix>(?:.*\.)?layers)\.(?P<index>\d+)\.(?P<key>.+)$")


class CompositionError(AdapterError):
    """Parts that cannot be composed; ``part`` (and ``other``) index the parts at fault."""

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None,
                 part: int | None = None, other: int | None = None):
        self.part, self.other = part, other
        super().__init__(message, where=where, hint=hint)


# --------------------------------------------------------------------------- reading parts


@dataclass(frozen=True)
class Part:
    """One adapter to compose, with its header-level facts (no tensor data read)."""

    path: Path
    weight: float
    config: dict[str, Any]
    metadata: dict[str, Any] | None
    tensors: dict[str, TensorInfo]
    rank: int
    scale: float
    num_layers: int
    # module path -> (lora_a shape, lora_b shape)
    modules: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]

    @property
    def model(self) -> str | None:
        value = self.config.get("model")
        return str(value) if value is not None else None

    @property
    def fingerprint(self) -> str | None:
        value = (self.metadata or {}).get("base_fingerprint")
        return str(value) if value else None


def _rank_axes(ndim: int) -> tuple[int, int]:
    """Rank axis of lora_a and lora_b: Linear/Embedding (in, r)/(r, out); SwitchLinear (E, r, in)/(E, out, r)."""
    return (1, 0) if ndim == 2 else (1, 2)


def read_part(path: Path, weight: float = 1.0) -> Part:
    """Read an adapter directory's config and tensor headers and check it can be composed."""
    path = Path(path)
    where = str(path)
    if not path.is_dir():
        raise AdapterError("adapter directory does not exist", where=where)
    config_path, weights_path = path / CONFIG_FILE, path / WEIGHTS_FILE
    if not config_path.is_file():
        raise AdapterError(f"no {CONFIG_FILE} (not an mlx_lm adapter directory)", where=where)
    if not weights_path.is_file():
        raise AdapterError(
            f"no {WEIGHTS_FILE}", where=where,
            hint="mlx_lm lora writes adapter_config.json before training: was training interrupted?",
        )
    config = load_json_file(config_path)
    metadata = _read_metadata(path / METADATA_FILE)

    kind = config.get("fine_tune_type", "lora")
    if kind == "dora":
        raise AdapterError(
            "DoRA adapters cannot be composed exactly: their magnitude vectors (.m) renormalise the "
            "whole updated weight, so the deltas of two DoRA adapters do not add up",
            where=where, hint="compose LoRA adapters, or serve this DoRA adapter alone",
        )
    if kind != "lora":
        raise AdapterError(
            f"fine_tune_type is '{kind}'; only 'lora' adapters (low-rank updates) can be composed",
            where=str(config_path),
        )
    params = config.get("lora_parameters")
    if not isinstance(params, dict):
        raise AdapterError("lora_parameters is missing", where=str(config_path))
    if "scale" not in params:
        hint = "mlx_lm uses 'scale', not 'alpha'" if "alpha" in params else None
        raise AdapterError("lora_parameters.scale is missing", where=str(config_path), hint=hint)
    num_layers = config.get("num_layers")
    if not isinstance(num_layers, int) or isinstance(num_layers, bool):
        raise AdapterError(f"num_layers must be an integer, not {num_layers!r}", where=str(config_path))
    try:
        scale = float(params["scale"])
    except (TypeError, ValueError) as exc:
        raise AdapterError(
            f"lora_parameters.scale is not a number: {params['scale']!r}", where=str(config_path)
        ) from exc

    tensors = tensor_index(weights_path)
    halves: dict[str, dict[str, TensorInfo]] = {}
    for name, info in tensors.items():
        match = _LEAF.match(name)
        if match is None:
            raise AdapterError(f"tensor '{name}' is not a LoRA tensor (lora_a / lora_b)", where=str(weights_path))
        if match["leaf"] == "m":
            raise AdapterError(
                f"tensor '{name}' is a DoRA magnitude vector; DoRA adapters cannot be composed exactly",
                where=str(weights_path),
            )
        halves.setdefault(match["module"], {})[match["leaf"]] = info
    if not halves:
        raise AdapterError("contains no LoRA tensors", where=str(weights_path))

    modules: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    ranks: set[int] = set()
    for module, pair in sorted(halves.items()):
        if set(pair) != {"lora_a", "lora_b"}:
            missing = "lora_b" if "lora_a" in pair else "lora_a"
            raise AdapterError(f"module '{module}' has no {missing} tensor", where=str(weights_path))
        a, b = pair["lora_a"].shape, pair["lora_b"].shape
        ok = len(a) == len(b) and len(a) in (2, 3)
        if ok:
            ra, rb = _rank_axes(len(a))
            ok = a[ra] == b[rb] and (len(a) == 2 or a[0] == b[0])
        if not ok:
            raise AdapterError(
                f"module '{module}': lora_a {list(a)} and lora_b {list(b)} are not a LoRA pair",
                where=str(weights_path),
            )
        ranks.add(a[_rank_axes(len(a))[0]])
        modules[module] = (a, b)
    if len(ranks) != 1:
        raise AdapterError(f"tensors have several ranks {sorted(ranks)}", where=str(weights_path))
    rank = ranks.pop()
    if "rank" in params and params["rank"] != rank:
        raise AdapterError(
            f"lora_parameters.rank is {params['rank']} but the tensors have rank {rank}",
            where=str(config_path),
        )
    return Part(path, float(weight), config, metadata, tensors, rank, scale, num_layers, modules)


def _read_metadata(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    value = load_json_file(path, expect=None)
    return value if isinstance(value, dict) else None


# --------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class Plan:
    """What a composition will write: checked parts, union of modules, composed config."""

    parts: tuple[Part, ...]
    rank: int
    num_layers: int
    keys: tuple[str, ...]
    # module path -> (in-like shape of lora_a with rank R, lora_b shape with rank R); sorted
    modules: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    model: str | None = None
    fingerprint: str | None = None
    base: dict[str, Any] | None = None  # the parts' common BaseIdentity, when known
    # Human-readable facts about coverage differences (modules a part does not adapt get zero blocks).
    notes: tuple[str, ...] = ()


def _recorded(part: Part, project_dir: Path | None) -> RecordedBase:
    from punie.adapters.metadata import AdapterMeta

    meta = None
    if part.metadata:
        try:
            meta = AdapterMeta.model_validate(part.metadata)
        except ValueError:
            meta = None
    return recorded_base(meta, part.model, project_dir)


def _with_rank(shape: tuple[int, ...], axis: int, rank: int) -> tuple[int, ...]:
    return tuple(rank if i == axis else d for i, d in enumerate(shape))


def plan_composition(parts: Sequence[tuple[Path, float]], *, project_dir: Path | None = None) -> Plan:
    """Read the parts' headers, explain any incompatibility, and describe the composed adapter.

    Reads no tensor data; raises AdapterError naming the part and module at fault
    (CompositionError when parts disagree). Parts are of one base when their
    `punie.adapters.identity` agree (``project_dir`` resolves relative model paths),
    so `punie check` and `punie up` decide alike.
    """
    if len(parts) < 1:
        raise AdapterError("nothing to compose: give at least one adapter")
    for path, weight in parts:
        if not math.isfinite(float(weight)):
            raise AdapterError(f"weight must be a finite number, not {weight}", where=str(path))
    loaded = tuple(read_part(Path(p), w) for p, w in parts)
    first = loaded[0]
    bases = [_recorded(part, project_dir) for part in loaded]
    for i, other in enumerate(loaded[1:], start=1):
        if bases[0].identity is None and bases[i].identity is None and first.fingerprint and other.fingerprint:
            same: bool | None = first.fingerprint == other.fingerprint  # legacy config fingerprints
        else:
            same = same_base(bases[0], bases[i])
        if same is False:
            raise CompositionError(
                f"was trained on base model '{bases[i].label}' but {first.path} on '{bases[0].label}'; "
                "adapters of different base models cannot be composed",
                where=str(other.path), part=i, other=0,
            )

    # Module shapes must agree across parts (except the rank axis).
    modules: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    owner: dict[str, Part] = {}
    for index, part in enumerate(loaded):
        for module, (a, b) in part.modules.items():
            ra, rb = _rank_axes(len(a))
            key = (_with_rank(a, ra, 0), _with_rank(b, rb, 0))
            if module in modules and modules[module] != key:
                seen = owner[module]
                raise CompositionError(
                    f"module '{module}' has lora_a {list(a)} / lora_b {list(b)} here but "
                    f"{list(seen.modules[module][0])} / {list(seen.modules[module][1])} in {seen.path} "
                    "(different base model dimensions)",
                    where=str(part.path), part=index, other=loaded.index(seen),
                )
            modules[module] = key
            owner.setdefault(module, part)

    # mlx_lm applies LoRA to the keys (paths relative to a layer) of the last num_layers
    # layers, and to top-level modules whose full path is a key.
    keys: set[str] = set()
    layer_keys: dict[str, dict[int, str]] = {}  # key -> layer index -> module path
    prefixes: set[str] = set()
    for module in modules:
        m = _LAYER.match(module)
        if m is None:
            keys.add(module)
            continue
        keys.add(m["key"])
        prefixes.add(m["prefix"])
        layer_keys.setdefault(m["key"], {})[int(m["index"])] = module
    if len(prefixes) > 1:
        raise AdapterError(f"layer modules live under several prefixes {sorted(prefixes)}; cannot compose")

    # A (layer, key) in the covered range that no part adapts gets a zero block (exact).
    if layer_keys:
        prefix = prefixes.pop()
        indices = {i for by_layer in layer_keys.values() for i in by_layer}
        for key, by_layer in layer_keys.items():
            shapes = {modules[path] for path in by_layer.values()}
            if len(shapes) != 1:
                continue  # dims vary by layer: leave gaps to mlx_lm (zero lora_b, no delta)
            shape = shapes.pop()
            for i in range(min(indices), max(indices) + 1):
                modules.setdefault(f"{prefix}.{i}.{key}", shape)

    total = sum(p.rank for p in loaded)
    composed = {
        module: (_with_rank(a, _rank_axes(len(a))[0], total), _with_rank(b, _rank_axes(len(b))[1], total))
        for module, (a, b) in sorted(modules.items())
    }
    num_layers = -1 if any(p.num_layers <= 0 for p in loaded) else max(p.num_layers for p in loaded)
    fingerprints = {p.fingerprint for p in loaded}
    notes = tuple(_coverage_note(part, composed) for part in loaded if len(part.modules) < len(composed))
    return Plan(
        parts=loaded,
        rank=total,
        num_layers=num_layers,
        keys=tuple(sorted(keys)),
        modules=composed,
        model=next((p.model for p in loaded if p.model), None),
        fingerprint=fingerprints.pop() if len(fingerprints) == 1 else None,
        base=next((b.identity.model_dump(mode="json") for b in bases if b.identity is not None), None),
        notes=notes,
    )


def _coverage_note(part: Part, modules: dict[str, Any]) -> str:
    missing = [m for m in modules if m not in part.modules]
    keys, layers = set(), set()
    for module in missing:
        m = _LAYER.match(module)
        keys.add(m["key"] if m else module)
        if m:
            layers.add(int(m["index"]))
    where = f" (layers {_ranges(sorted(layers))})" if layers else ""
    return (
        f"{part.path} does not adapt {len(missing)} of {len(modules)} modules{where}: "
        f"{', '.join(sorted(keys))}; its rank-{part.rank} block is zero there (exact)"
    )


def _ranges(values: list[int]) -> str:
    spans: list[str] = []
    for v in values:
        if spans and spans[-1].split("-")[-1] == str(v - 1):
            spans[-1] = f"{spans[-1].split('-')[0]}-{v}"
        else:
            spans.append(str(v))
    return ", ".join(spans)


# --------------------------------------------------------------------------- composing


def compose_tensors(plan: Plan) -> dict[str, np.ndarray]:
    """The composed lora_a / lora_b float32 tensors of ``plan`` (reads the parts' data)."""
    np = numpy_module()
    out: dict[str, np.ndarray] = {}
    for module, (a_shape, b_shape) in plan.modules.items():
        ra, rb = _rank_axes(len(a_shape))
        a_blocks, b_blocks = [], []
        for part in plan.parts:
            if module in part.modules:
                a = load_tensor(part.path / WEIGHTS_FILE, part.tensors[f"{module}.lora_a"])
                b = load_tensor(part.path / WEIGHTS_FILE, part.tensors[f"{module}.lora_b"])
                b = b * np.float32(part.scale * part.weight / COMPOSED_SCALE)
            else:
                a = np.zeros(_with_rank(a_shape, ra, part.rank), dtype=np.float32)
                b = np.zeros(_with_rank(b_shape, rb, part.rank), dtype=np.float32)
            a_blocks.append(a)
            b_blocks.append(b)
        out[f"{module}.lora_a"] = np.concatenate(a_blocks, axis=ra).astype(np.float32, copy=False)
        out[f"{module}.lora_b"] = np.concatenate(b_blocks, axis=rb).astype(np.float32, copy=False)
    return out


def composed_config(plan: Plan) -> dict[str, Any]:
    """adapter_config.json of the composed adapter, in mlx_lm's format."""
    return {
        "fine_tune_type": "lora",
        "model": plan.model,
        "num_layers": plan.num_layers,
        "lora_parameters": {"rank": plan.rank, "scale": COMPOSED_SCALE, "dropout": 0.0, "keys": list(plan.keys)},
    }


def composed_metadata(plan: Plan) -> dict[str, Any]:
    """punie-adapter.json of the composed adapter: registry fields plus the parts it was made of."""
    base_model = next(
        (str(p.metadata["base_model"]) for p in plan.parts if p.metadata and p.metadata.get("base_model")),
        plan.model,
    )
    return {
        "base_model": base_model,
        "base_fingerprint": plan.fingerprint,
        "base": plan.base,
        "dataset_hash": None,
        "iters": None,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "score": None,
        "eval": None,
        "composed_from": [
            {"path": str(p.path), "weight": p.weight, "rank": p.rank, "scale": p.scale} for p in plan.parts
        ],
        "composition_notes": list(plan.notes),
    }


def _write_dir(plan: Plan, target: Path) -> None:
    write_safetensors(target / WEIGHTS_FILE, compose_tensors(plan), {"format": "mlx", "punie": FORMAT_VERSION})
    (target / CONFIG_FILE).write_text(json.dumps(composed_config(plan), indent=2) + "\n")
    (target / METADATA_FILE).write_text(json.dumps(composed_metadata(plan), indent=2) + "\n")


def _write_atomically(plan: Plan, out: Path, *, replace: bool) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        _write_dir(plan, tmp)
        if replace and out.exists():
            replace_dir(tmp, out)
        else:
            # Another process may have finished the same composition first: theirs is kept.
            publish_dir(tmp, out, complete=lambda t: (t / WEIGHTS_FILE).is_file())
            shutil.rmtree(tmp, ignore_errors=True)  # still there only when theirs was kept
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def compose(parts: Sequence[tuple[Path, float]], out: Path, *, force: bool = False) -> Path:
    """Compose adapters ``(dir, weight)`` into one mlx_lm adapter directory ``out``.

    ``out`` must not exist (or be empty) unless ``force``; it is written atomically.
    """
    out = Path(out)
    if out.exists() and not force and (not out.is_dir() or any(out.iterdir())):
        raise AdapterError("output exists and is not empty", where=str(out), hint="use --force to replace it")
    plan = plan_composition(parts)
    logger.info(
        "composing %d adapters into %s (rank %d, %d modules)", len(plan.parts), out, plan.rank, len(plan.modules)
    )
    for note in plan.notes:
        logger.info("%s", note)
    return _write_atomically(plan, out, replace=out.exists())


def composition_hash(parts: Iterable[tuple[Path, float]]) -> str:
    """sha256 over each part's adapter_config.json and adapters.safetensors bytes and weight, in order."""
    digest = hashlib.sha256(FORMAT_VERSION.encode())
    for path, weight in parts:
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            file = Path(path) / name
            try:
                with open_regular(file) as (fh, size):
                    digest.update(f"{name}:{size}:".encode())
                    while chunk := fh.read(CHUNK_BYTES):
                        digest.update(chunk)
            except FileNotFoundError:
                # read_part explains what is missing.
                read_part(Path(path), weight)
                raise
            except OSError as exc:
                raise AdapterError(f"cannot read: {exc.strerror or exc}", where=str(file)) from exc
        digest.update(f"weight:{float(weight)!r};".encode())
    return digest.hexdigest()


def resolve_refs(refs: Sequence[AdapterRef], project_dir: Path) -> list[tuple[Path, float]]:
    """Adapter directories and weights of a profile's ``adapters`` list."""
    from punie.adapters.locate import resolve_adapter

    return [(Path(resolve_adapter(ref.path, Path(project_dir))), float(ref.weight)) for ref in refs]


def ensure_composed(refs: Sequence[AdapterRef], project_dir: Path) -> Path:
    """The composed adapter of ``refs``, built once under ``<project>/.punie/composed/<hash16>/``.

    The cache key is the content of every part (config and weights) and its
    weight, so retraining a part or changing a weight composes anew.
    """
    parts = resolve_refs(refs, Path(project_dir))
    digest = composition_hash(parts)[:16]
    target = state_dir(project_dir) / "composed" / digest
    if (target / CONFIG_FILE).is_file() and (target / WEIGHTS_FILE).is_file():
        logger.debug("reusing composed adapter %s", target)
        return target
    plan = plan_composition(parts, project_dir=Path(project_dir))
    logger.info("composing %s into %s", ", ".join(str(p) for p, _ in parts), target)
    for note in plan.notes:
        logger.info("%s", note)
    return _write_atomically(plan, target, replace=target.exists())
