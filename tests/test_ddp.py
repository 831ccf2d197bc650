"""torchrun with 2 gloo processes makes the same first update as 1 process on the same global
batch (GroupNorm model: per-sample normalisation, no SyncBN needed on CPU).

The claim is about one step: the parameter update ``after - before`` (the step's gradient) and
the objective's state. Comparing weights after several steps measures chaotic round-off growth
instead, which varies with the CPU kind; one step's update, computed in float64 from the stored
fp32 weights, differs between the two only by the reduction order (~1e-7 relative). A large
learning rate makes the update large against the fp32 rounding of the weights it is added to.
"""

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY

from unigrad.engine.checkpoint import load_checkpoint

DDP_CFG = {
    **TINY,
    "norm": "gn",
    "max_steps": 1,
    "base_lr": 20.0,  # lr 1.25: the update is not lost in the rounding of the weights
    "warmup_epochs": 0,
    "diag_every": 0,
    "deterministic": True,
    "amp": "off",
    "keep_epoch_ckpts": True,
}
#: Relative error allowed between the two updates (fp32 arithmetic, other reduction order).
TOL = 1e-5
EPS32 = torch.finfo(torch.float32).eps


def initial_model(cfg: dict, out: Path) -> dict[str, torch.Tensor]:
    """The weights every run starts from (seeded initialisation, built in this process)."""
    from unigrad.config import build_config
    from unigrad.engine.trainer import Trainer

    tr = Trainer(build_config({**cfg, "deterministic": False, "out": str(out)}), False, False)
    tr.close()
    return {k: v.detach().clone() for k, v in tr.model.state_dict().items()}


def update_error(before1, one, before2, two) -> tuple[float, float]:
    """(relative difference of the two runs' updates, its round-off floor), in float64."""
    d1 = torch.cat([(one[k].double() - before1[k].double()).flatten() for k in before1])
    d2 = torch.cat([(two[k].double() - before2[k].double()).flatten() for k in before1])
    w = torch.cat([one[k].double().flatten() for k in before1])
    norm = float(d1.norm())
    assert norm > 0, "the step changed nothing"
    return float((d1 - d2).norm()) / norm, float(EPS32 * w.norm()) / norm


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    """``cmd`` in a session of its own, stdout and stderr captured: see :func:`finish`."""
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip


def finish(proc: subprocess.Popen, timeout: float) -> subprocess.CompletedProcess:
    """Wait for a process from :func:`start`; past ``timeout``, kill its whole session (a
    torchrun agent and its workers: killing the agent alone leaves the workers running) and
    fail the test with the ends of its output."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{proc.args[:6]}... ran past {timeout} s:\n{out[-2000:]}\n{err[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _run(args: list[str], nproc: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    env.setdefault("UNIGRAD_COMPILE_BACKEND", "aot_eager")  # compile: step's capture, quickly
    launch = [sys.executable, "-m", "unigrad"]
    if nproc > 1:
        launch = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={nproc}",
            f"--master_port={_free_port()}",
            str(Path(__file__).parent / "torchrun_exit.py"),  # unigrad, and no thread left
        ]
    return finish(start(launch + args, env), timeout=600)


@pytest.mark.parametrize(
    "method",
    [
        {"method": "unigrad"},
        {"method": "unigrad", "compile": "step"},  # the compiled step under DDP (issue 34)
        {"method": "simclr", "form": "loss"},
        # the bank is empty at step 1 (no negatives, no gradient): compare step 2's update,
        # each run from its own step-1 weights (one step per epoch, epoch checkpoints kept)
        {
            "method": "moco",
            "form": "loss",
            "bank_size": 40,
            "max_steps": 2,
            "batch_size": 48,
            "base_lr": 200.0,
        },
        {"method": "vicreg", "form": "loss"},
        {"method": "barlow_twins", "form": "grad", "variant": "f"},
        {"method": "barlow_twins", "form": "loss"},
    ],
    ids=lambda m: "-".join(str(v) for v in m.values()),
)
def test_torchrun_two_ranks_match_one_process(tmp_path, tiny_folder, method):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({**DDP_CFG, **method, "data": str(tiny_folder)}))
    states = []
    for nproc in (1, 2):
        out = tmp_path / f"run{nproc}"
        args = ["pretrain", "--config", str(cfg), "--out", str(out), "--quiet", "--json"]
        res = _run(args, nproc)
        # a crash names what the run had written (a last.ckpt means it died after its step)
        written = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
        assert res.returncode == 0, f"exit {res.returncode}, wrote {written}\n{res.stderr[-3000:]}"
        # one result, from rank 0 (the group ended after it printed, not before)
        assert [line[:1] for line in res.stdout.splitlines()].count("{") == 1, res.stdout
        states.append(load_checkpoint(out / "last.ckpt"))
        assert sorted(p.name for p in out.iterdir() if p.suffix == ".yaml") == ["config.yaml"]
        assert (out / ".lock").read_text().strip().isdigit()  # one holder: rank 0
    one, two = states
    steps = method.get("max_steps", 1)
    assert one["step"] == two["step"] == steps
    if steps == 1:
        init = initial_model({**DDP_CFG, **method, "data": str(tiny_folder)}, tmp_path / "init")
        befores = [init, init]
    else:
        prev = f"epoch-{steps - 1:04d}.ckpt"
        befores = [load_checkpoint(tmp_path / f"run{n}" / prev)["model"] for n in (1, 2)]
    for k, v in one["model"].items():
        if not v.is_floating_point():
            assert torch.equal(v, two["model"][k]), k
    b1, b2 = ({k: v for k, v in b.items() if v.is_floating_point()} for b in befores)
    err, floor = update_error(b1, one["model"], b2, two["model"])
    tol = TOL + 2 * floor
    assert floor < 1e-3, f"update too small against fp32 rounding (floor {floor:.1e})"
    assert err < tol, f"step {steps} update: relative difference {err:.2e} (tolerance {tol:.1e})"
    # the tolerance catches the classic bug, a gradient scaled by 1/world_size (or a missing
    # gather): an update of half the size fails it by orders of magnitude
    halved = {k: b2[k].double() + (two["model"][k].double() - b2[k]) / 2 for k in b2}
    bad, _ = update_error(b1, one["model"], b2, halved)
    assert bad > 100 * tol, bad
    for k, a in one["objective"].items():
        b = two["objective"][k]
        if not a.is_floating_point():
            assert torch.equal(a, b), k
            continue
        rel = float((a.double() - b.double()).norm() / a.double().norm().clamp_min(1e-12))
        assert rel < TOL, f"objective.{k}: relative difference {rel:.2e}"
