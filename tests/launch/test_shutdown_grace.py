"""The stop grace is the profile's ``[server.shutdown] grace``, carried by the plan (issue 22's tables),
unless ``punie up --grace`` (the ``grace`` argument) overrides it."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from punie.launch import run_plan
from tests.support.launch_helpers import alive, fake_plan, pids


def _stop_a_server_ignoring_sigterm(tmp_path: Path, caplog: pytest.LogCaptureFixture, **kw: object) -> str:
    plan = fake_plan(tmp_path, server_args=["--ignore-term"], agent_args=["--exit-after", "0.3"],
                     shutdown={"grace": 0.25})
    assert plan.shutdown_grace == 0.25
    with caplog.at_level(logging.WARNING, logger="punie.launch.process"):
        outcome = run_plan(plan, sink=lambda line: None, probe_interval=0.02, **kw)
    assert (outcome.reason, outcome.exit_code) == ("agent-exited", 0)
    assert outcome.server_returncode == -9  # SIGTERM ignored: killed after the grace
    assert not any(alive(p) for p in pids(tmp_path / "server.pid"))
    return caplog.text


def test_the_profile_grace_stops_the_children(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert "did not stop within 0.2s" in _stop_a_server_ignoring_sigterm(tmp_path, caplog)  # 0.25, as %.1f


def test_the_grace_argument_overrides_the_profile(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert "did not stop within 0.6s" in _stop_a_server_ignoring_sigterm(tmp_path, caplog, grace=0.6)
