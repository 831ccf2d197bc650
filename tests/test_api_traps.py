"""The public API's traps closed (issue 33, item 6): each has a test that fails on the trap."""

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import unigrad
from unigrad import Form, MethodSpec, Objective, Param, Step, TargetOut, Term
from unigrad.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _z(n=8, c=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, c, generator=g, requires_grad=True) for _ in range(2)]


@pytest.mark.parametrize("method,form", [("byol", "loss"), ("moco", "loss"), ("unigrad", "grad")])
def test_no_targets_for_a_non_shared_target_is_refused_in_one_line(method, form):
    obj = Objective(method, form, dim=16)
    z = _z()
    pred = [zi * 1.0 for zi in z] if method == "byol" else None
    with pytest.raises(ValueError) as e:
        obj(*z, pred=pred)
    assert "targets=" in str(e.value) and "\n" not in str(e.value)
    # shared explicitly asked for: allowed, and equal to passing the online outputs as targets
    shared = Objective(
        method, form, dim=16, target="shared", **({"bank_size": 64} if method == "moco" else {})
    )
    if method == "moco":
        return
    a = shared(*z, pred=pred)
    b = Objective(method, form, dim=16, target="shared")(z, TargetOut(z, z), pred=pred)
    assert torch.equal(a, b)


def test_pending_bank_keys_travel_in_the_state_dict():
    z = _z(n=8, c=16)
    t = [zi.detach() for zi in _z(n=8, c=16, seed=1)]
    a = Objective("moco", "loss", dim=16, bank_size=32)
    a(z, t)  # keys of this call are pending until after_step()
    state = a.state_dict()
    assert state["bank.pending"].shape == (16, 16)
    b = Objective("moco", "loss", dim=16, bank_size=32)
    b.load_state_dict(state)
    a.after_step()
    b.after_step()
    assert torch.equal(a.bank.queue, b.bank.queue) and a.bank.queue.abs().sum() > 0
    # a state dict of before the pending keys were state still loads
    old = {k: v for k, v in state.items() if k != "bank.pending"}
    Objective("moco", "loss", dim=16, bank_size=32).load_state_dict(old)


def test_examples_train_the_objectives_parameters_and_enqueue_after_the_step():
    for path in [*sorted((ROOT / "examples").glob("*.py")), ROOT / "README.md"]:
        text = path.read_text()
        if "Objective(" not in text or "opt.step()" not in text:
            continue
        assert "objective.parameters()" in text, path.name
        assert text.index("objective.after_step()") > text.index("opt.step()"), path.name


def test_readme_states_each_methods_default_form():
    text = (ROOT / "README.md").read_text()
    line = re.search(r"The default form, what `--method NAME` alone trains:(.*?);", text, re.S)
    said = dict(re.findall(r"`(\w+)`\s+(loss|grad)", line.group(1)))
    assert said == {name: spec.default_form for name, spec in unigrad.METHODS.items()}


def one_row_method(name: str, term: Term, **params: Param) -> MethodSpec:
    """A user's method with one gradient form (row "x", l2, stop-gradient target)."""
    form = Form(key="x", kind="grad", row="", norm="l2", pos_grad="-u2", neg_grad="-", term=term)
    return MethodSpec(
        name=name,
        family="user",
        description=name,
        target="stopgrad",
        loss=None,
        grads={"x": form},
        default_form="grad",
        default_grad="x",
        params=params,
    )


@dataclass(frozen=True)
class Align(Term):
    """A user's gradient form: g = -weight * u2 (alignment alone)."""

    def pair(self, step: Step, i, u, pos):
        return -step.hp["weight"] * pos


def test_a_method_built_from_ones_own_code_trains():
    spec = one_row_method("align_only", Align("grad"), weight=Param(doc="the weight", default=1.0))
    unigrad.register(spec)
    try:
        z = _z()
        t = [zi.detach() * 2 + 1 for zi in z]
        got = torch.autograd.grad(Objective("align_only", dim=16, weight=2.0)(z, t), z)
        u = [F.normalize(zi, dim=-1) for zi in z]
        p = [F.normalize(ti, dim=-1) for ti in t]
        ref = ((-2.0 * p[1] * u[0]).sum(-1).mean() + (-2.0 * p[0] * u[1]).sum(-1).mean()) / 2
        want = torch.autograd.grad(ref, z)
        assert all(torch.allclose(g, w, atol=1e-7) for g, w in zip(got, want, strict=True))
        assert "align_only" in unigrad.METHODS
    finally:
        unigrad.METHODS.pop("align_only")


def test_method_help_lists_every_registered_method(capsys):
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for name in unigrad.METHODS:
        assert name in out, name


@dataclass(frozen=True)
class StepIndexed(Term):
    """A per-step schedule written in the term alone: the positive's weight grows with the step."""

    def pair(self, step: Step, i, u, pos):
        return -(1.0 + step.index) * pos


def test_a_term_sees_the_step_index():
    spec = one_row_method("ramp", StepIndexed("grad"))
    obj = Objective(spec, dim=16)
    z = _z()
    t = [zi.detach() for zi in z]
    first, second = obj(z, t), obj(z, t)  # the objective counts its calls: index 0, then 1
    assert torch.allclose(second, 2 * first)
    assert torch.allclose(obj(z, t, step=9), 10 * first)  # the trainer passes its step


def test_the_core_imports_no_method_and_engine_files_stay_small():
    import ast

    for path in (ROOT / "unigrad" / "core").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom | ast.Import):
                names = (
                    [node.module]
                    if isinstance(node, ast.ImportFrom)
                    else [a.name for a in node.names]
                )
                assert not any((n or "").startswith("unigrad.methods") for n in names), path
    for path in (ROOT / "unigrad" / "engine").rglob("*.py"):
        assert len(path.read_text().splitlines()) <= 300, path
