"""CutMix of a step's views (Yun et al. 2019), as UniGrad uses it: the online branch sees the
mixed views, the target branch the unmixed ones, and the objective mixes the positives by kept
area (:class:`~unigrad.core.objective.Mix`). Called by the step (:mod:`unigrad.engine.step`)
with the step's generator.
"""

from __future__ import annotations

import torch

__all__ = ["cutmix"]


def cutmix(
    views: list[torch.Tensor], generator: torch.Generator, views_to_mix: tuple[int, ...] = (0, 1)
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Paste a box of image ``perm[i]`` into image ``i`` of each view in ``views_to_mix``.

    As CutMix: lambda ~ U(0, 1) (Beta(1, 1)), a box of side sqrt(1 - lambda) x the image side,
    centred uniformly, clipped to the image; the same box and one permutation for every mixed
    view. Pass the mixed views to the online branch, the unmixed ones to the target branch.

    Args:
        views: [N, C, H, W] tensors; the mixed ones must share H, W.
        generator: all randomness comes from it, drawn on its device (a CPU one, or one on
            the views' device: then nothing is copied from the host).
        views_to_mix: which views to mix.

    Returns:
        (views with the mixed ones replaced, perm [N] long, ratio [N] float: the kept area
        fraction r of each image after clipping), perm and ratio on the views' device.
    """
    ref = views[views_to_mix[0]]
    n, _, h, w = ref.shape
    if any(views[i].shape[-2:] != ref.shape[-2:] for i in views_to_mix):
        raise ValueError("cutmix: the mixed views must have the same size")
    dev = generator.device
    perm = torch.randperm(n, generator=generator, device=dev)
    cut = (1 - torch.rand(n, generator=generator, device=dev)).sqrt()
    cw, ch = (w * cut).long(), (h * cut).long()
    cx = torch.randint(w, (n,), generator=generator, device=dev)
    cy = torch.randint(h, (n,), generator=generator, device=dev)
    x0, x1 = (cx - cw // 2).clamp(0, w), (cx + cw // 2).clamp(0, w)
    y0, y1 = (cy - ch // 2).clamp(0, h), (cy + ch // 2).clamp(0, h)
    ratio = 1 - ((x1 - x0) * (y1 - y0)).float() / (h * w)
    cols = torch.arange(w, device=dev).view(1, 1, w)
    rows = torch.arange(h, device=dev).view(1, h, 1)
    box = (cols >= x0.view(-1, 1, 1)) & (cols < x1.view(-1, 1, 1))
    box = box & (rows >= y0.view(-1, 1, 1)) & (rows < y1.view(-1, 1, 1))
    box, perm, ratio = (t.to(ref.device, non_blocking=True) for t in (box, perm, ratio))
    mixed = [
        torch.where(box.unsqueeze(1), v[perm], v) if i in views_to_mix else v
        for i, v in enumerate(views)
    ]
    return mixed, perm, ratio
