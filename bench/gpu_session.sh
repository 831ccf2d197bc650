#!/usr/bin/env bash
# One call of a lent GPU (issues 34, 44): installs the carried wheels (exit 3 if pip fails),
# then runs bench/gpu_session.py (its docstring lists the sections; its preflight checks the
# imports) under a hard stop 30 s after its own deadline. Results: $OUT/session.tgz, $OUT/summary.md, $OUT/session.log.
#
#   bash bench/gpu_session.sh [--device cuda|cpu] [--minutes 9] [--tiny] [--data DIR|TAR.GZ]
#
# Before the call, here: .venv/bin/python bench/pack_inputs.py (CIFAR-10 and the wheels into
# bench/carry, ignored by git); the device call carries bench/carry, runs
# `bash bench/gpu_session.sh --data bench/carry/cifar10.tar.gz` with timeout_s 600; after it,
# python bench/gpu_return.py check <files_at> and unpack <files_at> (BENCHMARKS §8).
# Exit codes: 3 a package is missing (the wheels did not install or import), 4 no CUDA device,
# 5 no data; 124/137 the hard stop.
# --device cpu --tiny rehearses the whole run on a CPU in a few minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PY=${PYTHON:-}
[ -n "$PY" ] || { [ -x .venv/bin/python ] && PY=.venv/bin/python; } || PY=python3
MINUTES=9
args=("$@")
for ((i = 0; i < $#; i++)); do
  [ "${args[i]}" = --minutes ] && MINUTES=${args[i + 1]}
done
if ls bench/carry/wheels/*.whl >/dev/null 2>&1; then
  site=${TMPDIR:-/tmp}/unigrad-site
  if ! "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$site" \
    bench/carry/wheels/*.whl; then
    echo "error: the carried wheels in bench/carry/wheels did not install (pip above)" >&2
    exit 3
  fi
  export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
fi
hard=$(awk -v m="$MINUTES" 'BEGIN { printf "%d", m * 60 + 30 }')
exec timeout -k 10 "$hard" "$PY" bench/gpu_session.py "$@"
