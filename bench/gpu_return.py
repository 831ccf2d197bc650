"""What a GPU session sends back, within the device machine's return limits (issue 44, item 2).

The machine returns at most 8 files from ``$OUT``, at most 2 folders down, 16 MiB each and
64 MiB together, named in letters, digits, '.', '_' and '-'. A session therefore writes
everything into a staging tree laid out as the repository commits it, and after every section
packs it into one archive, ``$OUT/session.tgz`` (checkpoints, weights and TensorBoard files
left out), beside ``summary.md`` and ``session.log``.

    python bench/gpu_return.py check OUT              # the return limits; exit 1 if broken
    python bench/gpu_return.py unpack OUT|ARCHIVE [--repo .] [--force]

``unpack`` writes the archive's files into the repository as they are (refusing to overwrite
a file unless ``--force``), so the results are committed as the session wrote them.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tarfile
from pathlib import Path

MAX_FILES, MAX_DEPTH = 8, 2
MAX_FILE_BYTES, MAX_TOTAL_BYTES = 16 * 2**20, 64 * 2**20
NAME = re.compile(r"^[A-Za-z0-9._-]+$")
ARCHIVE = "session.tgz"
#: never packed: checkpoints, weights, feature caches, TensorBoard event files, run locks
LEFT_OUT = re.compile(r"(\.ckpt|\.pt|\.pth|\.safetensors|\.tmp)$|^events\.out\.tfevents|^\.lock$")
#: a grid's tables and report, which ``unigrad compare --tabulate`` makes again (git ignores them)
REMADE = ("results.md", "results.csv")


def left_out(path: Path) -> bool:
    """Whether ``path`` (relative to the staging tree) stays out of the archive: see
    :data:`LEFT_OUT`, a ``tb`` folder's files, and a grid's tables and report."""
    folders = path.parts[:-1]
    if "grid_results" in folders and (path.name in REMADE or "report" in folders):
        return True
    return bool(LEFT_OUT.search(path.name)) or "tb" in folders


def pack(tree: Path, out: Path) -> Path:
    """Archive every file under ``tree`` (paths relative to it) into ``out/session.tgz``,
    atomically: a session killed while packing leaves the previous archive."""
    tmp = out / f".{ARCHIVE}.part"
    with tarfile.open(tmp, "w:gz") as tar:
        for path in sorted(p for p in tree.rglob("*") if p.is_file()):
            rel = path.relative_to(tree)
            if not left_out(rel):
                tar.add(path, arcname=rel.as_posix(), recursive=False)
    final = out / ARCHIVE
    os.replace(tmp, final)
    return final


def check(out: Path) -> list[str]:
    """The ways ``out`` breaks the return limits ([] when it keeps them)."""
    problems, total, files = [], 0, []
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out)
        if not NAME.match(path.name):
            problems.append(f"{rel}: a name with characters other than letters, digits, . _ -")
        if path.is_symlink():
            problems.append(f"{rel}: a link (links do not come back)")
        elif path.is_file():
            files.append(rel)
            size = path.stat().st_size
            total += size
            if len(rel.parts) - 1 > MAX_DEPTH:
                problems.append(f"{rel}: {len(rel.parts) - 1} folders down (at most {MAX_DEPTH})")
            if size > MAX_FILE_BYTES:
                problems.append(f"{rel}: {size / 2**20:.1f} MiB (at most 16 MiB a file)")
    if len(files) > MAX_FILES:
        problems.append(f"{len(files)} files (at most {MAX_FILES}): {[str(f) for f in files]}")
    if total > MAX_TOTAL_BYTES:
        problems.append(f"{total / 2**20:.1f} MiB in all (at most 64 MiB)")
    return problems


def unpack(source: Path, repo: Path, force: bool = False) -> list[Path]:
    """Write the archive's files (``source``: the archive, or the folder holding it) into
    ``repo``; returns the paths written. Refuses paths that leave ``repo`` and, unless
    ``force``, files that exist."""
    archive = source / ARCHIVE if source.is_dir() else source
    if not archive.is_file():
        sys.exit(f"error: no {ARCHIVE} in {source}; pass the session's OUT folder or archive")
    with tarfile.open(archive, "r:gz") as tar:
        members = [m for m in tar.getmembers() if m.isfile()]
        for m in members:
            if Path(m.name).is_absolute() or ".." in Path(m.name).parts:
                sys.exit(f"error: {archive} holds {m.name!r}, outside the repository; not unpacked")
        clash = [m.name for m in members if (repo / m.name).exists()]
        if clash and not force:
            sys.exit(f"error: {len(clash)} files exist already (first {clash[0]}); "
                     "pass --force to overwrite them")  # fmt: skip
        tar.extractall(repo, members=members, filter="data")
    return [repo / m.name for m in members]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="check OUT against the return limits")
    c.add_argument("out", type=Path)
    u = sub.add_parser("unpack", help="unpack the session's archive into the repository")
    u.add_argument("source", type=Path)
    u.add_argument("--repo", type=Path, default=Path("."))
    u.add_argument("--force", action="store_true")
    a = ap.parse_args()
    if a.cmd == "check":
        problems = check(a.out)
        for p in problems:
            print(f"return limit broken: {p}")
        n = sum(1 for p in a.out.rglob("*") if p.is_file())
        print(f"{a.out}: {n} files, {'within' if not problems else 'NOT within'} the limits")
        sys.exit(1 if problems else 0)
    written = unpack(a.source, a.repo, a.force)
    print(f"{len(written)} files written into {a.repo}")


if __name__ == "__main__":
    main()
