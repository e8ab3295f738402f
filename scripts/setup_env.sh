#!/usr/bin/env bash
# Set up the project environment: a virtual environment (default ./.venv, or $TEXTKD_VENV) with a
# working torch/torchvision pair, textkd installed in editable mode with its dependencies, and
# detectron2.
#
# torch/torchvision: the pair is checked by importing torchvision's compiled ops. Where the plain
# install gives a broken pair (for example a local CPU-only torch wheel that pip prefers, with no
# torchvision built for it), the pair is reinstalled from the package index with local wheel
# folders out of the way. A pair that already imports is left alone, and so are the user's pip
# settings.
#
# detectron2 (not on PyPI), chosen by TEXTKD_DETECTRON2 (default auto):
#   auto      keep an importable detectron2; else the official source at a pinned commit when
#             GitHub answers within a few seconds; else the registry build (below)
#   keep      use the detectron2 that is installed; stop if there is none or it is broken
#   official  pip install --no-build-isolation git+https://github.com/facebookresearch/detectron2
#             @<pinned commit> (needs GitHub and a C++ compiler)
#   registry  sal-detectron2==0.7.2 from the package index, pinned by its sha256: a
#             redistribution of detectron2's Python package whose only wheel is tagged CPython
#             3.10; it is unpacked into $VENV/textkd-detectron2 and only its `detectron2` package
#             is put on the venv's path (the wheel's top-level `tools` package is not)
#   none      no detectron2 (the core library and its tests only; training needs detectron2)
# detectron2's runtime dependencies (tensorboard, omegaconf, hydra-core, …) come with textkd.
#
# Running it again changes nothing: every step checks first and skips what is already in place.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)

TORCH_SPEC=${TEXTKD_TORCH_SPEC:-"torch==2.13.0"}
TORCHVISION_SPEC=${TEXTKD_TORCHVISION_SPEC:-"torchvision==0.28.0"}
VENV=${TEXTKD_VENV:-.venv}
PYTHON=${PYTHON:-python3}
D2_MODE=${TEXTKD_DETECTRON2:-auto}
D2_REPO=https://github.com/facebookresearch/detectron2.git
D2_COMMIT=02b5c4e295e990042a714712c21dc79b731e8833 # detectron2 main, 2026-06-06
D2_REGISTRY_SPEC="sal-detectron2==0.7.2"
D2_REGISTRY_SHA256=491af0c7f79bdb2d178e46f6cb16a97c4ac968d45c41ea3f6b6435d59bbee561

case "$D2_MODE" in
  auto | keep | official | registry | none) ;;
  *)
    echo "[setup] ERROR: TEXTKD_DETECTRON2=$D2_MODE is not one of auto, keep, official," \
      "registry, none" >&2
    exit 2
    ;;
esac

fail() { # one clear line (what failed, what to do), then exit
  echo "[setup] ERROR: $*" >&2
  exit 1
}

LOGDIR=$(mktemp -d)
trap 'rm -rf "$LOGDIR"' EXIT
# pip_quiet LOGNAME ARGS...: run pip with its output in a log; on failure show the log's end
pip_quiet() {
  local log="$LOGDIR/$1.log"
  shift
  if "$py" -m pip "$@" >"$log" 2>&1; then
    return 0
  fi
  echo "[setup] pip $* failed; its last lines:" >&2
  grep -v '^WARNING: Location' "$log" | tail -n 12 | sed 's/^/    /' >&2
  return 1
}
pip_network_hint="check the network and the package index (pip config list; PIP_INDEX_URL)"

# ---------------------------------------------------------------- virtual environment
if [ ! -x "$VENV/bin/python" ]; then
  command -v "$PYTHON" >/dev/null 2>&1 ||
    fail "no Python interpreter '$PYTHON'; install Python >= 3.10 or set PYTHON=/path/to/python3"
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
    fail "$PYTHON is Python $("$PYTHON" -c 'import platform;print(platform.python_version())'); TextKD needs >= 3.10 (set PYTHON=/path/to/python3.X)"
  echo "[setup] creating virtual environment $VENV"
  if ! "$PYTHON" -m venv "$VENV" >"$LOGDIR/venv.log" 2>&1; then
    rm -rf "$VENV"
    fail "$PYTHON cannot create a virtual environment ($(grep -v '^$' "$LOGDIR/venv.log" | tail -n 1));" \
      "install venv support (Debian/Ubuntu: apt-get install python3-venv) or set PYTHON to" \
      "another interpreter"
  fi
fi
py="$VENV/bin/python"

# ---------------------------------------------------------------- torch / torchvision
pair_ok() {
  "$py" - <<'PY' >/dev/null 2>&1
import torch, torchvision
from torchvision.ops import nms  # needs torchvision's compiled ops, built for this torch
nms(torch.zeros(1, 4), torch.zeros(1), 0.5)
PY
}
pair_versions() { "$py" -c 'import torch,torchvision;print(torch.__version__, torchvision.__version__)'; }

if pair_ok; then
  echo "[setup] torch/torchvision pair already works: $(pair_versions)"
else
  echo "[setup] installing $TORCH_SPEC $TORCHVISION_SPEC"
  pip_quiet torch install "$TORCH_SPEC" "$TORCHVISION_SPEC" || true
  if ! pair_ok; then
    echo "[setup] torchvision does not import beside the installed torch;" \
      "reinstalling the pair from the package index without local wheel folders"
    "$py" -m pip uninstall -q -y torch torchvision >/dev/null 2>&1 || true
    PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS='' pip_quiet torch-index install \
      "$TORCH_SPEC" "$TORCHVISION_SPEC" ||
      fail "could not install $TORCH_SPEC and $TORCHVISION_SPEC: $pip_network_hint, or" \
        "install a matching pair into $VENV yourself and run this again"
    pair_pkgs_ok=1
    pair_ok || pair_pkgs_ok=0
    if [ $pair_pkgs_ok = 0 ]; then
      err=$("$py" -c 'import torchvision' 2>&1 | tail -n 1 || true)
      fail "torch and torchvision are installed but do not import together ($err); set" \
        "TEXTKD_TORCH_SPEC / TEXTKD_TORCHVISION_SPEC to a matching pair"
    fi
  fi
  echo "[setup] torch/torchvision: $(pair_versions)"
fi

# ---------------------------------------------------------------- textkd
stamp="$VENV/.textkd-install-stamp"
want_stamp="$ROOT $(cat setup.py pyproject.toml | sha256sum | cut -c1-16)"
textkd_here() {
  "$py" -c 'import os,sys,textkd;sys.exit(not os.path.realpath(textkd.__file__).startswith(os.path.realpath(sys.argv[1])))' \
    "$ROOT/projects/TextKD" >/dev/null 2>&1
}
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want_stamp" ] && textkd_here; then
  echo "[setup] textkd already installed (editable, $ROOT)"
else
  echo "[setup] installing textkd and its dependencies"
  pip_quiet textkd install -e ".[dev]" ||
    fail "could not install textkd's dependencies: $pip_network_hint"
  pair_ok || fail "installing textkd replaced the torch/torchvision pair with one that does" \
    "not import together; pin them with TEXTKD_TORCH_SPEC / TEXTKD_TORCHVISION_SPEC"
  echo "$want_stamp" >"$stamp"
fi

# ---------------------------------------------------------------- detectron2
# d2_probe: prints "version<TAB>path<TAB>compiled ops" and exits 0 when detectron2 works; exits 3
# when it is not installed; exits 4 (error on stderr) when it imports but is broken.
d2_probe() {
  "$py" - <<'PY'
import sys
try:
    import detectron2
except ModuleNotFoundError as e:
    if e.name == "detectron2":
        sys.exit(3)
    print(f"import detectron2: {type(e).__name__}: {e}", file=sys.stderr)
    sys.exit(4)
except Exception as e:
    print(f"import detectron2: {type(e).__name__}: {e}", file=sys.stderr)
    sys.exit(4)
try:  # what TextKD uses
    from detectron2.checkpoint import DetectionCheckpointer  # noqa: F401
    from detectron2.config import CfgNode, LazyConfig, get_cfg  # noqa: F401
    from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_train_loader  # noqa: F401
    from detectron2.engine import DefaultTrainer, default_argument_parser, launch  # noqa: F401
    from detectron2.evaluation import DatasetEvaluator, SemSegEvaluator  # noqa: F401
    from detectron2.modeling import SEM_SEG_HEADS_REGISTRY, build_model  # noqa: F401
    from detectron2.model_zoo import get_config_file  # noqa: F401  (needs pkg_resources)
    from detectron2.solver import build_lr_scheduler  # noqa: F401
    from detectron2.utils.events import TensorboardXWriter  # noqa: F401
    import tensorboard  # noqa: F401  (detectron2's default writers need it)

    get_cfg()
except Exception as e:
    print(f"{type(e).__name__}: {e}", file=sys.stderr)
    sys.exit(4)
try:
    from detectron2 import _C  # noqa: F401

    ops = "present"
except Exception:
    ops = "absent (semantic segmentation does not need them)"
print(f"{getattr(detectron2, '__version__', '?')}\t{detectron2.__path__[0]}\t{ops}")
PY
}

d2_source_file="$VENV/.textkd-detectron2-source"
d2_report() { # after an install or keep: the version, where it came from, compiled ops
  local info
  info=$(d2_probe 2>"$LOGDIR/d2probe.err") ||
    fail "detectron2 ($1) was installed but does not work: $(tail -n 1 "$LOGDIR/d2probe.err")"
  IFS=$'\t' read -r ver path ops <<<"$info"
  echo "[setup] detectron2 $ver from $1 ($path); compiled ops: $ops"
}

install_official() {
  echo "[setup] installing detectron2 from $D2_REPO@$D2_COMMIT (official source)"
  pip_quiet d2-official install --no-build-isolation "git+$D2_REPO@$D2_COMMIT" ||
    fail "building detectron2 from $D2_REPO@$D2_COMMIT failed (it needs GitHub access and a" \
      "C++ compiler); run again with TEXTKD_DETECTRON2=registry to use the registry build"
  echo "official source $D2_REPO@$D2_COMMIT" >"$d2_source_file"
  d2_report "official source $D2_REPO@${D2_COMMIT:0:12}"
}

install_registry() {
  local dir="$VENV/textkd-detectron2" site
  site=$("$py" -c 'import sysconfig;print(sysconfig.get_paths()["purelib"])')
  echo "[setup] installing detectron2 from the package index: $D2_REGISTRY_SPEC" \
    "(sha256 ${D2_REGISTRY_SHA256:0:12}…, only its detectron2 package)"
  rm -rf "$dir.tmp"
  mkdir -p "$dir.tmp"
  echo "$D2_REGISTRY_SPEC --hash=sha256:$D2_REGISTRY_SHA256" >"$dir.tmp/requirements.txt"
  pip_quiet d2-registry install --quiet --no-deps --only-binary=:all: --python-version 3.10 \
    --require-hashes --target "$dir.tmp/wheel" -r "$dir.tmp/requirements.txt" || {
    rm -rf "$dir.tmp"
    fail "could not download $D2_REGISTRY_SPEC with sha256 $D2_REGISTRY_SHA256: $pip_network_hint;" \
      "or install detectron2 yourself and run again with TEXTKD_DETECTRON2=keep"
  }
  [ -f "$dir.tmp/wheel/detectron2/__init__.py" ] || {
    rm -rf "$dir.tmp"
    fail "$D2_REGISTRY_SPEC holds no detectron2 package; install detectron2 yourself and run" \
      "again with TEXTKD_DETECTRON2=keep"
  }
  # only the detectron2 package goes on the path: the wheel's top-level `tools` must not shadow
  # this project's tools/ (or anything else)
  mkdir -p "$dir.tmp/site"
  mv "$dir.tmp/wheel/detectron2" "$dir.tmp/site/detectron2"
  rm -rf "$dir.tmp/wheel" "$dir"
  mv "$dir.tmp" "$dir"
  (cd "$dir" && echo "$(pwd -P)/site") >"$site/textkd-detectron2.pth"
  echo "registry $D2_REGISTRY_SPEC sha256:$D2_REGISTRY_SHA256" >"$d2_source_file"
  d2_report "registry build $D2_REGISTRY_SPEC"
}

github_reachable() {
  command -v git >/dev/null 2>&1 &&
    GIT_TERMINAL_PROMPT=0 timeout 8 git ls-remote --exit-code "$D2_REPO" HEAD >/dev/null 2>&1
}

if [ "$D2_MODE" = none ]; then
  echo "[setup] detectron2: not installed (TEXTKD_DETECTRON2=none); training and the detectron2" \
    "tests need it"
else
  set +e
  d2_info=$(d2_probe 2>"$LOGDIR/d2probe.err")
  d2_status=$?
  set -e
  from="installed"
  [ -f "$d2_source_file" ] && from=$(cat "$d2_source_file")
  if [ $d2_status = 4 ] && [ "$D2_MODE" != official ] && [ "$D2_MODE" != registry ]; then
    fail "detectron2 imports but is broken ($(tail -n 1 "$LOGDIR/d2probe.err")); repair it, or" \
      "uninstall it ($py -m pip uninstall detectron2) and run this again to install a working one"
  fi
  case "$D2_MODE:$d2_status" in
    keep:0 | auto:0 | official:0 | registry:0)
      # an official/registry request is satisfied by the same build already in place
      if [ "$D2_MODE" = official ] && [[ "$from" != official* ]]; then
        install_official
      elif [ "$D2_MODE" = registry ] && [[ "$from" != registry* ]]; then
        install_registry
      else
        IFS=$'\t' read -r ver path ops <<<"$d2_info"
        echo "[setup] detectron2 $ver already works, kept ($from; $path); compiled ops: $ops"
      fi
      ;;
    keep:*)
      fail "TEXTKD_DETECTRON2=keep but detectron2 is not installed in $VENV; install it, or run" \
        "again with TEXTKD_DETECTRON2=auto"
      ;;
    official:*) install_official ;;
    registry:*) install_registry ;;
    auto:*)
      if github_reachable; then
        install_official
      else
        echo "[setup] GitHub does not answer; using the package index's build of detectron2"
        install_registry
      fi
      ;;
  esac
fi
echo "[setup] done: $py"
