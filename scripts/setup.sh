#!/usr/bin/env bash
# Create .venv (or reuse it) and install Punie with mlx-lm and the test tools.
# Idempotent: a second run only re-checks the install. Progress goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
say() { echo "setup: $*" >&2; }
if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $("$PY" --version 2>&1)"
  "$PY" -m venv .venv
fi
stamp=.venv/.punie-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  start=$SECONDS
  say "[1/2] upgrading pip"
  .venv/bin/python -m pip install --quiet --upgrade pip >&2
  say "[2/2] installing Punie with mlx-lm and the test tools (a few minutes on a fresh machine; pip's output follows)"
  # pip's own progress (downloads, builds), minus the "already satisfied" line per package.
  .venv/bin/python -m pip install --progress-bar on --disable-pip-version-check -e '.[mlx,test]' 2>&1 \
    | { grep --line-buffered -v '^Requirement already satisfied' || true; } >&2
  touch "$stamp"
  say "done in $((SECONDS - start)) s: .venv/bin/punie"
fi
