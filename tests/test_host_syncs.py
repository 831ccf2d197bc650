"""The training step never waits on the host (issue 34, item 1): between log boundaries no tensor
becomes a Python value. Counted over a 10-step and a 30-step run of each family: every
conversion (``item``, ``tolist``, ``cpu``, ``numpy``, ``float()``, ``int()``, ``bool()``) in the
loop, data included; the difference must be zero."""

import contextlib
import io

import pytest
import torch
from conftest import TINY, make_image_folder

from unigrad.config import build_config
from unigrad.engine.trainer import Trainer

CONVERSIONS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__")


@contextlib.contextmanager
def counting():
    """Count tensor -> Python conversions while active; yields the running count (a list)."""
    count = [0]
    orig = {n: getattr(torch.Tensor, n) for n in CONVERSIONS}

    def wrap(name):
        def f(self, *a, **k):
            count[0] += 1
            return orig[name](self, *a, **k)

        return f

    for n in CONVERSIONS:
        setattr(torch.Tensor, n, wrap(n))
    try:
        yield count
    finally:
        for n, f in orig.items():
            setattr(torch.Tensor, n, f)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("syncs") / "data", classes=2, per_class=70)


def conversions(folder, out, steps, watch=None, **over):
    """What ``watch`` (default :func:`counting`) counts over a run of ``steps`` steps."""
    cfg = build_config(
        TINY,
        {
            "data": str(folder),
            "out": str(out),
            "max_steps": steps,
            "batch_size": 4,
            "epochs": 1,  # 35 steps: no epoch boundary (and its checkpoint) inside either run
            "warmup_epochs": 0.1,
            "log_every": 1000,  # the only log boundary is the last step, in both runs
            "diag_every": 0,
            "knn_every": 0,
            "amp": "off",
        },
        over,
    )
    tr = Trainer(cfg, show_progress=False)
    tr._open_run()
    try:
        with contextlib.redirect_stderr(io.StringIO()), (watch or counting)() as count:
            tr.train()
    finally:
        tr.close()
    return len(count) if watch else count[0]


FAMILIES = [  # one per family and per stateful part: bank, learned predictor, F and W_h, batch
    ("moco", "loss", None),  # contrastive, memory bank
    ("byol", "loss", None),  # asymmetric, learned predictor
    ("directpred", "grad", "d"),  # asymmetric, F and W_h by eigendecomposition
    ("barlow_twins", "grad", "f"),  # decorrelation, batch-normalised embeddings
    ("unigrad", "grad", None),  # UniGrad, F
]


@pytest.mark.parametrize("method,form,variant", FAMILIES)
def test_steps_between_log_boundaries_convert_nothing(tmp_path, folder, method, form, variant):
    over = {"method": method, "form": form, "variant": variant}
    short = conversions(folder, tmp_path / "a", 10, **over)
    long = conversions(folder, tmp_path / "b", 30, **over)
    assert long - short == 0, f"{(long - short) / 20:.2f} conversions per step"


def test_a_non_finite_loss_between_log_boundaries_stops_before_the_checkpoint(tmp_path, folder):
    cfg = build_config(
        TINY,
        {"data": str(folder), "out": str(tmp_path / "r"), "max_steps": 3, "ckpt_every": 2},
        {"log_every": 1000, "diag_every": 0, "knn_every": 0, "amp": "off", "base_lr": 1e30},
    )
    with pytest.raises(Exception, match="non-finite") as e:
        Trainer(cfg, show_progress=False).fit()
    assert getattr(e.value, "exit_code", None) == 3
    assert not list((tmp_path / "r").glob("*.ckpt"))  # nothing non-finite was written


# --- item 4: draws on the device ------------------------------------------------------------
# On a GPU the fast pipeline draws on the device and applies every op masked; the CPU reaches the
# same code with ``device_draws=True`` (a CPU generator is then "the device's"), which gives the
# same numbers as the CPU's host draws: the same generator stream, the same kernels per row.

FACTORIES = ("tensor", "as_tensor", "empty", "zeros", "ones", "full", "rand", "randn", "randint",
             "randperm", "arange", "linspace")  # fmt: skip


@contextlib.contextmanager
def host_work():
    """Count what would copy from or wait on the host on a GPU: a factory call with no
    ``device`` (a CPU tensor, then copied), a row selection by ``nonzero``, a conversion."""
    seen: list[str] = []
    orig = {n: getattr(torch, n) for n in FACTORIES}

    def wrap(name):
        def f(*a, **k):
            if k.get("device") is None:
                seen.append(f"torch.{name} without a device")
            return orig[name](*a, **k)

        return f

    nonzero = torch.Tensor.nonzero
    torch.Tensor.nonzero = lambda self, *a, **k: seen.append("nonzero") or nonzero(self, *a, **k)
    for n in FACTORIES:
        setattr(torch, n, wrap(n))
    try:
        with counting() as count:
            yield seen
        seen += ["conversion"] * count[0]
    finally:
        torch.Tensor.nonzero = nonzero
        for n, f in orig.items():
            setattr(torch, n, f)


def fast_data(folder, device_draws, **over):
    from unigrad.data.pipeline import build_train_data

    base = {"data": str(folder), "batch_size": 8, "cutmix": True}
    cfg = build_config(TINY, base, {"blur_p": [1.0, 0.1], "solarize_p": [0.0, 0.2], **over})
    data = build_train_data(cfg, torch.device("cpu")).train
    if device_draws:
        from unigrad.data.pipeline import FastData

        data = FastData(cfg, torch.device("cpu"), data_split(data), device_draws=True)
    return data


def data_split(data):
    from unigrad.data.inmemory import Uint8Split

    return Uint8Split(data.images, data.labels, [])


def test_device_draws_make_the_host_draws_views(folder):
    host, dev = fast_data(folder, False), fast_data(folder, True)
    assert dev.draw_device == torch.device("cpu") and dev.aug.device_draws
    for a, b in zip(host.epoch(1, 0), dev.epoch(1, 0), strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a.views, b.views, strict=True))
        assert torch.equal(a.labels, b.labels)
    assert all(torch.equal(x, y) for x, y in zip(host.probe(8), dev.probe(8), strict=True))


def test_device_draws_wait_on_nothing_between_epochs(folder):
    """Steady-state batches (the permutation is moved once per epoch, before them) and their
    CutMix create no host tensor, select no rows on the host and convert nothing."""
    from unigrad.engine.profiling import NullTimer
    from unigrad.engine.step import mixed_views

    data = fast_data(folder, True, multi_crop="2x16,2x8")
    it = data.epoch(0, 0)
    next(it)
    with host_work() as seen:
        for b in range(1, 4):
            mixed_views(next(it).views, data.cutmix_generator(b), True, NullTimer())
    assert seen == []
    host = fast_data(folder, False)  # the check can fail: the host draws select on the host
    it = host.epoch(0, 0)
    next(it)
    with host_work() as seen:
        next(it)
    assert "nonzero" in seen


def test_training_with_device_draws_equals_host_draws(tmp_path, folder, monkeypatch):
    """The loop hands the data's own generators to it and to CutMix: a run forced onto the
    device-draw path trains bit-identically to the host path on the CPU."""
    import functools

    from unigrad.data import pipeline

    def run(out):
        cfg = build_config(
            TINY,
            {"data": str(folder), "out": str(out), "max_steps": 4, "batch_size": 8},
            {"cutmix": True, "multi_crop": "2x16,2x8", "knn_every": 0, "amp": "off"},
        )
        tr = Trainer(cfg, show_progress=False)
        with contextlib.redirect_stderr(io.StringIO()):
            tr.fit()
        return tr

    host = run(tmp_path / "host")
    monkeypatch.setattr(
        pipeline, "FastData", functools.partial(pipeline.FastData, device_draws=True)
    )
    dev = run(tmp_path / "dev")
    assert dev.data.aug.device_draws and not host.data.aug.device_draws
    a, b = host.model.state_dict(), dev.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_compiled_masked_augmentation_equals_eager_in_one_graph():
    """On a GPU, ``compile: step`` compiles the masked ops (capture checked with aot_eager: no
    graph break, the same views; inductor's code: ``bench/augment_draws.py``)."""
    from unigrad.data.augment import AugmentSpec, FastAugment

    spec = AugmentSpec(image_size=16, blur_p=[1.0, 0.1], solarize_p=[0.0, 0.2],
                       multi_crop="2x16,2x8")  # fmt: skip
    x = torch.randint(0, 256, (8, 3, 20, 20), dtype=torch.uint8)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    eager = FastAugment(spec, device_draws=True)
    comp = FastAugment(spec, device_draws=True, compile_backend="aot_eager")
    for seed in (0, 1):  # the second batch reuses the graph
        a, b = (f(x, torch.Generator().manual_seed(seed)) for f in (eager, comp))
        assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert not torch._dynamo.utils.counters["graph_break"]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1  # captured, reused


@pytest.mark.parametrize("method,form,variant", FAMILIES)
def test_a_gpu_step_copies_nothing_from_the_host(tmp_path, folder, monkeypatch, method, form,
                                                 variant):  # fmt: skip
    """The whole loop on the GPU's path (device draws, forced on the CPU): between log
    boundaries no tensor is made without a device (on a GPU: a host tensor, then a copy that
    waits), no row is selected on the host, nothing is converted."""
    import functools

    from unigrad.data import pipeline

    monkeypatch.setattr(
        pipeline, "FastData", functools.partial(pipeline.FastData, device_draws=True)
    )
    over = {"method": method, "form": form, "variant": variant}
    conversions(folder, tmp_path / "warm", 1, **over)  # both runs then read the splits' cache
    short = conversions(folder, tmp_path / "a", 10, watch=host_work, **over)
    long = conversions(folder, tmp_path / "b", 30, watch=host_work, **over)
    assert long - short == 0
