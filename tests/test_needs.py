"""A method declares what it needs in its own file (issue 42, items 1 and 2): the test method
of ``tests/fixtures/my_method.py`` (no edit under ``unigrad/``) declares its own head, which the
momentum target copies, an epoch schedule of its temperature, an action after backward (its last
layer frozen for the first epoch) and one after the optimiser step (rows renormalised); it trains
eagerly and with the step compiled, and its checkpoint loads for evaluation."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY
from fixtures.my_method import MY_METHOD
from test_compiled_step import TinyNet

from unigrad.config import build_config
from unigrad.core.clock import Clock
from unigrad.core.objective import Objective
from unigrad.engine.callbacks import Callback
from unigrad.engine.trainer import Trainer
from unigrad.eval.features import load_backbone
from unigrad.methods import METHODS, register
from unigrad.models.build import model_from_config


@pytest.fixture
def my_method():
    register(MY_METHOD, replace=True)
    yield MY_METHOD.name
    METHODS.pop(MY_METHOD.name)


class Record(Callback):
    """The last layer's weight and the temperature the term used, after every step."""

    def __init__(self) -> None:
        self.last, self.grad, self.tau = {}, {}, {}

    def on_step(self, state) -> None:
        weight = state.parts.model.encoder.projector.last.weight
        self.last[state.step] = weight.detach().clone()
        self.grad[state.step] = float(weight.grad.abs().max())
        self.tau[state.step] = float(state.parts.objective.stats["tau"])


def train(folder, out, compile_mode="off", steps=6, backbone=None):
    cfg = build_config(
        TINY,
        {
            "method": "my_method",
            "data": str(folder),
            "out": str(out),
            "max_steps": steps,
            "epochs": 10,
            "weight_decay": 0.0,  # a frozen layer stays exactly where it is
            "deterministic": True,
            "amp": "off",
            "diag_every": 0,
            "knn_every": 0,
            "online_probe": False,
            "compile": compile_mode,
        },
    )
    rec = Record()
    torch.manual_seed(0)
    tr = Trainer(cfg, show_progress=False, callbacks=[rec], backbone=backbone and backbone())
    tr.train()
    return tr, rec


def test_a_method_declared_in_one_file_trains(my_method, tiny_folder, tmp_path):
    tr, rec = train(tiny_folder, tmp_path / "r")
    assert tr.steps_per_epoch == 3
    head = tr.model.encoder.projector
    assert type(head).__name__ == "BottleneckHead"
    assert tr.target.net.projector.last.weight is not head.last.weight  # the target's copy
    # epoch schedule: tau_start (0.5) in epoch 0, tau (0.2) from epoch 1 (a 2-epoch warm-up)
    assert rec.tau[1] == rec.tau[3] == pytest.approx(0.5)
    assert rec.tau[4] == rec.tau[6] == pytest.approx(0.2)
    # after backward: the last layer is frozen in epoch 0 (steps 1-3), trains from epoch 1;
    # after the optimiser step: its rows are renormalised
    assert [rec.grad[k] == 0 for k in range(1, 7)] == [True] * 3 + [False] * 3
    assert torch.allclose(rec.last[1], rec.last[3], rtol=0, atol=1e-6)  # renormalised only
    assert (rec.last[3] - rec.last[6]).abs().max() > 1e-5
    for w in rec.last.values():
        assert torch.allclose(w.norm(dim=1), torch.ones(w.shape[0]), atol=1e-5)
    # evaluation rebuilds the network with the method's head (the one place) and loads it
    tr.save()
    backbone, cfg = load_backbone(tmp_path / "r" / "last.ckpt")
    assert cfg["method"] == "my_method"
    for k, v in backbone.state_dict().items():
        assert torch.equal(v, tr.model.encoder.backbone.state_dict()[k])


def test_the_compiled_step_runs_the_declaration_as_the_eager_one(
    my_method, tiny_folder, tmp_path, monkeypatch
):
    monkeypatch.setenv("UNIGRAD_COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()
    eager, rec_e = train(tiny_folder, tmp_path / "e", steps=5, backbone=TinyNet)
    comp, rec_c = train(tiny_folder, tmp_path / "c", "step", steps=5, backbone=TinyNet)
    assert comp.step_mode == "step"
    assert rec_c.tau == pytest.approx(rec_e.tau)
    assert rec_c.grad[3] == 0 and rec_c.grad[4] > 0  # frozen in epoch 0: compiled too
    for k, v in eager.model.state_dict().items():
        diff = (v - comp.model.state_dict()[k]).abs().max().item() if v.is_floating_point() else 0
        assert diff < 1e-4, f"{k} differs by {diff:.2e}"


def test_a_term_sees_the_clock_and_the_schedule(my_method):
    z = [torch.randn(4, 8) for _ in range(2)]

    def tau_at(clock):
        obj(z, targets=[t.detach() for t in z], step=clock)
        return float(obj.stats["tau"])

    warm = {"tau_start": 0.5, "tau": 0.2, "tau_warmup_epochs": 3}
    obj = Objective("my_method", dim=8, **warm)
    assert tau_at(Clock(0, steps_per_epoch=4, total_steps=40)) == pytest.approx(0.5)
    assert tau_at(Clock(5, steps_per_epoch=4, total_steps=40)) == pytest.approx(0.35)  # epoch 1
    assert tau_at(Clock(7, steps_per_epoch=4, total_steps=40)) == pytest.approx(0.35)
    assert tau_at(Clock(torch.tensor(8), 4, 40)) == pytest.approx(0.2)  # a tensor step
    assert tau_at(Clock(39, 4, 40)) == pytest.approx(0.2)


def test_the_model_is_built_from_the_record_with_the_declared_heads(my_method):
    record = build_config(TINY, {"method": "my_method", "bottleneck": 4})
    model = model_from_config(record)
    assert model.encoder.projector.mlp.out_features == 4  # the head saw the method's hp
    assert model.head_names == ()  # no online-only head: p is None
    byol = model_from_config(build_config(TINY, {"method": "byol"}))
    assert byol.encoder.head_names == ("projector",) and byol.head_names == ("predictor",)
    keys = list(byol.state_dict())
    assert keys[0].startswith("encoder.backbone.") and keys[-1].startswith("predictor.")


def test_no_code_outside_the_methods_switches_on_a_method_or_head_name():
    """Outside ``unigrad/methods/`` nothing compares a method's or a head's name (``method``,
    ``predictor``, ``projector``, ``head``) with a string: the engine reads declarations."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "unigrad"
    names = {"method", "predictor", "projector", "head", "heads"}
    found = []
    for path in root.rglob("*.py"):
        if "methods" in path.relative_to(root).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Compare):
                continue
            sides = [node.left, *node.comparators]
            named = any(
                (isinstance(s, ast.Attribute) and s.attr in names)
                or (isinstance(s, ast.Name) and s.id in names)
                for s in sides
            )
            consts = [
                c
                for s in sides
                for c in (s.elts if isinstance(s, ast.Tuple | ast.List | ast.Set) else [s])
            ]
            string = any(isinstance(c, ast.Constant) and isinstance(c.value, str) for c in consts)
            if named and string:
                found.append(f"{path.relative_to(root)}:{node.lineno}")
    assert not found, found


def test_a_copy_of_the_parts_acts_on_its_own_modules(my_method):
    """``compile: auto`` measures on deep copies of the run's parts: the copies' actions must
    renormalise the copied layer and leave the run's own alone (a closure would not)."""
    import copy

    from unigrad.core.needs import HookContext
    from unigrad.core.targets import TargetBranch
    from unigrad.engine.parts import step_hooks

    record = build_config(TINY, {"method": "my_method"})
    model = model_from_config(record)
    objective = Objective.from_config(record)
    target = TargetBranch("momentum", model.encoder)
    run = {
        "model": model,
        "hooks": step_hooks(MY_METHOD.needs, HookContext(model, target, objective, objective.hp)),
    }
    before = model.encoder.projector.last.weight.detach().clone()
    copied = copy.deepcopy(run)
    copied["hooks"].after_optimizer_step(Clock())
    assert torch.equal(model.encoder.projector.last.weight, before)  # the run's: untouched
    w = copied["model"].encoder.projector.last.weight
    assert torch.allclose(w.norm(dim=1), torch.ones(w.shape[0]))  # the copy's: renormalised
    run["hooks"].after_optimizer_step(Clock())
    assert torch.equal(model.encoder.projector.last.weight, w)
