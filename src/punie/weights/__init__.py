"""punie.weights: base models: resolving them offline, reading their headers, builtin models, GGUF import."""

from __future__ import annotations

from collections.abc import Callable

#: ``progress(stage, done, total)``: told about each step of provisioning a model, with
#: stage "download", "extract", "convert" or "update" (an older cache brought up to date);
#: ``done`` is None while a step has just begun (``total`` may then give its size in bytes).
Progress = Callable[[str, "int | None", "int | None"], None]
