"""The CUDA hazards of issue 44, item 4, checked on the CPU: what a GPU run would meet first.

- SGD's and LARS's momentum buffers exist (zeros) from the optimiser's build, so that under
  ``compile: step`` no state is born inside a CUDA graph's memory pool; the maths are unchanged.
- DirectPred's eigendecomposition cannot be recorded in a CUDA graph: ``compile: step`` and
  ``auto`` fall back to ``model`` for it on CUDA, with one line naming the fallback.
- ``amp: auto`` on CUDA is bf16 where the GPU computes in it (compute capability >= 8.0).
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import TINY
from timm.optim import Lars
from torch import nn

from unigrad.config import build_config
from unigrad.engine import device as device_mod
from unigrad.engine.compiled import choose_step, step_fallback_reason
from unigrad.engine.optim import build_optimizer
from unigrad.engine.trainer import Trainer

CUDA = torch.device("cuda", 0)  # a device object only: nothing is allocated on it


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Linear(5, 3))


def _steps(opt: torch.optim.Optimizer, net: nn.Module, n: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    for _ in range(n):
        opt.zero_grad()
        net(torch.randn(8, 6, generator=g)).square().mean().backward()
        opt.step()
    return [p.detach().clone() for p in net.parameters()]


@pytest.mark.parametrize("name", ["sgd", "lars"])
def test_momentum_buffers_exist_as_zeros_before_the_first_step(name):
    net = _net()
    opt = build_optimizer(net, name, lr=0.1, weight_decay=1e-4)
    for p in net.parameters():
        buf = opt.state[p]["momentum_buffer"]
        assert buf.shape == p.shape and buf.dtype == p.dtype and buf.device == p.device
        assert not buf.any()


@pytest.mark.parametrize("name", ["sgd", "lars"])
def test_eager_zero_buffers_give_the_lazy_buffers_steps_bit_for_bit(name):
    net_a, net_b = _net(), _net()
    ours = build_optimizer(net_a, name, lr=0.1, weight_decay=1e-4)
    cls = torch.optim.SGD if name == "sgd" else Lars
    # the same groups, built directly (buffers created by the first step, from the gradient)
    params_b = dict(net_b.named_parameters())
    names = {id(p): n for n, p in net_a.named_parameters()}
    direct = [
        {k: v for k, v in g.items() if k != "params"}
        | {"params": [params_b[names[id(p)]] for p in g["params"]]}
        for g in ours.param_groups
    ]
    lazy_opt = cls(direct, lr=0.1, momentum=0.9, weight_decay=1e-4)
    assert not lazy_opt.state  # the library's default: no buffer before a step
    for a, b in zip(_steps(ours, net_a), _steps(lazy_opt, net_b), strict=True):
        assert torch.equal(a, b)


def _trainer(tmp_path, folder, **over) -> Trainer:
    base = {"data": str(folder), "out": str(tmp_path / "run"), "amp": "off", "device": "cpu"}
    base |= {"diag_every": 0, "knn_every": 0}
    return Trainer(build_config(TINY, base, over), show_progress=False)


@pytest.mark.parametrize("variant", ["loss", "d", "eq26"])
@pytest.mark.parametrize("mode", ["step", "auto"])
def test_directpred_with_w_h_falls_back_to_model_on_cuda(
    variant, mode, tiny_folder, tmp_path, capsys
):
    over = {"method": "directpred"} | ({"form": "grad", "variant": variant} if variant != "loss"
                                       else {})  # fmt: skip
    tr = _trainer(tmp_path, tiny_folder, **over)
    assert step_fallback_reason(tr.parts, torch.device("cpu")) is None  # inductor's C++ holds it
    assert "eigh" in (step_fallback_reason(tr.parts, CUDA) or "")
    cfg = copy.copy(tr.cfg)
    cfg.compile = mode
    chosen, _ = choose_step(cfg, tr.parts, CUDA)
    assert chosen == "model"  # the trainer records it as compile_resolved
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "eigh" in err[0] and "compile=model" in err[0]
    tr.close()


@pytest.mark.parametrize(
    "over", [{"method": "unigrad"}, {"method": "directpred", "form": "grad", "variant": "e"}]
)
def test_methods_without_an_eigendecomposition_keep_the_step_on_cuda(over, tiny_folder, tmp_path):
    tr = _trainer(tmp_path, tiny_folder, **over)
    assert step_fallback_reason(tr.parts, CUDA) is None
    tr.close()


@pytest.mark.parametrize(
    ("capability", "expected"),
    [((9, 0), torch.bfloat16), ((8, 0), torch.bfloat16), ((7, 5), torch.float16)],
)
def test_amp_auto_on_cuda_is_bf16_where_the_gpu_has_it(capability, expected, monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert device_mod.cuda_auto_dtype(CUDA) == expected
    assert device_mod.amp_dtype("auto", CUDA) == expected
    cfg = build_config(TINY, {"amp": "auto"})
    assert device_mod.resolve_amp(cfg, nn.Linear(2, 2), CUDA, 16) == expected
    assert cfg.amp_resolved == device_mod.precision_name(expected)
    assert device_mod.amp_dtype("fp16", CUDA) == torch.float16  # explicit values as given


def test_the_lightly_anchor_trains_unigrad_on_the_cpu_as_lightly():
    """``bench/vs_lightly.py`` (lightly is not installed here: read, not run) builds unigrad's
    trainer on the CPU, where its lightly loop trains; device auto would pick a GPU."""
    import ast
    from pathlib import Path

    src = (Path(__file__).resolve().parents[1] / "bench" / "vs_lightly.py").read_text()
    nodes = ast.walk(ast.parse(src))
    calls = [
        n for n in nodes if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "make_trainer"
    ]
    assert calls
    for call in calls:
        device = {k.arg: k.value for k in call.keywords}.get("device")
        assert isinstance(device, ast.Constant) and device.value == "cpu"
    assert 'autocast("cpu"' in src  # lightly's loop: CPU autocast
