"""The optimisers of ViT recipes through the trainer (issue 42 item 7): AdamW with DINO's
weight-decay schedule, gradient-norm clipping, and a timm ViT on multi-crop views."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY

from unigrad.config import build_config
from unigrad.engine.trainer import Trainer


def trainer(folder, tmp_path, **over) -> Trainer:
    base = {"data": str(folder), "out": str(tmp_path / "run"), "max_steps": 3, "amp": "off",
            "diag_every": 0, "knn_every": 0}  # fmt: skip
    return Trainer(build_config(TINY, base, over), show_progress=False)


def test_adamw_follows_the_weight_decay_schedule_in_training(tiny_folder, tmp_path):
    tr = trainer(tiny_folder, tmp_path, method="byol", optimizer="adamw", base_lr=1e-3,
                 weight_decay=0.04, weight_decay_end=0.4)  # fmt: skip
    assert isinstance(tr.optimizer, torch.optim.AdamW)
    wd = tr.parts.wd
    assert wd is not None and len(wd) == 3 and wd[-1] == pytest.approx(0.4)
    tr.train()
    groups = tr.optimizer.param_groups
    assert [float(g["weight_decay"]) for g in groups] == [  # the last step's value
        pytest.approx(0.4 * g["wd_scale"]) for g in groups
    ]
    assert {g["wd_scale"] for g in groups} == {0.0, 1.0}
