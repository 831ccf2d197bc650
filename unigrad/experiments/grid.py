"""``unigrad compare``: a grid of pretraining runs under one protocol, and the table they make.

A grid file (``unigrad/grids/*.yaml``, or any user file of the same shape)::

    name: table3
    preset: cifar-quick          # base preset (a shipped name or a path)
    base: {target: momentum}     # overrides shared by every run
    seeds: [0, 1]
    runs:                        # explicit runs (each a dict of config overrides, optional name)
      - {name: b, method: simclr, form: grad, variant: b}
      - {name: e, method: directpred, variant: e, seeds: [0]}  # a run's own seeds
    product:                     # optional cartesian product applied to every run
      target: [stopgrad, momentum]

Runs go one after another (:mod:`unigrad.experiments.runner` trains them). A finished run
(``RUN/result.json``) is skipped (with a warning naming each training setting it differs in from
the grid now); an interrupted one (``RUN/last.ckpt``) is resumed. ``results.csv`` holds one row
per run, ``results.md`` the mean ± std over seeds in the shape of the paper's Table 2 / Table 3,
followed by the spreads that say whether a difference between two rows means anything
(:func:`spread_summary`).
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import math
import re
import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unigrad.config import KEYS, build_config, keys_tagged, load_yaml, shipped
from unigrad.errors import UserError
from unigrad.experiments.rows import row_label
from unigrad.methods import get_method

GRID_KEYS = {"name", "description", "preset", "base", "seeds", "runs", "product"}


@dataclass
class RunSpec:
    name: str  # group name (without seed)
    seed: int
    overrides: dict[str, Any]
    rung: str = ""  # the grid's product values, e.g. "epochs=16" ("" without a product)
    base: str = ""  # the run's name without the product values

    @property
    def run_id(self) -> str:
        return f"{self.name}-s{self.seed}"


#: what a loss-form run and its gradient-form twin may differ in
_FORM_KEYS = frozenset({"form", "variant", "seed"})


def twin_key(spec: RunSpec) -> str:
    """What the grid sets for a run besides its form and seed: a loss-form group and a
    gradient-form group are compared as twins only where these agree (a diagnostic that changes
    one more setting is nobody's twin)."""
    return repr(sorted((k, v) for k, v in spec.overrides.items() if k not in _FORM_KEYS))


def grid_names() -> list[str]:
    return shipped("grids")


def load_grid(name_or_path: str) -> dict[str, Any]:
    """A shipped grid by name or a grid file by path, with its keys checked."""
    grid = load_yaml(name_or_path, package="grids")
    unknown = set(grid) - GRID_KEYS
    if unknown:
        raise UserError(
            f"{name_or_path}: unknown grid keys {sorted(unknown)}; valid: {sorted(GRID_KEYS)}"
        )
    return grid


def expand(grid: dict[str, Any]) -> list[RunSpec]:
    """Runs x product x seeds, named ``<run name or values>-s<seed>``; a run may list its own
    ``seeds`` (a second seed only where the first was close)."""
    runs = grid.get("runs") or [{}]
    product = grid.get("product") or {}
    keys = list(product)
    combos = [dict(zip(keys, vals, strict=True)) for vals in itertools.product(*product.values())]
    out = []
    for run in runs:
        run = dict(run)
        base_name = run.pop("name", None)
        seeds = run.pop("seeds", None) or grid.get("seeds") or [0]  # a run's own, else the grid's
        for combo in combos:
            overrides = {**run, **combo}
            parts = [base_name] if base_name else [str(v) for v in run.values()]
            base = "-".join(p for p in parts if p) or "run"
            name = "-".join([base, *(str(v) for v in combo.values())])
            rung = ", ".join(f"{k}={v}" for k, v in combo.items())
            for seed in seeds:
                out.append(RunSpec(name, int(seed), {**overrides, "seed": int(seed)}, rung, base))
    ids = [r.run_id for r in out]
    if len(set(ids)) != len(ids):
        raise UserError("grid produces duplicate run names; give each run a distinct `name`")
    return out


def run_configs(
    grid: dict[str, Any], out: Path, data_args: dict[str, Any], extra: dict[str, Any]
) -> list[tuple[RunSpec, Any]]:
    """Resolve (and validate) every run's config before starting any."""
    preset = load_yaml(grid["preset"]) if grid.get("preset") else {}
    base = grid.get("base") or {}
    cfgs = []
    for spec in expand(grid):
        layers = [preset, base, spec.overrides, data_args, extra, {"out": str(out / spec.run_id)}]
        try:
            cfgs.append((spec, build_config(*layers)))
        except UserError as e:
            raise UserError(f"run {spec.run_id}: {e}") from None
    return cfgs


def _resolved(cfg: Any) -> tuple[Any, Any, dict[str, Any]]:
    """A run's method spec, its form (with the sample set the config picks) and its
    hyperparameters with the defaults filled in."""
    spec = get_method(cfg.method)
    form = spec.form(cfg.form, cfg.variant)
    if cfg.sample_set:
        form = form.with_set(cfg.sample_set)
    return spec, form, spec.resolve(form, cfg.proj_dim, cfg.hparams)


def describe(cfg: Any) -> dict[str, Any]:
    """Table 2 columns of a run's method."""
    spec, form, hp = _resolved(cfg)
    lam = hp["lambd"] if "lambd" in hp else form.default_lambda(cfg.proj_dim)
    return {
        "method": cfg.method,
        "form": form.kind,
        "row": row_label(form),
        "target": cfg.target or spec.target,
        "norm": form.norm,
        "pos_grad": form.pos_grad,
        "balance": form.balance_label if lam is None else f"{lam:g}",
        "neg_grad": form.neg_grad,
        "sample_set": form.sample_set,
    }


#: What the random-init baseline of a run depends on (fields tagged ``baseline``): the backbone's
#: initialisation and the evaluation protocol. Runs that agree on these share one baseline.
BASELINE_KEYS = keys_tagged("baseline")


def baseline_key(cfg: Any) -> tuple[Any, ...]:
    return tuple(getattr(cfg, k) for k in BASELINE_KEYS)


def backbone_label(cfg: Any) -> str:
    """The backbone as the random-init lines of ``results.md`` name it."""
    stem = ", CIFAR stem" if cfg.cifar_stem else ""
    return f"{cfg.backbone} x{cfg.width:g}{stem}, {cfg.image_size or 'data-sized'} px"


def init_scores(result: dict[str, Any]) -> dict[str, float]:
    """The random-init scores a run's result carries (``init_knn_top1`` ...), or {}."""
    return {k: v for k, v in result.items() if k.startswith("init_")}


FIELDS = [
    "run",
    "group",
    "seed",
    "backbone",
    "method",
    "form",
    "row",
    "target",
    "norm",
    "pos_grad",
    "balance",
    "neg_grad",
    "sample_set",
    "knn_top1",
    "knn_top5",
    "linear_top1",
    "linear_top5",
    "final_pos_sim",
    "final_channel_std",
    "init_knn_top1",
    "init_linear_top1",
    "wall_s",
    "img_per_s",
    "precision",
    "host",
]


def write_results(out: Path, rows: list[dict[str, Any]]) -> None:
    """``results.csv`` and ``results.md``; each row carries the ``init_*`` scores of its own
    random-init baseline (same seed and backbone) where one was measured."""
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    (out / "results.md").write_text(results_markdown(rows))


def _finite(vals: Iterable[float | None]) -> list[float]:
    """The values that were measured: drops ``None`` and NaN (a run without that evaluation)."""
    return [float(v) for v in vals if v is not None and v == v]


def _mean_std(vals: list[float | None]) -> str:
    vals = _finite(vals)
    if not vals:
        return "-"
    if len(vals) == 1:
        return f"{vals[0]:.2f}"
    return f"{statistics.mean(vals):.2f} ± {statistics.stdev(vals):.2f}"


def _groups(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    return groups


def _distinct(groups: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """The groups less any whose runs repeat an earlier group's results: a grid may list one
    configuration under two names (``projector``'s depth 3 and width 512), and counting it twice
    would understate the spreads."""
    seen: set[tuple[Any, ...]] = set()
    out = {}
    for g, rs in groups.items():
        key = tuple(sorted((r.get("seed"), r.get("knn_top1"), r.get("linear_top1")) for r in rs))
        if key not in seen:
            seen.add(key)
            out[g] = rs
    return out


def spread_summary(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown bullets: seed-to-seed, loss-vs-gradient-form and between-group spread of kNN top-1.

    * seed-to-seed: pooled standard deviation over the groups with at least two seeds;
    * loss vs gradient: for each loss-form group, the difference of its mean to the group of the
      same method and target that uses the method's default gradient form (its Table 2 row) and
      sets nothing else differently (rows' ``twin``, :func:`twin_key`, where they carry one);
    * between groups: the range and standard deviation of the group means, within each rung
      of the grid's product (a budget ladder compares methods at one budget, not across).

    A group whose runs repeat another's results counts once (:func:`_distinct`).
    """
    groups = _distinct(_groups(rows))
    vals = {g: _finite(x.get("knn_top1") for x in rs) for g, rs in groups.items()}
    means = {g: statistics.mean(v) for g, v in vals.items() if v}
    out = []
    sds = [statistics.stdev(v) for v in vals.values() if len(v) >= 2]
    if sds:
        pooled = math.sqrt(statistics.mean(s * s for s in sds))
        out.append(
            f"- seed to seed: pooled std {pooled:.2f} over {len(sds)} groups "
            f"(largest {max(sds):.2f})"
        )
    for g, rs in groups.items():
        r = rs[0]
        if r["form"] != "loss" or g not in means:
            continue
        spec = get_method(r["method"])
        if not spec.grads:
            continue
        ref = spec.form("grad")
        twin = [
            h
            for h, hs in groups.items()
            if h in means
            and hs[0]["form"] == "grad"
            and hs[0]["method"] == r["method"]
            and hs[0]["target"] == r["target"]
            and hs[0]["row"] == row_label(ref)
            and hs[0].get("twin") == r.get("twin")
        ]
        for h in twin:
            d = means[g] - means[h]
            out.append(f"- loss form {g} minus gradient form {h}: {d:+.2f}")
    rungs: dict[str, dict[str, float]] = {}
    for g, m in means.items():
        rungs.setdefault(groups[g][0].get("rung") or "", {})[g] = m
    for rung, ms in sorted(rungs.items(), key=lambda kv: _rung_order(kv[0])):
        if len(ms) < 2:
            continue
        lo, hi = min(ms, key=ms.__getitem__), max(ms, key=ms.__getitem__)
        sd = f", std {statistics.stdev(ms.values()):.2f}" if len(ms) > 2 else ""
        out.append(
            f"- between groups{f' ({rung})' if rung else ''}: {ms[lo]:.2f} ({lo}) to "
            f"{ms[hi]:.2f} ({hi}), range {ms[hi] - ms[lo]:.2f}{sd}"
        )
    return out


def _rung_order(rung: str) -> list[Any]:
    """Sort key of a rung label: numbers numerically ("epochs=4" before "epochs=16")."""
    parts = re.split(r"(\d+(?:\.\d+)?)", rung)
    return [(0, float(x)) if i % 2 else (1, x) for i, x in enumerate(parts)]


def _gain(rs: list[dict[str, Any]], metric: str) -> str:
    """Mean over seeds of (run - random-init backbone of the same seed), '-' if unmeasured."""
    pairs = [(r.get(metric), r.get(f"init_{metric}")) for r in rs]
    gains = _finite(v - v0 for v, v0 in pairs if v is not None and v0 is not None)
    return f"{statistics.mean(gains):+.2f}" if len(gains) == len(rs) else "-"


def results_markdown(rows: list[dict[str, Any]]) -> str:
    groups = _groups(rows)
    lines = [
        "| run | method | form | row | target | norm | pos grad | balance | neg grad | set | "
        "kNN top-1 | linear top-1 | over random (kNN / linear) | seeds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, rs in groups.items():
        r = rs[0]
        knn = _mean_std([x.get("knn_top1") for x in rs])
        lin = _mean_std([x.get("linear_top1") for x in rs])
        lines.append(
            f"| {name} | {r['method']} | {r['form']} | {r['row']} | {r['target']} | "
            f"{r['norm']} | `{r['pos_grad']}` | {r['balance']} | `{r['neg_grad']}` | "
            f"{r['sample_set']} | {knn} | {lin} | "
            f"{_gain(rs, 'knn_top1')} / {_gain(rs, 'linear_top1')} | {len(rs)} |"
        )
    # one line per distinct baseline; the backbone is named only when the grid varies it
    inits = {
        (int(r["seed"]), r.get("backbone", ""), r["init_knn_top1"], r.get("init_linear_top1"))
        for r in rows
        if r.get("init_knn_top1") is not None
    }
    if inits:
        named = len({b for _, b, _, _ in inits}) > 1
        lines += ["", 'Random-init backbone (the baseline of the "over random" column):', ""]
        lines += [
            f"- seed {s}{f' ({b})' if named else ''}: kNN top-1 {k:.2f}"
            + ("" if lin is None else f", linear top-1 {lin:.2f}")
            for s, b, k, lin in sorted(inits, key=lambda x: x[:3])
        ]
    spread = spread_summary(rows)
    if spread:
        lines += ["", "Spread of kNN top-1 (points):", "", *spread]
    if hosts := host_summary(rows):
        lines += ["", f"Hosts and precisions: {hosts}."]
    if warning := mixed_precision_warning(rows):
        lines += ["", f"**Warning**: {warning}"]
    return "\n".join(lines) + "\n"


def host_summary(rows: list[dict[str, Any]]) -> str:
    """Where the runs ran: ``NVIDIA H200, fp32`` when all agree, else the count of each, e.g.
    ``NVIDIA H200, fp32: 4 runs; not recorded: 4 runs`` (results that predate the ``host``
    field are not recorded); "" when none is recorded."""
    by: dict[str, int] = {}
    for r in rows:
        where = ", ".join(x for x in (r.get("host"), r.get("precision")) if x) or "not recorded"
        by[where] = by.get(where, 0) + 1
    if len(by) < 2:
        return next(iter(by)) if by and "not recorded" not in by else ""
    return "; ".join(f"{k}: {n} run{'s' * (n > 1)}" for k, n in sorted(by.items()))


def mixed_precision_warning(rows: list[dict[str, Any]]) -> str | None:
    """A sentence naming the runs' precisions when one grid mixes them (results that predate
    the ``precision`` field are not counted)."""
    by: dict[str, list[str]] = {}
    for r in rows:
        if r.get("precision"):
            by.setdefault(r["precision"], []).append(r["run"])
    if len(by) < 2:
        return None
    parts = "; ".join(f"{p}: {', '.join(runs)}" for p, runs in sorted(by.items()))
    return f"this grid mixes precisions ({parts}); rerun with one --set amp=... to compare them"


# Keys that do not change what a run learns (paths, logging, system); `amp` is left to
# mixed_precision_warning, which reads the precision each run recorded.
#: Not what a run learns from (fields tagged ``untrained``: paths, logging, speed); form,
#: target and hparams are compared as resolved instead.
_NOT_TRAINING = set(keys_tagged("untrained"))


def _training_settings(cfg: Any) -> dict[str, Any]:
    """What a run learns from: the method as resolved (form, target, every hyperparameter with
    its default filled in) and the training keys."""
    spec, form, hp = _resolved(cfg)
    out = {k: getattr(cfg, k) for k in KEYS if k not in _NOT_TRAINING}
    return {**out, "form": form.key, "target": cfg.target or spec.target, **hp}


def stored_differences(cfg: Any, run_dir: Path, unchecked: tuple[str, ...] = ()) -> list[str]:
    """``key: stored -> grid`` for each training setting (but the ``unchecked`` ones) where the
    finished run in ``run_dir`` (its config.yaml) differs from what the grid now asks; empty
    when they agree or the run recorded no config."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return []
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # its own warm-up note
            stored = _training_settings(build_config(load_yaml(str(path))))
    except UserError as e:
        return [f"config.yaml no longer loads ({e})"]
    now = _training_settings(cfg)
    return [
        f"{k}: {stored.get(k)!r} -> {v!r}"
        for k, v in now.items()
        if stored.get(k) != v and k not in unchecked
    ]


def load_result(run_dir: Path) -> dict[str, Any] | None:
    p = run_dir / "result.json"
    return json.loads(p.read_text()) if p.is_file() else None


def save_result(run_dir: Path, result: dict[str, Any]) -> None:
    tmp = run_dir / "result.json.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(run_dir / "result.json")


def timed(fn: Any, *args: Any, **kw: Any) -> tuple[Any, float]:
    t = time.perf_counter()
    return fn(*args, **kw), time.perf_counter() - t
