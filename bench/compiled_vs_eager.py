"""``compile: step`` against the eager step on every method x form x variant of the golden
trainer list (issue 34): ``tests/test_compiled_step.py``'s check, which the suite runs on one case
per family and stateful part, on all of them (aot_eager capture on the tiny backbone; about 15 s
a case on 2 cores). Exits 1 when a case differs.

    .venv/bin/python bench/compiled_vs_eager.py [--only NAME]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_compiled_step import ALL_CASES, check_case
from tinydata import make_image_folder


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="", help="cases whose name contains this")
    a = ap.parse_args()
    os.environ.setdefault("UNIGRAD_COMPILE_BACKEND", "aot_eager")
    bad = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_image_folder(Path(tmp) / "data")
        for name in [n for n in ALL_CASES if a.only in n]:
            try:
                check_case(name, folder, Path(tmp))
                print(f"{name}: equal within 1e-5 after step 1, 1e-4 after step 5", flush=True)
            except AssertionError as e:
                bad.append(name)
                print(f"{name}: FAILED {e}", flush=True)
    print(f"{len(ALL_CASES) - len(bad)} of {len(ALL_CASES)} cases equal" if not a.only else "")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
