"""Restart, shutdown, readiness and liveness as their own tables (issue 22), the flat keys still read.

``[profiles.X.server.restart] policy/max_restarts/backoff``, ``[...server.shutdown] grace``,
``[...server.readiness] timeout``, ``[...server.liveness] interval/failures``; the flat
``server.restart = "on-failure"``, ``max_restarts``, ``restart_backoff``, ``ready_timeout``,
``liveness_interval``, ``liveness_failures`` map into them, per layer, and one table giving a setting
in both forms is refused naming both.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from punie.cli import main
from punie.config import load_profile
from punie.config.models import FLAT_SERVER_KEYS, ServerOptions, nest_flat_server_keys
from punie.errors import ConfigError
from punie.launch import build_plan

FLAT = """
[profiles.p]
model = "m"
server.restart = "on-failure"
server.max_restarts = 7
server.restart_backoff = 0.25
server.ready_timeout = 42
server.liveness_interval = 2.5
server.liveness_failures = 9
"""

TABLES = """
[profiles.p]
model = "m"

[profiles.p.server.restart]
policy = "on-failure"
max_restarts = 7
backoff = 0.25

[profiles.p.server.readiness]
timeout = 42

[profiles.p.server.liveness]
interval = 2.5
failures = 9

[profiles.p.server.shutdown]
grace = 1.5
"""


def _plan(tmp_path: Path, text: str, *overrides: str):  # type: ignore[no-untyped-def]
    (tmp_path / "punie.toml").write_text(text)
    resolved = load_profile("p", config=str(tmp_path / "punie.toml"), overrides=list(overrides), env={})
    return build_plan(resolved, model_path=tmp_path / "m", adapter_path=None, python="python")


def test_flat_keys_and_tables_make_the_same_plan(tmp_path: Path) -> None:
    flat, tables = _plan(tmp_path, FLAT), _plan(tmp_path, TABLES)
    for plan in (flat, tables):
        assert plan.restart.mode == "on-failure" and plan.restart.max_restarts == 7 and plan.restart.backoff == 0.25
        assert plan.ready_timeout == 42 and plan.liveness_interval == 2.5 and plan.liveness_failures == 9
    assert flat.shutdown_grace == 5.0 and tables.shutdown_grace == 1.5  # the default, and the table's
    assert flat.model_dump(exclude={"shutdown_grace"}) == tables.model_dump(exclude={"shutdown_grace"})


def test_both_forms_in_one_table_are_refused_naming_both(tmp_path: Path) -> None:
    (tmp_path / "punie.toml").write_text(TABLES + "\n[profiles.q]\nmodel = \"m\"\nserver.ready_timeout = 1\n"
                                         "server.readiness.timeout = 2\n")
    with pytest.raises(ConfigError) as caught:
        load_profile("q", config=str(tmp_path / "punie.toml"), env={})
    text = caught.value.render()
    assert "server.ready_timeout" in text and "server.readiness.timeout" in text and "punie.toml" in text


@pytest.mark.parametrize(("flat", "table"), sorted(FLAT_SERVER_KEYS.items()))
def test_each_flat_key_clashes_with_its_table_key(flat: str, table: tuple[str, str]) -> None:
    with pytest.raises(ValueError, match=rf"server\.{flat} and server\.{table[0]}\.{table[1]}"):
        ServerOptions(**{flat: 1, table[0]: {table[1]: 2}})


def test_layers_merge_flat_and_table_forms_the_higher_wins(tmp_path: Path) -> None:
    text = ("[defaults.server]\nready_timeout = 11\nmax_restarts = 4\n\n[profiles.p]\nmodel = \"m\"\n"
            "server.readiness.timeout = 22\n")
    plan = _plan(tmp_path, text)
    assert plan.ready_timeout == 22 and plan.restart.max_restarts == 4  # a flat default under the table form
    assert _plan(tmp_path, text, "server.ready_timeout=33").ready_timeout == 33  # --set, flat, over the table
    assert _plan(tmp_path, TABLES, "server.restart=no").restart.mode == "no"  # the flat string over the table
    assert _plan(tmp_path, FLAT, "server.restart.max_restarts=1").restart.max_restarts == 1


def test_set_keeps_working_for_both_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "punie.toml").write_text('[profiles.p]\nmodel = "m"\n')
    runner = CliRunner()
    for key, value in (("server.ready_timeout", "30"), ("server.liveness.failures", "6"),
                       ("server.restart", "on-failure"), ("server.shutdown.grace", "2")):
        result = runner.invoke(main, ["profiles", "set", "p", key, value])
        assert result.exit_code == 0, result.output
    server = load_profile("p", config=str(tmp_path / "punie.toml"), env={}).profile.server
    assert server.readiness.timeout == 30 and server.liveness.failures == 6
    assert server.restart.policy == "on-failure" and server.shutdown.grace == 2
    before = (tmp_path / "punie.toml").read_text()
    result = runner.invoke(main, ["profiles", "set", "p", "server.readiness.timeout", "5"])
    assert result.exit_code == 2 and "server.ready_timeout" in result.output + result.stderr
    assert (tmp_path / "punie.toml").read_text() == before  # refused, the file untouched


_VALUES = st.fixed_dictionaries({}, optional={
    "restart": st.sampled_from(["no", "on-failure"]), "max_restarts": st.integers(0, 9),
    "restart_backoff": st.floats(0, 10), "ready_timeout": st.floats(0.5, 500),
    "liveness_interval": st.floats(0, 60), "liveness_failures": st.integers(1, 9)})


@given(_VALUES)
def test_nesting_moves_every_flat_key_and_keeps_its_value(flat: dict[str, object]) -> None:
    nested = nest_flat_server_keys(dict(flat))
    assert not set(nested) & set(FLAT_SERVER_KEYS)
    server = ServerOptions(**flat)
    for key, (table, name) in FLAT_SERVER_KEYS.items():
        if key in flat:
            assert nested[table][name] == flat[key] == getattr(getattr(server, table), name)
    if "restart" in flat:
        assert server.restart.policy == flat["restart"]


def test_set_replaces_a_flat_restart_in_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "punie.toml").write_text('[profiles.p]\nmodel = "m"\nserver.restart = "no"  # keep me\n')
    result = CliRunner().invoke(main, ["profiles", "set", "p", "server.restart", "on-failure"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "punie.toml").read_text() == '[profiles.p]\nmodel = "m"\nserver.restart = "on-failure"  # keep me\n'
    assert load_profile("p", config=str(tmp_path / "punie.toml"), env={}).profile.server.restart.policy == "on-failure"
