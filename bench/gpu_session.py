"""One call of a lent GPU (issue 44): the measurements a GPU session owes, in order, inside a
deadline, each section's results written as it ends. Run through ``bench/gpu_session.sh``
(it installs the carried wheels and sets the deadline's hard stop).

    bash bench/gpu_session.sh [--device cuda|cpu] [--minutes 9] [--tiny] [--data DIR|TAR.GZ]

Sections (each a subprocess under ``timeout -k``, given what the deadline leaves):

0. preflight, in this process, in seconds: imports, versions, the device, the data in place
   (a ``.tar.gz`` from ``bench/pack_inputs.py`` is unpacked first). Exit 3: a package is
   missing; 4: no such device; 5: no data. Nothing else has run, so a second try still fits.
1. the ladder's exact configuration (``unigrad-grad-64-s0``), compiled vs eager from the same
   seed and views on the device, then both timed in fp32 (``bench/step_agreement.py``).
2. the gate: if ``step`` agreed and its measured speed lets a 64-epoch run finish in the time
   left, the next ladder run without a result (UniGrad first), compiled; eagerly if the compiled
   run fails and the eager one still fits.
3. bf16: eager vs ``step`` on the quick network (``bench/compile_step.py``).
4. what time allows, in this order: the fast pipeline's device draws, BYOL (learned predictor
   and EMA) eager vs ``step``, full-width ResNet-18 in bf16, the large-JPEG decode on the device.

Dropped, as answered or out of reach: the 27-configuration CPU-vs-GPU sweep (BENCHMARKS §8), NCCL
(one GPU) and the lightly anchor (lightly trains on the CPU in ``bench/vs_lightly.py``).

Everything is written into a staging tree in the repository's layout (the ladder's runs under
``bench/grid_results/budget/``, the rest under ``bench/gpu_runs/<UTC time>-<device>/``); after
every section ``$OUT`` gets ``session.tgz`` of it (``bench/gpu_return.py``), ``summary.md`` and
``session.log``: three files, within the machine's return limits. ``--tiny`` shrinks every
section to seconds (and compiles with dynamo's ``eager`` backend) to rehearse the run on a CPU.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from gpu_return import pack  # noqa: E402

PACKAGES = ("torch", "torchvision", "numpy", "PIL", "yaml", "omegaconf", "tqdm", "safetensors")
LADDER = ("unigrad-grad", "simclr-shared-eq20", "b-simclr-momentum", "e-asym-simplified")
#: --tiny: the ladder run at a size that trains in seconds
TINY_RUN = ["--set", "max_steps=2", "--set", "knn_baseline=false", "--linear-epochs", "1",
            "--set", "width=0.125", "--set", "batch_size=16", "--set", "image_size=16",
            "--set", "proj_dim=64", "--set", "proj_hidden=64"]  # fmt: skip
EXIT_IMPORT, EXIT_DEVICE, EXIT_DATA = 3, 4, 5
KILL_AFTER = 10  # seconds between timeout's SIGTERM (the trainer stops at a step) and SIGKILL
RESERVE = 15  # seconds kept for the last archive


class Session:
    """The deadline, the staging tree, the log and the summary of one session."""

    def __init__(self, a: argparse.Namespace) -> None:
        self.a, self.t0 = a, time.monotonic()
        self.deadline = self.t0 + a.minutes * 60
        self.out = Path(a.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.tree = Path(a.work or tempfile.mkdtemp(prefix="gpu-session-"))
        stamp = time.strftime("%Y-%m-%dT%H%MZ", time.gmtime())
        self.res = (
            self.tree / "bench" / "gpu_runs" / f"{stamp}-{a.device}{'-tiny' if a.tiny else ''}"
        )
        self.res.mkdir(parents=True, exist_ok=True)
        self.budget = self.tree / "bench" / "grid_results" / "budget"
        self.rows: list[tuple[str, str, float, str]] = []
        self.facts: dict[str, Any] = {}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def log(self, line: str) -> None:
        stamp = time.strftime("%H:%M:%S", time.gmtime())
        text = f"[gpu_session {stamp}, {self.left():.0f} s left] {line}"
        print(text, flush=True)
        with open(self.out / "session.log", "a") as f:
            f.write(text + "\n")

    def env(self) -> dict[str, str]:
        env = dict(os.environ, PYTHONUNBUFFERED="1", UNIGRAD_BENCH_DATA=str(self.facts["data"]))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        if self.a.tiny:  # a rehearsal checks the script, not the compiler (minutes on 2 cores)
            env.setdefault("UNIGRAD_COMPILE_BACKEND", "eager")
        return env

    def run(self, name: str, cmd: list[str], limit: float, log: Path) -> int:
        """``cmd`` (a Python script and its arguments) under ``timeout -k``, output to ``log``;
        at most ``limit`` seconds and never past the deadline's reserve."""
        if self.a.tiny:  # a rehearsal on shared CPU cores: only the deadline bounds a section
            limit = self.left()
        limit = int(min(limit, self.left() - RESERVE))
        if limit < 5:
            self.end(name, "skipped", 0.0, "no time left")
            return -1
        self.log(f"{name}: {' '.join(cmd)} (at most {limit} s)")
        t = time.monotonic()
        full = ["timeout", "-k", str(KILL_AFTER), str(limit), sys.executable, *cmd]
        with open(log, "w") as f:
            rc = subprocess.run(full, cwd=ROOT, env=self.env(), stdout=f, stderr=subprocess.STDOUT)
        last = next((ln for ln in reversed(log.read_text().splitlines()) if ln.strip()), "")
        # 124: stopped by SIGTERM; 137 or -9: by the SIGKILL that follows (timeout's group)
        status = "timed out" if rc.returncode in (124, 137, -9) else f"exit {rc.returncode}"
        self.end(name, status, time.monotonic() - t, last[:160])
        return rc.returncode

    def end(self, name: str, status: str, seconds: float, note: str) -> None:
        """Record a section's end, then write the summary and the archive."""
        self.rows.append((name, status, seconds, note))
        self.log(f"{name}: {status} ({seconds:.0f} s) {note}")
        self.write()

    def write(self) -> None:
        lines = [f"# GPU session {self.res.name}", "",
                 *(f"- {k}: {v}" for k, v in self.facts.items()), "",
                 "| section | status | seconds | last line |", "|---|---|---|---|",
                 *(f"| {n} | {s} | {t:.0f} | {x.replace('|', '/')} |"
                   for n, s, t, x in self.rows)]  # fmt: skip
        text = "\n".join(lines) + "\n"
        (self.out / "summary.md").write_text(text)
        (self.res / "summary.md").write_text(text)
        log = self.out / "session.log"
        (self.res / "session.log").write_text(log.read_text() if log.exists() else "")
        pack(self.tree, self.out)


def resolve_data(s: Session) -> Path | None:
    """The ImageFolder root: ``--data`` or ``$UNIGRAD_BENCH_DATA`` (a folder, or a ``.tar.gz``
    unpacked beside the staging tree); else a tiny generated folder with ``--tiny``, else the
    carried ``bench/carry/cifar10.tar.gz``, else ``../shared/data/cifar10``."""
    given = s.a.data or os.environ.get("UNIGRAD_BENCH_DATA") or ""
    carried = ROOT / "bench" / "carry" / "cifar10.tar.gz"
    if not given and not s.a.tiny and carried.is_file():
        given = str(carried)
    if not given and s.a.tiny:
        from tinydata import make_image_folder

        return make_image_folder(s.tree.parent / f"{s.tree.name}-data", per_class=64)
    if not given:
        given = str(ROOT.parent / "shared" / "data" / "cifar10")
    path = Path(given)
    if path.is_file() and path.name.endswith(".tar.gz"):
        folder = s.tree.parent / f"{s.tree.name}-data"
        with tarfile.open(path, "r:gz") as tar:
            tar.extractall(folder, filter="data")
        path = folder
    ok = all(
        (path / split).is_dir() and any((path / split).iterdir()) for split in ("train", "val")
    )
    return path if ok else None


def preflight(s: Session) -> int:
    """Section 0 (seconds): what the run needs is there; the exit code when it is not."""
    t = time.monotonic()
    for name in PACKAGES:
        try:
            mod = importlib.import_module(name)
        except ImportError as e:
            s.end("preflight", f"exit {EXIT_IMPORT}", time.monotonic() - t, f"cannot import {e}")
            return EXIT_IMPORT
        s.facts[name] = getattr(mod, "__version__", "?")
    import torch

    from unigrad.engine.trainer import Trainer  # noqa: F401  (the package imports whole)

    if s.a.device == "cuda" and not torch.cuda.is_available():
        s.end("preflight", f"exit {EXIT_DEVICE}", time.monotonic() - t, "no CUDA device")
        return EXIT_DEVICE
    if s.a.device == "cuda":
        s.facts["gpu"] = torch.cuda.get_device_name()
        s.facts["bf16"] = torch.cuda.is_bf16_supported()
    data = resolve_data(s)
    if data is None:
        why = "no data with train/ and val/ (--data, or bench/pack_inputs.py then carry)"
        s.end("preflight", f"exit {EXIT_DATA}", time.monotonic() - t, why)
        return EXIT_DATA
    s.facts["data"] = data
    s.facts["train images"] = sum(1 for p in (data / "train").rglob("*") if p.is_file())
    (s.res / "preflight.json").write_text(json.dumps({k: str(v) for k, v in s.facts.items()}))
    s.end("preflight", "ok", time.monotonic() - t, f"data {data}")
    return 0


def missing_runs(s: Session, rung: int) -> list[str]:
    """The ladder's runs of ``rung`` epochs with no result, in the repository or written here."""
    names = [f"{run}-{rung}-s0" for run in LADDER]
    repo = ROOT / "bench" / "grid_results" / "budget"
    return [
        n for n in names if not any((d / n / "result.json").is_file() for d in (repo, s.budget))
    ]


def ladder_run(s: Session, agreement: dict[str, Any]) -> None:
    """Section 2: the gate, then the next missing 64-epoch run if it fits the time left."""
    todo = missing_runs(s, 64)
    if not todo:
        return s.end("ladder", "skipped", 0.0, "every 64-epoch run has a result")
    run, eval_s = todo[0], 20 if s.a.tiny else 90
    steps = 2 if s.a.tiny else 64 * agreement.get("steps_per_epoch", 0)
    modes = ["step", "off"] if agreement.get("ok") else ["off"]
    for mode in modes:
        rate = agreement.get("step_img_s" if mode == "step" else "eager_img_s") or 0.0
        need = eval_s + (agreement.get("compile_s", 0) if mode == "step" else 0)
        need += steps * agreement.get("batch_size", 256) / rate if rate else float("inf")
        if need > s.left() - RESERVE:
            s.end(f"ladder {run} ({mode})", "skipped", 0.0,
                  f"needs ~{need:.0f} s at the measured speed, {s.left():.0f} s left")  # fmt: skip
            continue
        cmd = ["-m", "unigrad", "compare", "--grid", "budget", "--data", str(s.facts["data"]),
               "--out", str(s.budget), "--only", run, "--quiet", "--set", f"compile={mode}",
               "--set", f"device={s.a.device}", *(TINY_RUN if s.a.tiny else [])]  # fmt: skip
        s.budget.mkdir(parents=True, exist_ok=True)
        log = s.res / f"ladder-{run}-{mode}.log"
        s.run(f"ladder {run} ({mode}, ~{need:.0f} s)", cmd, need * 1.5 + 60, log)
        if (s.budget / run / "result.json").is_file():
            return None
    return None


def sections(s: Session) -> None:
    """Sections 1-4, in order, each within what the deadline leaves."""
    a, res, tiny = s.a, s.res, s.a.tiny
    data = str(s.facts["data"])
    size = ["--tiny"] if tiny else []
    agree = res / "step_agreement.json"
    counts = ["--steps", "2", "--time-steps", "2"] if tiny else ["--time-steps", "30"]
    cmd = ["bench/step_agreement.py", "--device", a.device, "--data", data, "--json", str(agree),
           *counts, *size]  # fmt: skip
    s.run("step vs eager, ladder config, fp32", cmd, 300, res / "step_agreement.md")
    agreement = json.loads(agree.read_text()) if agree.is_file() else {}
    ladder_run(s, agreement)
    steps = ["--steps", "2" if tiny else "20"]
    timed = [
        ("bf16 quick network", ["--amp", "bf16", "--families", "unigrad"], "w0.25-bf16", 150),
        ("device draws", None, "augment_draws", 150),
        ("BYOL fp32", ["--amp", "off", "--families", "byol"], "w0.25-byol-fp32", 150),
        ("full width bf16", ["--amp", "bf16", "--width", "1", "--families", "unigrad"],
         "w1-bf16", 180),
    ]  # fmt: skip
    for name, args, file, limit in timed:
        if args is None:
            cmd = ["bench/augment_draws.py", "--device", a.device, *steps,
                   *(["--batch", "32"] if tiny else [])]  # fmt: skip
        else:
            cmd = ["bench/compile_step.py", "--device", a.device, *args, *steps, *size,
                   "--json", str(res / f"throughput-{file}.json")]  # fmt: skip
        s.run(name, cmd, limit, res / f"throughput-{file}.md")
    if a.device == "cuda":  # the decode on the device needs a GPU
        cmd = ["bench/data_path.py", "--images", "400", "--epochs", "1"]
        s.run("large-JPEG decode", cmd, 120, res / "data_path.md")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--minutes", type=float, default=9.0)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--data", help="ImageFolder root or its .tar.gz (bench/pack_inputs.py)")
    ap.add_argument("--out", default=os.environ.get("OUT") or "runs/gpu_session")
    ap.add_argument("--work", help="the staging tree (default: a new temporary folder)")
    s = Session(ap.parse_args())
    s.log(f"start: device {s.a.device}, {s.a.minutes:g} min, tiny {s.a.tiny}, out {s.out}")
    rc = preflight(s)
    if rc:
        sys.exit(rc)
    sections(s)
    s.end("done", "ok", time.monotonic() - s.t0, f"{s.left():.0f} s of the deadline left")


if __name__ == "__main__":
    main()
