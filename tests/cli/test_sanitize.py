"""Untrusted strings never reach the terminal raw (issue 25, item 6): one sanitizer, `printable`,
escapes control characters; a value shown on its own line cannot start another one."""

from __future__ import annotations

import json
import re
from pathlib import Path

from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from punie.cli import main
from punie.textsafe import printable

STEERING = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
HOSTILE = "/nope\n  \u2713 model loads fine\x1b[2K\x1b]0;title\x07\r\u202eevil\x9b31m"


@given(st.text())
def test_printable_leaves_no_steering_character(text: str) -> None:
    shown = printable(text)
    assert not STEERING.search(shown)
    assert shown.count("\n") == text.count("\n")  # newlines kept: a multi-line message stays one
    line = printable(text, one_line=True)
    assert not STEERING.search(line) and "\n" not in line and "\t" not in line
    assert printable(shown) == shown and printable(line, one_line=True) == line  # escapes are plain text


@given(st.text(alphabet=st.characters(blacklist_categories=("Cc", "Zl", "Zp", "Cf"))))
def test_ordinary_text_is_untouched(text: str) -> None:
    assert printable(text, one_line=True) == text


def test_named_escapes() -> None:
    assert printable("a\x1b[2Kb\rc\u202ed\x00", one_line=True) == "a\\x1b[2Kb\\rc\\u202ed\\x00"
    assert printable("a\nb\tc") == "a\nb\tc" and printable("a\nb\tc", one_line=True) == "a\\nb\\tc"


def _hostile_config(tmp_path: Path) -> Path:
    config = tmp_path / "punie.toml"
    adapter = "./ad\n  \u2713 adapter ok\r\x1b[1A"
    config.write_text(f"[profiles.a]\nmodel = {json.dumps(HOSTILE)}\nadapter = {json.dumps(adapter)}\n"
                      "[profiles.a.server]\nport = 1\n")
    return config


def test_check_output_escapes_paths_from_the_config(tmp_path: Path) -> None:
    config = _hostile_config(tmp_path)
    text = CliRunner().invoke(main, ["--config", str(config), "check"])
    as_json = CliRunner().invoke(main, ["--config", str(config), "check", "--format", "json"])
    assert text.exit_code == 1 and as_json.exit_code == 1
    assert not STEERING.search(text.output), text.output
    report = json.loads(as_json.output)
    passed = sum(len(p["passed"]) for p in report["profiles"])
    problems = sum(len(p["problems"]) for p in report["profiles"])
    lines = text.output.splitlines()
    # Every line is a real one: a header, one per passed check, one per problem, the summary.
    assert sum(line.startswith("  \u2713") for line in lines) == passed
    assert len(lines) == len(report["profiles"]) + passed + problems + 1, text.output
    assert "\\n  \u2713 model loads fine\\x1b[2K" in text.output  # shown, escaped


def test_up_refusal_and_errors_escape_them_too(tmp_path: Path) -> None:
    config = _hostile_config(tmp_path)
    result = CliRunner().invoke(main, ["--config", str(config), "up", "a", "--dry-run"])
    assert result.exit_code != 0
    assert not STEERING.search(result.output)
    assert not any(line.lstrip().startswith("\u2713") for line in result.output.splitlines()), result.output
    bad = tmp_path / "bad.toml"
    bad.write_text('[profiles."b\x1b[31m"]\nmodel = "/x"\n[profiles.c]\nmodel = "/y"\n')
    result = CliRunner().invoke(main, ["--config", str(bad), "check", "nope\x1b[2J"])
    assert result.exit_code == 2 and not STEERING.search(result.output), result.output
