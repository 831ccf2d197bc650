"""Put what a GPU session needs and the machine lacks into ``bench/carry`` (ignored by git), to
name in the device call's ``carry`` (issue 44, item 3): the CIFAR-10 split as one file and the
wheels of the packages the machine's image does not have (omegaconf and its antlr4 runtime).

    .venv/bin/python bench/pack_inputs.py [--data ../shared/data/cifar10] [--out bench/carry]

* ``cifar10.tar.gz``: the ImageFolder tree (``train/`` and ``val/``) with its files as they are
  (JPEG: decoded there exactly as here): 16 MiB for the 45,000 + 5,000 images, their repeated
  JPEG headers removed by gzip; the decoded uint8 arrays would be 184 MB before compression.
  ``bench/gpu_session.py --data bench/carry/cifar10.tar.gz`` unpacks it on the machine.
* ``wheels/``: pure-Python wheels of omegaconf (and antlr4-python3-runtime, which omegaconf
  before 2.4 needs) at the versions installed here (antlr4 4.9 is on the index only as a source
  archive: pip builds its wheel here). ``bench/gpu_session.sh`` installs them, offline, and
  stops if they do not import.

Stops with one line when the carried files and the tracked tree together pass 64 MiB.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CARRY_LIMIT = 64 * 2**20
#: the packages unigrad needs that the GPU machine's image lacks (device/KINDS.md's list)
MISSING = ("omegaconf", "antlr4-python3-runtime")


def pack_data(data: Path, archive: Path) -> None:
    """``data``'s train/ and val/ into ``archive`` (gzip, files in sorted order)."""
    splits = [data / s for s in ("train", "val")]
    if not all(s.is_dir() for s in splits):
        sys.exit(f"error: {data} has no train/ and val/ folders; pass --data DIR of CIFAR-10")
    tmp = archive.with_suffix(".part")
    with tarfile.open(tmp, "w:gz") as tar:
        for split in splits:
            for path in sorted(split.rglob("*")):
                if path.is_file():
                    tar.add(path, arcname=path.relative_to(data).as_posix(), recursive=False)
    tmp.replace(archive)


def installed(name: str) -> str | None:
    """The version of ``name`` installed here (None: not installed, e.g. antlr4 under
    omegaconf 2.4, which no longer needs it)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def fetch_wheels(folder: Path) -> None:
    """Pure-Python wheels of :data:`MISSING` at the versions installed here."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.whl"):
        old.unlink()
    pins = [f"{name}=={installed(name)}" for name in MISSING if installed(name)]
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(folder), *pins]
    if subprocess.run(cmd).returncode != 0:
        sys.exit(f"error: pip could not make the wheels {pins}; is the package index reachable?")


def tracked_bytes() -> int:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    names = [n for n in files.stdout.decode().split("\0") if n]
    return sum((ROOT / n).stat().st_size for n in names if (ROOT / n).is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "cifar10")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "carry")
    ap.add_argument("--no-data", action="store_true", help="the wheels only")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    if not a.no_data:
        pack_data(a.data, a.out / "cifar10.tar.gz")
    fetch_wheels(a.out / "wheels")
    carried = sum(p.stat().st_size for p in a.out.rglob("*") if p.is_file())
    tree = tracked_bytes()
    for p in sorted(a.out.rglob("*")):
        if p.is_file():
            print(f"{p.relative_to(a.out)}: {p.stat().st_size / 2**20:.2f} MiB")
    print(f"carried {carried / 2**20:.1f} MiB + tracked tree {tree / 2**20:.1f} MiB = "
          f"{(carried + tree) / 2**20:.1f} MiB of the 64 MiB a device call takes")  # fmt: skip
    if carried + tree > CARRY_LIMIT:
        sys.exit("error: over the 64 MiB a device call carries; leave the data out (--no-data) "
                 "or carry a smaller split")  # fmt: skip


if __name__ == "__main__":
    main()
