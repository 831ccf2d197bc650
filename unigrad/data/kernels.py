"""Image kernels on whole batches with one parameter per sample (the fast pipeline's ops).

Each is the batched twin of a ``torchvision.transforms.v2.functional`` kernel on float images
in [0, 1] and matches it sample by sample (tests compare them); torchvision's kernels take one
scalar per call, these take a [M] tensor. Images are [M, 3, H, W] float.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

#: ITU-R 601-2 luma, as torchvision's ``rgb_to_grayscale``.
LUMA = (0.2989, 0.587, 0.114)
#: hsv_to_rgb: which of (v, p, q, t) each RGB channel takes in each of the six hue sectors.
HSV_SELECT = ((0, 2, 1, 1, 3, 0), (3, 0, 0, 2, 1, 1), (1, 1, 3, 0, 0, 2))


def constant(
    values: tuple, device: torch.device, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``torch.tensor(values)`` on ``device``, made once per (values, device, dtype): a constant
    of a per-step kernel costs no host-to-device copy after the first step. Read only (shared
    by every caller). Under ``torch.compile`` it is a constant of the graph."""
    if torch.compiler.is_compiling():
        return torch.tensor(values, dtype=dtype, device=device)
    return _constant(values, device, dtype)


@functools.cache
def _constant(values: tuple, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype, device=device)


def _col(f: torch.Tensor) -> torch.Tensor:
    return f.view(-1, 1, 1, 1)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """[M, 3, H, W] -> [M, 1, H, W] luma."""
    r, g, b = x.unbind(1)
    return (r * LUMA[0] + g * LUMA[1] + b * LUMA[2]).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return torch.lerp(other, x, _col(f).to(x)).clamp_(0, 1)


def adjust_brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """x * f, clamped; f: [M]."""
    return (x * _col(f)).clamp_(0, 1)


def adjust_contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Blend with the image's mean luma; f: [M]."""
    return _blend(x, grayscale(x).mean(dim=(1, 2, 3), keepdim=True), f)


def adjust_saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Blend with the per-pixel luma; f: [M]."""
    return _blend(x, grayscale(x), f)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """[M, 3, H, W] RGB -> HSV, all channels in [0, 1] (PIL's and torchvision's formulas)."""
    r, g, b = x.unbind(1)
    maxc, minc = x.amax(1), x.amin(1)
    eqc = maxc == minc
    span = maxc - minc
    s = span / torch.where(eqc, torch.ones_like(maxc), maxc)
    span = torch.where(eqc, torch.ones_like(span), span)
    rc, gc, bc = (maxc - r) / span, (maxc - g) / span, (maxc - b) / span
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(eqc, torch.zeros_like(h), h)
    return torch.stack(((h / 6.0 + 1.0).fmod(1.0), s, maxc), dim=1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """[M, 3, H, W] HSV -> RGB."""
    h, s, v = x.unbind(1)
    h6 = h * 6
    i = torch.floor(h6)
    f = h6 - i
    i = i.long().remainder(6)
    p = (v * (1 - s)).clamp(0, 1)
    q = (v * (1 - s * f)).clamp(0, 1)
    t = (v * (1 - s * (1 - f))).clamp(0, 1)
    vpqt = torch.stack((v, p, q, t), dim=1)  # which of v, p, q, t each channel takes, per sector
    select = constant(HSV_SELECT, x.device, torch.long)
    return vpqt.gather(1, select[:, i].movedim(0, 1))


def adjust_hue(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Rotate the hue by f (in turns, [-0.5, 0.5]); f: [M]."""
    hsv = rgb_to_hsv(x)
    hsv[:, 0] = (hsv[:, 0] + f.view(-1, 1, 1)).remainder(1.0)
    return hsv_to_rgb(hsv)


def adjust_hue_direct(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """:func:`adjust_hue` in fewer passes (about 3x faster on the CPU at 224 px): a hue
    rotation keeps V = max and V * S = max - min, so each channel is
    ``max - (max - min) * clamp(min(k, 4 - k), 0, 1)``, k = (6 h' + 5, 3, 1) mod 6, with no
    trip through S. Equal to :func:`adjust_hue` up to float rounding (~1e-6); f: [M]."""
    r, g, b = x.unbind(1)
    maxc, minc = x.amax(1), x.amin(1)
    span = maxc - minc
    safe = torch.where(span == 0, torch.ones_like(span), span)
    h = torch.where(
        maxc == r,
        (g - b) / safe,
        torch.where(maxc == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe),
    )
    h = torch.where(span == 0, torch.zeros_like(h), h)
    h6 = ((h / 6.0 + 1.0).fmod(1.0) + f.view(-1, 1, 1)).remainder(1.0) * 6.0
    out = []
    for shift in (5.0, 3.0, 1.0):
        k = (h6 + shift).remainder_(6.0)
        out.append(maxc - span * torch.minimum(k, 4.0 - k).clamp_(0, 1))
    return torch.stack(out, 1)


#: Colour jitter ops in torchvision's ``ColorJitter`` numbering (its ``fn_idx``).
JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
#: The same with :func:`adjust_hue_direct` (the standard pipeline on folders; the fast
#: pipeline keeps :data:`JITTER_OPS`, so recorded runs stay bit-identical).
JITTER_OPS_DIRECT = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue_direct)


def solarize(x: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Invert the pixels >= threshold."""
    return torch.where(x >= threshold, 1.0 - x, x)


def blur_kernel_size(size: int) -> int:
    """The odd kernel side closest below 10% of the view (BYOL: 23 at 224), at least 3."""
    return max(3, 2 * int(0.05 * size) + 1)


def gaussian_taps(
    sigma: torch.Tensor, kernel_size: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """[M, kernel_size] 1-D Gaussian weights (torchvision v2's), one row per sigma [M]."""
    lim = (kernel_size - 1) / (2.0 * math.sqrt(2.0))
    t = torch.linspace(-lim, lim, kernel_size, dtype=dtype, device=device)
    return torch.softmax(-((t / sigma.to(device, dtype).view(-1, 1)) ** 2), dim=1)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Separable Gaussian blur, reflect padding, torchvision v2's kernel; sigma: [M]."""
    m, c, h, w = x.shape
    k = gaussian_taps(sigma, kernel_size, x.dtype, x.device).repeat_interleave(c, 0)
    pad = kernel_size // 2
    y = F.pad(x.reshape(1, m * c, h, w), (pad, pad, pad, pad), mode="reflect")
    y = F.conv2d(y, k.view(m * c, 1, 1, kernel_size), groups=m * c)
    y = F.conv2d(y, k.view(m * c, 1, kernel_size, 1), groups=m * c)
    return y.view(m, c, h, w)


def blur_matrix(sigma: torch.Tensor, kernel_size: int, n: int) -> torch.Tensor:
    """[M, n, n] matrices B with ``x @ B`` = the 1-D Gaussian blur (sigma [M]) of rows of
    length n, reflect padding folded in (as :func:`gaussian_blur`'s pad + conv)."""
    m, pad = sigma.shape[0], kernel_size // 2
    k = gaussian_taps(sigma, kernel_size, torch.float32, sigma.device)  # [M, K]
    out = torch.arange(n, device=sigma.device).view(n, 1)
    src = out + torch.arange(-pad, pad + 1, device=sigma.device).view(1, -1)  # [n, K]
    src = src.abs()  # reflect at 0 (-1 -> 1) and at n - 1 (n -> n - 2)
    src = torch.where(src > n - 1, 2 * (n - 1) - src, src)
    b = torch.zeros(m, n, n, dtype=torch.float32, device=sigma.device)
    rows = src.expand(m, n, kernel_size).reshape(m, -1)
    cols = out.expand(n, kernel_size).reshape(1, -1).expand(m, -1)
    vals = k.view(m, 1, kernel_size).expand(m, n, kernel_size).reshape(m, -1)
    return b.view(m, -1).scatter_add_(1, rows * n + cols, vals).view(m, n, n)


def gaussian_blur_matmul(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """:func:`gaussian_blur` as two batched matrix products (:func:`blur_matrix`): several
    times faster on the CPU than the grouped convolution at 224 px, equal up to float rounding
    (~1e-6); sigma: [M]. Needs kernel_size // 2 < H, W (reflect padding)."""
    m, c, h, w = x.shape
    bw = blur_matrix(sigma, kernel_size, w).to(x.dtype).transpose(1, 2).repeat_interleave(c, 0)
    bh = bw if h == w else blur_matrix(sigma, kernel_size, h).to(x).transpose(1, 2)
    bh = bh if h == w else bh.repeat_interleave(c, 0)
    planes = x.reshape(m * c, h, w)
    y = torch.bmm(bw, planes.transpose(1, 2))  # rows blurred, [M*C, W, H] (faster this way)
    return torch.bmm(bh, y.transpose(1, 2)).view(m, c, h, w)


def crop_resize(x: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop box ``boxes[i]`` of image ``i`` and resize it to size x size, in one roi_align call.

    Bilinear at bin centres (``aligned=True``: box (0, 0, W, H) with size = W returns the image);
    boxes larger than the output average ceil(box / size) samples per bin (adaptive
    ``sampling_ratio``), an antialiasing close to torchvision's.

    Args:
        x: [N, C, H, W] float.
        boxes: [M, 5] (image index, x0, y0, x1, y1) in pixels, edges at integers.
        size: output side.

    Returns:
        [M, C, size, size].
    """
    return roi_align(x, boxes.to(x), output_size=size, sampling_ratio=-1, aligned=True)
