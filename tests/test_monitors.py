"""The monitors SSL users read during a run (issue 36): the online linear probe, RankMe, and
Weights & Biases."""

import sys
import time
import types

import pytest
import torch
from conftest import TINY, make_image_folder, online_probe_of

from unigrad.config import build_config
from unigrad.engine.checkpoint import load_checkpoint
from unigrad.engine.trainer import Trainer
from unigrad.errors import UserError
from unigrad.eval.diagnostics import probe_diagnostics, rankme

FAST = {"amp": "off", "diag_every": 2, "knn_every": 1, "log_every": 1, "batch_size": 8}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("mon") / "data", classes=2, per_class=16)


def _cfg(folder, out, **over):
    return build_config(TINY, {"data": str(folder), "out": str(out), **FAST}, over)


def _metrics(out):
    rows = [r.split(",") for r in (out / "metrics.csv").read_text().splitlines()[1:]]
    return {(int(r[0]), r[2]): float(r[3]) for r in rows}


def test_rankme_is_the_exponential_entropy_of_the_normalised_singular_values():
    g = torch.Generator().manual_seed(0)
    u = torch.randn(40, 24, generator=g) * torch.linspace(0.1, 3, 24)
    s = torch.linalg.svd(u.double()).S  # direct: the full SVD
    p = s / s.sum() + 1e-7
    assert rankme(u) == pytest.approx(float(torch.exp(-(p * p.log()).sum())), rel=1e-9)
    assert rankme(u.T) == pytest.approx(rankme(u), rel=1e-9)  # either Gram matrix
    q, _ = torch.linalg.qr(torch.randn(24, 24, generator=g, dtype=torch.float64))
    assert rankme(3 * q[:, :5].T) == pytest.approx(5, rel=1e-5)  # 5 equal singular values
    assert rankme(torch.ones(16, 8)) == pytest.approx(1, rel=1e-4)  # collapse (eps: ~1e-5)
    out = probe_diagnostics([u[:20], u[20:]], [u[:20], u[20:]])
    assert out["rankme"] == pytest.approx(rankme(u), rel=1e-9)  # over both online views


def _run(folder, out, steps, stop=None, **over):
    """``steps`` of a run (its schedules' length); with ``stop``, only that many."""
    cfg = _cfg(folder, out, max_steps=steps, deterministic=True, **over)
    tr = Trainer(cfg, show_progress=False)
    tr.total_steps = stop or tr.total_steps  # the loop stops there, the schedules are built
    tr._open_run()
    try:
        tr.train()
    finally:
        tr.close()
    return tr


@pytest.fixture(scope="module")
def probe_on(folder, tmp_path_factory):
    """6 steps (1.5 epochs) with every monitor on, and the global RNG state after them."""
    out = tmp_path_factory.mktemp("on")
    torch.manual_seed(123)
    tr = _run(folder, out, 6)
    return tr, out, torch.get_rng_state()


def test_the_probe_never_changes_the_backbone_and_is_logged_by_default(folder, tmp_path, probe_on):
    on, out, rng_on = probe_on
    torch.manual_seed(123)
    off = _run(folder, tmp_path / "off", 6, online_probe=False)
    assert online_probe_of(off) is None and online_probe_of(on) is not None
    assert torch.equal(rng_on, torch.get_rng_state())  # the probe draws no random number
    for part in ("model", "target", "objective"):
        a, b = getattr(on, part).state_dict(), getattr(off, part).state_dict()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{part}.{k} differs with the probe on"
    assert online_probe_of(on).weight.abs().sum() > 0  # it did train
    logged = _metrics(out)
    assert {(4, "probe/linear_top1"), (6, "probe/linear_top1")} <= logged.keys()
    assert 0 <= logged[(4, "probe/linear_top1")] <= 100
    assert (2, "diag/rankme") in logged and (2, "diag/pc_ratio") in logged
    assert not any(name.startswith("probe/") for _, name in _metrics(tmp_path / "off"))


def test_the_probe_is_in_the_checkpoint_and_resumes_exactly(folder, tmp_path, probe_on):
    ref = probe_on[0]
    _run(folder, tmp_path / "cut", 6, stop=3)  # a checkpoint at step 3 of the same schedules
    cfg = _cfg(folder, tmp_path / "cut", max_steps=6, deterministic=True)
    resumed = Trainer(cfg, resume=True, show_progress=False)
    assert resumed.step == 3
    resumed._open_run()
    try:
        resumed.train()
    finally:
        resumed.close()
    for k, v in ref.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    a, b = online_probe_of(ref).checkpoint_state(), online_probe_of(resumed).checkpoint_state()
    for k, v in a["module"].items():
        assert torch.equal(v, b["module"][k]), k
    for k, st in a["optimizer"]["state"].items():
        assert torch.equal(st["momentum_buffer"], b["optimizer"]["state"][k]["momentum_buffer"])


def test_the_probe_needs_labels_and_an_eval_split(tmp_path):
    only_train = make_image_folder(tmp_path / "d", splits=("train",), classes=2, per_class=8)
    tr = Trainer(_cfg(only_train, tmp_path / "r", max_steps=1), show_progress=False)
    assert online_probe_of(tr) is None and tr.data.num_classes is None


def test_eval_features_are_extracted_once_per_weights(folder, tmp_path):
    tr = Trainer(_cfg(folder, tmp_path / "r", max_steps=1), show_progress=False)
    bb, data = tr.model.encoder.backbone, tr.eval_data
    first = data.held_features(bb, tr.device)
    assert data.held_features(bb, tr.device) is first  # unchanged weights: the same tensors
    assert data.features(bb, tr.device)[2] is first[0]  # the kNN monitor's too
    with torch.no_grad():
        next(bb.parameters()).mul_(2)  # an in-place change (as the optimiser's)
    assert data.held_features(bb, tr.device) is not first


def test_wandb_without_the_extra_is_a_one_line_hint(folder, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    tr = Trainer(_cfg(folder, tmp_path / "r", max_steps=1, wandb=True), show_progress=False)
    with pytest.raises(UserError) as e:
        tr.fit()
    assert "unigrad[wandb]" in str(e.value) and "\n" not in str(e.value)


def test_wandb_that_cannot_start_is_a_one_line_error(folder, tmp_path, monkeypatch):
    def init(**kw):
        raise RuntimeError("api_key not configured (no-tty)\ncall wandb.login()")

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    tr = Trainer(_cfg(folder, tmp_path / "r", max_steps=1, wandb=True), show_progress=False)
    with pytest.raises(UserError) as e:
        tr.fit()
    assert "api_key not configured" in str(e.value) and "\n" not in str(e.value)
    assert "WANDB_MODE=offline" in str(e.value)


def test_wandb_offline_logs_the_metrics_and_resumes_the_same_run(folder, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "r"
    over = {"wandb": True, "wandb_project": "p", "knn_every": 0, "diag_every": 0}
    Trainer(_cfg(folder, out, max_steps=4, **over), show_progress=False).fit()
    # the W&B logger's state (its run id) is in the checkpoint, not in a side file
    run_id = load_checkpoint(out / "last.ckpt")["callbacks"]["WandbLogger"]["run_id"]
    assert len(list((out / "wandb").glob(f"offline-run-*-{run_id}"))) == 1
    assert not (out / "wandb_id").exists()
    Trainer(_cfg(folder, out, max_steps=6, **over), resume=True, show_progress=False).fit()
    again = load_checkpoint(out / "last.ckpt")["callbacks"]["WandbLogger"]["run_id"]
    assert again == run_id  # the same W&B run, continued
    records = sorted((out / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(records) == 2  # the first start and the resume, one W&B run id
    for f in records:  # each holds the step metrics and the epoch end's probe
        assert _written(f, b"pos_sim", b"probe/linear_top1"), f.read_bytes()[:200]


def _written(path, *needles, timeout=60.0):
    """Whether ``path`` comes to hold every needle: W&B's service may still be writing the
    offline record when ``run.finish()`` has returned."""
    deadline = time.monotonic() + timeout
    while not all(n in path.read_bytes() for n in needles):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_the_report_plots_the_probe_and_rankme(tmp_path):
    pytest.importorskip("matplotlib")
    from test_report import make_run

    from unigrad.experiments.report import write_report

    run = make_run(tmp_path / "r", "unigrad", steps=4)
    with open(run / "metrics.csv", "a") as f:
        f.write("4,0.4,probe/linear_top1,41.5\n4,0.4,diag/rankme,17.25\n")
    md = write_report([run]).read_text()
    assert (run / "report" / "probe.png").exists() and "](probe.png)" in md
    assert "probe/linear_top1" in md and "| 41.5 |" in md and "| 17.25 |" in md


def test_the_probe_learns_cutmix_views_with_mixed_labels():
    """With CutMix the probe's target is ratio * y_i + (1 - ratio) * y_perm[i]. Features that
    show only the pasted image (ratio 0) are learnt as the pasted image's class; read as the
    own image's class (no mix) they are noise."""
    from unigrad.core.objective import Mix
    from unigrad.eval.online_probe import OnlineProbe

    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (64,), generator=g)
    perm = torch.randperm(64, generator=g)
    feats = torch.eye(4)[labels[perm]] + 0.05 * torch.randn(64, 4, generator=g)
    mix = Mix(perm, torch.zeros(64))
    mixed, plain = OnlineProbe(4, 4, lr=0.5), OnlineProbe(4, 4, lr=0.5)
    for _ in range(50):
        mixed.train_on(feats, labels, mix)
        plain.train_on(feats, labels)
    assert mixed.top1(feats, labels[perm]) == 100.0
    assert plain.top1(feats, labels[perm]) < 60.0
