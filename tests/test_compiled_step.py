"""``compile: step`` (issue 34, items 2-3): the compiled step equals the eager step.

A run trains 5 steps eagerly and with the step compiled; the weights, the target and the
objective's state (F, the bank) must agree after step 1 and after step 5. The capture is checked
with ``backend="aot_eager"`` (dynamo's graph capture and AOTAutograd's functionalisation: where a
missed buffer update, side effect or EMA would show) on a tiny convolutional backbone; inductor's
generated code for one family. Compiling costs 10-20 s a case on 2 cores, so the suite runs one
case per family and stateful part (``CASES``); ``bench/compiled_vs_eager.py`` runs the same check
on every method x form x variant of the golden trainer list (``ALL_CASES``; BENCHMARKS §1).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY, StopAt
from torch import nn

from unigrad.config import build_config
from unigrad.engine.callbacks import Callback, Interrupted
from unigrad.engine.trainer import Trainer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from golden import RECORDED_METHODS, method_forms

ALL_CASES = {
    **method_forms(RECORDED_METHODS),
    "unigrad-multicrop-cutmix": {"method": "unigrad", "multi_crop": "2x16,2x8", "cutmix": True},
    "simsiam-snapshot": {"method": "simsiam", "target": "snapshot", "snapshot_every": 2},
    "byol-adamw-wd": {"method": "byol", "optimizer": "adamw", "base_lr": 1e-3,
                      "weight_decay": 0.04, "weight_decay_end": 0.4, "clip_grad": 0.05},
}  # fmt: skip
#: one per family and stateful part: bank, learned predictor + EMA, F + W_h (eigh), batch
#: normalisation, F + multi-crop + CutMix, the snapshot target, AdamW + wd schedule + clipping
CASES = [
    "moco-loss", "byol-loss", "directpred-grad-d", "barlow_twins-grad-f",
    "unigrad-multicrop-cutmix", "simsiam-snapshot", "byol-adamw-wd",
]  # fmt: skip


class TinyNet(nn.Module):
    """conv-BN-ReLU twice, global pooling: [B, 3, H, W] -> [B, 16]."""

    num_features = 16

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Snapshots(Callback):
    """The run's state after the given steps (model, target, objective)."""

    def __init__(self, at: tuple[int, ...]) -> None:
        self.at, self.states = at, {}

    def on_step(self, state) -> None:
        if state.step in self.at:
            self.states[state.step] = {
                f"{part}.{k}": v.detach().clone()
                for part in ("model", "target", "objective")
                for k, v in getattr(state.parts, part).state_dict().items()
                if v.is_floating_point() and v.numel()
            }


def run(folder, out, over, compile_mode, steps=5, open_run=False):
    cfg = build_config(
        TINY,
        {
            "data": str(folder),
            "out": str(out),
            "max_steps": steps,
            "epochs": 10,
            "deterministic": True,
            "amp": "off",
            "diag_every": 0,
            "knn_every": 0,
            "compile": compile_mode,
        },
        over,
    )
    snap = Snapshots((1, steps))
    torch.manual_seed(0)
    tr = Trainer(cfg, show_progress=False, backbone=TinyNet(), callbacks=[snap])
    if open_run:  # config.yaml and the run log, as fit() opens them
        tr._open_run()
    try:
        tr.train()
    finally:
        if open_run:
            tr.close()
    return tr, snap.states


def max_diff(a: dict, b: dict) -> tuple[float, str]:
    assert a.keys() == b.keys()
    return max(((a[k] - b[k]).abs().max().item(), k) for k in a)


def check_case(name, folder, tmp, tols=((1, 1e-5), (5, 1e-4))) -> None:
    """Eager vs compiled step for ``ALL_CASES[name]``; asserts the differences."""
    torch._dynamo.reset()
    _, eager = run(folder, tmp / f"{name}-eager", ALL_CASES[name], "off")
    tr, comp = run(folder, tmp / f"{name}-step", ALL_CASES[name], "step")
    assert tr.step_mode == "step"  # captured, not fallen back
    for step, tol in tols:
        diff, key = max_diff(eager[step], comp[step])
        assert diff < tol, f"{name}: after step {step}, {key} differs by {diff:.2e}"


@pytest.mark.parametrize("name", CASES)
def test_compiled_step_equals_eager(name, tiny_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("UNIGRAD_COMPILE_BACKEND", "aot_eager")
    check_case(name, tiny_folder, tmp_path)


def test_compiled_step_inductor(tiny_folder, tmp_path):
    """Inductor's generated code (C++ on the CPU), UniGrad: within round-off after 1 and 5
    steps (the tolerance after 5 is looser: reordered reductions compound; on the TINY ResNet a
    1e-6 perturbation of the initial weights moves some BN biases by 10 % in 5 steps)."""
    check_case("unigrad-grad-unigrad", tiny_folder, tmp_path, ((1, 1e-5), (5, 1e-3)))


def train_to_state(cfg, resume: bool = False, stop: int | None = None) -> dict:
    """Trains ``cfg`` on a :class:`TinyNet` from seed 0, stopped after step ``stop`` (as
    SIGTERM would: the checkpoint is written) or at the end, and returns ``Trainer.state_dict()``
    (a resume test compares a straight run with a stopped-and-resumed one)."""
    torch.manual_seed(0)
    cbs = [StopAt(stop)] if stop else []
    tr = Trainer(cfg, resume, show_progress=False, backbone=TinyNet(), callbacks=cbs)
    tr._open_run()
    try:
        tr.train()
    except Interrupted:
        pass
    finally:
        tr.close()
    return tr.state_dict()


def test_resume_of_a_compiled_run_is_exact(tiny_folder, tmp_path, monkeypatch):
    """6 steps in one go equal a run stopped after step 3 (checkpoint) and resumed by a new
    Trainer (compile: step both times; F and the optimiser's state travel in the checkpoint)."""
    monkeypatch.setenv("UNIGRAD_COMPILE_BACKEND", "aot_eager")

    def train(out, resume=False, stop=None):
        cfg = build_config(
            TINY,
            {"data": str(tiny_folder), "out": str(out), "epochs": 10, "deterministic": True,
             "amp": "off", "diag_every": 0, "knn_every": 0, "method": "unigrad",
             "compile": "step", "max_steps": 6},
        )  # fmt: skip
        return train_to_state(cfg, resume, stop)

    torch._dynamo.reset()
    straight = train(tmp_path / "a")
    assert train(tmp_path / "b", stop=3)["step"] == 3  # stopped at this step's boundary
    resumed = train(tmp_path / "b", resume=True)
    assert resumed["step"] == straight["step"] == 6
    for part in ("model", "target", "objective"):
        for k, v in straight[part].items():
            assert torch.equal(v, resumed[part][k]), f"{part}.{k} differs after the resume"


def test_compile_auto_measures_once_then_reads_its_cache(
    tiny_folder, tmp_path, monkeypatch, capsys
):
    """``compile: auto`` on a CPU times eager against ``step`` at the first step (on copies: the
    run's weights equal an eager run's), records the choice and caches it per network."""
    monkeypatch.setenv("UNIGRAD_COMPILE_BACKEND", "aot_eager")
    monkeypatch.setenv("UNIGRAD_CACHE", str(tmp_path / "cache"))
    over = {"method": "byol"}
    torch._dynamo.reset()
    _, eager = run(tiny_folder, tmp_path / "eager", over, "off", steps=2)
    tr, auto = run(tiny_folder, tmp_path / "auto", over, "auto", steps=2, open_run=True)
    assert tr.step_mode == "auto" and tr.cfg.compile_resolved in ("off", "step")
    record = yaml.safe_load((tmp_path / "auto" / "config.yaml").read_text())
    assert record["compile_resolved"] == tr.cfg.compile_resolved  # the choice is recorded
    assert "compile auto:" in capsys.readouterr().err
    diff, key = max_diff(eager[2], auto[2])
    assert diff < 1e-5, f"{key} differs by {diff:.2e}: the measurement touched the run"
    cache = (tmp_path / "cache" / "amp.json").read_text()
    assert '"compile | ' in cache
    run(tiny_folder, tmp_path / "again", over, "auto", steps=1)
    assert "cached)" in capsys.readouterr().err


@pytest.mark.parametrize(("given", "mode"), [(True, "model"), (False, "off"), ("STEP", "step")])
def test_compile_values_of_older_configs_are_read(given, mode):
    assert build_config(TINY, {"compile": given}).compile == mode


def test_unknown_compile_mode_is_refused_in_one_line():
    from unigrad.errors import UserError

    with pytest.raises(UserError, match="compile must be one of off, model, step, auto"):
        build_config(TINY, {"compile": "fast"})


#: one method per family from the CLI (the Trainer cases above cover moco, byol, directpred,
#: barlow_twins, unigrad, simsiam's snapshot; test_ddp.py unigrad under torchrun)
CLI_FAMILIES = ["simclr", "simsiam", "vicreg", "nnclr"]


@pytest.mark.parametrize("method", CLI_FAMILIES)
def test_the_cli_trains_every_family_with_the_step_compiled(method, tiny_folder, tmp_path,
                                                           monkeypatch, capsys):  # fmt: skip
    """``unigrad pretrain --set compile=step`` on the TINY ResNet: the step is captured (no
    fallback: config.yaml records ``compile_resolved: step``) and the run trains to the end."""
    from unigrad.cli import main

    monkeypatch.setenv("UNIGRAD_COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()
    sets = {**TINY, "max_steps": 4, "amp": "off", "knn_every": 0, "diag_every": 0,
            "compile": "step"}  # fmt: skip
    args = ["pretrain", "--method", method, "--data", str(tiny_folder), "--out", str(tmp_path)]
    for k, v in sets.items():
        args += ["--set", f"{k}={v}"]
    assert main(args) == 0, capsys.readouterr().err
    cfg = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert (cfg["compile"], cfg["compile_resolved"]) == ("step", "step")
    last = (tmp_path / "metrics.csv").read_text().splitlines()[-1]
    assert last.startswith("4,"), last


def test_no_int_enters_a_compiled_graph_and_steps_share_the_graphs(tiny_folder, tmp_path,
                                                                   monkeypatch):  # fmt: skip
    """Under ``reduce-overhead`` (CUDA) inductor records one CUDA graph per distinct int input,
    so an int such as the step index would re-record every step; dynamo would also recompile
    for it. Every graph of ``compile: step`` takes tensors only, and 8 steps compile at most 5
    graphs (forward, its recompile when F initialises, the update, its recompile when SGD makes
    its momentum buffers, and one spare), not one per step."""
    from unigrad.engine import compiled

    graphs: list[list[str]] = []

    def backend(gm, example_inputs):
        graphs.append([type(x).__name__ for x in example_inputs if not isinstance(x, torch.Tensor)])
        return gm.forward

    monkeypatch.setattr(compiled, "compile_backend", lambda: backend)
    for method in ("byol", "unigrad"):
        torch._dynamo.reset()
        graphs.clear()
        run(tiny_folder, tmp_path / method, {"method": method}, "step", steps=8)
        assert 2 <= len(graphs) <= 5, f"{method}: {len(graphs)} graphs for 8 steps"
        assert all(g == [] for g in graphs), f"{method}: int inputs {graphs}"


@pytest.mark.parametrize("mode", ["off", "step"])
def test_step_hooks_run_after_backward_and_after_the_optimiser_step(
    mode, tiny_folder, tmp_path, monkeypatch
):
    """``parts.hooks`` in the eager and in the compiled step (one step, two ways to run it): an
    action after backward cancels the projector's last layer's gradient, so with no weight decay
    that layer never moves while the others do; an action after the optimiser step runs once a
    step and sees the step index (an int eagerly, a 0-d tensor compiled)."""
    monkeypatch.setenv("UNIGRAD_COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()
    cfg = build_config(
        TINY,
        {"data": str(tiny_folder), "out": str(tmp_path), "max_steps": 3, "epochs": 10,
         "amp": "off", "diag_every": 0, "knn_every": 0, "method": "byol",
         "weight_decay": 0.0, "compile": mode},
    )  # fmt: skip
    tr = Trainer(cfg, show_progress=False, backbone=TinyNet())
    layers = [m for m in tr.model.encoder.projector.modules() if isinstance(m, nn.Linear)]
    frozen, moving = layers[-1].weight, layers[0].weight
    before = (frozen.detach().clone(), moving.detach().clone())
    count, last = torch.zeros((), dtype=torch.int64), torch.full((), -1, dtype=torch.int64)

    def cancel(clock) -> None:
        frozen.grad.zero_()

    def record(clock) -> None:
        count.add_(1)
        last.fill_(clock.step)

    tr.parts.hooks.backward.append(cancel)
    tr.parts.hooks.optimizer_step.append(record)
    tr.train()
    assert tr.step_mode == ("step" if mode == "step" else "off")
    assert torch.equal(frozen.detach(), before[0]), "the gradient was not cancelled"
    assert not torch.equal(moving.detach(), before[1])
    assert (int(count), int(last)) == (3, 2)
