#!/usr/bin/env bash
# The main job on the built-in synthetic dataset: set up the environment, train a teacher
# (DeepLabV3-R50), train a student baseline (DeepLabV3-R18) and a distilled student (CWD on
# logits) from that teacher, evaluate all of them and print an mIoU table.
# Everything runs on the CPU when no GPU is present. Outputs go to $TEXTKD_DEMO_OUT (output/demo).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup_env.sh
py="${TEXTKD_VENV:-.venv}/bin/python"
if ! "$py" -c "import detectron2" >/dev/null 2>&1; then
  cat >&2 <<'MSG'
[demo] detectron2 is not installed in this environment, and training needs it.
Install it the official way (it is not on PyPI), then run this command again:
    .venv/bin/python -m pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'
(or from a local clone: .venv/bin/python -m pip install --no-build-isolation -e /path/to/detectron2)
MSG
  exit 1
fi
export DETECTRON2_DATASETS=${DETECTRON2_DATASETS:-./datasets}
OUT=${TEXTKD_DEMO_OUT:-output/demo}
mkdir -p "$OUT"
times="$OUT/times.tsv"
: >"$times"
run() {  # name, then train_net arguments
  local name=$1; shift
  local t0=$SECONDS
  echo "[demo] $name: tools/train_net.py $*"
  "$py" tools/train_net.py "$@" OUTPUT_DIR "$OUT/$name" >"$OUT/$name.log" 2>&1 || {
    echo "[demo] $name failed; last lines of $OUT/$name.log:" >&2; tail -n 30 "$OUT/$name.log" >&2; exit 1; }
  printf '%s\t%s\n' "$name" $((SECONDS - t0)) >>"$times"
  echo "[demo] $name done in $((SECONDS - t0)) s"
}
run teacher --config-file configs/Synthetic/deeplabv3_r50_teacher.yaml
run student_baseline --config-file configs/Synthetic/deeplabv3_r18_baseline.yaml
run student_cwd --config-file configs/Synthetic/deeplabv3_r18_cwd.yaml \
  MODEL.DISTILL.TEACHER.WEIGHTS "$OUT/teacher/model_final.pth"
# evaluate each final checkpoint once more with --eval-only (what a user runs on a checkpoint)
run teacher_eval --config-file configs/Synthetic/deeplabv3_r50_teacher.yaml --eval-only \
  MODEL.WEIGHTS "$OUT/teacher/model_final.pth"
run student_baseline_eval --config-file configs/Synthetic/deeplabv3_r18_baseline.yaml --eval-only \
  MODEL.WEIGHTS "$OUT/student_baseline/model_final.pth"
run student_cwd_eval --config-file configs/Synthetic/deeplabv3_r18_cwd.yaml --eval-only \
  MODEL.WEIGHTS "$OUT/student_cwd/model_final.pth" MODEL.DISTILL.TEACHER.WEIGHTS "$OUT/teacher/model_final.pth"
"$py" tools/summarize_results.py --times "$times" \
  "teacher DeepLabV3-R50=$OUT/teacher_eval" \
  "student DeepLabV3-R18 baseline=$OUT/student_baseline_eval" \
  "student DeepLabV3-R18 + CWD=$OUT/student_cwd_eval"
