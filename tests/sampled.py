"""Test helper: both pipelines' random draws of one view, so a test compares their
distributions (:func:`sampled_params`)."""

from __future__ import annotations

import math

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from unigrad.data.crops import draw_params
from unigrad.data.draws import ViewParams, sample_view_params
from unigrad.data.per_image import standard_view
from unigrad.data.recipe import AugmentSpec

OPS = ("flip", "jitter", "gray", "blur", "solarize")


def sampled_params(
    pipeline: str,
    spec: AugmentSpec,
    view: int,
    n: int,
    height: int,
    width: int,
    seed: int = 0,
    ops: bool = False,
) -> dict[str, torch.Tensor]:
    """N draws of one view's crop and jitter parameters for an H x W image, by either pipeline.

    ``standard`` calls the torchvision transforms' own ``make_params``; ``fast`` calls
    :func:`sample_view_params`; ``folder`` (``standard`` on an image folder,
    :mod:`unigrad.data.crops`) draws sample i's parameters from (seed, epoch 0, i).
    Returns [N] tensors: ``scale`` (crop area / image area),
    ``aspect`` (crop width / height), ``brightness``, ``contrast``, ``saturation``, ``hue``;
    with ``ops`` also [N] bool ``flip``, ``jitter``, ``gray``, ``blur``, ``solarize``: whether
    each op applies (``standard``: its torchvision transform, run on a small probe image,
    returned a new image; jitter and blur: a ``RandomApply`` of the same ``p`` around a copy).
    """
    vs = spec.views()[view]
    if pipeline in ("fast", "folder"):
        if pipeline == "fast":
            g = torch.Generator().manual_seed(seed)
            p = sample_view_params(spec, vs, n, height, width, g)
        else:  # standard on a folder: drawn per (seed, epoch, index) in the workers
            drawn = [draw_params(spec, seed, 0, i, height, width)[view] for i in range(n)]
            p = ViewParams.cat(drawn)
        w, h = (p.boxes[:, 2] - p.boxes[:, 0]), (p.boxes[:, 3] - p.boxes[:, 1])
        f = p.factors
        flags = {k: getattr(p, k) for k in OPS}
    else:
        t = standard_view(spec, vs).transforms
        crop, jitter = t[1], t[4].transforms[0]
        img = [tv_tensors.Image(torch.zeros(3, height, width, dtype=torch.uint8))]
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            boxes = [crop.make_params(img) for _ in range(n)]
            jit = [jitter.make_params(img) for _ in range(n)]
            if ops:  # a random-apply transform returns its input when it does not apply
                probe = tv_tensors.Image(torch.rand(3, 4, 4))
                # RandomApply's draw with a cheap op in place of its (slow) jitter or blur
                jitter_draw, blur_draw = (v2.RandomApply([torch.clone], s.p) for s in (t[4], t[6]))
                steps = dict(zip(OPS, (t[2], jitter_draw, t[5], blur_draw, t[7]), strict=True))
                flags = {
                    k: torch.tensor([s(probe) is not probe for _ in range(n)])
                    for k, s in steps.items()
                }
        w = torch.tensor([b["width"] for b in boxes], dtype=torch.float32)
        h = torch.tensor([b["height"] for b in boxes], dtype=torch.float32)
        keys = ("brightness_factor", "contrast_factor", "saturation_factor", "hue_factor")
        f = torch.tensor([[j[k] if j[k] is not None else math.nan for k in keys] for j in jit])
    out = {"scale": w * h / (height * width), "aspect": w / h}
    out |= dict(zip(("brightness", "contrast", "saturation", "hue"), f.T, strict=True))
    return out | flags if ops else out
