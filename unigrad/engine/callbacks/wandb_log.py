"""Weights & Biases (``--set wandb=true``, the optional extra ``unigrad[wandb]``): every metric
the run logs (metrics.csv's rows, at their step) also goes to a W&B run of project
``wandb_project`` named ``wandb_name`` (default: the run directory's name), with the run's
configuration. The W&B run id is kept in ``RUN/wandb_id``, so ``--resume`` continues the same
W&B run; rows of the steps a resume redoes (logged before, the same values) are not sent again.
W&B's own settings apply (``WANDB_MODE=offline``, ``WANDB_DIR``, ...); its files go to
``RUN/wandb``. Rank 0 only.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unigrad.core import dist
from unigrad.engine.callbacks.base import Callback
from unigrad.errors import UserError, optional

if TYPE_CHECKING:
    from unigrad.engine.trainer import Trainer

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
    not installed.
    """

    def __init__(self) -> None:
        self.wandb = optional("wandb", "wandb", "--set wandb=true (Weights & Biases)")

    def on_fit_start(self, trainer: Trainer) -> None:
        if not dist.is_main() or trainer.log is None:
            return
        from unigrad.config import to_dict

        cfg, out = trainer.cfg, Path(trainer.out)
        id_file = out / ID_FILE
        resume = trainer.resumed_from is not None and id_file.is_file()
        # a new id from the OS (secrets), so no random state of the run is drawn from
        run_id = id_file.read_text().strip() if resume else secrets.token_hex(4)
        id_file.write_text(run_id + "\n")
        (out / "wandb").mkdir(exist_ok=True)
        try:
            run = self.wandb.init(
                project=cfg.wandb_project,
                name=cfg.wandb_name or out.resolve().name,
                id=run_id,
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
        trainer.log.add_sink(WandbSink(run))
