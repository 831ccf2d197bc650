#!/usr/bin/env bash
# One call of a lent GPU (issue 34): everything a session with a GPU should measure, in order,
# within a deadline, written under $OUT in the layout the repository commits.
#
#   bash bench/gpu_session.sh [--device cuda|cpu] [--minutes 9] [--tiny] [--data DIR]
#
#   1. agreement CPU vs device (bench/gpu_check.py)              -> $OUT/gpu_check.json
#   2. throughput, eager vs compile=step, fp32 and bf16, the quick network and a full-width
#      ResNet-18 (bench/compile_step.py); lightly 1.6.0's BYOL as the anchor where bench/.lightly
#      or a lightly wheel in bench/wheels is there (bench/vs_lightly.py); the fast pipeline's
#      host vs device draws (bench/augment_draws.py)                    -> $OUT/throughput/
#   3. the budget ladder's 64- and 200-epoch rungs of the `budget` grid, as far as the deadline
#      allows, in bench/grid_results/budget layout                   -> $OUT/bench/grid_results/budget
#
# --device cpu --tiny checks the script end to end on a CPU in a few minutes (tiny sizes, one run
# per section). Python: $PYTHON, else .venv/bin/python, else python3 (a lent machine brings its
# own torch; wheels in bench/wheels, e.g. omegaconf, are installed from there, offline).
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=cuda MINUTES=9 TINY=0 DATA=../shared/data/cifar10
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --minutes) MINUTES=$2; shift 2 ;;
    --tiny) TINY=1; shift ;;
    --data) DATA=$2; shift 2 ;;
    *) echo "error: unknown argument $1; see the header of $0" >&2; exit 2 ;;
  esac
done
OUT=${OUT:-runs/gpu_session}
mkdir -p "$OUT/throughput" "$OUT/bench/grid_results/budget"
PY=${PYTHON:-}
[ -n "$PY" ] || { [ -x .venv/bin/python ] && PY=.venv/bin/python; } || PY=python3
if ls bench/wheels/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --find-links bench/wheels bench/wheels/*.whl 2>&1 | tail -2
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
DEADLINE=$((SECONDS + MINUTES * 60))
left() { echo $((DEADLINE - SECONDS)); }
log() { echo "[gpu_session $(date -u +%H:%M:%S), $(left) s left] $*" | tee -a "$OUT/session.log"; }
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" \
  | tee "$OUT/session.log"
command -v nvidia-smi >/dev/null && nvidia-smi -L >>"$OUT/session.log"

# 1. agreement
log "1. agreement CPU vs $DEVICE"
only=""; [ "$TINY" = 1 ] && only="--only unigrad-grad"
timeout $(( $(left) / 4 )) "$PY" bench/gpu_check.py --device "$DEVICE" $only \
  --json "$OUT/gpu_check.json" > "$OUT/gpu_check.txt" 2>&1
log "agreement: exit $? ($(tail -1 "$OUT/gpu_check.txt"))"

# 2. throughput: eager vs step, fp32 / bf16, quick network and full width
fams=unigrad,byol,simclr steps=20 size=""
[ "$TINY" = 1 ] && fams=unigrad steps=2 size="--tiny"
for width in 0.25 1; do
  for amp in off bf16; do
    [ "$(left)" -lt 120 ] && break 2
    name="w${width}-${amp}"
    log "2. throughput $name"
    timeout $(( $(left) / 3 )) "$PY" bench/compile_step.py --device "$DEVICE" --amp "$amp" \
      --width "$width" --families "$fams" --steps "$steps" $size \
      --json "$OUT/throughput/$name.json" > "$OUT/throughput/$name.md" 2>&1
    log "$name: exit $?"
    [ "$TINY" = 1 ] && break 2
  done
done
log "2a. the fast pipeline's draws: host vs device, eager vs compiled"
dsteps=30; [ "$TINY" = 1 ] && dsteps=2
timeout 120 "$PY" bench/augment_draws.py --device "$DEVICE" --steps "$dsteps" \
  > "$OUT/throughput/augment_draws.md" 2>&1
log "augment draws: exit $?"
if PYTHONPATH=bench/.lightly:$PYTHONPATH "$PY" -c "import lightly" 2>/dev/null; then
  log "2b. lightly BYOL anchor"
  lsteps=20; [ "$TINY" = 1 ] && lsteps=2
  PYTHONPATH=bench/.lightly:$PYTHONPATH timeout $(( $(left) / 4 )) "$PY" bench/vs_lightly.py \
    --methods byol --steps "$lsteps" > "$OUT/throughput/vs_lightly.md" 2>&1
  log "lightly: exit $?"
else
  log "2b. lightly not importable (bench/setup_lightly.sh, or a wheel in bench/wheels): no anchor"
fi

# 3. the ladder's new rungs, one run at a time, as far as the deadline allows
compiled=(--set compile=step) over=()
[ "$DEVICE" = cpu ] && compiled=() over=(--set device=cpu)
runs=$("$PY" -m unigrad compare --grid budget --dry-run --out "$OUT/bench/grid_results/budget" \
  2>/dev/null | awk '{print $1}')
rungs="64 200"
[ "$TINY" = 1 ] && { rungs=64; over+=(--set max_steps=2 --set knn_baseline=false --linear-epochs 1); }
for rung in $rungs; do
  for run in $(echo "$runs" | grep -E -- "-$rung-s[0-9]+$"); do
    [ "$(left)" -lt 60 ] && { log "deadline: $run and later runs not started"; break 2; }
    log "3. $run (${compiled[*]} ${over[*]})"
    timeout $(( $(left) - 20 )) "$PY" -m unigrad compare --grid budget --data "$DATA" \
      --out "$OUT/bench/grid_results/budget" --only "$run" --quiet "${compiled[@]}" "${over[@]}" \
      > "$OUT/bench/grid_results/budget/$run.log" 2>&1
    rc=$?
    log "$run: exit $rc ($(tail -1 "$OUT/bench/grid_results/budget/$run.log"))"
    if [ "$rc" != 0 ] && [ ${#compiled[@]} -gt 0 ] && [ "$(left)" -gt 120 ]; then
      log "compile=step failed on $run (log kept as $run.step.log): the ladder goes on eagerly"
      mv "$OUT/bench/grid_results/budget/$run.log" "$OUT/bench/grid_results/budget/$run.step.log"
      rm -rf "$OUT/bench/grid_results/budget/$run"
      compiled=()
      timeout $(( $(left) - 20 )) "$PY" -m unigrad compare --grid budget --data "$DATA" \
        --out "$OUT/bench/grid_results/budget" --only "$run" --quiet "${over[@]}" \
        > "$OUT/bench/grid_results/budget/$run.log" 2>&1
      log "$run (eager): exit $? ($(tail -1 "$OUT/bench/grid_results/budget/$run.log"))"
    fi
    [ "$TINY" = 1 ] && break 2
  done
done
log "done"
