"""Trainable loss parts are equal on every rank (issue 42 item 4): a term's learned temperature
(``Term.modules``, trained outside DDP) gets its gradient averaged over ranks by the step's
actions after backward (:func:`unigrad.engine.parts.step_hooks`), so after training it is the
same on 2 gloo processes and equal to 1 process on the global batch. Without that action each
rank applies its own gradient and the copies drift apart (checked here too, so the test can
fail). The method is ``tests/test_methods_added.py``'s learned temperature."""

from __future__ import annotations

import torch
import torch.distributed as tdist
from ranks import on_ranks
from test_methods_added import LEARNED_TAU
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from unigrad.core.hooks import StepHooks
from unigrad.core.needs import HookContext
from unigrad.core.objective import Objective
from unigrad.core.targets import TargetBranch
from unigrad.engine.optim import build_optimizer
from unigrad.engine.parts import RunParts, step_hooks
from unigrad.engine.step import train_step
from unigrad.models.networks import Encoder, SiameseModel

N, D, C, STEPS = 8, 6, 8, 3


def views() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N, D, generator=g, dtype=torch.float64)
    return [x + 0.3 * torch.randn(N, D, generator=g, dtype=torch.float64) for _ in range(2)]


def train(views_: list[torch.Tensor], average: bool = True) -> dict[str, torch.Tensor]:
    """STEPS steps of the engine's step; the learned log-temperature and the model after."""
    torch.manual_seed(0)
    model = SiameseModel(Encoder(nn.Sequential(nn.Linear(D, 16), nn.ReLU()), nn.Linear(16, C)))
    model.double()
    objective = Objective(LEARNED_TAU, dim=C).double()
    target = TargetBranch("shared", model.encoder)
    net = DDP(model) if tdist.is_initialized() else model
    optimizer = build_optimizer(model, "sgd", 0.1, 0.0, objective=objective)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    parts = RunParts(model, net, target, objective, optimizer, scaler, [0.1] * STEPS,
                     [0.0] * STEPS, 0.1, None)  # fmt: skip
    if average:
        parts.hooks = step_hooks(
            LEARNED_TAU.needs, HookContext(model, target, objective, objective.hp)
        )
    else:
        parts.hooks = StepHooks()
    for k in range(STEPS):
        train_step(parts, views_, torch.Generator(), k, n_target=2)
    return {
        "log_tau": objective.parts["log_tau"].value.detach().clone(),
        "model": torch.cat([p.detach().flatten() for p in model.parameters()]),
    }


def _on_rank(rank: int, world: int) -> dict:
    local = [v.chunk(world)[rank] for v in views()]
    return {"averaged": train(local), "alone": train(local, average=False)}


def test_learned_temperature_is_equal_on_two_ranks_and_to_one_process(tmp_path):
    ranks = on_ranks(_on_rank, tmp_path)
    one = train(views())
    start = torch.tensor(0.2, dtype=torch.float64).log()
    assert not torch.allclose(one["log_tau"], start)  # it trained
    r0, r1 = ranks[0]["averaged"], ranks[1]["averaged"]
    assert torch.equal(r0["log_tau"], r1["log_tau"])  # the same on both ranks
    assert torch.allclose(r0["log_tau"], one["log_tau"], rtol=1e-10, atol=0)
    assert torch.allclose(r0["model"], one["model"], rtol=1e-9, atol=1e-12)
    # without the averaging the ranks apply their own gradients and drift apart
    a0, a1 = ranks[0]["alone"]["log_tau"], ranks[1]["alone"]["log_tau"]
    assert abs(float(a0 - a1)) > 1e-4
