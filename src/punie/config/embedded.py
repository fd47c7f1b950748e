"""The profiles file Punie uses when no `punie.toml` is found anywhere.

It holds one `demo` profile on the builtin model, so `punie up` in an empty
directory still starts something useful (the builtin is provisioned on first use).
"""

from __future__ import annotations

EMBEDDED_NAME = "<built-in punie.toml>"

EMBEDDED_DEFAULT_TOML = """\
# Built-in profiles, used when no punie.toml is found in this directory or a parent.
default_profile = "demo"

[profiles.demo]
description = "Demo on the builtin SmolLM2 135M model (no adapter)"
model = "builtin:smollm2-135m-instruct"
"""
