"""Property tests: whatever bytes, overrides or variables come in, only ConfigError comes out."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from punie.config import load_profile, load_profiles, parse_value
from punie.config.locate import dotted, key_lines, line_of
from punie.config.models import ResolvedProfile
from punie.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = (ROOT / "punie.toml").read_bytes()
# PUNIE_FUZZ_EXAMPLES=5000 for a long local run.
FUZZ = settings(
    max_examples=int(os.environ.get("PUNIE_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)



@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One directory per module: each example overwrites the same file."""
    return tmp_path_factory.mktemp("fuzz")


def _load_bytes(work: Path, data: bytes) -> list[ResolvedProfile] | ConfigError:
    path = work / "punie.toml"
    path.write_bytes(data)
    try:
        return load_profiles(config=str(path), env={}, cwd=work)
    except ConfigError as exc:
        assert exc.render()  # renders without raising
        assert exc.exit_code == 2
        return exc


@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes_only_raise_config_error(work: Path, data: bytes) -> None:
    _load_bytes(work, data)


@FUZZ
@given(st.integers(min_value=0, max_value=len(EXAMPLE)))
def test_truncated_example_only_raises_config_error(work: Path, cut: int) -> None:
    result = _load_bytes(work, EXAMPLE[:cut])
    if cut == len(EXAMPLE):
        assert not isinstance(result, ConfigError)


@FUZZ
@given(st.integers(min_value=0, max_value=len(EXAMPLE)), st.binary(min_size=1, max_size=12))
def test_example_with_random_bytes_inserted(work: Path, at: int, junk: bytes) -> None:
    _load_bytes(work, EXAMPLE[:at] + junk + EXAMPLE[at:])


_TOML_ATOMS = st.sampled_from(
    ['"', "'", "[", "]", "{", "}", "=", ".", ",", "\n", "#", " ", "profiles", "server", "port", "model",
     "extends", "defaults", "demo", "1", "70000", "true", '"x"', "[[", "]]", "adapters", "agent", "-", "\\"]
)


@pytest.mark.slow
@FUZZ
@given(st.lists(_TOML_ATOMS, max_size=40))
def test_toml_shaped_noise_only_raises_config_error(work: Path, atoms: list[str]) -> None:
    _load_bytes(work, "".join(atoms).encode())


@FUZZ
@given(st.text(max_size=60))
def test_random_set_strings_only_raise_config_error(override: str) -> None:
    try:
        load_profile("demo", config=str(ROOT / "punie.toml"), env={}, overrides=[override])
    except ConfigError as exc:
        assert exc.render().startswith("--set ")


_KEYS = st.sampled_from(
    ["server.port", "server.host", "model", "adapter", "adapters", "agent.tools", "server.chat_template_args",
     "agent.permissions.run_command", "server.url", "server.temperature", "agent.max_turns", "server"]
)


@FUZZ
@given(_KEYS, st.text(max_size=30))
def test_random_values_for_real_keys(key: str, value: str) -> None:
    try:
        resolved = load_profile("demo", config=str(ROOT / "punie.toml"), env={}, overrides=[f"{key}={value}"])
    except ConfigError as exc:
        assert exc.render().startswith(f"--set {key}=")
    else:
        if key != "server":  # a whole table sets its leaves, not a key named "server"
            assert resolved.sources[key] == "cli"


_ENV_NAMES = st.sampled_from(
    ["PUNIE_MODEL", "PUNIE_SERVER__PORT", "PUNIE_SERVER", "PUNIE_AGENT__TOOLS", "PUNIE_ADAPTERS",
     "PUNIE_SERVER__CHAT_TEMPLATE_ARGS", "PUNIE_AGENT__PERMISSIONS", "PUNIE_SERVER__NOPE", "PUNIE_PROFILE",
     "PUNIE_X", "PUNIE_", "PUNIE___", "PUNIE_SERVER____PORT"]
)


@pytest.mark.slow
@FUZZ
@given(st.dictionaries(_ENV_NAMES, st.text(max_size=20), max_size=4))
def test_random_environment_only_raises_config_error(env: dict[str, str]) -> None:
    try:
        load_profile(None, config=str(ROOT / "punie.toml"), env=env)
    except ConfigError:
        pass


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_integers_round_trip_through_set_values(value: int) -> None:
    assert parse_value(str(value)) == value


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=30))
def test_quoted_strings_round_trip(text: str) -> None:
    quoted = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    assert parse_value(quoted) == text


def test_bare_words_stay_strings() -> None:
    assert parse_value("org/model-4bit") == "org/model-4bit"
    assert parse_value("2024-01-01") == "2024-01-01"
    assert parse_value("1\nother = 2") == "1\nother = 2"
    assert parse_value(" true ") is True
    assert parse_value("") == ""


_NAMES = st.text(alphabet="abcXYZ-_ .é", min_size=1, max_size=8)


@settings(max_examples=80, deadline=None)
@given(st.lists(_NAMES, min_size=1, max_size=5, unique=True), st.data())
def test_error_line_matches_the_bad_key(work: Path, names: list[str], data: st.DataObject) -> None:
    """A bad port in any profile, written in any table style, is reported on its own line."""
    bad = data.draw(st.sampled_from(names))
    lines = ["# generated", ""]
    expected = 0
    for name in names:
        key = dotted([name])
        style = data.draw(st.sampled_from(["subtable", "dotted", "inline"]))
        port = 70000 if name == bad else 8080
        lines.append(f"[profiles.{key}]")
        lines.append('model = "m"')
        if style == "subtable":
            lines.append(f"[profiles.{key}.server]")
            lines.append(f"port = {port}")
        elif style == "dotted":
            lines.append(f"server.port = {port}")
        else:
            lines.append(f"server = {{ host = \"127.0.0.1\", port = {port} }}")
        if name == bad:
            expected = len(lines)
        lines.append('description = """multi\n[profiles.fake]\nport = 1\n"""' if style == "dotted" else "")
        lines.extend(lines.pop().split("\n"))
    text = "\n".join(lines) + "\n"
    path = work / "lines.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_profiles(config=str(path), env={}, cwd=work)
    assert info.value.render() == (
        f"lines.toml:{expected}: profiles.{dotted([bad])}.server.port: Input should be less than or equal to 65535"
    )


def test_key_lines_handles_quoted_and_dotted_keys() -> None:
    text = '[profiles."a.b"]\nmodel = "m"\n"server".\'port\' = 1\n[[x.y]]\nz = 1\n'
    lines = key_lines(text)
    assert lines[("profiles", "a.b")] == 1
    assert lines[("profiles", "a.b", "server", "port")] == 3
    assert lines[("x", "y")] == 4
    assert line_of(lines, ("profiles", "a.b", "adapters", 0)) == 1
    assert line_of(lines, ("nothing",)) is None
