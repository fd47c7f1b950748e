"""Compare two `scripts/dryrun_snapshot.py` runs (issue 22: the dry-run plans are the same before and after
the backend seam, apart from the keys moved into the plan's ``backend`` part).

``python scripts/dryrun_compare.py BEFORE_DIR AFTER_DIR``: exit 0 when every plan is equal once the old
flat keys are moved the way the seam moved them (`MOVED`), printing the keys that moved; else prints the
differences and exits 1.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

#: Old top-level key -> (backend whose part holds it now, its name there). ``backend`` became ``backend.name``.
MOVED = {
    "blas": ("mlx", "blas"), "blas_note": ("mlx", "blas_note"), "blas_hint": ("mlx", "blas_hint"),
    "dense_of": ("mlx", "dense_of"),
    "base_model_id": ("vllm", "base_model_id"), "lora_modules": ("vllm", "lora_modules"),
    "models": ("vllm", "models"), "fatal_patterns": ("vllm", "fatal_patterns"), "group": ("vllm", "group"),
}


#: Keys the new plan has and the old did not, with the value every old plan implied.
ADDED = {"shutdown_grace": 5.0}  # server.shutdown.grace: the stop grace, now a profile setting


def moved(old: dict[str, Any]) -> dict[str, Any]:
    """An old plan (JSON) with its backend fields nested as the new plan has them (and the added keys)."""
    new = {**dict(old), **ADDED}
    name = new.pop("backend")
    part: dict[str, Any] = {"name": name}
    for key, (owner, field) in MOVED.items():
        value = new.pop(key)
        if owner == name:
            part[field] = value
    new["backend"] = part
    return new


def _plan(record: dict[str, Any]) -> Any:
    try:
        return json.loads(record["stdout"])
    except json.JSONDecodeError:
        return record["stdout"]


def compare(before: Path, after: Path) -> list[str]:
    problems = []
    names = sorted({p.name for p in before.glob("*.json")} | {p.name for p in after.glob("*.json")})
    for name in names:
        if not (before / name).exists() or not (after / name).exists():
            problems.append(f"{name}: only in {'after' if (after / name).exists() else 'before'}")
            continue
        old, new = json.loads((before / name).read_text()), json.loads((after / name).read_text())
        if (old["returncode"], old["stderr"]) != (new["returncode"], new["stderr"]):
            problems.append(f"{name}: exit/stderr {old['returncode']}/{old['stderr']!r} -> "
                            f"{new['returncode']}/{new['stderr']!r}")
        a, b = _plan(old), _plan(new)
        if isinstance(a, dict):
            a = moved(a)
        if a != b:
            keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k)) if isinstance(a, dict) and isinstance(
                b, dict) else ["<whole output>"]
            problems.append(f"{name}: differs in {keys}: " + "; ".join(
                f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys if isinstance(a, dict) and isinstance(b, dict)))
        else:
            print(f"{name}: same (apart from the moved keys)")
    return problems


if __name__ == "__main__":
    found = compare(Path(sys.argv[1]), Path(sys.argv[2]))
    print("moved keys: backend -> backend.name, " + ", ".join(f"{k} -> backend.{f} ({o})" for k, (o, f) in
                                                              MOVED.items()))
    print("added keys: " + ", ".join(f"{k} (= {v!r} in every old plan)" for k, v in ADDED.items()))
    for line in found:
        print("DIFFERENT:", line)
    sys.exit(1 if found else 0)
