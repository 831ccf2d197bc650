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
    assert wd is not None and len(wd) == tr.schedule_steps and wd[-1] == pytest.approx(0.4)
    tr.train()
    groups = tr.optimizer.param_groups
    # the value of the last of the 3 steps run (the schedule is the epochs')
    assert [float(g["weight_decay"]) for g in groups] == [
        pytest.approx(wd[2] * g["wd_scale"]) for g in groups
    ]
    assert {g["wd_scale"] for g in groups} == {0.0, 1.0}
    assert tr.parts.hooks.backward == []  # clip_grad 0: no clipping action


def test_a_timm_vit_trains_on_multi_crop_views_of_two_sizes(tiny_folder, tmp_path):
    """timm's ViT at patch 4, built for the 16 px global views, embeds the 8 px local views
    too (``dynamic_img_size``: its position embeddings resampled), 2 steps, with the ViT
    recipe's optimiser (AdamW, a weight-decay schedule, clipping)."""
    pytest.importorskip("timm")
    vit = "timm:vit_tiny_patch16_224,patch_size=4,depth=2"
    tr = trainer(tiny_folder, tmp_path, method="byol", backbone=vit, multi_crop="2x16,2x8",
                 max_steps=2, optimizer="adamw", base_lr=1e-3, weight_decay=0.04,
                 weight_decay_end=0.4, clip_grad=1.0)  # fmt: skip
    net = tr.model.encoder.backbone
    assert net.patch_embed.patch_size == (4, 4) and len(net.blocks) == 2
    assert len(tr.parts.hooks.backward) == 1  # the clipping action
    before = net.pos_embed.detach().clone()
    tr.train()
    assert tr.step == 2 and not torch.equal(net.pos_embed, before)
    assert all(torch.isfinite(p).all() for p in tr.model.parameters())


def test_timm_arguments_in_the_backbone_name_are_checked_in_one_line():
    pytest.importorskip("timm")
    from unigrad.errors import UserError
    from unigrad.models.networks import backbone_error, make_backbone

    assert backbone_error("timm:vit_tiny_patch16_224,patch_size=4") is None
    assert "is not key=value" in backbone_error("timm:vit_tiny_patch16_224,patch_size")
    with pytest.raises(UserError, match="takes no argument 'no_such_arg'; remove it"):
        make_backbone("timm:vit_tiny_patch16_224,no_such_arg=1,depth=1", image_size=16)
    net, dim = make_backbone("timm:resnet18", image_size=16)  # a convolutional net: any size
    assert dim == 512 and net(torch.randn(2, 3, 16, 16)).shape == (2, 512)


def test_clipping_bounds_the_gradients_the_optimiser_steps_with(tiny_folder, tmp_path):
    tr = trainer(tiny_folder, tmp_path, method="simclr", clip_grad=1e-3, max_steps=2)
    tr.train()  # the last step's gradients stay on the parameters
    grads = [p.grad for g in tr.optimizer.param_groups for p in g["params"] if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
    assert grads and float(norm) <= 1e-3 * (1 + 1e-4), float(norm)
