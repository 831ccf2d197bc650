"""``unigrad`` under torchrun, then a check that no gloo thread outlives ``main()`` (run by
tests/test_ddp.py and tests/test_elastic.py in place of ``-m unigrad``).

A process group still alive at interpreter exit can abort the process: a gloo worker thread
releasing its last collective's tensors then needs the GIL, which CPython refuses a thread
during finalisation (SIGABRT, "terminate called without an active exception"; see
:func:`unigrad.core.dist.cleanup`). It happens by chance, one run in ten or so; the threads
left after ``main()`` show the hazard every time.
"""

import os
import sys
import traceback
from pathlib import Path

from unigrad.cli import main

#: exit code of a run whose process group outlived main()
LEFT_OVER = 70


def checked_main(argv: list[str]) -> int:
    try:
        code = main(argv)
    except Exception:  # a crash: its traceback, as Python prints it, then the check
        traceback.print_exc()
        code = 1
    tasks = Path(f"/proc/{os.getpid()}/task")
    names = [(t / "comm").read_text().strip() for t in tasks.iterdir()] if tasks.is_dir() else []
    gloo = sorted(n for n in names if "gloo" in n)
    if gloo:
        print(f"gloo threads alive after main(): {gloo}", file=sys.stderr, flush=True)
        return LEFT_OVER
    return code


if __name__ == "__main__":
    sys.exit(checked_main(sys.argv[1:]))
