#!/usr/bin/env bash
# A separate benchmark environment for lightly (never a dependency of unigrad): lightly 1.6.0
# and lightning-utilities installed into bench/.lightly, used on top of .venv's torch.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ ! -d bench/.lightly/lightly ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --target bench/.lightly \
    lightly==1.6.0 lightning-utilities==0.15.3 2>&1 | grep -v "^WARNING: Location" >&2 || true
fi
PYTHONPATH=bench/.lightly .venv/bin/python -c "import lightly; print('lightly', lightly.__version__)"
