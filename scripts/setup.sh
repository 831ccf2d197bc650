#!/usr/bin/env bash
# Idempotent set-up on a fresh machine: .venv with the tested torch/torchvision, unigrad
# (editable) and the test tools. Re-runs only when pyproject.toml or this script changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.unigrad-setup
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ scripts/setup.sh -nt "$stamp" ]; then
  echo "setting up .venv (torch 2.14.1, torchvision 0.29.1, unigrad)..." >&2
  .venv/bin/python -m pip install -q --disable-pip-version-check \
    torch==2.14.1 torchvision==0.29.1 2>&1 | grep -v "^WARNING: Location" >&2 || true
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]' \
    2>&1 | grep -v "^WARNING: Location" >&2 || true
  .venv/bin/python -c "import torch, torchvision, unigrad" # fail loudly if the install did not work
  touch "$stamp"
fi
