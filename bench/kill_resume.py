"""The long kill test: a tiny deterministic CPU run SIGKILLed at N random moments and resumed
each time must end bit-identical to an uninterrupted run (the test suite runs 5 kills).

    .venv/bin/python bench/kill_resume.py [--kills 20]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_resume import KILL_CFG, assert_same_state, run_with_kills
from tinydata import make_image_folder

from unigrad.engine.checkpoint import load_checkpoint


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cfg = {**KILL_CFG, "epochs": 30, "data": str(make_image_folder(root / "data"))}
        cfg_file = root / "cfg.yaml"
        cfg_file.write_text(yaml.safe_dump(cfg))
        t = time.perf_counter()
        run_with_kills(cfg_file, root / "ref", kills=0)
        steps = run_with_kills(cfg_file, root / "killed", kills=a.kills, seed=a.seed)
        assert_same_state(
            load_checkpoint(root / "ref" / "last.ckpt"),
            load_checkpoint(root / "killed" / "last.ckpt"),
        )
        print(
            f"{len(steps)} SIGKILLs, resumed each time, at checkpoint steps {steps}: final "
            f"model, target, F and optimizer state bit-identical to the uninterrupted run "
            f"({time.perf_counter() - t:.0f} s)"
        )


if __name__ == "__main__":
    main()
