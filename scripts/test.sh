#!/usr/bin/env bash
# Set up, then run the whole test suite (slow tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MLX_DISABLE_COMPILE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest "$@"
