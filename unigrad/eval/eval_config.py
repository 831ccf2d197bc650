"""The ``eval`` section of the configuration: what a pretraining run measures of itself (the kNN
monitor, the final linear probe, the random-init baseline, the diagnostics on a probe batch)."""

from __future__ import annotations

from dataclasses import dataclass

from unigrad.core.section import Section, setting
from unigrad.errors import UserError


@dataclass
class EvalConfig(Section):
    name = "eval"

    knn_every: int = setting(1, "epochs between kNN monitors (0: only at the end)", "untrained")
    knn_k: int = setting(200, "neighbours of the weighted kNN classifier", "baseline")
    knn_t: float = setting(0.1, "temperature of the kNN vote weights", "baseline")
    knn_subset: int = setting(
        0,
        "images of each split in the in-training kNN monitor, a fixed evenly spaced "
        "subset (0: all; the final evaluation always uses all)",
        "untrained",
    )
    knn_baseline: bool = setting(
        False, "also evaluate the randomly initialised backbone at the end", "untrained"
    )
    final_linear_epochs: int = setting(
        0, "linear probe on cached features at the end (0: off)", "baseline"
    )
    diag_every: int = setting(
        50, "steps between diagnostics on the probe batch (0: off)", "untrained"
    )
    probe_size: int = setting(128, "images in the fixed diagnostics probe batch", "untrained")
    online_probe: bool = setting(
        True,
        "train a linear classifier on the detached backbone features of each step's first view "
        "(own optimiser, the backbone untouched) and log its eval-split top-1 every epoch as "
        "probe/linear_top1; applies where the train split has labels and an eval split exists",
        "untrained",
    )
    online_probe_lr: float = setting(
        0.1, "learning rate of the online probe (SGD, momentum 0.9, constant)", "untrained"
    )

    def check(self) -> None:
        for key in ("knn_every", "knn_subset", "final_linear_epochs", "diag_every"):
            if getattr(self, key) < 0:
                raise UserError(f"{key} must be >= 0, got {getattr(self, key)}")
        if self.knn_k < 1:
            raise UserError(f"knn_k must be >= 1, got {self.knn_k}")
        if self.knn_t <= 0:
            raise UserError(f"knn_t must be > 0, got {self.knn_t}")
        if self.online_probe_lr <= 0:
            raise UserError(f"online_probe_lr must be > 0, got {self.online_probe_lr}")
        if self.probe_size < 2:
            raise UserError(f"probe_size must be >= 2, got {self.probe_size}")
