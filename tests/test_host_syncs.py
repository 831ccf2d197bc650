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


def conversions(folder, out, steps, **over):
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
        with contextlib.redirect_stderr(io.StringIO()), counting() as count:
            tr.train()
    finally:
        tr.close()
    return count[0]


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
