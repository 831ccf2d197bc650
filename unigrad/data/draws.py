"""The random parameters of a view, drawn for a whole batch at once.

:func:`sample_view_params` follows torchvision's sampling step by step (10 crop trials then a
centre crop, the same factor ranges, a uniform random order of the four jitter ops), with
continuous crop boxes (no rounding to whole pixels), every number drawn from an explicit
``torch.Generator`` on its device. The fast pipeline draws a batch's parameters with it
(:class:`~unigrad.data.batched.FastAugment`), the image-folder workers one sample's
(:func:`~unigrad.data.crops.draw_params`); :class:`ViewParams` holds them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import torch

from unigrad.data import kernels as K
from unigrad.data.recipe import ASPECT, SIGMA, AugmentSpec, ViewSpec

__all__ = ["ViewParams", "sample_view_params"]


@dataclass
class ViewParams:
    """One view's random parameters for N images (on the generator's device).

    Attributes:
        boxes: [N, 4] crop (x0, y0, x1, y1) in source pixels.
        flip, jitter, gray, blur, solarize: [N] bool, whether each op applies.
        factors: [N, 4] brightness, contrast, saturation, hue factors.
        order: [N, 4] long, the jitter ops' order (a permutation of 0..3 per sample).
        sigma: [N] blur sigma.
    """

    boxes: torch.Tensor
    flip: torch.Tensor
    jitter: torch.Tensor
    factors: torch.Tensor
    order: torch.Tensor
    gray: torch.Tensor
    blur: torch.Tensor
    sigma: torch.Tensor
    solarize: torch.Tensor

    def map(self, fn: Any) -> ViewParams:
        """The same parameters with ``fn`` applied to every tensor (a row slice, a move)."""
        return ViewParams(**{f.name: fn(getattr(self, f.name)) for f in fields(self)})

    @staticmethod
    def cat(params: list[ViewParams]) -> ViewParams:
        """The parameters of consecutive groups of images as one."""
        return ViewParams(
            **{f.name: torch.cat([getattr(p, f.name) for p in params]) for f in fields(ViewParams)}
        )


def sample_view_params(
    spec: AugmentSpec, view: ViewSpec, n: int, height: int, width: int, g: torch.Generator
) -> ViewParams:
    """Draw one view's parameters for N images of H x W, the fast pipeline's way, on the
    generator's device (a CUDA generator draws them where the images are: no host transfer)."""
    trials, area, dev = 10, height * width, g.device
    scale = torch.empty(n, trials, device=dev).uniform_(*view.scale, generator=g) * area
    log_aspect = [math.log(a) for a in ASPECT]
    ratio = torch.empty(n, trials, device=dev).uniform_(*log_aspect, generator=g).exp()
    w, h = (scale * ratio).sqrt(), (scale / ratio).sqrt()
    ok = (w <= width) & (h <= height)
    first = ok.int().argmax(1, keepdim=True)  # torchvision: the first trial that fits
    w, h = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]
    # none of the trials fits: torchvision's centre crop with the aspect clamped to ASPECT
    in_ratio = width / height
    fw = width if in_ratio <= ASPECT[1] else height * ASPECT[1]
    fh = height if in_ratio >= ASPECT[0] else width / ASPECT[0]
    w, h = torch.where(ok.any(1), w, fw), torch.where(ok.any(1), h, fh)
    x0 = torch.rand(n, generator=g, device=dev) * (width - w)
    y0 = torch.rand(n, generator=g, device=dev) * (height - h)
    lo, hi = K.constant(tuple(spec.jitter_ranges()), dev).T

    def coin(p: float) -> torch.Tensor:
        return torch.rand(n, generator=g, device=dev) < p

    return ViewParams(
        boxes=torch.stack((x0, y0, x0 + w, y0 + h), 1),
        flip=coin(0.5),
        jitter=coin(view.jitter_p),
        factors=lo + (hi - lo) * torch.rand(n, 4, generator=g, device=dev),
        order=torch.rand(n, 4, generator=g, device=dev).argsort(1),
        gray=coin(view.gray_p),
        blur=coin(view.blur_p),
        sigma=torch.empty(n, device=dev).uniform_(*SIGMA, generator=g),
        solarize=coin(view.solarize_p),
    )
