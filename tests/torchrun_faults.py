"""``unigrad`` under torchrun with faults injected per restart (run by tests/test_elastic.py).

``FAULTS`` maps torchrun's restart count to (rank, step, signal): that rank sends itself the
signal once that step is done (after the built-in callbacks, so after any checkpoint of it).
``UNIGRAD_TEST_CRASH`` replaces them with an exception on every rank.
"""

import os
import signal
import sys

from torchrun_exit import checked_main

import unigrad.engine.trainer as trainer_module
from unigrad.engine.callbacks import Callback

FAULTS = {
    0: (1, 2, signal.SIGTERM),  # a stop signal on rank 1 only: all ranks stop at step 4
    1: (0, 8, signal.SIGKILL),  # rank 0 (the lock holder, the writer) dies: resume at step 6
}


#: with UNIGRAD_TEST_CRASH=STEP every rank raises a RuntimeError (a bug, not a user error)
#: once that step is done, instead of the faults above
CRASH = int(os.environ.get("UNIGRAD_TEST_CRASH", "0"))


class Fault(Callback):
    def on_step(self, state):
        if CRASH:
            if state.step == CRASH:
                raise RuntimeError(f"injected crash after step {CRASH}")
            return
        fault = FAULTS.get(int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")))
        if fault and fault[:2] == (int(os.environ["RANK"]), state.step):
            os.kill(os.getpid(), fault[2])


built_in = trainer_module.run_callbacks  # the run's callbacks, checkpoints last: Fault after them
trainer_module.run_callbacks = lambda trainer, extra: [*built_in(trainer, extra), Fault()]
sys.exit(checked_main(sys.argv[1:]))
