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
# OpenBLAS: mlx[cpu] on Linux bundles a single-threaded reference BLAS; Punie preloads the
# system's OpenBLAS into its mlx children (src/punie/launch/blas.py). Install it where we can.
if [ "$(uname -s)" = Linux ] && [ -z "${PUNIE_SKIP_OPENBLAS:-}" ]; then
  have_openblas=
  for lib in /usr/lib/*/openblas-pthread/libblas.so.3 /usr/lib64/libopenblas*.so.0 /usr/lib/libopenblas*.so.0; do
    [ -e "$lib" ] && have_openblas=1
  done
  if [ -n "$have_openblas" ]; then
    say "OpenBLAS: already installed"
  elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "OpenBLAS: installing libopenblas0-pthread with apt-get"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libopenblas0-pthread; } >&2 \
      && say "OpenBLAS: installed" || say "OpenBLAS: apt-get failed; mlx runs with its slow bundled BLAS"
  elif [ "$(id -u)" = 0 ] && command -v dnf >/dev/null; then
    say "OpenBLAS: installing openblas with dnf"
    dnf install -y -q openblas >&2 && say "OpenBLAS: installed" \
      || say "OpenBLAS: dnf failed; mlx runs with its slow bundled BLAS"
  elif command -v apt-get >/dev/null; then
    say "OpenBLAS: not installed (mlx will be slow on this CPU); run: sudo apt-get install libopenblas0-pthread"
  else
    say "OpenBLAS: not installed (mlx will be slow on this CPU); install your system's OpenBLAS (Fedora: sudo dnf install openblas)"
  fi
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
