#!/usr/bin/env bash
# Set up, then run the test suite: all of it, slow tests included, unless the arguments select
# (`-m "not slow"`: the fast lane, also scripts/test-fast.sh; a folder or module: tests/launch).
# Two pytest-xdist workers (`--dist loadgroup`: tests/conftest.py keeps a module's tests together and
# runs the vLLM and the builtin-model tests one at a time); PUNIE_TEST_WORKERS=0 runs in one process,
# in order; `-n N` in the arguments wins.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MLX_DISABLE_COMPILE=1 TOKENIZERS_PARALLELISM=false
workers="${PUNIE_TEST_WORKERS:-2}"
xdist=()
if [ "$workers" != 0 ] && [[ " $* " != *" -n "* ]]; then
  xdist=(-n "$workers" --dist loadgroup)
fi
exec .venv/bin/python -m pytest ${xdist[@]+"${xdist[@]}"} "$@"
