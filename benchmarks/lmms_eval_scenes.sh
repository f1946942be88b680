#!/usr/bin/env bash
# The scene benchmark through lmms-eval (--model vtp) and through `vtp eval`, side by side
# (docs/lmms_eval.md, "Figures"). Run from the repository root in an environment with lmms-eval
# (make lmms-eval-env; then LMMS_VENV/bin on PATH). Writes under ${OUT:-out/lmms_eval_scenes}.
#   part 1: the default path (Inductor): none and fastv@16 on all 5 tasks x 50 examples
#   part 2: a sweep with inner_backend=eager: none, fastv, divprune at 16 and 49, one chain
set -euo pipefail
OUT=${OUT:-out/lmms_eval_scenes}
THREADS=${THREADS:-2}
N=50; BATCH=16
MODEL=$(python -c "from vtp_compile.scenes import SCENE_MODEL_PATH as p; print(p)")
TASKS_DIR=$(vtp lmms-tasks)
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
run() {   # run OUTDIR MODEL_ARGS
  lmms-eval --model vtp --model_args "pretrained=$MODEL,threads=$THREADS,$2" --tasks vtp_scenes \
      --include_path "$TASKS_DIR" --limit $N --batch_size $BATCH --output_path "$1" --log_samples \
      > "$1.$(echo "$2" | sed 's/[^A-Za-z0-9.]/_/g').log" 2>&1
}
mkdir -p "$OUT"
if [ "${PART:-all}" != 2 ]; then
  run "$OUT/inductor" method=none
  run "$OUT/inductor" method=fastv,budget=16
  vtp lmms-table "$OUT/inductor" --out "$OUT/inductor_table.json"
  vtp eval --methods none,fastv --budgets 16 --n $N --batch-size $BATCH --threads "$THREADS" \
      --out "$OUT/inductor_vtp_eval.json" 2>/dev/null | tail -n 4
fi
if [ "${PART:-all}" != 1 ]; then
  run "$OUT/eager" method=none,inner_backend=eager
  for m in fastv divprune; do for b in 16 49; do
    run "$OUT/eager" "method=$m,budget=$b,inner_backend=eager"
  done; done
  run "$OUT/eager" "method=divprune+fastv,stage1.budget=49,stage2.budget=16,inner_backend=eager"
  vtp lmms-table "$OUT/eager" --out "$OUT/eager_table.json" --plot "$OUT/eager_retention.png"
  vtp eval --methods none,fastv:inner_backend=eager,divprune:inner_backend=eager --budgets 16,49 \
      --n $N --batch-size $BATCH --threads "$THREADS" --eager --out "$OUT/eager_vtp_eval.json" \
      2>/dev/null | tail -n 6
fi
