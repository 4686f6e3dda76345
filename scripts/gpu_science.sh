#!/usr/bin/env bash
# The paper's MNIST network at full width on one GPU, fp32 and bf16 autocast, the EAE (beta 0.05)
# against the batch-norm AE (beta 0): training speed, then as many epochs as fit in the budget,
# then the metrics of python.evaluate. Under 8 minutes, the build included:
#
#   1. build eae_kernels._C in place with its CUDA kernels (sm_90 only)                ~1.5 min
#   2. python -m benchmarks.train_speed --device cuda: images/s, fp32 and bf16, width 1   < 1 min
#   3. four runs (fp32/bf16 x beta 0.05/0), the same number of epochs each, sized from the
#      measured images/s to the time left; then python.evaluate of each (10,000 samples)
#   4. summary.md: images/s, and per run held-out reconstruction, classifier-feature FD of N(0, I)
#      and GMM samples, latent KL to N(0, I)
#
# Usage (from the repository root):  OUT=/some/dir DATA_DIR=path/to/mnist bash scripts/gpu_science.sh
# DATA_DIR defaults to shared/data/mnist, then ../shared/data/mnist (the MNIST IDX files).
# GPU_SCIENCE_DRY=1 rehearses it on the CPU (no build; the bundled digits at width 0.25, 1 epoch,
# 500 samples, one thread), so that a mistake in the script does not cost GPU time.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_science_out}"
mkdir -p "$OUT"
START=$(date +%s)
BUDGET_S="${GPU_SCIENCE_BUDGET_S:-470}"  # everything, the build included
EVAL_S=60                                # kept for the four evaluations and the summary
PY="${PYTHON:-python3}"
DRY="${GPU_SCIENCE_DRY:-0}"
SUMMARY="$OUT/summary.md"
: >"$SUMMARY"
elapsed() { echo $(($(date +%s) - START)); }
note() { echo "$*" | tee -a "$SUMMARY"; }

if [ "$DRY" = 1 ]; then
  DATASET=digits; DATA=(); DEVICE=cpu; WIDTH=0.25; SAMPLES=500; THREADS=(--threads 1)
else
  if [ -z "${DATA_DIR:-}" ]; then
    for d in shared/data/mnist ../shared/data/mnist; do [ -d "$d" ] && DATA_DIR="$d" && break; done
  fi
  [ -n "${DATA_DIR:-}" ] || { note "no MNIST folder: set DATA_DIR"; exit 1; }
  DATASET=mnist; DATA=(--data-dir "$DATA_DIR"); DEVICE=cuda; WIDTH=1; SAMPLES=10000; THREADS=()
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

note "# gpu_science $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true
  "$PY" -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda)"
} 2>&1 | tee "$OUT/env.txt"

# ---- 1. Build in place ------------------------------------------------------------------------
if [ "$DRY" = 1 ]; then
  note "dry run on the CPU: no build, width $WIDTH"
else
  export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-16}"
  if rm -f eae_kernels/_C*.so && timeout 300 "$PY" setup.py build_ext --inplace >"$OUT/build.log" 2>&1; then
    note "build: ok ($(elapsed) s)"
  else
    note "build: FAILED (build.log); the entropy falls back to another backend"
    tail -20 "$OUT/build.log"
  fi
fi

# ---- 2. Training speed ------------------------------------------------------------------------
timeout 120 "$PY" -m benchmarks.train_speed --device "$DEVICE" --datasets "$DATASET" --widths "$WIDTH" --steps 10 \
  --out "$OUT" >"$OUT/train_speed.log" 2>&1
note "train_speed: exit $? ($(elapsed) s)"
cat "$OUT/train_speed.md" >>"$SUMMARY" 2>/dev/null
cat "$OUT/train_speed.log"

# ---- 3. Four runs, the same epochs each, sized to the time left -------------------------------
EPOCHS=$("$PY" - "$OUT/train_speed.json" "$(( BUDGET_S - EVAL_S - $(elapsed) ))" "$DRY" <<'PYEOF'
import json, sys
results, seconds_left, dry = json.load(open(sys.argv[1])), float(sys.argv[2]), sys.argv[3] == "1"
rate = {r["precision"]: r["images_per_s"] for r in results["rows"]}
# per epoch: 9,000 training images and about 2 s of held-out error, checkpoint and start-up
per_epoch = sum(9000 / rate[p] + 2.0 for p in ("fp32", "bf16")) * 2  # two betas per precision
print(1 if dry else max(1, min(100, int(0.8 * seconds_left / per_epoch))))
PYEOF
) || EPOCHS=1
note ""
note "epochs per run: $EPOCHS (from the measured images/s and $(( BUDGET_S - EVAL_S - $(elapsed) )) s left)"
for precision in fp32 bf16; do
  for beta in 0.05 0; do
    run="$OUT/runs/$DATASET-w$WIDTH-$precision-beta$beta"
    rm -rf "$run"
    timeout $(( BUDGET_S - EVAL_S - $(elapsed) > 10 ? BUDGET_S - EVAL_S - $(elapsed) : 10 )) \
      "$PY" -m python.train --dataset "$DATASET" "${DATA[@]}" --width "$WIDTH" --precision "$precision" \
      --beta "$beta" --epochs "$EPOCHS" --device "$DEVICE" "${THREADS[@]}" --no-eval --no-progress --run-dir "$run" \
      >"$OUT/train-$precision-beta$beta.log" 2>&1
    note "train $precision beta $beta: exit $? ($(elapsed) s)"
    tail -2 "$OUT/train-$precision-beta$beta.log"
  done
done

# ---- 4. Metrics and summary -------------------------------------------------------------------
classifier=""  # one classifier (the first evaluation trains it) for every run's distances
for run in "$OUT"/runs/*; do
  [ -f "$run/checkpoint.pt" ] || continue
  [ -n "$classifier" ] && cp "$classifier" "$run/classifier.pt"
  timeout 60 "$PY" -m python.evaluate --run "$run" --device "$DEVICE" --n-samples "$SAMPLES" >"$run/evaluate.log" 2>&1 \
    || note "evaluate $run: FAILED ($(tail -1 "$run/evaluate.log"))"
  [ -z "$classifier" ] && [ -f "$run/classifier.pt" ] && classifier="$run/classifier.pt"
done
"$PY" - "$OUT/runs" <<'PYEOF' | tee -a "$SUMMARY"
import csv, json, sys
from pathlib import Path
print("\n| run | epochs | train s | held-out recon. | FD N(0, I) | FD GMM | latent KL (exact normal) |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
for run in sorted(Path(sys.argv[1]).iterdir()):
    log = list(csv.DictReader(open(run / "log.csv"))) if (run / "log.csv").is_file() else []
    if not (run / "metrics.json").is_file():
        print(f"| {run.name} | {len(log)} | - | no metrics | | | |")
        continue
    m = json.loads((run / "metrics.json").read_text())
    fd = m["classifier_frechet_distance"]
    print(f"| {run.name} | {m['epoch']} | {log[-1]['seconds'] if log else '-'} | "
          f"{m['reconstruction']['sum_squared_error_per_image']:.2f} | {fd.get('isotropic', float('nan')):.1f} | "
          f"{fd.get('gmm', float('nan')):.1f} | {m['latent']['kl_to_standard_normal']:.2f} "
          f"({m['latent']['kl_of_exact_normal_sample']:.2f}) |")
PYEOF
note ""
note "total $(elapsed) s"
