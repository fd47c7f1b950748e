"""The costs of `punie check` grow linearly with the profiles file (issue 25, item 4).

Counted, not timed: parent lookups of the extends-cycle search, layers merged to resolve
every profile of a long chain, scans of /proc/net/tcp, readings of a base model and scans of
the file's key lines per `punie check` (bench/config_scale.py prints the times).
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
