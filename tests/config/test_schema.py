"""The committed JSON schema matches the models, and describes what the loader accepts."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from punie.config.models import PunieFile
from punie.config.schema import SCHEMA_RELPATH, check_schema, schema_dict, schema_text
from punie.errors import CheckFailed

ROOT = Path(__file__).resolve().parents[2]


def test_committed_schema_is_not_stale() -> None:
    committed = ROOT / SCHEMA_RELPATH
    assert committed.is_file(), "run: punie schema --output schemas/punie.schema.json"
    assert committed.read_text(encoding="utf-8") == schema_text(), (
        "schemas/punie.schema.json is stale: run `punie schema --output schemas/punie.schema.json`"
    )
    check_schema(committed)


def test_check_schema_fails_on_a_changed_file(tmp_path: Path) -> None:
    stale = tmp_path / "punie.schema.json"
    stale.write_text(schema_text().replace('"port"', '"prot"'), encoding="utf-8")
    with pytest.raises(CheckFailed, match="stale"):
        check_schema(stale)
    with pytest.raises(CheckFailed, match="missing"):
        check_schema(tmp_path / "none.json")


def test_schema_describes_profiles_and_forbids_unknown_keys() -> None:
    schema = schema_dict()
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert schema["title"] == "punie.toml"
    assert set(schema["properties"]) == {"default_profile", "defaults", "profiles", "groups"}
    assert schema["additionalProperties"] is False
    server = schema["$defs"]["ServerOptions"]
    assert server["properties"]["port"]["maximum"] == 65535
    assert server["additionalProperties"] is False
    assert schema["$defs"]["Permissions"]["properties"]["run_command"]["enum"] == ["ask", "allow", "deny"]
    # every $ref points into $defs, so editors resolve it without fetching anything
    refs = [v for v in _walk(schema) if isinstance(v, str) and v.startswith("#/")]
    assert refs and all(r.removeprefix("#/$defs/") in schema["$defs"] for r in refs)
    json.dumps(schema)


def test_example_file_points_at_the_schema_and_matches_the_models() -> None:
    text = (ROOT / "punie.toml").read_text(encoding="utf-8")
    first = text.splitlines()[0]
    assert first == "#:schema ./schemas/punie.schema.json"
    assert (ROOT / first.split()[1]).resolve() == (ROOT / SCHEMA_RELPATH).resolve()
    PunieFile.model_validate(tomllib.loads(text))


def _walk(value: object):
    if isinstance(value, dict):
        for item in value.values():
            yield from _walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from _walk(item)
    else:
        yield value
