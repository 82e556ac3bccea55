#!/usr/bin/env bash
# One GPU check in one call (under 8 minutes on one H100): nvidia-smi, tuneforge doctor, the fast test
# subset on the GPU, then tokens/s, MFU and peak memory of smollm2-135m LoRA and of a 0.7B Llama-shaped
# model from scratch, next to `tuneforge plan`'s estimate. Results: $OUT/gpu_check.json (else in the
# work folder, a temporary one by default) and a markdown table on stdout. The logic is in bench/gpu_check.py.
#
#   bash bench/gpu_check.sh              # on the GPU machine, from anywhere
#   bash bench/gpu_check.sh --dry-run    # print every command and recipe, run nothing (no GPU needed)
#   bash bench/gpu_check.sh --skip-tests --budget 300
#
# Without .venv it runs `make install` first (the locked versions; torch==<lock> from PyPI, which on
# Linux x86_64 is a CUDA build): that needs the package index, and takes minutes of the budget.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TOKENIZERS_PARALLELISM=false

dry_run=0
for arg in "$@"; do
  if [ "$arg" = "--dry-run" ]; then dry_run=1; fi
done

if [ ! -x .venv/bin/python ]; then
  if [ "$dry_run" = 1 ]; then
    echo "[setup] make install   (no .venv in $(pwd))"
    exec python3 bench/gpu_check.py "$@"   # the dry run needs only the standard library
  fi
  make install
fi
exec .venv/bin/python bench/gpu_check.py "$@"
