"""The recipe on whole batches as tensor ops: the fast pipeline (:class:`FastAugment`) and
the finishing of the image-folder workers' crops (:func:`finish_view`).

Per view, in this order: random resized crop (one ``roi_align`` call), horizontal flip (p 0.5),
colour jitter (brightness/contrast/saturation/hue in a random order per sample, as
torchvision's ColorJitter, applied with ``jitter_p``), grayscale (``gray_p``), Gaussian blur
(kernel ~10% of the view, sigma 0.1-2, ``blur_p``), solarize (threshold 0.5, ``solarize_p``),
normalise with MEAN/STD; the parameters come from :mod:`unigrad.data.draws`. Views come global
first, then local (multi-crop). The same distribution per image is
:mod:`unigrad.data.per_image`'s torchvision transforms.
"""

from __future__ import annotations

from typing import Any

import torch

from unigrad.data import kernels as K
from unigrad.data.datasets import MEAN, STD
from unigrad.data.draws import ViewParams, sample_view_params
from unigrad.data.recipe import SOLARIZE_THRESHOLD, AugmentSpec
from unigrad.errors import UserError

__all__ = ["FastAugment", "apply_view", "check_images", "finish_view"]


def _apply(
    x: torch.Tensor, mask: torch.Tensor, fn: Any, *args: torch.Tensor, masked: bool = False
) -> torch.Tensor:
    """x[mask] = fn(x[mask], *args[mask]).

    Host draws (``masked`` False, the mask on the CPU): the op runs on the selected rows only,
    selected with no device sync. Device draws (``masked``, the mask on x's device): the op runs
    on every row and ``torch.where`` keeps the selected ones, so nothing waits on the host."""
    if masked:
        out = fn(x, *(a.to(x.device) for a in args))
        return torch.where(mask.to(x.device).view(-1, 1, 1, 1), out, x)
    idx = mask.nonzero()[:, 0]
    if idx.numel() == len(mask):
        return fn(x, *(a.to(x.device, non_blocking=True) for a in args))
    if idx.numel():
        on = idx.to(x.device, non_blocking=True)
        x[on] = fn(x[on], *(a[idx].to(x.device, non_blocking=True) for a in args))
    return x


def apply_view(
    spec: AugmentSpec,
    x: torch.Tensor,
    p: ViewParams,
    size: int,
    channels_last: bool = False,
    masked: bool = False,
) -> torch.Tensor:
    """One view of a batch: x [N, 3, H, W] float in [0, 1] -> [N, 3, size, size] normalised
    (``masked``: see :func:`finish_view`)."""
    n = x.shape[0]
    index = torch.arange(n, dtype=p.boxes.dtype, device=p.boxes.device)
    rois = torch.cat((index[:, None], p.boxes), 1)
    v = K.crop_resize(x, rois.to(x.device, non_blocking=True), size)
    return finish_view(spec, v, p, channels_last, masked=masked)


def finish_view(
    spec: AugmentSpec,
    v: torch.Tensor,
    p: ViewParams,
    channels_last: bool = False,
    direct: bool = False,
    masked: bool = False,
) -> torch.Tensor:
    """Everything of a view after its crop: v [N, 3, s, s] float in [0, 1], the crops of
    ``p.boxes`` -> flipped, jittered, grayscale, blurred, solarized (per ``p``) and normalised
    [N, 3, s, s], in place where it can. ``p.boxes`` is not read (the standard pipeline's
    workers cut the crops, :mod:`unigrad.data.crops`). ``direct``: the faster hue and blur
    kernels (:func:`~unigrad.data.kernels.adjust_hue_direct`,
    :func:`~unigrad.data.kernels.gaussian_blur_matmul`, equal up to float rounding); the fast
    pipeline keeps the reference kernels, so recorded runs stay bit-identical. ``masked``: the
    parameters live on v's device (device draws) and every op runs on the whole batch, kept
    where its mask is set (no host sync, no transfer); else the masks are on the CPU and each op
    runs on its selected rows only (the same views from the same parameters)."""
    jitter_ops = K.JITTER_OPS_DIRECT if direct else K.JITTER_OPS
    blur = K.gaussian_blur_matmul if direct else K.gaussian_blur
    size = v.shape[-1]
    m = {"masked": masked}
    v = _apply(v, p.flip, lambda t: t.flip(-1), **m)
    identity = [lo == hi for lo, hi in spec.jitter_ranges()]  # torchvision skips these ops
    for k in range(4):
        for op, fn in enumerate(jitter_ops):
            if not identity[op]:
                v = _apply(v, p.jitter & (p.order[:, k] == op), fn, p.factors[:, op], **m)
    v = _apply(v, p.gray, lambda t: K.grayscale(t).repeat(1, 3, 1, 1), **m)
    ksize = K.blur_kernel_size(size)
    v = _apply(v, p.blur, lambda t, s: blur(t, s, ksize), p.sigma, **m)
    v = _apply(v, p.solarize, lambda t: K.solarize(t, SOLARIZE_THRESHOLD), **m)
    mean = K.constant(MEAN, v.device).view(1, 3, 1, 1)
    std = K.constant(STD, v.device).view(1, 3, 1, 1)
    v = (v - mean) / std
    return v.contiguous(memory_format=torch.channels_last) if channels_last else v


def check_images(images: Any, layout: str, who: str) -> None:
    """Refuse anything but a uint8 (0..255) or floating ([0, 1]) tensor of ``layout``
    ("N, 3, H, W" or "3, H, W") with one line saying what was given and what is expected."""
    want = f"{who} expects images [{layout}], uint8 in 0..255 or floating in [0, 1]"
    if not isinstance(images, torch.Tensor):
        raise UserError(f"{want}; got a {type(images).__name__}")
    rank = layout.count(",") + 1
    if images.dim() != rank or images.shape[-3] != 3:
        raise UserError(f"{want}; got shape {list(images.shape)}")
    if images.dtype == torch.uint8:
        return
    if not images.is_floating_point():
        raise UserError(f"{want}; got dtype {images.dtype}")
    if images.numel():
        lo, hi = (float(v) for v in torch.aminmax(images))  # one device sync
        if not 0 <= lo <= hi <= 1:  # NaN fails too
            raise UserError(
                f"{want}; got {images.dtype} values in [{lo:.4g}, {hi:.4g}] (pass images "
                "before normalisation: x / 255, not (x - mean) / std)"
            )


class FastAugment:
    """Views of in-memory uint8 batches as whole-batch tensor ops.

    On the CPU the batch runs with ``cpu_threads`` intra-op threads (default 1): its many small
    kernels gain little from more, and lose badly when the cores are shared (2-core machine under
    load, 2 views of 32 px: ~8,000 img/s with one thread, ~200 with two, as OpenMP threads
    spin-wait between the small kernels).

    Args:
        spec: the recipe.
        channels_last: return views in channels_last memory format.
        cpu_threads: intra-op threads for CPU batches (None: leave torch's setting).
        device_draws: draw the parameters from a generator on the images' device and apply
            every op masked (:func:`finish_view`): no host sync and no host-to-device transfer
            per batch (the fast pipeline on a GPU). Else (default) the generator is a CPU one and
            each op runs on its selected rows only (fewer operations; the CPU's choice). The
            same generator state gives the same views either way.
        compile_backend: with ``device_draws``, apply the drawn parameters (crop, the masked
            ops, normalisation) as one function compiled by ``torch.compile`` with this backend
            (``inductor``: a few fused kernels per view instead of some hundred launches;
            1.6-1.9x the eager masked path on a CPU core, BENCHMARKS §1), one graph per
            batch shape. None: eager.
    """

    def __init__(
        self,
        spec: AugmentSpec,
        channels_last: bool = False,
        cpu_threads: int | None = 1,
        device_draws: bool = False,
        compile_backend: str | None = None,
    ) -> None:
        self.spec, self.views, self.channels_last = spec, spec.views(), channels_last
        self.cpu_threads, self.device_draws = cpu_threads, device_draws
        self._apply = self._apply_eager
        if compile_backend is not None and device_draws:
            self._apply = torch.compile(self._apply_eager, backend=compile_backend, dynamic=False)

    def _apply_eager(self, x: torch.Tensor, params: list[ViewParams]) -> list[torch.Tensor]:
        """x [N, 3, H, W] float in [0, 1] and each view's parameters -> the views."""
        return [
            apply_view(self.spec, x, p, v.size, self.channels_last, self.device_draws)
            for p, v in zip(params, self.views, strict=True)
        ]

    def sample(self, n: int, height: int, width: int, g: torch.Generator) -> list[ViewParams]:
        """Each view's parameters for N images of H x W, drawn on ``g``'s device."""
        return [sample_view_params(self.spec, v, n, height, width, g) for v in self.views]

    def __call__(
        self, images: torch.Tensor, generator: torch.Generator, part: tuple[int, int] = (0, 1)
    ) -> list[torch.Tensor]:
        """images: [N, 3, H, W] on any device -> views [N, 3, s, s] float32 there.

        The images are uint8 (0..255) or floating in [0, 1] (float ``x / 255`` gives the views
        of uint8 ``x``); anything else (another dtype, values outside [0, 1] such as already
        normalised images, another shape) raises :class:`UserError`.

        ``part`` = (rank, world_size): the parameters are drawn for the whole global batch of
        N * world_size images (same generator state on every rank) and this rank applies its
        slice, so a distributed run sees exactly the views of a single-process run.
        """
        check_images(images, "N, 3, H, W", "FastAugment")
        want = images.device if self.device_draws else torch.device("cpu")
        if generator.device.type != want.type:
            raise ValueError(
                f"FastAugment(device_draws={self.device_draws}) draws from a {want.type} "
                f"torch.Generator, got a {generator.device.type} one"
            )
        n, _, h, w = images.shape
        rank, world = part
        threads = torch.get_num_threads()
        if images.device.type == "cpu" and self.cpu_threads:
            torch.set_num_threads(self.cpu_threads)
        try:
            params = self.sample(n * world, h, w, generator)
            if world > 1:
                params = [p.map(lambda t: t[rank * n : (rank + 1) * n]) for p in params]
            x = images.float().div_(255) if images.dtype == torch.uint8 else images.float()
            return self._apply(x, params)
        finally:
            torch.set_num_threads(threads)
