#!/usr/bin/env bash
# Set up the environment (scripts/setup_env.sh) and run the test suite. Extra arguments go to
# pytest. Tests that need detectron2 skip cleanly when it is not installed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup_env.sh
exec "${TEXTKD_VENV:-.venv}/bin/python" -m pytest tests "$@"
