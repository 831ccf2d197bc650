"""Golden runs: 20 deterministic float64 steps of every method x form x variant (and the
multi-crop, CutMix, symmetry and target variants) through ``Objective`` and ``TargetBranch`` on a
tiny MLP Siamese network. A refactor must leave every fingerprint unchanged.

``python tests/golden.py`` records ``tests/golden.json`` (done on main before a refactor);
``tests/test_golden.py`` compares. float64 keeps round-off (1e-16) far below the tolerance
(1e-7), so the comparison holds across CPU kinds while any change to a gradient fails it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn

from unigrad.core.targets import TargetBranch, cosine_momentum
from unigrad.methods import METHODS

GOLDEN = Path(__file__).with_name("golden.json")
#: The methods that existed when the golden record was taken.
RECORDED_METHODS = (
    "moco", "simclr", "byol", "simsiam", "directpred", "barlow_twins", "vicreg", "unigrad",
)  # fmt: skip
STEPS, N, D_IN, C = 20, 12, 10, 8


def method_forms(names) -> dict[str, dict]:
    """``{"<method>-loss" | "<method>-grad-<row>": config keys}`` for every form and gradient
    row of the methods ``names`` (shared by the golden record and the bench scripts)."""
    out: dict[str, dict] = {}
    for name in names:
        spec = METHODS[name]
        if spec.loss is not None:
            out[f"{name}-loss"] = {"method": name, "form": "loss"}
        for key in spec.grads:
            out[f"{name}-grad-{key}"] = {"method": name, "form": "grad", "variant": key}
    return out


def cases() -> dict[str, dict]:
    out = method_forms(RECORDED_METHODS)  # methods added after the record have their own tests
    out["unigrad-grad-multicrop"] = {"method": "unigrad", "form": "grad", "views": 4}
    out["unigrad-loss-multicrop"] = {"method": "unigrad", "form": "loss", "views": 4}
    out["unigrad-grad-cutmix"] = {"method": "unigrad", "form": "grad", "cutmix": True}
    out["unigrad-grad-online"] = {"method": "unigrad", "form": "grad", "corr_source": "online"}
    out["simsiam-asym"] = {"method": "simsiam", "form": "loss", "symmetry": "asym"}
    out["simsiam-asym2x"] = {"method": "simsiam", "form": "loss", "symmetry": "asym2x", "views": 4}
    out["byol-stopgrad"] = {"method": "byol", "form": "loss", "target": "stopgrad"}
    out["simclr-loss-momentum"] = {"method": "simclr", "form": "loss", "target": "momentum"}
    out["simclr-grad-momentum"] = {
        "method": "simclr",
        "form": "grad",
        "variant": "b",
        "target": "momentum",
    }
    out["moco-grad-momentum_pos"] = {
        "method": "moco",
        "form": "grad",
        "variant": "a",
        "target": "momentum_pos",
    }
    out["vicreg-grad-j-momentum"] = {
        "method": "vicreg",
        "form": "grad",
        "variant": "j",
        "target": "momentum",
    }
    out["barlow-grad-f-snapshot"] = {
        "method": "barlow_twins",
        "form": "grad",
        "variant": "f",
        "target": "snapshot",
    }
    return out


def _model(with_pred: bool) -> nn.Module:
    from unigrad.models.networks import Encoder, SiameseModel, mlp

    backbone = nn.Sequential(nn.Linear(D_IN, 16), nn.BatchNorm1d(16), nn.ReLU())
    pred = mlp(C, 12, C, depth=2, norm="bn") if with_pred else None
    return SiameseModel(Encoder(backbone, mlp(16, 16, C, depth=2, norm="bn")), pred)


def run(case: dict) -> list[float]:
    """Fingerprint after STEPS steps: (sum, l2 norm) of every model, target and objective
    tensor."""
    from unigrad.core.objective import Mix, Objective, target_views

    torch.manual_seed(0)
    method = METHODS[case["method"]]
    model = _model(method.needs.has_predictor).double()
    kind = case.get("target") or method.target
    target = TargetBranch(kind, model.encoder, snapshot_every=3).double()
    hp = {k: case[k] for k in ("corr_source",) if k in case}
    if case["method"] == "moco":
        hp["bank_size"] = 36
    objective = Objective(
        case["method"],
        case["form"],
        case.get("variant"),
        dim=C,
        symmetry=case.get("symmetry", "sym"),
        **hp,
    ).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    momentum = cosine_momentum(0.9, 1.0, STEPS)
    n_views = case.get("views", 2)
    n_target = target_views(n_views, case.get("symmetry", "sym"))
    gen = torch.Generator().manual_seed(1)
    for step in range(STEPS):
        views = [torch.randn(N, D_IN, generator=gen, dtype=torch.float64) for _ in range(n_views)]
        online, mix = views, None
        if case.get("cutmix"):
            perm = torch.randperm(N, generator=gen)
            ratio = torch.rand(N, generator=gen, dtype=torch.float64)
            online = [v * ratio[:, None] + v[perm] * (1 - ratio[:, None]) for v in views[:2]]
            online += views[2:]
            mix = Mix(perm, ratio)
        z, p = model(online)
        t = target(views[:n_target], z[:n_target])
        loss = objective(z, targets=t, pred=p, mix=mix)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        target.update(model.encoder, float(momentum[step]), step + 1)
        objective.after_step()
    tensors = [
        *model.state_dict().values(),
        *target.state_dict().values(),
        *objective.state_dict().values(),
    ]
    out = []
    for x in tensors:
        if x.is_floating_point() and x.numel():  # an empty buffer holds nothing
            out += [float(x.sum()), float(x.norm())]
    return out


if __name__ == "__main__":
    torch.set_num_threads(1)
    record = {name: run(case) for name, case in cases().items()}
    GOLDEN.write_text(json.dumps(record, indent=0))
    print(f"wrote {len(record)} fingerprints to {GOLDEN}", file=sys.stderr)
