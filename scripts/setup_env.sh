#!/usr/bin/env bash
# Set up the project environment: a virtual environment (default ./.venv, or $TEXTKD_VENV) with a
# working torch/torchvision pair and textkd installed in editable mode with its dependencies.
#
# The torch/torchvision pair is checked by importing torchvision. Where the plain install gives a
# broken pair (for example a local CPU-only torch wheel that pip prefers, with no torchvision built
# for it), the pair is reinstalled from the package index with local wheel folders out of the way.
# A pair that already imports is left alone, and so are the user's pip settings.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

TORCH_SPEC=${TEXTKD_TORCH_SPEC:-"torch==2.13.0"}
TORCHVISION_SPEC=${TEXTKD_TORCHVISION_SPEC:-"torchvision==0.28.0"}
VENV=${TEXTKD_VENV:-.venv}
PYTHON=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
py="$VENV/bin/python"

pair_ok() {
  "$py" - <<'PY' >/dev/null 2>&1
import torch, torchvision
from torchvision.ops import nms  # needs torchvision's compiled ops, built for this torch
nms(torch.zeros(1, 4), torch.zeros(1), 0.5)
PY
}

if pair_ok; then
  echo "[setup] torch/torchvision pair already works: $("$py" -c 'import torch,torchvision;print(torch.__version__, torchvision.__version__)')"
else
  echo "[setup] installing $TORCH_SPEC $TORCHVISION_SPEC"
  "$py" -m pip install -q "$TORCH_SPEC" "$TORCHVISION_SPEC" || true
  if ! pair_ok; then
    echo "[setup] torchvision does not import beside the installed torch;" \
      "reinstalling the pair from the package index without local wheel folders"
    "$py" -m pip uninstall -q -y torch torchvision >/dev/null 2>&1 || true
    PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= "$py" -m pip install -q "$TORCH_SPEC" "$TORCHVISION_SPEC"
    if ! pair_ok; then
      echo "[setup] ERROR: torch/torchvision still do not import together:" >&2
      "$py" -c 'import torchvision' >&2 || true
      exit 1
    fi
  fi
  echo "[setup] torch/torchvision: $("$py" -c 'import torch,torchvision;print(torch.__version__, torchvision.__version__)')"
fi

echo "[setup] installing textkd and its dependencies"
"$py" -m pip install -q -e ".[dev]"
pair_ok || { echo "[setup] ERROR: installing textkd broke the torch/torchvision pair" >&2; exit 1; }
if "$py" -c 'import detectron2' >/dev/null 2>&1; then
  echo "[setup] detectron2: $("$py" -c 'import detectron2;print(detectron2.__version__)')"
else
  echo "[setup] detectron2 is not installed (needed for training; see README.md 'Install')"
fi
echo "[setup] done: $py"
