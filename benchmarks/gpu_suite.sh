#!/usr/bin/env bash
# Every GPU figure of the model in one run (< 8 min on one large GPU): per-window time and peak device memory for
# sd15 at 512² with 8 and 24 frames, fp16 and bf16, camera off and on; GPU-seconds per new output frame; achieved
# TFLOP/s from the exact MAC count (benchmarks/window_flops.py). Random weights: no downloads, no network.
#
#   bash benchmarks/gpu_suite.sh            # on the GPU machine
#   bash benchmarks/gpu_suite.sh --dry-run  # the tiny preset on the CPU through the same code (tests)
#
# Needs PyTorch plus the model's own dependencies (diffusers, transformers, numpy, Pillow); PYTHON overrides the
# interpreter (default: the repository's .venv when present, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
if ! "$PYTHON" -c "import torch, diffusers, transformers, numpy, PIL" 2>/dev/null; then
  echo "gpu_suite: $PYTHON lacks torch/diffusers/transformers/numpy/Pillow (pip install diffusers transformers)" >&2
  exit 3
fi
exec "$PYTHON" benchmarks/_gpu_suite.py "$@"
