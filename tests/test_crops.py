"""The standard pipeline on image folders (issue 35): crops cut in workers from a reduced JPEG
decode, the rest of the recipe batched; the device-decode path's logic run on the CPU; views a
function of (seed, epoch, index), so a resumed run is exact; kNN features sharded over ranks."""

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, StopAt
from PIL import Image
from ranks import on_ranks
from torch import nn
from torch.utils.data import TensorDataset

from unigrad.config import Config, build_config
from unigrad.data import crops
from unigrad.data.augment import AugmentSpec
from unigrad.data.datasets import SafeImageFolder
from unigrad.data.evaluation import EvalData, fixed_subset
from unigrad.data.pipeline import CropData, data_from_source
from unigrad.data.sources import FolderSource
from unigrad.data.user_data import DatasetSource
from unigrad.engine.checkpoint import load_checkpoint
from unigrad.engine.trainer import Interrupted, Trainer
from unigrad.errors import UserError


def smooth(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth RGB image with a little noise (resampling differences stay small)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = rng.uniform(0.2, 0.8, 3) * 255
    img = base + 60 * np.stack([np.sin(3 * xx + k) * np.cos(2 * yy - k) for k in range(3)], -1)
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype("uint8")


def jpeg_folder(root: Path, per_class: int = 8) -> Path:
    for split in ("train", "val"):
        for c in range(2):
            d = root / split / f"c{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                h, w = 40 + 5 * i, 64 - 3 * i
                Image.fromarray(smooth(h, w, 100 * c + i)).save(d / f"{i}.jpg", quality=92)
    return root


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    return jpeg_folder(tmp_path_factory.mktemp("jpegs") / "data")


def train_data(folder: Path, **kw) -> CropData:
    kw = {"workers": 0, **kw}
    cfg = Config(data=str(folder), pipeline="standard", image_size=16, batch_size=8, **kw)
    data = data_from_source(cfg, torch.device("cpu"), FolderSource(str(folder))).train
    assert isinstance(data, CropData)
    return data


def views(batches) -> list[list[torch.Tensor]]:
    return [b.views for b in batches]


def same(a: list[list[torch.Tensor]], b: list[list[torch.Tensor]]) -> bool:
    return len(a) == len(b) and all(
        torch.equal(u, v) for x, y in zip(a, b, strict=True) for u, v in zip(x, y, strict=True)
    )


@pytest.mark.parametrize("decode", ["cpu", "device"])
def test_views_depend_on_seed_epoch_index_and_resume_mid_epoch_exactly(jpegs, decode):
    data = train_data(jpegs, decode=decode)
    assert data.dataset.raw == (decode == "device")
    e0 = views(data.epoch(0, 0, None))
    assert len(e0) == 2 and [v.shape for v in e0[0]] == [(8, 3, 16, 16)] * 2
    assert all(v.dtype == torch.float32 and v.isfinite().all() for v in e0[0])
    torch.manual_seed(123)  # the global RNG does not matter
    assert same(views(data.epoch(0, 1, None)), e0[1:])  # a resume at batch 1
    assert not same(views(data.epoch(1, 0, None)), e0)
    assert same([data.probe(4)], [data.probe(4)]) and data.probe(4)[0].shape[0] == 4


def test_persistent_workers_give_the_in_process_views_every_epoch(jpegs):
    inline, pooled = train_data(jpegs), train_data(jpegs, workers=1)
    for epoch in (0, 1):
        assert same(views(pooled.epoch(epoch, 0, None)), views(inline.epoch(epoch, 0, None)))
    assert pooled.loader is not None and pooled.loader.persistent_workers


def test_worker_finished_views_equal_views_finished_on_the_device(jpegs):
    """On the CPU the workers finish the views; on a GPU the main process does: same views."""
    data = train_data(jpegs)
    items = [data.dataset[(0, i)] for i in range(8)]
    in_worker = data.collate(items).views
    raw = crops.Collate(data.spec, finish=False)(items)
    on_device = crops.finish_views(data.spec, raw.crops, raw.params, False)
    for a, b in zip(in_worker, on_device, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_crops_from_a_reduced_jpeg_decode_match_the_full_decode(tmp_path):
    path = tmp_path / "big.jpg"
    Image.fromarray(smooth(240, 320, 0)).save(path, quality=95)
    spec = AugmentSpec(image_size=24, crop_scale_min=0.5)
    params = crops.draw_params(spec, 0, 0, 3, 240, 320)
    with Image.open(path) as img:
        got = crops.cut_crops(img, params, [24, 24])
        assert img.size[0] <= 160  # decoded at 1/2 scale or less
    full = Image.open(path).convert("RGB")
    for crop, p in zip(got, params, strict=True):
        ref = full.resize((24, 24), Image.Resampling.BILINEAR, box=tuple(p.boxes[0].tolist()))
        ref = torch.from_numpy(np.array(ref)).permute(2, 0, 1)
        assert crop.shape == (3, 24, 24) and crop.dtype == torch.uint8
        assert (crop.float() - ref.float()).abs().mean() < 3  # uint8 levels


def test_device_decode_logic_on_the_cpu_matches_the_worker_crops(jpegs, tmp_path):
    folder = SafeImageFolder(str(jpegs / "train"))
    png = folder.samples[3][0].replace(".jpg", ".png")  # a non-JPEG goes as pixels
    Image.open(folder.samples[3][0]).save(png)
    folder.samples[3] = (png, folder.samples[3][1])
    spec = AugmentSpec(image_size=16)
    worker = crops.CropViews(folder, spec, seed=0)
    raw = crops.CropViews(folder, spec, seed=0, raw=True)
    items = [raw[(0, i)] for i in range(8)]
    assert items[3].pixels is not None and all(
        it.data is not None for j, it in enumerate(items) if j != 3
    )
    batch = crops.Collate(spec, finish=False)(items)
    on_device = crops.decode_and_crop(batch.items, batch.params, [16, 16], torch.device("cpu"))
    ref = crops.Collate(spec, finish=False)([worker[(0, i)] for i in range(8)])
    for a, b in zip(on_device, ref.crops, strict=True):
        assert a.shape == (8, 3, 16, 16)
        assert (a - b.float() / 255).abs().mean() < 0.03  # roi_align vs PIL resampling


@pytest.mark.parametrize("raw", [False, True])
def test_truncated_jpeg_is_replaced_by_the_next_sample_or_refused(tmp_path, raw):
    root = jpeg_folder(tmp_path / "d", per_class=3)
    folder = SafeImageFolder(str(root / "train"))
    bad = folder.samples[1][0]
    data = Path(bad).read_bytes()
    Path(bad).write_bytes(data[: len(data) // 2])
    ds = crops.CropViews(folder, AugmentSpec(image_size=16), seed=0, raw=raw)
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        got = ds[(0, 1)]
    nxt = ds._read(folder.samples[2][0], folder.samples[2][1], 0, 1)  # index 1's draws
    assert got.label == nxt.label

    def payload(it):
        return it.crops or [t for t in (it.data, it.pixels) if t is not None]

    assert len(payload(got)) == (1 if raw else 2)
    for a, b in zip(payload(got), payload(nxt), strict=True):
        assert torch.equal(a, b)
    strict = SafeImageFolder(str(root / "train"), bad_images="fail")
    with pytest.raises(UserError, match="cannot decode image"):
        crops.CropViews(strict, AugmentSpec(image_size=16), seed=0, raw=raw)[(0, 1)]


@pytest.fixture
def one_thread():
    """One intra-op thread (the tiny steps lose badly to spin-waiting on a shared machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_pretraining_on_a_jpeg_folder_trains_resumes_exactly_and_evaluates(
    jpegs, tmp_path, one_thread
):
    base = {**TINY, "data": str(jpegs), "pipeline": "standard", "batch_size": 8, "workers": 0}
    base |= {"diag_every": 0, "knn_every": 1, "amp": "off"}
    ref = Trainer(build_config({**base, "out": str(tmp_path / "ref")}), show_progress=False)
    assert isinstance(ref.data, CropData)
    metrics = ref.fit()
    assert any(k.startswith("knn") for k in metrics), metrics
    cfg = build_config({**base, "out": str(tmp_path / "cut")})
    with pytest.raises(Interrupted):  # stops at step 3, in the middle of epoch 1 (2 per epoch)
        Trainer(cfg, show_progress=False, callbacks=[StopAt(3)]).fit()
    assert load_checkpoint(tmp_path / "cut" / "last.ckpt")["step"] == 3
    Trainer(cfg, resume=True, show_progress=False).fit()
    a, b = (load_checkpoint(tmp_path / d / "last.ckpt") for d in ("ref", "cut"))
    assert a["step"] == b["step"] == 4
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k


# --- evaluation at scale --------------------------------------------------------------------


def _features_on_rank(rank: int, world: int) -> dict:
    x = torch.rand(13, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    ds = TensorDataset(x, torch.arange(13))
    ev = EvalData(DatasetSource({"train": ds, "val": ds}), 4)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(48, 5))
    seen = []
    hook = net.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    feats, labels = ev.extract(net, ds, torch.device("cpu"))
    hook.remove()
    return {"feats": feats, "labels": labels, "seen": sum(seen)}


def test_knn_features_are_extracted_in_shards_and_gathered_in_order(tmp_path):
    got = on_ranks(_features_on_rank, tmp_path)
    x = torch.rand(13, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(48, 5)).eval()
    with torch.no_grad():
        want = net(x.contiguous(memory_format=torch.channels_last))
    assert [g["seen"] for g in got] == [7, 6]  # each rank its own shard
    for g in got:
        torch.testing.assert_close(g["feats"], want, atol=1e-6, rtol=0)
        assert g["labels"].tolist() == list(range(13))


def test_monitor_subset_is_fixed_evenly_spaced_and_covers_the_classes():
    ds = TensorDataset(torch.zeros(100, 1), torch.arange(100) // 10)  # 10 sorted classes
    sub = fixed_subset(ds, 20)
    assert len(sub) == 20 and sub.indices == fixed_subset(ds, 20).indices
    assert sorted({int(ds[i][1]) for i in sub.indices}) == list(range(10))
    assert fixed_subset(ds, 0) is ds and fixed_subset(ds, 500) is ds


def test_worker_default_follows_the_cores():
    assert crops.default_workers(3) == 3 and crops.default_workers(0) == 0
    assert 1 <= crops.default_workers(None) <= 8
    assert not crops.device_decode_available(torch.device("cpu"))
