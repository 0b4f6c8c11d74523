#!/usr/bin/env bash
# Every GPU figure of the model in one run (< 8 min on one large GPU): per-window time and peak device memory for
# sd15 at 512² with 8 and 24 frames, fp16 and bf16, camera off and on; GPU-seconds per new output frame; achieved
# TFLOP/s from the exact MAC count (benchmarks/window_flops.py). Random weights: no downloads, no network.
#
#   bash benchmarks/gpu_suite.sh            # on the GPU machine
#   bash benchmarks/gpu_suite.sh --dry-run  # the tiny preset on the CPU through the same code (tests)
#
# Needs PyTorch, numpy, Pillow and fsspec (the model imports neither diffusers nor transformers); PYTHON overrides
# the interpreter (default: the repository's .venv when present, else python3). On a machine without network that
# lacks one of them, carry its wheel:
#
#   MF_WHEELS=DIR bash benchmarks/gpu_suite.sh          # installs DIR/*.whl into a temporary folder first
#
# Further arguments go to benchmarks/_gpu_suite.py (--frames, --dtypes, --steps, --camera, --budget-s,
# --macs-cache FILE: MAC counts made beforehand on any CPU with --count-only, which saves GPU time).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
if [[ -n "${MF_WHEELS:-}" ]]; then
  site=$(mktemp -d)
  trap 'rm -rf "$site"' EXIT
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target "$site" "$MF_WHEELS"/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
if ! "$PYTHON" -c "import torch, numpy, PIL, fsspec" 2>/dev/null; then
  echo "gpu_suite: $PYTHON lacks one of torch/numpy/Pillow/fsspec (pip install it, or carry its wheel in" \
       "MF_WHEELS=DIR)" >&2
  exit 3
fi
"$PYTHON" benchmarks/_gpu_suite.py "$@"
