import os
import urllib.error
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import SHARED_CIFAR
from PIL import Image
from torch.utils.data import DataLoader

from unigrad.data import datasets as D
from unigrad.data import inmemory as M
from unigrad.data import sources as S
from unigrad.errors import UserError


def write_image(path: Path, mode: str = "RGB", size: tuple[int, int] = (8, 8), seed: int = 0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(rgb)
    img = img.convert(mode) if mode != "P" else img.quantize(16)
    img.save(path)
    return img


def make_folder(root: Path, n_per_class: int = 3, classes=("cat", "dog"), size=(8, 8)) -> Path:
    for c, name in enumerate(classes):
        for i in range(n_per_class):
            write_image(root / "train" / name / f"{i}.png", size=size, seed=10 * c + i)
    return root


def truncate(path: Path) -> None:
    b = path.read_bytes()
    path.write_bytes(b[: len(b) // 2])


def open_split(root, split="train", transform=None, bad_images="skip"):
    return S.FolderSource(str(root), bad_images).open(split, transform)


def load_uint8(root, size=None, bad_images="skip", **cache):
    return S.FolderSource(str(root), bad_images, **cache).load_uint8("train", size)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "ds")


# --- RGB conversion -------------------------------------------------------------------------


def test_gray_palette_rgba_images_become_rgb_in_both_paths(tmp_path, monkeypatch):
    root = tmp_path / "ds"
    refs = {}
    for i, mode in enumerate(("L", "P", "RGBA", "RGB")):
        img = write_image(root / "train" / "a" / f"{i}_{mode}.png", mode=mode, seed=i)
        refs[i] = np.asarray(D.to_rgb(img))
    write_image(root / "train" / "a" / "4_L.jpg", mode="L", seed=4)
    ds = open_split(root)
    imgs = [ds[i][0] for i in range(len(ds))]
    assert all(im.mode == "RGB" and im.size == (8, 8) for im in imgs)
    split = load_uint8(root, use_cache=False)
    assert split.images.shape == (5, 3, 8, 8) and split.images.dtype == torch.uint8
    for i, ref in refs.items():  # PNGs are lossless: exact pixels, channels first
        assert np.array_equal(split.images[i].permute(1, 2, 0).numpy(), ref)
        assert np.array_equal(np.asarray(imgs[i]), ref)
    gray = split.images[4]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    monkeypatch.setattr(M, "decode_image", None)  # PIL only, as once torchvision.io is gone
    pil = load_uint8(root, use_cache=False).images
    assert torch.equal(pil[:4], split.images[:4]) and (pil[4].int() - gray.int()).abs().max() <= 2


# --- bad input: one clear error each ----------------------------------------------------------


def test_missing_data_dir_says_what_to_pass(tmp_path):
    with pytest.raises(UserError, match=r"does not exist.*--data DIR.*--dataset"):
        open_split(tmp_path / "nope")


def test_missing_split_lists_the_splits_found(folder):
    with pytest.raises(UserError, match=r"split 'val' not found.*found: train"):
        open_split(folder, "val")
    assert D.available_splits(str(folder)) == ["train"]


def test_empty_class_folder_is_named(folder):
    (folder / "train" / "zebra").mkdir()
    with pytest.raises(UserError, match=r"no images .*zebra; add images"):
        open_split(folder)
    with pytest.raises(UserError, match="zebra"):
        load_uint8(folder, use_cache=False)


def test_split_without_class_folders_explains_layout(tmp_path):
    write_image(tmp_path / "ds" / "train" / "0.png")
    with pytest.raises(UserError, match=r"no class folders.*<class>"):
        open_split(tmp_path / "ds")


def test_bad_images_value_is_checked(folder):
    with pytest.raises(UserError, match="skip, fail"):
        open_split(folder, bad_images="ignore")


def _with_truncated_jpeg(folder: Path) -> Path:
    bad = folder / "train" / "cat" / "1.jpg"
    write_image(bad, size=(8, 8))
    truncate(bad)
    (folder / "train" / "cat" / "1.png").unlink()
    return bad


def test_truncated_jpeg_is_skipped_with_a_warning_and_counted_in_memory(folder, tmp_path):
    bad = _with_truncated_jpeg(folder)
    with pytest.warns(UserWarning, match=f"skipping unreadable image .*{bad.name}"):
        split = load_uint8(folder, cache_dir=tmp_path / "c")
    assert split.n_skipped == 1 and split.skipped == [str(bad)]
    assert split.images.shape[0] == 5 and split.labels.tolist() == [0, 0, 1, 1, 1]


def test_truncated_jpeg_fails_naming_the_file_when_asked(folder, tmp_path):
    bad = _with_truncated_jpeg(folder)
    with pytest.raises(UserError, match=rf"cannot decode image .*{bad.name}.*bad_images=skip"):
        load_uint8(folder, bad_images="fail", use_cache=False)
    ds = open_split(folder, bad_images="fail")
    with pytest.raises(UserError, match=bad.name):
        [ds[i] for i in range(len(ds))]


def test_per_image_path_substitutes_the_next_sample_deterministically(folder):
    bad = _with_truncated_jpeg(folder)
    ds = open_split(folder, transform=lambda im: np.asarray(im))
    i = [p for p, _ in ds.samples].index(str(bad))
    with pytest.warns(UserWarning, match=bad.name):
        img, label = ds[i]
    assert np.array_equal(img, ds[i + 1][0]) and label == ds[i + 1][1]
    assert ds.n_skipped == 1
    assert np.array_equal(ds[i][0], img)  # again, now without a second warning or count
    assert ds.n_skipped == 1


# --- in-memory split: common size, cache ----------------------------------------------------


def test_odd_sized_images_are_resized_to_the_common_size(folder):
    write_image(folder / "train" / "dog" / "big.png", size=(20, 12))
    with pytest.warns(UserWarning, match="resized 1 of 7 images to the common size 8x8"):
        split = load_uint8(folder, use_cache=False)
    assert split.images.shape == (7, 3, 8, 8) and split.n_resized == 1
    with pytest.warns(UserWarning, match="resized 7 of 7"):
        assert load_uint8(folder, size=4, use_cache=False).images.shape[-2:] == (4, 4)


def test_cache_round_trip_and_invalidation(folder, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = load_uint8(folder, cache_dir=cache)
    files = list(cache.iterdir())
    assert len(files) == 1 and files[0].suffix == ".pt" and files[0].name.startswith("ds-train")
    decode = M._decode_folder
    monkeypatch.setattr(M, "_decode_folder", lambda *a: pytest.fail("cache not used"))
    images, labels, classes = load_uint8(folder, cache_dir=cache)
    assert torch.equal(images, first.images) and torch.equal(labels, first.labels)
    assert classes == ["cat", "dog"] and labels.dtype == torch.int64
    monkeypatch.setattr(M, "_decode_folder", decode)
    p = folder / "train" / "dog" / "0.png"  # a changed file (new mtime) -> a new key
    write_image(p, seed=99)
    os.utime(p, ns=(1, 1))
    changed = load_uint8(folder, cache_dir=cache)
    assert len(list(cache.iterdir())) == 2 and not torch.equal(changed.images, first.images)
    for f in cache.iterdir():  # a damaged cache file is rebuilt, with a warning
        f.write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match="ignoring unreadable image cache"):
        again = load_uint8(folder, cache_dir=cache)
    assert torch.equal(again.images, changed.images)


def test_cached_bad_file_still_fails_in_fail_mode(folder, tmp_path):
    _with_truncated_jpeg(folder)
    with pytest.warns(UserWarning):
        load_uint8(folder, cache_dir=tmp_path / "c")
    with pytest.raises(UserError, match="cannot decode image"):
        load_uint8(folder, cache_dir=tmp_path / "c", bad_images="fail")


def test_fits_in_memory_and_auto_pipeline(folder):
    assert S.FolderSource(str(folder)).shape("train") == (6, 8, 8)
    assert M.fits_in_memory(45000, 32, 32, budget_bytes=200 << 20)
    assert not M.fits_in_memory(1_281_167, 224, 224, budget_bytes=16 << 30)
    assert M.choose_pipeline("auto", 45000, 32, 32) == "fast"
    assert M.choose_pipeline("auto", 10**9, 224, 224) == "standard"
    assert M.choose_pipeline("standard", 10, 32, 32) == "standard"


def test_torchvision_sets_load_channels_first(monkeypatch):
    class FakeCifar:
        def __init__(self, root, train, download, transform):
            n = 5 if train else 2
            self.data = np.arange(n * 4 * 4 * 3, dtype=np.uint8).reshape(n, 4, 4, 3)
            self.targets, self.classes = list(range(n)), ["a", "b", "c", "d", "e"]

    monkeypatch.setattr(D.datasets, "CIFAR10", FakeCifar)
    images, labels, classes = S.TorchvisionSource("cifar10").load_uint8("train")
    ref = torch.from_numpy(FakeCifar("", True, False, None).data)
    assert images.shape == (5, 3, 4, 4) and torch.equal(images, ref.permute(0, 3, 1, 2))
    assert labels.dtype == torch.int64 and labels.tolist() == [0, 1, 2, 3, 4] and len(classes) == 5
    assert S.TorchvisionSource("cifar10").load_uint8("val").images.shape[0] == 2


@pytest.mark.skipif(not SHARED_CIFAR.is_dir(), reason="shared CIFAR-10 folder not present")
def test_shared_cifar_shape():
    assert S.FolderSource(str(SHARED_CIFAR)).shape("val") == (5000, 32, 32)


# --- source resolution ------------------------------------------------------------------------


def resolve(data, dataset, fallback, download, root="data"):
    asked = SimpleNamespace(
        data=data, dataset=dataset, fallback_dataset=fallback, download=download
    )
    return S.source_from_config(asked, root)


def test_resolve_source_prefers_an_existing_folder(folder):
    source = resolve(str(folder), None, "cifar10", False)
    assert isinstance(source, S.FolderSource) and source.root == str(folder)
    assert source.splits() == ("train",) and source.classes() == ["cat", "dog"]


def test_resolve_source_falls_back_to_torchvision(tmp_path, monkeypatch):
    seen = {}

    def fake(root, train, download, transform):
        seen.update(root=root, download=download)

    monkeypatch.setattr(D.datasets, "CIFAR10", fake)
    with pytest.warns(UserWarning, match="not found; using cifar10"):
        out = resolve(str(tmp_path / "nope"), None, "cifar10", False, root="dl")
    assert isinstance(out, S.TorchvisionSource) and (out.name, out.root) == ("cifar10", "dl")
    assert seen == {"root": "dl", "download": True}


def test_resolve_source_without_network_says_what_to_pass(tmp_path, monkeypatch):
    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(D.datasets, "CIFAR10", offline)
    with (
        pytest.warns(UserWarning),
        pytest.raises(UserError, match=r"could not download cifar10.*--data DIR.*DIR/train"),
    ):
        resolve(str(tmp_path / "nope"), None, "cifar10", True)
    with pytest.raises(UserError, match="does not exist"):
        resolve(str(tmp_path / "nope"), None, None, True)
    with pytest.raises(UserError, match="no data given"):
        resolve(None, None, None, False)


def test_resolve_source_not_downloaded_asks_for_download(monkeypatch):
    def missing(*a, **k):
        raise RuntimeError("Dataset not found or corrupted.")

    monkeypatch.setattr(D.datasets, "CIFAR10", missing)
    with pytest.raises(UserError, match="--dataset cifar10 --download"):
        resolve(None, "cifar10", None, False)


# --- epoch sampler ----------------------------------------------------------------------------


def test_sampler_is_a_deterministic_permutation_per_epoch():
    a = [b.tolist() for b in D.EpochSampler(103, 10, seed=1, epoch=2)]
    assert a == [b.tolist() for b in D.EpochSampler(103, 10, seed=1, epoch=2)]
    assert len(a) == 10 and all(len(b) == 10 for b in a)  # the last 3 samples are dropped
    flat = [i for b in a for i in b]
    assert len(set(flat)) == 100 and max(flat) < 103
    assert a != [b.tolist() for b in D.EpochSampler(103, 10, seed=1, epoch=3)]
    assert a != [b.tolist() for b in D.EpochSampler(103, 10, seed=2, epoch=2)]


def test_sampler_splits_each_global_batch_over_ranks():
    full = list(D.EpochSampler(64, 16, seed=0, epoch=5))
    ranks = [list(D.EpochSampler(64, 16, 0, 5, rank=r, world_size=4)) for r in range(4)]
    for b, batch in enumerate(full):
        parts = [ranks[r][b] for r in range(4)]
        assert all(len(p) == 4 for p in parts)
        assert torch.equal(torch.cat(parts), batch)


def test_sampler_resumes_mid_epoch_exactly():
    s = D.EpochSampler(50, 8, seed=3, epoch=1)
    full = [b.tolist() for b in s]
    s.set_epoch(1, start_batch=4)
    assert len(s) == 2 and [b.tolist() for b in s] == full[4:]
    with pytest.raises(UserError, match="fewer than one batch"):
        D.EpochSampler(5, 8, seed=0)


def test_sampler_drives_a_dataloader(folder):
    ds = open_split(folder, transform=lambda im: torch.from_numpy(np.array(im)))
    sampler = D.EpochSampler(len(ds), 4, seed=0)
    (x, y), *_ = list(DataLoader(ds, batch_sampler=sampler))
    idx = next(iter(sampler))
    assert x.shape == (4, 8, 8, 3) and y.tolist() == [ds.targets[i] for i in idx]


def test_mix_seed_separates_its_inputs():
    seeds = {D.mix_seed(s, e) for s in range(20) for e in range(20)}
    seeds |= {D.mix_seed(0, 0, i) for i in range(100)}
    assert len(seeds) == 500 and all(0 <= s < 2**63 for s in seeds)
    assert D.mix_seed(3, 4) == D.mix_seed(3, 4)
