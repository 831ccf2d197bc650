"""Transforms (issue 22): per-view op probabilities (BYOL's asymmetric recipe) in both
pipelines, FastAugment's input checks, and MultiViewTransform for any torch Dataset."""

import math
import pickle

import pytest
import torch
from PIL import Image
from sampled import sampled_params
from torch.utils.data import DataLoader, Dataset

from unigrad.config import build_config, load_yaml, parse_set
from unigrad.data.augment import (
    AugmentSpec,
    FastAugment,
    MultiViewTransform,
    ViewsDataset,
)
from unigrad.errors import UserError

BYOL = dict(blur_p=[1.0, 0.1], solarize_p=[0.0, 0.2])


def uint8_images(n: int = 6, size: int = 20) -> torch.Tensor:
    x = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))
    return (x * 255).to(torch.uint8)


def checksum(views: list[torch.Tensor]) -> list[float]:
    return [v.double().sum().item() for v in views] + [
        (v.double() ** 2).sum().item() for v in views
    ]


# --- per-view probabilities ---------------------------------------------------------------------


@pytest.mark.parametrize(("pipeline", "n"), [("fast", 4000), ("standard", 4000), ("folder", 4000)])
def test_byol_recipe_draws_blur_and_solarize_per_view(pipeline, n):
    spec = AugmentSpec(image_size=16, **BYOL)
    for view, blur, solarize in ((0, 1.0, 0.0), (1, 0.1, 0.2)):
        got = sampled_params(pipeline, spec, view, n, 16, 16, seed=view, ops=True)
        for key, p in (("blur", blur), ("solarize", solarize), ("jitter", 0.8), ("gray", 0.2)):
            band = 5 * math.sqrt(p * (1 - p) / n)  # 5 binomial sigmas (0 when p is 0 or 1)
            rate = got[key].float().mean().item()
            assert abs(rate - p) <= band, (pipeline, view, key, rate)


def test_local_views_take_the_last_value_and_asym2x_pairs_repeat():
    spec = AugmentSpec(image_size=16, multi_crop="2x16,3x8", **BYOL)
    assert [v.blur_p for v in spec.views()] == [1.0, 0.1, 0.1, 0.1, 0.1]
    assert [v.solarize_p for v in spec.views()] == [0.0, 0.2, 0.2, 0.2, 0.2]
    assert [v.gray_p for v in spec.views()] == [0.2] * 5
    cfg = build_config({"method": "simsiam", "symmetry": "asym2x", "image_size": 16, **BYOL})
    assert [v.blur_p for v in AugmentSpec.from_config(cfg).views()] == [1.0, 0.1, 1.0, 0.1]


def test_wrong_length_list_is_refused_naming_the_key():
    with pytest.raises(UserError, match=r"^blur_p has 3 values but there are 2 global views"):
        build_config(parse_set(["blur_p=1.0,0.1,0.5"]))
    with pytest.raises(UserError, match=r"^solarize_p has 2 values but there are 4 global"):
        AugmentSpec(multi_crop="4x32", solarize_p=[0.0, 0.2])
    with pytest.raises(UserError, match=r"^gray_p must be a probability in \[0, 1\]"):
        build_config({"gray_p": [0.2, 1.5]})
    with pytest.raises(UserError, match="jitter_p has 1 values"):
        MultiViewTransform(image_size=8, jitter_p=[0.8])
    with pytest.raises(UserError, match="unknown recipe key 'blur'"):
        MultiViewTransform(image_size=8, blur=0.5)


def test_set_spelling_and_presets_give_per_view_lists():
    assert parse_set(["blur_p=1.0,0.1", "solarize_p=[0.0, 0.2]"]) == BYOL
    cfg = build_config(parse_set(["blur_p=1.0,0.1", "solarize_p=0,0.2", "image_size=32"]))
    assert (cfg.blur_p, cfg.solarize_p) == ([1.0, 0.1], [0.0, 0.2])
    for preset in ("byol-augment", "paper-800ep"):
        views = AugmentSpec.from_config(build_config(load_yaml(preset), {"image_size": 32})).views()
        assert [(v.blur_p, v.solarize_p) for v in views] == [(1.0, 0.0), (0.1, 0.2)], preset
    quick = AugmentSpec.from_config(build_config(load_yaml("cifar-quick")))
    assert (quick.blur_p, quick.solarize_p) == (0.0, 0.0)  # unchanged: benchmarks depend on it


def test_one_number_gives_the_views_recorded_before_per_view_lists():
    """Checksums recorded on the code before per-view probabilities existed; a list of equal
    values gives the same views as the number."""
    u8, spec = uint8_images(), AugmentSpec(image_size=16, blur_p=0.5, solarize_p=0.3)
    fast = FastAugment(spec)(u8, torch.Generator().manual_seed(7))
    ds = ViewsDataset([(u8[i], 0) for i in range(6)], spec, seed=3)
    std = [torch.stack([ds[i][0][j] for i in range(6)]) for j in range(2)]
    recorded = {
        "fast": [352.46135, 708.843822, 3037.806175, 2234.393046],
        "standard": [375.933614, 1342.713948, 2157.400879, 4100.066095],
    }
    for name, views in (("fast", fast), ("standard", std)):
        assert checksum(views) == pytest.approx(recorded[name], abs=2e-3), name
    listed = AugmentSpec(image_size=16, blur_p=[0.5, 0.5], solarize_p=[0.3, 0.3])
    same = FastAugment(listed)(u8, torch.Generator().manual_seed(7))
    assert all(torch.equal(a, b) for a, b in zip(fast, same, strict=True))
    ds = ViewsDataset([(u8[i], 0) for i in range(6)], listed, seed=3)
    assert all(torch.equal(std[j][2], ds[2][0][j]) for j in range(2))


# --- FastAugment's input ------------------------------------------------------------------------


def test_fast_augment_float_input_gives_the_uint8_views():
    u8, aug = uint8_images(), FastAugment(AugmentSpec(image_size=16, **BYOL))
    ref = aug(u8, torch.Generator().manual_seed(3))
    for dtype in (torch.float32, torch.float64):
        views = aug(u8.to(dtype) / 255, torch.Generator().manual_seed(3))
        for a, b in zip(ref, views, strict=True):
            torch.testing.assert_close(b, a, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (uint8_images().long(), r"got dtype torch\.int64"),
        ((uint8_images() / 255 - 0.5) / 0.25, r"got torch\.float32 values in \[-2, 1\.98"),
        (uint8_images().float(), r"values in \[0, 25\d\]"),
        (uint8_images()[:, :1], r"got shape \[6, 1, 20, 20\]"),
        (uint8_images()[0], r"got shape \[3, 20, 20\]"),
        (uint8_images().numpy(), "got a ndarray"),
    ],
)
def test_fast_augment_refuses_other_input_saying_what_it_expects(images, message):
    aug = FastAugment(AugmentSpec(image_size=8))
    with pytest.raises(UserError, match=r"^FastAugment expects images \[N, 3, H, W\], uint8"):
        aug(images, torch.Generator())
    with pytest.raises(UserError, match=message):
        aug(images, torch.Generator())


# --- MultiViewTransform -------------------------------------------------------------------------


class Pictures(Dataset):
    """A tiny in-memory dataset of PIL images, transformed as torchvision datasets do."""

    def __init__(self, transform: MultiViewTransform, n: int = 4) -> None:
        self.images = [Image.fromarray(x.permute(1, 2, 0).numpy()) for x in uint8_images(n, 24)]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[list[torch.Tensor], int]:
        return self.transform(self.images[i]), i % 2


def test_multi_view_transform_gives_the_views_of_a_pil_image_or_a_tensor():
    tf = MultiViewTransform(image_size=16, multi_crop="2x16,3x8", **BYOL)
    img = Image.fromarray(uint8_images(1, 24)[0].permute(1, 2, 0).numpy())
    for x in (img, img.convert("L"), uint8_images(1, 24)[0], uint8_images(1, 24)[0] / 255):
        views = tf(x)
        assert [tuple(v.shape) for v in views] == [(3, 16, 16)] * 2 + [(3, 8, 8)] * 3
        assert all(v.dtype == torch.float32 for v in views)
    torch.manual_seed(0)
    a = tf(img)
    torch.manual_seed(0)
    assert all(torch.equal(u, v) for u, v in zip(a, tf(img), strict=True))  # global RNG
    with pytest.raises(UserError, match=r"MultiViewTransform expects images \[3, H, W\]"):
        tf(uint8_images(1, 24)[0].float())  # 0..255 as float


def test_multi_view_transform_in_a_dataloader():
    tf = pickle.loads(pickle.dumps(MultiViewTransform(AugmentSpec(image_size=16), blur_p=[1, 0])))
    assert [v.blur_p for v in tf.spec.views()] == [1.0, 0.0]
    (views, labels), *_ = DataLoader(Pictures(tf), batch_size=4)
    assert [tuple(v.shape) for v in views] == [(4, 3, 16, 16)] * 2
    assert labels.tolist() == [0, 1, 0, 1]
