"""The editor's structure: one key lexer, tomlkit and pydantic-settings through
their public API only, one validation per profile, ConfigError.problems."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import punie.config.edit as edit_pkg
from punie.config import lexer, load_profile
from punie.config.edit import rename_profile, split_key, validate_text
from punie.config.loader import read_config
from punie.config.locate import key_lines
from punie.config.models import Profile
from punie.config.resolve import resolve_many
from punie.config.settings import MappingEnvSource, ProfileSettings, read_env
from punie.errors import ConfigError, UsageError

SRC = Path(edit_pkg.__file__).parent.parent  # src/punie/config

# --------------------------------------------------------------------------- public API only


def _private_uses(path: Path) -> list[str]:
    """``x._name`` where x is not self/cls, and getattr/hasattr with a private name."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        private = isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
        if private and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
            found.append(f"{path.name}:{node.lineno}: .{node.attr}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr"):
            args = node.args
            if len(args) > 1 and isinstance(args[1], ast.Constant) and str(args[1].value).startswith("_"):
                found.append(f"{path.name}:{node.lineno}: {node.func.id}(..., {args[1].value!r})")
    return found


def test_editor_and_settings_use_no_private_attributes() -> None:
    files = [*sorted((SRC / "edit").glob("*.py")), SRC / "settings.py", SRC / "lexer.py", SRC / "locate.py"]
    assert len(files) >= 8
    assert [use for path in files for use in _private_uses(path)] == []


def test_settings_sources_override_no_private_method() -> None:
    private = [
        n for n, v in vars(MappingEnvSource).items() if n.startswith("_") and not n.startswith("__") and callable(v)
    ]
    assert private == []


def test_one_key_lexer() -> None:
    """No module of the editor or of locate reads keys or strings by hand any more."""
    for path in [*(SRC / "edit").glob("*.py"), SRC / "locate.py"]:
        text = path.read_text()
        assert "def _skip_string" not in text and "def _parse_key" not in text, path.name
        assert "_BARE" not in text, path.name


# --------------------------------------------------------------------------- the lexer

PART = st.text(st.characters(blacklist_categories=("Cs",)), max_size=6)
BARE = st.from_regex(r"[A-Za-z0-9_-]{1,6}", fullmatch=True)


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(parts=st.lists(PART | BARE, min_size=1, max_size=4), styles=st.data(), blanks=st.data())
def test_lexer_reads_keys_as_tomllib_does(parts: list[str], styles: st.DataObject, blanks: st.DataObject) -> None:
    written = []
    for part in parts:
        style = styles.draw(st.sampled_from([0, 1]))
        literal_ok = "'" not in part and part.isprintable()
        written.append(f"'{part}'" if style and literal_ok else lexer.render(part))
    sep = blanks.draw(st.sampled_from([".", " . ", "\t.", ". "]))
    text = sep.join(written)
    data = tomllib.loads(f"{text} = 0")
    expected: list[str] = []
    while isinstance(data, dict):
        ((k, data),) = data.items()
        expected.append(k)
    assert lexer.split_key(text) == tuple(expected) == tuple(parts)
    key = lexer.read_key(f"  {text} = 1", 0)
    assert key is not None and key.parts == tuple(parts)
    assert [f"  {text} = 1"[a:b] for a, b in key.spans] == written


@pytest.mark.parametrize("bad", ["", ".", "a.", ".a", "a..b", "a b", '"a', '"""a"""', "a = 1", "[a]"])
def test_lexer_refuses_what_is_not_one_key(bad: str) -> None:
    assert lexer.split_key(bad) is None
    with pytest.raises(UsageError, match="not a valid key"):
        split_key(bad)


def test_header_and_escaped_keys_are_located() -> None:
    text = '[profiles."a\\u0041"]\nmodel = "m"\n[ profiles . "x.y" . server ]  # c\nport = 1\n'
    lines = key_lines(text)
    assert lines[("profiles", "aA", "model")] == 2
    assert lines[("profiles", "x.y", "server", "port")] == 4
    found = lexer.header('[[a."b]"]]  # x')
    assert found is not None and found[0].parts == ("a", "b]") and found[1] is True


# --------------------------------------------------------------------------- rename through the lexer


def test_rename_profile_written_as_dotted_keys_and_split() -> None:
    text = (
        "[profiles]\n"
        'a.model = "m"  # the model\n'
        "a.server.port = 1\n"
        'b = { extends = "a" }\n'
        "\n[profiles.a.agent]\n"
        "max_turns = 3\n"
    )
    after = rename_profile(text, "a", "new one")
    assert after == text.replace("a.model", '"new one".model').replace("a.server", '"new one".server').replace(
        'extends = "a"', 'extends = "new one"'
    ).replace("[profiles.a.agent]", '[profiles."new one".agent]')
    assert rename_profile(after, "new one", "a") == text


def test_rename_ignores_lookalikes_in_multiline_strings() -> None:
    text = '[profiles.a]\ndescription = """\n[profiles.a]\na.model = 1\n"""\nmodel = "m"\n'
    after = rename_profile(text, "a", "b")
    assert after == '[profiles.b]\ndescription = """\n[profiles.a]\na.model = 1\n"""\nmodel = "m"\n'
    validate_text(after)


# --------------------------------------------------------------------------- settings and errors


def test_profile_is_validated_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "punie.toml"
    path.write_text('[profiles.a]\nmodel = "m"\nserver.port = 8081\n')

    def no_second_validation(self: object, **data: object) -> None:
        raise AssertionError("Profile validated a second time")

    source = read_config(path, env={})  # reading the file builds Profile() defaults: before the patch
    monkeypatch.setattr(Profile, "__init__", no_second_validation)
    (resolved,) = resolve_many(source, ["a"], env={"PUNIE_SERVER__HOST": "::1"}, overrides=["agent.max_turns=3"])
    assert type(resolved.profile) is Profile and resolved.profile.server.port == 8081
    assert resolved.profile.server.host == "::1" and resolved.profile.agent.max_turns == 3
    with pytest.raises(ValidationError):
        resolved.profile.model = "x"  # type: ignore[misc]  # still frozen


def test_settings_keep_the_profile_validators(tmp_path: Path) -> None:
    path = tmp_path / "punie.toml"
    path.write_text('[profiles.a]\nmodel = "m"\n')
    with pytest.raises(ConfigError, match="either 'adapter' or 'adapters'"):
        load_profile("a", config=path, env={}, overrides=["adapter=x", 'adapters=["y"]'])
    assert "extends" not in ProfileSettings.model_fields


def test_env_source_reads_the_given_mapping_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUNIE_SERVER__PORT", "1234")
    assert read_env({"PUNIE_SERVER__PORT": "9", "PUNIE_MODEL": "", "OTHER": "x"}) == {"server": {"port": "9"}}
    assert read_env({}) == {}


def test_config_error_problems_is_a_constructor_argument() -> None:
    error = ConfigError("two things", where="punie.toml:3", problems=["a", "b"])
    assert error.problems == ["a", "b"] and str(error) == "punie.toml:3: two things"
    assert ConfigError("one").problems == []
    with pytest.raises(ConfigError) as info:
        validate_text('[profiles.a]\nmodel = "m"\nserver.port = 0\nagent.max_turns = 0\n')
    assert len(info.value.problems) == 2


def test_set_override_keys_are_read_by_the_same_lexer() -> None:
    from punie.config.overrides import parse_override

    assert parse_override('server.chat_template_args."a=b.c"=true') == (
        ("server", "chat_template_args", "a=b.c"),
        True,
    )
    assert parse_override(" agent . max_turns = 3") == (("agent", "max_turns"), 3)
    with pytest.raises(ConfigError, match="not a valid key: 'server.port x'"):
        parse_override("server.port x=1")
