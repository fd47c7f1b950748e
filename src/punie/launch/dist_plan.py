"""Values of an mlx-distributed plan (`punie.launch.backends.mlx_distributed`): ranks, copy steps, files."""

from __future__ import annotations

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
    """One command run here before mlx.launch starts: make a directory on a host, or copy files there."""

    host: str
    what: str
    argv: tuple[str, ...]
    files: tuple[str, ...] = Field((), description="the files it copies (none for a mkdir)")
    target: str = Field("", description="the directory they go to on the host")


class WrittenFile(_Frozen):
    """A file Punie writes before the launch (the hostfile, the ssh wrapper)."""

    path: str
    what: str
    content: str
    mode: int = 0o644
