#!/usr/bin/env bash
# Every method on the built-in synthetic dataset with fixed seeds, then one mIoU table:
# teacher, student baseline, each classic KD term, the text plugins on top of KD, and LAD
# (plain vs label-assisted teacher, and the students distilled from each).
# Usage: bash scripts/synthetic_suite.sh [KEY VALUE ...]   (overrides for every run, e.g.
#        SOLVER.MAX_ITER 100). Outputs: $TEXTKD_SUITE_OUT (output/synthetic_suite).
# CLIP weights cannot be fetched at run time: the text-plugin runs use the text bank given by
# $TEXTKD_SUITE_TEXT_OPTS (default: MODEL.TEXT_BANK.SOURCE random, the no-CLIP control; point
# MODEL.TEXT_BANK.CLIP_PRETRAINED at local CLIP weights to measure the CLIP prior).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
py="${TEXTKD_VENV:-.venv}/bin/python"
OUT=${TEXTKD_SUITE_OUT:-output/synthetic_suite}
TEXT_OPTS=${TEXTKD_SUITE_TEXT_OPTS:-"MODEL.TEXT_BANK.SOURCE random"}
export DETECTRON2_DATASETS=${DETECTRON2_DATASETS:-./datasets}
mkdir -p "$OUT"
times="$OUT/times.tsv"
touch "$times"
C=configs/Synthetic
run() {  # name config [KEY VALUE ...]; skipped when its final evaluation already exists
  local name=$1 cfg=$2; shift 2
  if [ -f "$OUT/$name/model_final.pth" ] && grep -q "sem_seg/mIoU" "$OUT/$name/metrics.json" 2>/dev/null; then
    echo "[suite] $name: done already"; return; fi
  local t0=$SECONDS
  echo "[suite] $name ($cfg)"
  "$py" tools/train_net.py --config-file "$cfg" OUTPUT_DIR "$OUT/$name" "$@" "${EXTRA[@]}" \
    >"$OUT/$name.log" 2>&1 || { echo "[suite] $name failed: see $OUT/$name.log" >&2; tail -n 20 "$OUT/$name.log" >&2; exit 1; }
  printf '%s\t%s\n' "$name" $((SECONDS - t0)) >>"$times"
}
EXTRA=("$@")
T="MODEL.DISTILL.TEACHER.WEIGHTS $OUT/teacher_r50/model_final.pth"
run teacher_r50 $C/deeplabv3_r50_teacher.yaml
run student_r18 $C/deeplabv3_r18_baseline.yaml
for m in kd cwd cwd_feat skd ifvd cirkd dist; do
  run "r18_$m" "$C/deeplabv3_r18_$m.yaml" $T
done
for p in tcd trd tcd_trd; do
  run "r18_kd_$p" "$C/deeplabv3_r18_kd_$p.yaml" $T $TEXT_OPTS
done
# LAD: a plain R18 teacher (= the R18 baseline) vs the label-assisted R18 teacher, same student
run lad_teacher_r18 $C/deeplabv3_r18_lad_teacher.yaml
run r18_cwd_from_r18 $C/deeplabv3_r18_cwd.yaml \
  MODEL.DISTILL.TEACHER.CONFIG_FILE $C/deeplabv3_r18_baseline.yaml \
  MODEL.DISTILL.TEACHER.WEIGHTS "$OUT/student_r18/model_final.pth"
run r18_cwd_from_lad_r18 $C/deeplabv3_r18_lad_cwd.yaml \
  MODEL.DISTILL.TEACHER.WEIGHTS "$OUT/lad_teacher_r18/model_final.pth"

"$py" tools/summarize_results.py --times "$times" \
  "teacher DeepLabV3-R50=$OUT/teacher_r50" \
  "student DeepLabV3-R18 (baseline)=$OUT/student_r18" \
  "R18 + KD=$OUT/r18_kd" \
  "R18 + CWD (logits)=$OUT/r18_cwd" \
  "R18 + CWD (logits+feature)=$OUT/r18_cwd_feat" \
  "R18 + SKD=$OUT/r18_skd" \
  "R18 + IFVD=$OUT/r18_ifvd" \
  "R18 + CIRKD=$OUT/r18_cirkd" \
  "R18 + DIST=$OUT/r18_dist" \
  "R18 + KD + TCD=$OUT/r18_kd_tcd" \
  "R18 + KD + TRD=$OUT/r18_kd_trd" \
  "R18 + KD + TCD + TRD=$OUT/r18_kd_tcd_trd" \
  "LAD teacher DeepLabV3-R18 (label code)=$OUT/lad_teacher_r18" \
  "R18 + CWD from plain R18 teacher=$OUT/r18_cwd_from_r18" \
  "R18 + CWD from LAD R18 teacher=$OUT/r18_cwd_from_lad_r18" | tee "$OUT/table.txt"
