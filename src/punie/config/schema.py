"""The JSON schema of `punie.toml`, generated from the models.

Editors (Taplo / Even Better TOML) read it through the ``#:schema`` line at the
top of the file; `schemas/punie.schema.json` in the repository is this output
and a test fails when it is stale.
"""

from __future__ import annotations

import json
from pathlib import Path

from punie.config.models import PunieFile
from punie.errors import CheckFailed

SCHEMA_RELPATH = Path("schemas") / "punie.schema.json"
SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def schema_dict() -> dict:
    """The schema of the whole file as a JSON-compatible dict."""
    schema = PunieFile.model_json_schema()
    return {"$schema": SCHEMA_DIALECT, **schema}


def schema_text() -> str:
    """The schema as it is committed: 2-space indented JSON, one trailing newline."""
    return json.dumps(schema_dict(), indent=2, ensure_ascii=False) + "\n"


def write_schema(path: str | Path) -> Path:
    """Write the schema to ``path`` (parents created); returns the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(schema_text(), encoding="utf-8")
    return target


def check_schema(path: str | Path) -> None:
    """Raise CheckFailed when ``path`` is missing or differs from a fresh generation."""
    target = Path(path)
    try:
        current = target.read_text(encoding="utf-8")
    except OSError:
        raise CheckFailed(f"{target}: missing; run `punie schema --output {target}`") from None
    if current != schema_text():
        raise CheckFailed(f"{target}: stale (the models changed); run `punie schema --output {target}`")
