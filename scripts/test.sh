#!/usr/bin/env bash
# Set up the environment (scripts/setup_env.sh, which installs detectron2 too) and run the whole
# test suite. Extra arguments go to pytest. The detectron2 tests are required: a missing or broken
# detectron2 stops the run instead of skipping them (TEXTKD_REQUIRE_DETECTRON2=0 to allow skips;
# TEXTKD_DETECTRON2=none sets up without detectron2 and skips them).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup_env.sh
if [ "${TEXTKD_DETECTRON2:-auto}" = none ]; then
  export TEXTKD_REQUIRE_DETECTRON2=${TEXTKD_REQUIRE_DETECTRON2:-0}
else
  export TEXTKD_REQUIRE_DETECTRON2=${TEXTKD_REQUIRE_DETECTRON2:-1}
fi
exec "${TEXTKD_VENV:-.venv}/bin/python" -m pytest tests "$@"
