"""Weights & Biases (``--set wandb=true``, the optional extra ``unigrad[wandb]``): every metric
the run logs (metrics.csv's rows, at their step) also goes to a W&B run of project
``wandb_project`` named ``wandb_name`` (default: the run directory's name), with the run's
configuration. The W&B run id is the callback's state (in every checkpoint), so ``--resume``
continues the same W&B run; rows of the steps a resume redoes (logged before, the same values)
are not sent again.
W&B's own settings apply (``WANDB_MODE=offline``, ``WANDB_DIR``, ...); its files go to
``RUN/wandb``. Rank 0 only.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from unigrad.core import dist
from unigrad.engine.callbacks.base import Callback, LoopState
from unigrad.errors import UserError, optional

#: where runs before issue 42 kept the id (read when a checkpoint has no W&B state)
ID_FILE = "wandb_id"


class WandbSink:
    """A :class:`~unigrad.engine.runlog.RunLog` sink that logs to one W&B run."""

    def __init__(self, run: Any) -> None:
        self.run = run
        self.first_step = int(run.step)  # a resumed W&B run has logged up to here

    def log(self, step: int, epoch: float, metrics: dict[str, float]) -> None:
        if step >= self.first_step:  # W&B refuses earlier steps; a resume redoes them exactly
            self.run.log({**metrics, "epoch": epoch}, step=step)

    def close(self) -> None:
        self.run.finish()


class WandbLogger(Callback):
    """Opens (or, on ``--resume``, continues) the W&B run and adds it to the run log.

    Raises :class:`~unigrad.errors.UserError` in one line, with the install hint, when wandb is
    not installed (at the start of the loop).
    """

    def __init__(self) -> None:
        self.run_id: str | None = None  # restored by a resume

    def state_dict(self) -> dict[str, Any] | None:
        return {"run_id": self.run_id} if self.run_id is not None else None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.run_id = state["run_id"]

    def on_fit_start(self, state: LoopState) -> None:
        wandb = optional("wandb", "wandb", "--set wandb=true (Weights & Biases)")
        if not dist.is_main() or state.log is None:
            return
        from unigrad.config import to_dict

        cfg, out = state.cfg, Path(state.out)
        legacy = out / ID_FILE
        if self.run_id is None and state.resumed and legacy.is_file():
            self.run_id = legacy.read_text().strip()
        resume = self.run_id is not None
        # a new id from the OS (secrets), so no random state of the run is drawn from
        self.run_id = self.run_id or secrets.token_hex(4)
        (out / "wandb").mkdir(exist_ok=True)
        try:
            run = wandb.init(
                project=cfg.wandb_project,
                name=cfg.wandb_name or out.resolve().name,
                id=self.run_id,
                resume="allow" if resume else None,
                config=to_dict(cfg),
                dir=str(out),
            )
        except Exception as e:  # not logged in, no network, a refused project name, ...
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(
                f"W&B could not start a run ({first}); run `wandb login`, or set "
                "WANDB_MODE=offline, or --set wandb=false"
            ) from None
        state.log.add_sink(WandbSink(run))
