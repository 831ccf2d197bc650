import math

import pytest
import torch
from sampled import sampled_params
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as TF

from unigrad.config import Config
from unigrad.data import kernels as K
from unigrad.data.augment import (
    AugmentSpec,
    FastAugment,
    ViewParams,
    ViewsDataset,
    apply_view,
    cutmix,
    parse_multi_crop,
    sample_view_params,
)
from unigrad.data.datasets import MEAN, STD
from unigrad.errors import UserError

OFF = dict(jitter_p=0.0, gray_p=0.0, blur_p=0.0, solarize_p=0.0)


def images(n: int = 4, size: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def normalise(x: torch.Tensor) -> torch.Tensor:
    return TF.normalize(x, list(MEAN), list(STD))


def ks(a: torch.Tensor, b: torch.Tensor) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between empirical CDFs."""
    x = torch.cat([a, b]).sort().values
    fa = torch.searchsorted(a.sort().values, x, right=True) / len(a)
    fb = torch.searchsorted(b.sort().values, x, right=True) / len(b)
    return (fa - fb).abs().max().item()


# --- kernels against torchvision, sample by sample --------------------------------------------


@pytest.mark.parametrize(
    ("ours", "theirs", "factors"),
    [
        (K.adjust_brightness, TF.adjust_brightness, [0.6, 1.0, 1.3, 1.4]),
        (K.adjust_contrast, TF.adjust_contrast, [0.6, 1.0, 1.3, 0.0]),
        (K.adjust_saturation, TF.adjust_saturation, [0.6, 1.0, 1.4, 0.0]),
        (K.adjust_hue, TF.adjust_hue, [-0.1, 0.0, 0.05, 0.5]),
        (K.adjust_hue_direct, TF.adjust_hue, [-0.1, 0.0, 0.05, 0.5]),
    ],
)
def test_batched_jitter_ops_match_torchvision_per_sample(ours, theirs, factors):
    x = images()
    x[1, :, :4] = 0.5  # gray pixels: hue undefined, must pass through
    out = ours(x.clone(), torch.tensor(factors))
    for i, f in enumerate(factors):
        torch.testing.assert_close(out[i], theirs(x[i], f), atol=1e-5, rtol=0)


def test_grayscale_blur_solarize_match_torchvision():
    x = images(size=16)
    torch.testing.assert_close(K.grayscale(x), TF.rgb_to_grayscale(x), atol=1e-6, rtol=0)
    torch.testing.assert_close(K.solarize(x, 0.5), TF.solarize(x, 0.5))
    sigma = torch.tensor([0.1, 0.7, 1.3, 2.0])
    out = K.gaussian_blur(x, sigma, 5)
    for i, s in enumerate(sigma.tolist()):
        torch.testing.assert_close(
            out[i], TF.gaussian_blur(x[i], [5, 5], [s, s]), atol=1e-5, rtol=0
        )
    assert [K.blur_kernel_size(s) for s in (16, 32, 96, 224)] == [3, 3, 9, 23]


def test_roi_align_crop_of_a_known_region_gives_its_pixels():
    x = images(n=2, size=10)
    full = torch.tensor([[0, 0, 0, 10, 10], [1, 0, 0, 10, 10]], dtype=torch.float32)
    torch.testing.assert_close(K.crop_resize(x, full, 10), x)
    box = torch.tensor([[1, 2.0, 3.0, 6.0, 7.0]])  # columns 2..5, rows 3..6 of image 1
    torch.testing.assert_close(K.crop_resize(x, box, 4)[0], x[1, :, 3:7, 2:6])
    half = K.crop_resize(x, full[:1], 5)  # downscale 2x: each output pixel averages a 2x2 block
    torch.testing.assert_close(half[0], torch.nn.functional.avg_pool2d(x[0], 2))


# --- fast pipeline: parameters ----------------------------------------------------------------


def test_sampled_boxes_honour_scale_and_aspect_ranges():
    spec = AugmentSpec(image_size=32, crop_scale_min=0.2, crop_scale_max=0.9)
    for height, width in ((32, 32), (40, 24)):
        p = sample_view_params(spec, spec.views()[0], 5000, height, width, torch.Generator())
        x0, y0, x1, y1 = p.boxes.unbind(1)
        w, h = x1 - x0, y1 - y0
        assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= width + 1e-4).all()
        assert (y1 <= height + 1e-4).all()
        scale, aspect = w * h / (height * width), w / h
        assert scale.min() >= 0.2 - 1e-5 and scale.max() <= 0.9 + 1e-5
        assert aspect.min() >= 3 / 4 - 1e-5 and aspect.max() <= 4 / 3 + 1e-5
        if height == width:  # the whole ranges are used, not a sub-range
            assert scale.min() < 0.21 and scale.max() > 0.85
            assert aspect.min() < 0.77 and aspect.max() > 1.3
        assert abs(x0.mean() / (width - w).mean() - 0.5) < 0.03  # uniform position


def test_op_probabilities_and_jitter_order():
    spec = AugmentSpec(jitter_p=0.8, gray_p=0.2, blur_p=0.3, solarize_p=0.1)
    p = sample_view_params(spec, spec.views()[0], 20000, 32, 32, torch.Generator())
    for mask, prob in ((p.flip, 0.5), (p.jitter, 0.8), (p.gray, 0.2), (p.blur, 0.3)):
        assert abs(mask.float().mean().item() - prob) < 0.015
    assert abs(p.solarize.float().mean().item() - 0.1) < 0.015
    assert (p.order.sort(1).values == torch.arange(4)).all()  # a permutation per sample
    first = torch.bincount(p.order[:, 0], minlength=4) / 20000
    assert (first - 0.25).abs().max() < 0.02
    assert p.sigma.min() >= 0.1 and p.sigma.max() <= 2.0


@pytest.mark.parametrize("pipeline", ["fast", "folder"])
def test_both_pipelines_draw_crop_and_jitter_from_the_same_distribution(pipeline):
    spec = AugmentSpec(image_size=224, crop_scale_min=0.2, hue=0.1)
    std = sampled_params("standard", spec, 0, 3000, 224, 224, seed=0)
    fast = sampled_params(pipeline, spec, 0, 3000, 224, 224, seed=1)
    for key in std:  # KS critical value at alpha 0.001 for 3000 vs 3000 draws: 0.050
        assert ks(std[key], fast[key]) < 0.05, key
    wrong = AugmentSpec(image_size=224, crop_scale_min=0.3, brightness=0.5, hue=0.12)
    off = sampled_params("fast", wrong, 0, 3000, 224, 224, seed=1)
    assert all(ks(std[k], off[k]) > 0.08 for k in ("scale", "brightness", "hue"))
    # at 32 px torchvision rounds boxes to whole pixels; the fast pipeline's stay continuous
    std32 = sampled_params("standard", spec, 0, 3000, 32, 32, seed=0)
    fast32 = sampled_params(pipeline, spec, 0, 3000, 32, 32, seed=1)
    assert abs(std32["scale"].mean() - fast32["scale"].mean()) < 0.02


def test_local_views_use_the_local_scale_range():
    spec = AugmentSpec(multi_crop="2x32,6x16", local_scale_min=0.05, local_scale_max=0.4)
    local = sampled_params("fast", spec, 7, 2000, 32, 32)
    assert local["scale"].min() >= 0.05 - 1e-6 and local["scale"].max() <= 0.4 + 1e-6
    std = sampled_params("standard", spec, 7, 2000, 32, 32)
    assert std["scale"].max() <= 0.45 and std["scale"].mean() < 0.3


# --- fast pipeline: outputs -------------------------------------------------------------------


def _params(n: int, **kw: torch.Tensor) -> ViewParams:
    base = dict(
        boxes=torch.tensor([[0.0, 0.0, 12.0, 12.0]]).repeat(n, 1),
        flip=torch.zeros(n, dtype=torch.bool),
        jitter=torch.zeros(n, dtype=torch.bool),
        factors=torch.ones(n, 4),
        order=torch.arange(4).repeat(n, 1),
        gray=torch.zeros(n, dtype=torch.bool),
        blur=torch.zeros(n, dtype=torch.bool),
        sigma=torch.ones(n),
        solarize=torch.zeros(n, dtype=torch.bool),
    )
    return ViewParams(**(base | kw))


def test_apply_view_flips_jitters_in_order_and_normalises_per_sample():
    x = images(n=4)
    spec = AugmentSpec(image_size=12, hue=0.1)
    factors = torch.tensor([[1.3, 0.7, 1.2, 0.05], [0.8, 1.2, 0.6, -0.1]]).repeat(2, 1)
    order = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1], [1, 3, 0, 2]])
    flip = torch.tensor([True, False, False, True])
    jitter = torch.tensor([True, True, True, False])
    out = apply_view(
        spec, x, _params(4, flip=flip, jitter=jitter, factors=factors, order=order), 12
    )
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for i in range(4):
        ref = TF.horizontal_flip(x[i]) if flip[i] else x[i]
        for op in order[i].tolist() if jitter[i] else []:
            ref = ops[op](ref, factors[i, op].item())
        torch.testing.assert_close(out[i], normalise(ref), atol=1e-5, rtol=0)


def test_apply_view_grayscale_blur_solarize_per_sample():
    x = images(n=3)
    mask = torch.tensor([True, False, True])
    for key, ref in (
        ("gray", lambda t: TF.rgb_to_grayscale(t, 3)),
        ("solarize", lambda t: TF.solarize(t, 0.5)),
        ("blur", lambda t: TF.gaussian_blur(t, [3, 3], [1.5, 1.5])),
    ):
        p = _params(3, sigma=torch.full((3,), 1.5), **{key: mask})
        out = apply_view(AugmentSpec(image_size=12), x, p, 12)
        for i in range(3):
            want = normalise(ref(x[i]) if mask[i] else x[i])
            torch.testing.assert_close(out[i], want, atol=1e-5, rtol=0)


def test_fast_augment_is_reproducible_from_its_generator():
    u8 = (images(n=8, size=16) * 255).to(torch.uint8)
    aug = FastAugment(AugmentSpec(image_size=16), channels_last=True)
    a = aug(u8, torch.Generator().manual_seed(5))
    b = aug(u8, torch.Generator().manual_seed(5))
    c = aug(u8, torch.Generator().manual_seed(6))
    assert len(a) == 2 and all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0]) and not torch.equal(a[0], a[1])
    assert a[0].dtype == torch.float32 and a[0].shape == (8, 3, 16, 16)
    assert a[0].is_contiguous(memory_format=torch.channels_last)


# --- multi-crop and views in both pipelines ---------------------------------------------------


class Pairs(Dataset):
    def __init__(self, n: int = 6, size: int = 20) -> None:
        self.x = (images(n=n, size=size) * 255).to(torch.uint8)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.x[i], i % 2


def test_multi_crop_views_count_sizes_and_order_in_both_pipelines():
    assert parse_multi_crop("2x224,6x96") == [(2, 224), (6, 96)]
    for bad in ("2x32,6x16,2x8", "1x32", "2x", "two", "2x32;6x16"):
        with pytest.raises(UserError, match="multi_crop must look like"):
            parse_multi_crop(bad)
    spec = AugmentSpec(image_size=32, multi_crop="2x20,6x10")
    sizes = [20, 20] + [10] * 6
    fast = FastAugment(spec)((images(n=3, size=20) * 255).to(torch.uint8), torch.Generator())
    assert [v.shape for v in fast] == [(3, 3, s, s) for s in sizes]
    views, label = ViewsDataset(Pairs(), spec, seed=0)[1]
    assert [tuple(v.shape) for v in views] == [(3, s, s) for s in sizes] and label == 1
    assert [v.size for v in AugmentSpec(image_size=8).views()] == [8, 8]


def test_spec_from_config_uses_the_config_keys():
    cfg = Config(image_size=32, crop_scale_min=0.3, hue=0.0, blur_p=0.0, multi_crop="2x32,6x16")
    spec = AugmentSpec.from_config(cfg)
    assert (spec.image_size, spec.crop_scale_min, spec.hue, spec.blur_p) == (32, 0.3, 0.0, 0.0)
    assert len(spec.views()) == 8 and spec.views()[2].scale == (0.05, 0.4)
    asym2x = AugmentSpec.from_config(Config(method="simsiam", symmetry="asym2x", image_size=16))
    assert len(asym2x.views()) == 4
    # the library defaults and the config defaults are one recipe
    assert AugmentSpec.from_config(Config(image_size=224)) == AugmentSpec()  # one recipe


def test_standard_views_depend_only_on_seed_epoch_and_index():
    ds = ViewsDataset(Pairs(), AugmentSpec(image_size=16), seed=3)
    a, b = ds[2][0], ds[2][0]
    torch.manual_seed(123)  # the global RNG must not matter
    c = ds[2][0]
    assert all(torch.equal(u, v) and torch.equal(u, w) for u, v, w in zip(a, b, c, strict=True))
    assert not torch.equal(a[0], ds[3][0][0])
    ds.set_epoch(1)
    assert not torch.equal(a[0], ds[2][0][0])


def test_set_epoch_reaches_persistent_workers():
    ds = ViewsDataset(Pairs(n=4), AugmentSpec(image_size=8), seed=0)
    loader = DataLoader(ds, batch_size=4, num_workers=1, persistent_workers=True)
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        (views, _), *_ = list(loader)
        assert torch.equal(views[0], torch.stack([ds[i][0][0] for i in range(4)]))


def test_standard_pipeline_op_probabilities_match_the_fast_pipeline():
    x = torch.linspace(0, 1, 8 * 8 * 3).view(3, 8, 8)  # no symmetry, not gray
    full = dict(image_size=8, crop_scale_min=1.0, crop_scale_max=1.0)
    rates = {}
    for name, kw in (
        ("flip", dict(OFF, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)),
        ("gray", dict(OFF, gray_p=0.2)),
        ("jitter", dict(OFF, jitter_p=0.8, contrast=0.0, saturation=0.0, hue=0.0)),
    ):
        ds = ViewsDataset([(x, 0)] * 1000, AugmentSpec(**full, **kw), seed=0)
        outs = torch.stack([ds[i][0][0] for i in range(1000)])
        plain = normalise(x)
        if name == "flip":
            hit = [torch.allclose(o, normalise(TF.horizontal_flip(x)), atol=1e-6) for o in outs]
        elif name == "gray":
            raw = outs * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)
            hit = [torch.allclose(r[0], r[1], atol=1e-5) for r in raw]
        else:
            hit = [
                not torch.allclose(o, plain, atol=1e-4)
                and not torch.allclose(o, normalise(TF.horizontal_flip(x)), atol=1e-4)
                for o in outs
            ]
        rates[name] = sum(hit) / 1000
    # 4 standard deviations of a rate over 1000 draws
    assert abs(rates["flip"] - 0.5) < 0.065 and abs(rates["gray"] - 0.2) < 0.05
    assert abs(rates["jitter"] - 0.8) < 0.05


# --- CutMix -----------------------------------------------------------------------------------


def test_cutmix_ratio_is_the_kept_area_and_perm_a_permutation():
    views = [images(n=64, size=16, seed=s) for s in range(3)]
    mixed, perm, ratio = cutmix(views, torch.Generator().manual_seed(0), views_to_mix=(0, 1))
    assert sorted(perm.tolist()) == list(range(64)) and perm.dtype == torch.int64
    assert torch.equal(mixed[2], views[2])  # not mixed
    kept0 = (mixed[0] == views[0]).all(1)  # [N, H, W]
    kept1 = (mixed[1] == views[1]).all(1)
    moved = perm != torch.arange(64)
    assert torch.equal(kept0[moved], kept1[moved])  # the same box in every mixed view
    torch.testing.assert_close(kept0[moved].float().mean((1, 2)), ratio[moved])
    pasted = ~kept0[moved]
    src = views[0][perm][moved].permute(0, 2, 3, 1)[pasted]
    assert torch.equal(mixed[0][moved].permute(0, 2, 3, 1)[pasted], src)
    assert ratio.min() >= 0 and ratio.max() <= 1 and ratio.std() > 0.1
    assert ratio.dtype == torch.float32 and not math.isclose(ratio.mean().item(), 1.0)
    with pytest.raises(ValueError, match="same size"):
        cutmix([views[0], images(n=64, size=8)], torch.Generator())
