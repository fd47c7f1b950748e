"""The mlx-distributed part of a launch plan (`punie.launch.distributed` builds it): values only."""

from __future__ import annotations

import shlex
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RankPlan(_Frozen):
    """What one rank runs, and where."""

    rank: int
    host: str = Field(description="ssh name (127.0.0.1: this machine, no ssh)")
    ips: tuple[str, ...] = ()
    local: bool
    via: tuple[str, ...] = Field((), description="how mlx.launch reaches it: () locally, else the ssh argv")
    argv: tuple[str, ...] = Field(description="the command the rank runs (mlx.launch execs it with MLX_RANK set)")


class CopyStep(_Frozen):
    """One command run before mlx.launch starts: make a directory or copy files to a host."""

    host: str
    what: str
    argv: tuple[str, ...]


class WrittenFile(_Frozen):
    """A file Punie writes before the launch (the hostfile, the ssh wrapper)."""

    path: str
    what: str
    content: str
    mode: int = 0o644


class DistributedPart(_Frozen):
    """The mlx-distributed part of a LaunchPlan: every rank, every copy, every file written."""

    backend: str
    sharding: Literal["tensor", "pipeline"]
    ring_port: int | None = Field(None, description="first port of the ring (rank r listens on ring_port + r)")
    python: str
    script: str = Field(description="the rank script's path on every host")
    model: str = Field(description="the model's path on every host")
    source_model: str = Field(description="the model directory here (copied to remote hosts)")
    hostfile: str | None = None
    ranks: tuple[RankPlan, ...]
    copies: tuple[CopyStep, ...] = ()
    files: tuple[WrittenFile, ...] = ()
    rank0_local: bool = True

    def render_lines(self) -> list[str]:
        """The part's lines of `punie up --dry-run` (commands shell-quoted for display only)."""
        lines = [f"  ranks:   {len(self.ranks)} ({self.backend}, {self.sharding} sharding"
                 + (f", ring ports {self.ring_port}-{self.ring_port + len(self.ranks) - 1}" if self.ring_port
                    and self.backend == "ring" else "") + ")"]
        for f in self.files:
            lines.append(f"  write:   {f.path} ({f.what})")
        for step in self.copies:
            lines.append(f"  copy:    [{step.host}] {shlex.join(step.argv)}")
        for r in self.ranks:
            where = "local" if r.local else f"ssh {r.host}"
            lines.append(f"  rank {r.rank}:  [{where}] " + (f"{shlex.join(r.via)} " if r.via else "")
                         + shlex.join(r.argv) + ("  (serves HTTP)" if r.rank == 0 else ""))
        return lines
