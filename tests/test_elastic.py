"""Long runs on many machines (issue 36), with 2 gloo processes on the CPU.

* A torchrun restart resumes by itself: a stop signal caught by one rank stops every rank at the
  same step with one checkpoint, rank 0 (the lock holder) killed mid-run is restarted from the
  newest checkpoint, and the run ends bit-identical to an uninterrupted one.
* Two torchrun agents started as two nodes (c10d rendezvous on localhost) train exactly as
  one node with two processes. The interrupted single-node run above is compared with this
  uninterrupted two-node run: equal, they show both claims with one launch less (each launch
  costs seconds of Python start-up).
* A refusal on one rank (the run directory's lock, checked by rank 0 only) ends every rank with
  the same one-line message, within a timeout (no hang).
"""

import fcntl
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY, assert_same_tree, make_image_folder
from test_ddp import _free_port, finish, start

from unigrad.engine.checkpoint import load_checkpoint

REPO = Path(__file__).parents[1]
#: ``unigrad`` with a check that its process group ends with main() (tests/torchrun_exit.py)
EXIT = str(REPO / "tests" / "torchrun_exit.py")
#: 48 images, 8 a step: 6 steps an epoch, 12 in all; checkpoints at 3, 6, 9, 12; the ranks
#: agree on a stop at the log boundaries 4, 8, 12.
CFG = {
    **TINY,
    "method": "simsiam",
    "norm": "gn",
    "batch_size": 8,
    "epochs": 2,
    "ckpt_every": 3,
    "log_every": 4,
    "diag_every": 0,
    "knn_every": 0,
    "deterministic": True,
    "amp": "off",
}
#: Every launch ends well within this, or it hangs.
TIMEOUT = 240


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    root = tmp_path_factory.mktemp("elastic")
    data = make_image_folder(root / "data", splits=("train",))  # no eval split: no evaluation
    path = root / "cfg.yaml"
    path.write_text(yaml.safe_dump({**CFG, "data": str(data)}))
    return path


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def torchrun(launch: list[str], program: list[str], **env: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", *launch, *program]
    return finish(start(cmd, {**_env(), **env}), TIMEOUT)


def pretrain(config: Path, out: Path) -> list[str]:
    return ["pretrain", "--config", str(config), "--out", str(out), "--quiet"]


@pytest.fixture(scope="module")
def two_nodes(config, tmp_path_factory):
    """The final checkpoint of an uninterrupted run on two torchrun agents ("nodes"), one
    process each, meeting at a c10d rendezvous on localhost."""
    out = tmp_path_factory.mktemp("two_nodes") / "run"
    port = _free_port()
    launch = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
        "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=two-nodes",
    ]  # fmt: skip
    # one agent hosts the rendezvous store, as the node named in the endpoint does on a
    # cluster; left to guess (both match 127.0.0.1), the two raced to host it
    agents = [
        start([*launch, f"--rdzv-conf=is_host={host}", EXIT, *pretrain(config, out)], _env())
        for host in (1, 0)
    ]
    try:
        for done in [finish(a, TIMEOUT) for a in agents]:
            assert done.returncode == 0, done.stdout[-1000:] + done.stderr[-3000:]
    finally:  # one agent past the timeout: the other goes too
        for a in agents:
            if a.poll() is None:
                os.killpg(a.pid, signal.SIGKILL)
    return load_checkpoint(out / "last.ckpt")


def test_torchrun_restarts_resume_and_equal_two_nodes(config, two_nodes, tmp_path):
    """No --resume on the command line: restart 1 follows a stop signal that only rank 1
    caught (at step 2), restart 2 follows rank 0's SIGKILL at step 8 (tests/torchrun_faults.py).
    """
    out = tmp_path / "run"
    launch = ["--nproc-per-node=2", f"--master-port={_free_port()}", "--max-restarts=2"]
    res = torchrun(launch, [str(REPO / "tests" / "torchrun_faults.py"), *pretrain(config, out)])
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    # both ranks stopped at the agreed log boundary, step 4, where rank 0 alone wrote the
    # only checkpoint of that step (no regular one: ckpt_every is 3); it says so once
    assert res.stdout.count("stopped by signal 15; checkpoint written") == 1, res.stdout
    resumed = [line for line in res.stdout.splitlines() if line.startswith("resumed from")]
    assert resumed == [
        f"resumed from {out / 'last.ckpt'} at step 4",  # restart 1: after the stop
        f"resumed from {out / 'last.ckpt'} at step 6",  # restart 2: rank 0 killed at step 8
    ], res.stdout
    final = load_checkpoint(out / "last.ckpt")
    assert final["step"] == 12
    assert_same_tree(final, two_nodes, skip=frozenset({"out"}))  # the run directory aside
    assert not list(out.glob(".*.tmp*"))  # no half-written checkpoint left


def test_a_crash_after_ddp_is_built_leaves_no_gloo_thread(config, tmp_path):
    """A bug (no user error) on every rank at step 2: the traceback, a failed launch, and no
    gloo thread after main() (the traceback's frames held the trainer, and it the group)."""
    launch = ["--nproc-per-node=2", f"--master-port={_free_port()}"]
    faults = str(REPO / "tests" / "torchrun_faults.py")
    res = torchrun(launch, [faults, *pretrain(config, tmp_path / "run")], UNIGRAD_TEST_CRASH="2")
    assert res.returncode != 0
    assert "RuntimeError: injected crash after step 2" in res.stderr, res.stderr[-3000:]
    assert "gloo threads alive" not in res.stderr, res.stderr[-3000:]


def test_refusal_on_one_rank_stops_every_rank_with_one_message(config, tmp_path):
    """Rank 0 alone checks the lock; without agreement rank 1 would go on into DDP's first
    collective and die there with a traceback (or wait for the timeout)."""
    out = tmp_path / "run"
    out.mkdir()
    with open(out / ".lock", "w") as held:  # another unigrad process holds the run
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write(f"{os.getpid()}\n")
        held.flush()
        logs = tmp_path / "logs"  # each rank's stderr in a file of its own
        launch = ["--nproc-per-node=2", f"--master-port={_free_port()}", f"--log-dir={logs}"]
        res = torchrun([*launch, "--redirects=2"], [EXIT, *pretrain(config, out)])
    assert res.returncode != 0
    ranks = sorted(logs.rglob("stderr.log"), key=lambda p: p.parent.name)
    assert [p.parent.name for p in ranks] == ["0", "1"], res.stderr[-3000:]
    texts = [p.read_text().strip() for p in ranks]
    lines = [t.splitlines()[-1] if t else "" for t in texts]
    assert lines[0] == lines[1], texts
    assert lines[0].startswith("error: ") and len(texts[0].splitlines()) == 1, texts
    assert f"is in use by another unigrad process (PID {os.getpid()})" in lines[0]


# ---------------------------------------------------------------- in-process checks (no launch)
@pytest.mark.parametrize(
    "device,cuda,backend",
    [
        ("cpu", True, "gloo"),
        ("auto", True, "nccl"),
        ("cuda", True, "nccl"),
        ("auto", False, "gloo"),
    ],
)
def test_backend_follows_the_configured_device(monkeypatch, device, cuda, backend):
    from torch.distributed import HashStore

    from unigrad.core import dist as udist

    chosen = {}
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: None)
    monkeypatch.setattr(udist, "rendezvous", lambda url: iter([(HashStore(), 0, 2)]))
    monkeypatch.setattr(udist.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(udist.dist, "init_process_group", lambda **kw: chosen.update(kw))
    assert udist.setup_from_env(device)
    assert chosen["backend"] == backend and (chosen["rank"], chosen["world_size"]) == (0, 2)


def test_an_error_on_another_rank_is_raised_here_with_its_message(monkeypatch):
    from unigrad.core import dist as udist
    from unigrad.errors import UserError

    monkeypatch.setattr(udist, "is_dist", lambda: True)
    monkeypatch.setattr(udist, "rank", lambda: 0)
    monkeypatch.setattr(udist, "gather_object", lambda mine: [mine, ("RUN is locked", 2, True)])
    with pytest.raises(UserError, match=r"^RUN is locked$") as e, udist.agreed_errors():
        pass  # this rank did fine
    assert e.value.exit_code == 2
    monkeypatch.setattr(udist, "gather_object", lambda mine: [mine, ("KeyError: 'x'", 1, False)])
    with pytest.raises(UserError, match=r"rank 1 failed \(KeyError: 'x'\)"), udist.agreed_errors():
        pass
    monkeypatch.setattr(udist, "gather_object", lambda mine: [mine, None])
    with udist.agreed_errors():  # nobody failed
        pass


def test_divergence_exit_reads_checkpoints_without_a_collective(monkeypatch, tmp_path):
    """Every rank reads the file alike; the old check all-reduced a CPU tensor (NCCL refuses)."""
    from unigrad.engine import checkpoint as ckpt
    from unigrad.engine.resume import good_checkpoint

    ckpt.save_checkpoint({"w": torch.ones(3)}, tmp_path / "last.ckpt")
    ckpt.save_checkpoint({"w": torch.tensor([float("nan")])}, tmp_path / "last.ckpt")

    def no_collective(*a, **k):
        raise AssertionError("a collective in the divergence exit")

    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "all_reduce", no_collective)
    assert good_checkpoint(tmp_path) == tmp_path / "last.prev.ckpt"
