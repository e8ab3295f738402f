#!/usr/bin/env bash
# The main job on the built-in synthetic dataset: set up the environment (detectron2 included),
# train a teacher (DeepLabV3-R50), then three DeepLabV3-R18 students — the baseline, CWD on logits,
# and CWD + the text plugins TCD + TRD — evaluate each final checkpoint with --eval-only and print
# an mIoU table, then write a Markdown report with figures (tools/report.py) to $OUT/report.
#
# The text plugins use CLIP text embeddings of the class names when CLIP ViT-B-16 weights are on
# this machine: $TEXTKD_CLIP_PRETRAINED (a checkpoint file, or an open_clip tag whose file is in
# the local cache), else open_clip's cached `openai` weights. Without them the text bank is the
# `random` control (MODEL.TEXT_BANK.SOURCE random) and the table says so.
#
# Everything runs on the CPU when no GPU is present; two runs share the cores at a time (one torch
# thread each, two for the teacher). Progress (iteration, ETA, loss) is printed every ~15 s.
# Outputs go to $TEXTKD_DEMO_OUT (output/demo): one folder and one log per run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
T_START=$SECONDS
bash scripts/setup_env.sh
T_SETUP=$((SECONDS - T_START))
py="${TEXTKD_VENV:-.venv}/bin/python"
if ! "$py" -c "import detectron2" >/dev/null 2>&1; then
  echo "[demo] detectron2 is not installed in this environment, and training needs it: run" \
    "scripts/setup_env.sh without TEXTKD_DETECTRON2=none (see README.md 'Install')" >&2
  exit 1
fi
export DETECTRON2_DATASETS=${DETECTRON2_DATASETS:-./datasets}
OUT=${TEXTKD_DEMO_OUT:-output/demo}
mkdir -p "$OUT"
times="$OUT/times.tsv"
: >"$times"
T0=$SECONDS

# ---------------------------------------------------------------- the text bank: CLIP or control
text_opts=()
text_label=$("$py" - <<'PY'
import os
from textkd.text.bank import resolve_clip_weights

want = os.environ.get("TEXTKD_CLIP_PRETRAINED", "")
for tag in [want] if want else ["openai"]:
    try:
        resolve_clip_weights("ViT-B-16", tag)
        print(f"clip\t{tag}")
        break
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        if want:
            raise SystemExit(f"[demo] TEXTKD_CLIP_PRETRAINED={want}: {e}")
else:
    print("random\t")
PY
)
IFS=$'\t' read -r text_source text_tag <<<"$text_label"
if [ "$text_source" = clip ]; then
  text_opts=(MODEL.TEXT_BANK.SOURCE clip MODEL.TEXT_BANK.CLIP_PRETRAINED "$text_tag")
  text_name="CLIP ViT-B-16 ($text_tag)"
  echo "[demo] text bank: CLIP ViT-B-16 text embeddings of the class names ($text_tag)"
else
  text_opts=(MODEL.TEXT_BANK.SOURCE random)
  text_name="random control, not CLIP"
  echo "[demo] text bank: no CLIP weights on this machine, so the TCD+TRD student uses the" \
    "random text-bank control (set TEXTKD_CLIP_PRETRAINED=/path/to/ViT-B-16.pt for CLIP)"
fi

# ---------------------------------------------------------------- runs
declare -A PIDS START
start() { # name, then train_net arguments: one run in the background ($THREADS torch threads)
  local name=$1
  shift
  echo "[demo] $name: tools/train_net.py $* OUTPUT_DIR $OUT/$name"
  OMP_NUM_THREADS=${THREADS:-1} "$py" tools/train_net.py "$@" OUTPUT_DIR "$OUT/$name" \
    >"$OUT/$name.log" 2>&1 &
  PIDS[$name]=$!
  START[$name]=$SECONDS
}
progress() { # the latest detectron2 progress line of a run, shortened
  local line
  line=$(grep -E ' iter: [0-9]+' "$OUT/$1.log" 2>/dev/null | tail -n 1 || true)
  if [ -n "$line" ]; then
    echo "$line" | sed -E 's/.*(eta: [0-9:]+) +(iter: [0-9]+) +(total_loss: [0-9.e+-]+).*/\2  \1  \3/'
  else
    echo "starting"
  fi
}
wait_runs() { # wait for the named runs, printing their progress every 15 s
  local name pending status
  while :; do
    pending=()
    for name in "$@"; do
      if [ -n "${PIDS[$name]:-}" ] && kill -0 "${PIDS[$name]}" 2>/dev/null; then
        pending+=("$name")
      elif [ -n "${PIDS[$name]:-}" ]; then
        status=0
        wait "${PIDS[$name]}" || status=$?
        unset "PIDS[$name]"
        if [ $status != 0 ]; then
          echo "[demo] $name failed (exit $status); last lines of $OUT/$name.log:" >&2
          tail -n 30 "$OUT/$name.log" >&2
          kill "${PIDS[@]}" 2>/dev/null || true
          exit 1
        fi
        printf '%s\t%s\n' "$name" $((SECONDS - START[$name])) >>"$times"
        echo "[demo] $name done in $((SECONDS - START[$name])) s"
      fi
    done
    [ ${#pending[@]} = 0 ] && return 0
    sleep 15
    for name in "${pending[@]}"; do
      echo "[demo]   $name: $(progress "$name")  ($((SECONDS - T0)) s)"
    done
  done
}
trap 'kill "${PIDS[@]}" 2>/dev/null || true' INT TERM

CFG=configs/Synthetic
TEACHER="$OUT/teacher/model_final.pth"
# 1. the teacher (400 iterations, two threads: the longest run) beside the baseline student (300):
#    they do not depend on each other
THREADS=2 start teacher --config-file $CFG/deeplabv3_r50_teacher.yaml
start student_baseline --config-file $CFG/deeplabv3_r18_baseline.yaml
wait_runs teacher student_baseline
# 2. the two distilled students, side by side
start student_cwd --config-file $CFG/deeplabv3_r18_cwd.yaml MODEL.DISTILL.TEACHER.WEIGHTS "$TEACHER"
start student_cwd_tcd_trd --config-file $CFG/deeplabv3_r18_cwd_tcd_trd.yaml \
  MODEL.DISTILL.TEACHER.WEIGHTS "$TEACHER" "${text_opts[@]}"
wait_runs student_cwd student_cwd_tcd_trd
# 3. evaluate every final checkpoint once more with --eval-only (what a user runs on a checkpoint)
start teacher_eval --config-file $CFG/deeplabv3_r50_teacher.yaml --eval-only \
  MODEL.WEIGHTS "$TEACHER"
start student_baseline_eval --config-file $CFG/deeplabv3_r18_baseline.yaml --eval-only \
  MODEL.WEIGHTS "$OUT/student_baseline/model_final.pth"
wait_runs teacher_eval student_baseline_eval
start student_cwd_eval --config-file $CFG/deeplabv3_r18_cwd.yaml --eval-only \
  MODEL.WEIGHTS "$OUT/student_cwd/model_final.pth" MODEL.DISTILL.TEACHER.WEIGHTS "$TEACHER"
start student_cwd_tcd_trd_eval --config-file $CFG/deeplabv3_r18_cwd_tcd_trd.yaml --eval-only \
  MODEL.WEIGHTS "$OUT/student_cwd_tcd_trd/model_final.pth" MODEL.DISTILL.TEACHER.WEIGHTS "$TEACHER" \
  "${text_opts[@]}"
wait_runs student_cwd_eval student_cwd_tcd_trd_eval

"$py" tools/summarize_results.py --times "$times" \
  "teacher DeepLabV3-R50=$OUT/teacher_eval" \
  "student DeepLabV3-R18 baseline=$OUT/student_baseline_eval" \
  "student DeepLabV3-R18 + CWD=$OUT/student_cwd_eval" \
  "student DeepLabV3-R18 + CWD + TCD + TRD (text bank: $text_name)=$OUT/student_cwd_tcd_trd_eval"
echo "[demo] setup $T_SETUP s; training and evaluation $((SECONDS - T0)) s; outputs in $OUT"
# 4. a report of the runs: results table, per-class IoU, what each method changes, loss curves
"$py" tools/report.py --output "$OUT/report" --teacher teacher --baseline baseline \
  --title "TextKD demo on the synthetic dataset (TCD+TRD text bank: $text_name)" \
  teacher="$OUT/teacher" baseline="$OUT/student_baseline" CWD="$OUT/student_cwd" \
  "CWD+TCD+TRD=$OUT/student_cwd_tcd_trd"
