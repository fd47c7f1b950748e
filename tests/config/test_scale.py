"""The costs of `punie check` grow linearly with the profiles file (issue 25, item 4).

Counted, not timed: parent lookups of the extends-cycle search, layers merged to resolve
every profile of a long chain, scans of /proc/net/tcp, readings and checks of a base model,
scans of the file's key lines, key paths mapped to profile keys and default tables built per
`punie check` (bench/config_scale.py prints the times).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from punie.checks import check_profiles
from punie.config import load_profiles, locate
from punie.config import resolve as resolve_module
from punie.config.loader import extends_cycles
from punie.weights import headers


class CountingMap(Mapping[str, "str | None"]):
    """A mapping that counts every lookup."""

    def __init__(self, data: dict[str, str | None]):
        self.data, self.lookups = data, 0

    def __getitem__(self, key: str) -> str | None:
        self.lookups += 1
        return self.data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def __contains__(self, key: object) -> bool:
        self.lookups += 1
        return key in self.data


def _naive_cycles(parent: dict[str, str | None]) -> list[list[str]]:
    """The old rule: follow every chain; report a cycle from its first member in file order."""
    found, reported = [], set()
    for name in parent:
        chain, current = [name], parent[name]
        while current is not None and current in parent and current not in chain:
            chain.append(current)
            current = parent[current]
        if current is not None and current in chain:
            cycle = chain[chain.index(current):]
            if frozenset(cycle) not in reported and name == cycle[0]:
                reported.add(frozenset(cycle))
                found.append(cycle)
    return found


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.none(), st.integers(0, 12)), min_size=1, max_size=12))
def test_extends_cycles_agrees_with_following_every_chain(targets: list[int | None]) -> None:
    parent = {f"p{i}": (f"p{t}" if t is not None else None) for i, t in enumerate(targets)}
    assert extends_cycles(parent) == _naive_cycles(parent)


@pytest.mark.parametrize("n", [1000, 3000])
def test_extends_cycles_looks_up_each_profile_a_bounded_number_of_times(n: int) -> None:
    chain = {f"c{i}": (f"c{i - 1}" if i else None) for i in range(n)}
    ring = {f"r{i}": f"r{(i + 1) % n}" for i in range(n)}
    for data in (chain, dict(reversed(chain.items())), ring):
        counting = CountingMap(data)
        cycles = extends_cycles(counting)
        assert cycles == ([] if data is not ring else [[f"r{i}" for i in range(n)]])
        assert counting.lookups <= 4 * n  # following every chain: n * n / 2


def _chain_file(tmp_path: Path, n: int, model: Path) -> Path:
    lines = [f'[defaults]\nmodel = "{model}"\n', '[profiles.c0]\nserver.port = 19998\n']
    lines += [f'[profiles.c{i}]\nextends = "c{i - 1}"\nagent.max_turns = {1 + i % 50}\n' for i in range(1, n)]
    path = tmp_path / "punie.toml"
    path.write_text("\n".join(lines))
    return path


def test_resolving_every_profile_of_a_chain_merges_each_layer_once(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    n = 1000
    config = _chain_file(tmp_path, n, tmp_path)
    calls = {"layer": 0}
    original = resolve_module._layer

    def counting(*args, **kwargs):
        calls["layer"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(resolve_module, "_layer", counting)
    resolved = load_profiles(config=config, env={})
    assert len(resolved) == n
    assert calls["layer"] <= 2 * n + 2  # each profile as an ancestor once, and as itself once: was n * n / 2
    deepest = resolved[-1]
    assert deepest.profile.agent.max_turns == 1 + (n - 1) % 50
    assert deepest.sources["agent.max_turns"] == "file"
    assert resolved[-2].sources["server.port"] == "file (extends c0)"
    assert deepest.profile.server.port == 19998
    # a profile resolved alone gets the same answer as in the whole file
    alone = load_profiles([f"c{n - 1}"], config=config, env={})[0]
    assert alone.profile == deepest.profile and alone.sources == deepest.sources


def test_one_check_scans_sockets_once_reads_the_base_once_and_the_key_lines_once(
        tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from punie import net

    n = 60
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    lines = [f'[defaults]\nmodel = "{tiny_model}"\n']
    lines += [f"[profiles.p{i}]\nserver.port = {port}\n" for i in range(n)]
    config = tmp_path / "punie.toml"
    config.write_text("\n".join(lines))  # a busy port: every profile gets a warning naming its line
    counts = {"scan": 0, "shapes": 0, "lines": 0}
    for module, name, key in ((net, "_scan_listeners", "scan"), (headers, "_read_model_shapes", "shapes"),
                              (locate, "key_lines", "lines")):
        original = getattr(module, name)

        def counting(*args, _original=original, _key=key, **kwargs):
            counts[_key] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, name, counting)
    headers._SHAPES_CACHE.clear()
    resolve_module._LINES_CACHE.clear()
    locate._LAST.clear()
    with busy:
        report = check_profiles(load_profiles(config=config, env={}))
    assert len(report.profiles) == n
    assert {p.profile for p in report.problems if p.code == "port"} == {f"p{i}" for i in range(n)}
    assert all(p.where and p.where.startswith("punie.toml:") for p in report.problems if p.code == "port")
    assert counts == {"scan": 1, "shapes": 1, "lines": 1}  # the loader's scan is the checks' too


def _many_file(tmp_path: Path, n: int, model: Path | str, *, first_port: int) -> Path:
    lines = [f'[defaults]\nmodel = "{model}"\n']
    lines += [f"[profiles.p{i}]\nserver.port = {first_port + i}\n" for i in range(n)]
    path = tmp_path / "punie.toml"
    path.write_text("\n".join(lines))
    return path


def _free_run(n: int) -> int:
    """The first of ``n`` consecutive ports nothing listens on now (a clean check has no port warning)."""
    from tests.support.ports import port_free

    for first in range(41000, 60000 - n, n):
        if all(port_free(p) for p in range(first, first + n)):
            return first
    pytest.skip("no run of free ports")


def test_a_profiles_default_tables_are_built_once_per_process(tmp_path: Path) -> None:
    config = _many_file(tmp_path, 3, tmp_path, first_port=41000)
    a, b, c = (r.profile for r in load_profiles(config=config, env={}))
    for table in ("restart", "shutdown", "readiness", "liveness", "vllm", "distributed"):
        assert getattr(a.server, table) is getattr(b.server, table) is getattr(c.server, table)
    assert a.agent is b.agent and a.fuse is b.fuse and a.agent.permissions is c.agent.permissions
    assert a.server is not b.server and a.server.port != b.server.port  # what a profile sets is its own
    assert a.agent == type(a.agent)() and a.server.restart == type(a.server.restart)()  # the defaults, unchanged


def test_one_check_checks_the_base_once_and_scans_no_key_line_when_clean(
        tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from punie.checks import profile as profile_module
    from punie.config import keys as keys_module

    n = 200
    config = _many_file(tmp_path, n, tiny_model, first_port=_free_run(n))
    counts = {"outcome": 0, "lines": 0, "leaf": 0}
    for module, name, key in ((profile_module, "_model_outcome", "outcome"), (locate, "key_lines", "lines"),
                              (keys_module, "leaf_of", "leaf")):
        original = getattr(module, name)

        def counting(*args, _original=original, _key=key, **kwargs):
            counts[_key] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, name, counting)
    locate._LAST.clear()
    resolve_module._LEAF_NAMES.clear()
    report = check_profiles(load_profiles(config=config, env={}))
    assert report.ok and not report.problems and len(report.profiles) == n
    assert all(any(text.startswith(f"model: {tiny_model}") for text in p.passed) for p in report.profiles)
    # one reading and one check of the base; no line looked up (no problem to place); each key path
    # mapped to its profile key once ([defaults].model, server.port), not once per profile
    assert counts == {"outcome": 1, "lines": 0, "leaf": 2}


def test_a_broken_base_is_read_once_and_reported_for_every_profile(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "llama"}')  # and no weights
    n = 100
    config = _many_file(tmp_path, n, broken, first_port=_free_run(n))
    reads = {"n": 0}
    original = headers._read_model_shapes

    def counting(*args, **kwargs):
        reads["n"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(headers, "_read_model_shapes", counting)
    report = check_profiles(load_profiles(config=config, env={}))
    assert reads["n"] == 1  # was once per profile: a failed reading is not cached by read_model_shapes
    assert [p.profile for p in report.errors] == [f"p{i}" for i in range(n)]
    assert {(p.code, p.where) for p in report.errors} == {("model-unreadable", str(broken))}


def test_text_output_copies_only_reports_with_something_to_escape() -> None:
    from punie.checks.report import ProfileReport, Report
    from punie.cli.check import _one_line_values

    clean = ProfileReport(name="p0", passed=["model: ok"])
    forged = ProfileReport(name="p1", passed=["a\n  ✓ forged"])
    shown = _one_line_values(Report(profiles=[clean, forged]))
    assert shown.profiles[0] is clean
    assert shown.profiles[1].passed == ["a\\n  ✓ forged"]
