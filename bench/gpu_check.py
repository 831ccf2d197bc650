"""The checks the CPU suite cannot reach; run them on a CUDA machine.

1. Agreement: for every method x form x variant (and multi-crop + CutMix rows), the real
   ``Trainer`` takes the same views on the CPU and on ``--device`` in IEEE fp32 (TF32 off:
   ``amp off``). After one step the relative L2 distance of all weights and state (model,
   target, objective) must be under ``--tol`` (round-off: a wrong GPU path shows up at once);
   after ``--steps`` steps it is printed (round-off grows fast with a 16-image batch). The same
   steps under fp16 autocast with GradScaler and under bf16 must stay finite; their distance to
   fp32 is printed.
2. Device draws (issue 34, item 4): the fast pipeline's masked ops on ``--device`` equal its
   row-selecting ops there for the same parameters, and views drawn by a generator on the
   device match the CPU generator's in distribution (per view and channel, mean and std over
   4,096 images, within 0.05 normalised units; two CPU seeds differ by 0.008-0.019, measured).
3. Throughput: steady-state img/s (data included) of a few methods at batch 256 on CIFAR-10
   under fp32, bf16 and fp16 (``--throughput``; data: ``$UNIGRAD_BENCH_DATA``, bench/harness.py).

    python bench/gpu_check.py [--device cuda] [--steps 5] [--throughput] [--json OUT.json]

``--device cpu`` runs the same code CPU against CPU (distance 0), to check the script itself.
Exits 1 if any agreement check fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from golden import method_forms  # plain module: no pytest
from harness import machine, make_trainer, steady_state
from tinydata import TINY, make_image_folder

from unigrad.config import build_config
from unigrad.data.pipeline import step_generator
from unigrad.engine.trainer import Trainer
from unigrad.methods import METHODS

MULTI = {"multi_crop": "2x16,2x8", "cutmix": True, "target": "momentum"}
SIMCLR_B = {"method": "simclr", "form": "grad", "variant": "b"}
BARLOW_F = {"method": "barlow_twins", "form": "grad", "variant": "f"}


def configs() -> list[tuple[str, dict[str, Any]]]:
    rows = list(method_forms(METHODS).items())
    rows += [
        ("unigrad-multicrop-cutmix", {"method": "unigrad", **MULTI}),
        ("simclr-grad-b-multicrop-cutmix", {**SIMCLR_B, **MULTI}),
        ("barlow-grad-f-multicrop-cutmix", {**BARLOW_F, **MULTI}),
    ]
    return rows


def state(tr: Trainer) -> torch.Tensor:
    """Every float tensor of the model, target and objective, flattened on the CPU in fp64."""
    parts = [tr.model.state_dict(), tr.target.state_dict(), tr.objective.state_dict()]
    floats = [v for p in parts for v in p.values() if v.is_floating_point()]
    return torch.cat([v.detach().double().cpu().flatten() for v in floats])


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / a.norm().clamp_min(1e-30))


def views_for(tr: Trainer, steps: int) -> list[list[torch.Tensor]]:
    """``steps`` batches of views from ``tr``'s pipeline (the tiny data has a few per epoch)."""
    out: list[list[torch.Tensor]] = []
    for e in range(steps):
        out += [b.views for b in tr.data.epoch(e, 0)]  # the CPU trainer's: CPU draws
    return out[:steps]


def agreement(device: str, steps: int, tol: float, root: Path, only: str) -> list[dict[str, Any]]:
    data = make_image_folder(root / "data")
    rows = []
    print(f"\n## agreement, CPU fp32 vs {device} fp32 after 1 and {steps} steps; bf16 and fp16 vs")
    print(f"## {device} fp32 after {steps} steps (relative L2 of all state); ok: step 1 < {tol:g}")
    print(f"{'config':<34}{'init':>8}{'step 1':>10}{f'step {steps}':>10}{'bf16':>10}{'fp16':>10}"
          f"{'scale':>7}  ok")  # fmt: skip
    runs = [("cpu", "cpu", "off"), ("fp32", device, "off"), ("bf16", device, "bf16"),
            ("fp16", device, "fp16")]  # fmt: skip
    for name, over in configs():
        if only not in name:
            continue
        trainers = {}
        for key, dev, amp in runs:
            base = {"data": str(data), "out": str(root / f"{name}-{key}"), "device": dev}
            base |= {"amp": amp, "diag_every": 0, "knn_every": 0, "epochs": 10}
            trainers[key] = Trainer(build_config(TINY, base, over), show_progress=False)
        init = max(rel(state(trainers["cpu"]), state(t)) for t in trainers.values())
        finite, step1 = True, float("nan")
        for i, views in enumerate(views_for(trainers["cpu"], steps)):
            for t in trainers.values():
                v = [x.to(t.device) for x in views]
                # one CPU generator for every device: the same CutMix draws
                stats = t.train_step(v, step_generator(t.cfg.seed, t.step, salt=1))
                finite &= bool(torch.isfinite(stats["loss"]).item())
            if i == 0:
                step1 = rel(state(trainers["cpu"]), state(trainers["fp32"]))
        st = {k: state(t) for k, t in trainers.items()}
        finite &= all(bool(torch.isfinite(x).all()) for x in st.values())
        scaler = trainers["fp16"].scaler
        row = {"config": name, "init": init, "step1": step1, "fp32": rel(st["cpu"], st["fp32"]),
               "bf16": rel(st["fp32"], st["bf16"]), "fp16": rel(st["fp32"], st["fp16"]),
               "fp16_scale": float(scaler.get_scale()) if scaler.is_enabled() else None,
               "finite": finite}  # fmt: skip
        row["ok"] = finite and init == 0.0 and step1 < tol
        rows.append(row)
        scale = "-" if row["fp16_scale"] is None else f"{row['fp16_scale']:.0f}"
        cells = "".join(f"{row[k]:>10.1e}" for k in ("step1", "fp32", "bf16", "fp16"))
        print(f"{name:<34}{init:>8.0e}{cells}{scale:>7}  {'ok' if row['ok'] else 'FAIL'}")
        for t in trainers.values():
            t.close()
    return rows


def device_draws(device: str, n: int = 4096, tol: float = 0.05) -> dict[str, Any]:
    from unigrad.data.augment import AugmentSpec, FastAugment, apply_view

    spec = AugmentSpec(image_size=32, blur_p=[1.0, 0.1], solarize_p=[0.0, 0.2])
    g = torch.Generator().manual_seed(0)
    ramp = torch.linspace(0, 1, 32)  # structured images: a crop's position changes its colours
    base = torch.rand(n, 3, 1, 1, generator=g) * ramp.view(1, 1, 1, 32) * ramp.view(1, 1, 32, 1)
    x = (base + 0.1 * torch.rand(n, 3, 32, 32, generator=g)).clamp(0, 1)
    x = (x * 255).to(torch.uint8).to(device)
    aug = FastAugment(spec)
    xf = x.float() / 255
    params = aug.sample(n, 32, 32, torch.Generator().manual_seed(1))
    same = 0.0
    for p, v in zip(params, aug.views, strict=True):
        on_dev = p.map(lambda t: t.to(device))
        a = apply_view(spec, xf.clone(), p, v.size)
        b = apply_view(spec, xf.clone(), on_dev, v.size, masked=True)
        same = max(same, float((a - b).abs().max()))
    host = aug(x, torch.Generator().manual_seed(2))
    dev = FastAugment(spec, device_draws=True)(x, torch.Generator(device).manual_seed(2))
    dist = 0.0
    for a, b in zip(host, dev, strict=True):
        for f in (lambda t: t.mean((0, 2, 3)), lambda t: t.std((0, 2, 3))):
            dist = max(dist, float((f(a) - f(b)).abs().max()))
    ok = same < 1e-5 and dist < tol
    print(f"\n## device draws on {device}: masked vs selected rows, same parameters: max |diff| "
          f"{same:.1e}; device vs CPU generator, per-channel mean/std: max |diff| {dist:.3f} "
          f"(ok under {tol}): {'ok' if ok else 'FAIL'}")  # fmt: skip
    return {"config": "device-draws", "masked_vs_rows": same, "distribution": dist, "ok": ok}


def throughput(device: str, steps: int) -> list[dict[str, Any]]:
    cases = [("unigrad", "grad", None), ("simclr", "loss", None), ("simclr", "grad", "b"),
             ("barlow_twins", "loss", None)]  # fmt: skip
    rows = []
    net = "the cifar-quick network (ResNet-18 x0.25, CIFAR stem)"
    print(f"\n## throughput on {device}: {net}, batch 256, 2 views, img/s")
    print(f"{'method':<14}{'form':<8}{'fp32':>9}{'bf16':>9}{'fp16':>9}")
    for method, form, variant in cases:
        cells = {}
        for amp in ("off", "bf16", "fp16"):
            over = {"method": method, "form": form, "device": device, "amp": amp}
            if variant:
                over["variant"] = variant
            tr = make_trainer(**over)
            cells["fp32" if amp == "off" else amp], _ = steady_state(tr, steps, warmup=3)
            tr.close()
        form_label = form + (f"-{variant}" if variant else "")
        rows.append({"method": method, "form": form_label, **cells})
        print(
            f"{method:<14}{form_label:<8}"
            + "".join(f"{cells[k]:>9.0f}" for k in ("fp32", "bf16", "fp16")),
            flush=True,
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--tol", type=float, default=1e-5)
    ap.add_argument("--throughput", action="store_true")
    ap.add_argument("--throughput-steps", type=int, default=30)
    ap.add_argument("--json")
    ap.add_argument("--only", default="", help="agreement configs whose name contains this")
    a = ap.parse_args()
    print(f"# {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        out: dict[str, Any] = {
            "machine": machine(),
            "agreement": agreement(a.device, a.steps, a.tol, Path(tmp), a.only),
        }
    out["agreement"].append(device_draws(a.device))
    if a.throughput:
        out["throughput"] = throughput(a.device, a.throughput_steps)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    bad = [r["config"] for r in out["agreement"] if not r["ok"]]
    n = len(out["agreement"])
    print(f"\n{n - len(bad)}/{n} agreement checks ok" + (f"; failed: {bad}" if bad else ""))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
