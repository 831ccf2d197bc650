"""The prepared GPU run (issue 44, items 1, 2 and 5): its return fits the device machine's limits
(at most 8 files, 2 folders down, 16 MiB each), its archive leaves checkpoints out and unpacks
into a repository, and the whole run rehearsed on the CPU (``--device cpu --tiny``) ends inside
its deadline, passes the checker, unpacks and re-tabulates."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import gpu_return  # noqa: E402


def _write(path: Path, size: int = 10) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)  # sparse: a large size costs no disk
    return path


def test_the_checker_passes_a_return_within_the_limits(tmp_path):
    for name in ("session.tgz", "summary.md", "session.log", "a/b/deep.json"):
        _write(tmp_path / name)
    assert gpu_return.check(tmp_path) == []


@pytest.mark.parametrize(
    ("files", "broken"),
    [
        ([f"f{i}.json" for i in range(9)], "9 files"),
        (["a/b/c/result.json"], "3 folders down"),
        (["run log.txt"], "a name with characters"),
    ],
)
def test_the_checker_names_each_broken_limit(files, broken, tmp_path):
    for name in files:
        _write(tmp_path / name)
    problems = gpu_return.check(tmp_path)
    assert len(problems) == 1 and broken in problems[0]


def test_the_checker_refuses_a_file_over_16_mib(tmp_path):
    _write(tmp_path / "session.tgz", 16 * 2**20 + 1)
    assert "16 MiB a file" in gpu_return.check(tmp_path)[0]


def _staged(tree: Path) -> None:
    run = tree / "bench" / "grid_results" / "budget" / "unigrad-grad-64-s0"
    for name in ("config.yaml", "metrics.csv", "result.json", "last.ckpt", "tb/events.out.x"):
        _write(run / name)
    _write(run / "events.out.tfevents.123.host")
    _write(run / ".lock")
    for name in ("results.md", "results.csv", "report/knn.png"):  # remade by --tabulate
        _write(run.parent / name)
    _write(tree / "bench" / "gpu_runs" / "t-cuda" / "summary.md")


def test_the_archive_leaves_checkpoints_out_and_unpacks_into_the_repository(tmp_path):
    tree, out, repo = tmp_path / "tree", tmp_path / "out", tmp_path / "repo"
    _staged(tree)
    out.mkdir()
    archive = gpu_return.pack(tree, out)
    with tarfile.open(archive) as tar:
        names = sorted(tar.getnames())
    run = "bench/grid_results/budget/unigrad-grad-64-s0"
    kept = ["bench/gpu_runs/t-cuda/summary.md"]
    kept += [f"{run}/{name}" for name in ("config.yaml", "metrics.csv", "result.json")]
    assert names == sorted(kept)
    written = gpu_return.unpack(out, repo)
    assert {p.relative_to(repo).as_posix() for p in written} == set(names)
    with pytest.raises(SystemExit, match="exist already"):
        gpu_return.unpack(out, repo)  # the committed results are not overwritten silently
    assert len(gpu_return.unpack(archive, repo, force=True)) == 4


def test_unpack_refuses_a_path_outside_the_repository(tmp_path):
    evil = _write(tmp_path / "x.json")
    with tarfile.open(tmp_path / "session.tgz", "w:gz") as tar:
        tar.add(evil, arcname="../escape.json")
    with pytest.raises(SystemExit, match="outside the repository"):
        gpu_return.unpack(tmp_path, tmp_path / "repo")


def test_the_session_script_fails_fast_with_a_clear_code_without_data(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, UNIGRAD_BENCH_DATA="")
    cmd = ["bash", "bench/gpu_session.sh", "--device", "cpu", "--data", str(tmp_path / "none"),
           "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 5, proc.stdout + proc.stderr
    row = next(r for r in (tmp_path / "out" / "summary.md").read_text().splitlines()
               if r.startswith("| preflight"))  # fmt: skip
    # its seconds are the imports' (under 30 on a quiet host; not asserted: shared CI cores)
    assert "no data" in row and float(row.split("|")[3]) >= 0
    assert gpu_return.check(tmp_path / "out") == []


@pytest.mark.slow
def test_the_cpu_rehearsal_ends_in_time_fits_the_return_and_retabulates(tmp_path):
    """The whole session with ``--device cpu --tiny`` (minutes on 2 shared cores)."""
    out, minutes = tmp_path / "out", 6  # the sections after bf16 end skipped by the deadline
    env = dict(os.environ, PYTHON=sys.executable, UNIGRAD_CACHE=str(tmp_path / "cache"))
    env.pop("UNIGRAD_BENCH_DATA", None)
    cmd = ["bash", "bench/gpu_session.sh", "--device", "cpu", "--tiny", "--minutes", str(minutes),
           "--out", str(out), "--work", str(tmp_path / "work")]  # fmt: skip
    t = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    elapsed = time.monotonic() - t
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert elapsed < minutes * 60 + 30  # the wrapper's hard stop: 30 s after the deadline
    assert gpu_return.check(out) == []
    summary = (out / "summary.md").read_text()
    for section in ("preflight", "step vs eager", "ladder", "bf16 quick network", "done"):
        assert f"| {section}" in summary
    repo = tmp_path / "repo"
    gpu_return.unpack(out, repo)
    budget = repo / "bench" / "grid_results" / "budget"
    runs = [p.parent.name for p in budget.glob("*/result.json")]
    assert len(runs) == 1 and "-64-s0" in runs[0], summary
    tab = [sys.executable, "-m", "unigrad", "compare", "--grid", "budget", "--tabulate",
           "--out", str(budget)]  # fmt: skip
    proc = subprocess.run(tab, cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    group = runs[0].rsplit("-s", 1)[0]  # the table's row: the run without its seed
    assert f"| {group} |" in (budget / "results.md").read_text()
