"""`unigrad compare`: grid expansion, shipped grids, skip/resume, result tables."""

import csv
import json
import statistics

import pytest
import yaml
from conftest import TINY

from unigrad.cli import main
from unigrad.experiments import grid as C


@pytest.mark.parametrize("name", C.grid_names())
def test_shipped_grids_resolve_to_valid_configs(name, tmp_path):
    grid = C.load_grid(name)
    runs = C.run_configs(grid, tmp_path, {"data": "unused"}, {})
    assert runs and len({s.run_id for s, _ in runs}) == len(runs)
    assert {"table2", "table3", "simsiam", "augment", "projector"} <= set(C.grid_names())


def test_table3_is_families_times_targets():
    specs = C.expand(C.load_grid("table3"))
    assert len(specs) == 9
    assert {s.overrides["target"] for s in specs} == {"stopgrad", "momentum", "momentum_pos"}


def test_expand_product_and_seeds():
    grid = {
        "runs": [{"name": "x", "method": "unigrad"}],
        "product": {"lambd": [1, 2]},
        "seeds": [0, 3],
    }
    ids = [s.run_id for s in C.expand(grid)]
    assert ids == ["x-1-s0", "x-1-s3", "x-2-s0", "x-2-s3"]
    assert [s.rung for s in C.expand(grid)] == ["lambd=1", "lambd=1", "lambd=2", "lambd=2"]
    assert C.expand({"runs": [{"name": "y"}]})[0].rung == ""
    own = C.expand({"runs": [{"name": "a"}, {"name": "b", "seeds": [0, 1]}], "seeds": [0]})
    assert [s.run_id for s in own] == ["a-s0", "b-s0", "b-s1"]
    assert "seeds" not in own[2].overrides


def test_unknown_grid_and_keys_are_refused(tmp_path):
    from unigrad.errors import UserError

    with pytest.raises(UserError, match="shipped grids"):
        C.load_grid("nope")
    bad = tmp_path / "g.yaml"
    bad.write_text("runz: []\n")
    with pytest.raises(UserError, match="unknown grid keys"):
        C.load_grid(str(bad))


def test_compare_runs_skips_and_tabulates(tmp_path, tiny_folder, capsys):
    grid = {
        "name": "mini",
        "base": {**TINY, "max_steps": 2},
        "seeds": [0, 1],
        "runs": [
            {"name": "uni", "method": "unigrad"},
            {"name": "bt-f", "method": "barlow_twins", "form": "grad", "variant": "f"},
        ],
    }
    gfile = tmp_path / "mini.yaml"
    gfile.write_text(yaml.safe_dump(grid))
    out = tmp_path / "grid"
    args = [
        "compare",
        "--grid",
        str(gfile),
        "--data",
        str(tiny_folder),
        "--out",
        str(out),
        "--linear-epochs",
        "2",
        "--quiet",
    ]
    assert main(args) == 0
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == ["uni-s0", "uni-s1", "bt-f-s0", "bt-f-s1"]
    assert all(0 <= float(r["knn_top1"]) <= 100 and r["linear_top1"] for r in rows)
    assert rows[2]["row"] == "f" and rows[2]["norm"] == "bn" and rows[2]["balance"] == "0.005"
    md = (out / "results.md").read_text()
    assert "| uni | unigrad | grad |" in md and "±" in md and "Random-init backbone" in md
    # one random-init baseline per seed, evaluated by that seed's first run, shared by the rest
    assert "init_knn_top1" in json.loads((out / "uni-s1" / "result.json").read_text())
    assert "init_knn_top1" not in json.loads((out / "bt-f-s1" / "result.json").read_text())
    assert rows[3]["init_knn_top1"] == rows[1]["init_knn_top1"] != ""
    assert "- seed 0: kNN top-1" in md and "- seed 1: kNN top-1" in md
    gain = float(rows[3]["knn_top1"]) - float(rows[3]["init_knn_top1"])
    bt = float(rows[2]["knn_top1"]) - float(rows[2]["init_knn_top1"])
    assert f"| {statistics.mean([bt, gain]):+.2f} / " in md.split("| bt-f |")[1].splitlines()[0]
    assert (out / "report" / "report.md").exists()
    # second call: everything is skipped; an unfinished run resumes from its checkpoint
    (out / "uni-s1" / "result.json").unlink()
    # a result copied in from another grid keeps its numbers but takes this grid's name
    copied = json.loads((out / "bt-f-s0" / "result.json").read_text())
    (out / "bt-f-s0" / "result.json").write_text(
        json.dumps(copied | {"run": "t2-s0", "group": "t2"})
    )
    capsys.readouterr()
    assert main(args) == 0
    log = capsys.readouterr().out
    assert log.count("done, skipped") == 3 and "[2/4] uni-s1\n" in log
    with open(out / "results.csv", newline="") as f:
        again = list(csv.DictReader(f))
    assert [r["run"] for r in again] == ["uni-s0", "uni-s1", "bt-f-s0", "bt-f-s1"]
    assert (
        again[2]["knn_top1"] == rows[2]["knn_top1"] and "t2" not in (out / "results.md").read_text()
    )
    # a grid edited after its runs finished: the stored runs are kept, and the changes named
    grid["runs"][1]["lambd"] = 0.01
    gfile.write_text(yaml.safe_dump(grid))
    capsys.readouterr()
    assert main(args) == 0
    captured = capsys.readouterr()
    assert captured.out.count("done, skipped") == 4
    warned = [line for line in captured.err.splitlines() if "other settings" in line]
    assert len(warned) == 2 and all("lambd: 0.005 -> 0.01" in w for w in warned)
    assert warned[0].startswith("warning: bt-f-s0 ")
    # --tabulate trains nothing: the unfinished run is named and left out of the tables
    (out / "uni-s1" / "result.json").unlink()
    assert main([*args, "--tabulate"]) == 0
    err = capsys.readouterr().err
    assert "1 of 4 runs not finished, left out of the tables: uni-s1" in err
    assert not (out / "uni-s1" / "result.json").exists()
    with open(out / "results.csv", newline="") as f:
        assert [r["run"] for r in csv.DictReader(f)] == ["uni-s0", "bt-f-s0", "bt-f-s1"]
    assert main([*args, "--only", "nothing-like-this"]) == 2
    assert "matches no run of grid" in capsys.readouterr().err


def test_compare_interrupted_exits_cleanly(tmp_path, tiny_folder, capsys, monkeypatch):
    from unigrad.engine.trainer import Interrupted, Trainer

    def stop(self):
        raise Interrupted(15, self.out / "last.ckpt")

    monkeypatch.setattr(Trainer, "fit", stop)
    gfile = tmp_path / "g.yaml"
    gfile.write_text(yaml.safe_dump({"name": "g", "base": TINY, "runs": [{"name": "uni"}]}))
    args = ["compare", "--grid", str(gfile), "--data", str(tiny_folder), "--out", str(tmp_path)]
    assert main([*args, "--quiet"]) == 128 + 15
    out = capsys.readouterr().out
    assert "stopped by signal 15" in out and "run the same command again" in out
    assert not (tmp_path / "uni-s0" / "result.json").exists()


def test_spread_summary_pairs_loss_with_its_gradient_row():
    def row(group, seed, knn, method="moco", form="grad", r="a", target="momentum", twin="[]"):
        cols = dict(method=method, form=form, row=r, target=target, twin=twin)
        return dict(group=group, seed=seed, knn_top1=knn, **cols)

    rows = [
        row("a-moco-grad", 0, 40.0),
        row("a-moco-grad", 1, 42.0),
        row("moco-loss", 0, 43.0, form="loss", r="-"),
        row("moco-loss", 1, 45.0, form="loss", r="-"),
        # another target, and a non-default gradient row: neither is moco-loss's twin
        row("a-moco-stopgrad", 0, 10.0, target="stopgrad"),
        row("e-asym", 0, 30.0, method="directpred", r="e"),
        # a diagnostic of the loss form with one more setting: nobody's twin
        row("moco-loss-tau", 0, 20.0, form="loss", r="-", twin="[('tau', 0.5)]"),
    ]
    lines = C.spread_summary(rows)
    assert lines[0].startswith("- seed to seed: pooled std 1.41 over 2 groups")
    assert "- loss form moco-loss minus gradient form a-moco-grad: +3.00" in lines
    assert sum("minus" in x for x in lines) == 1
    assert lines[-1].startswith("- between groups: 10.00 (a-moco-stopgrad) to 44.00 (moco-loss)")
    moco = {"method": "moco", "seed": 1}
    loss = C.RunSpec("moco-loss", 1, {**moco, "form": "loss"})
    grad = C.RunSpec("a-moco-grad", 1, {**moco, "form": "grad", "variant": "a"})
    other = C.RunSpec("x", 1, {**moco, "form": "loss", "tau": 0.5})
    assert C.twin_key(loss) == C.twin_key(grad) != C.twin_key(other)
    assert C.spread_summary(rows[:1]) == []
    # the same runs listed under a second name (projector's depth-3 and width-512) count once
    alias = [dict(r, group="alias") for r in rows[:2]]
    assert C.spread_summary(rows + alias) == lines


def test_between_group_spread_is_per_rung_of_the_product():
    def row(group, rung, knn):
        return dict(group=group, rung=rung, seed=0, knn_top1=knn, method="unigrad", form="grad")

    rows = [row("a-4", "epochs=4", 40.0), row("b-4", "epochs=4", 50.0),
            row("a-16", "epochs=16", 52.0), row("b-16", "epochs=16", 62.5)]  # fmt: skip
    lines = C.spread_summary(rows)
    assert lines == [
        "- between groups (epochs=4): 40.00 (a-4) to 50.00 (b-4), range 10.00",
        "- between groups (epochs=16): 52.00 (a-16) to 62.50 (b-16), range 10.50",
    ]  # rungs in numeric order, never a range across budgets


def test_random_init_lines_sort_seeds_and_name_varied_backbones():
    cols = dict(method="moco", form="grad", row="a", target="momentum", norm="l2", pos_grad="p")
    cols |= dict(balance="1", neg_grad="n", sample_set="bank", knn_top1=50.0, linear_top1=55.0)

    def row(seed, backbone, knn0):
        return dict(cols, group=backbone, seed=seed, backbone=backbone, init_knn_top1=knn0)

    one = [row(10, "r18", 30.0), row(2, "r18", 31.0), row(2, "r18", 31.0)]
    md = C.results_markdown(one)
    assert md.index("- seed 2: kNN top-1 31.00") < md.index("- seed 10: kNN top-1 30.00")
    assert md.count("- seed 2:") == 1
    two = C.results_markdown([*one, row(2, "r50", 33.0)])
    assert "- seed 2 (r18): kNN top-1 31.00" in two and "- seed 2 (r50): kNN top-1 33.00" in two
    # results written before the backbone was recorded still get their lines
    old = C.results_markdown([{k: v for k, v in r.items() if k != "backbone"} for r in one])
    assert "- seed 2: kNN top-1 31.00" in old
    # two baselines of one seed and backbone label (say, another eval split) both stay listed
    split = C.results_markdown([*one, dict(row(2, "r18", 29.0), group="other-split")])
    assert "- seed 2: kNN top-1 29.00" in split and "- seed 2: kNN top-1 31.00" in split


def test_results_warn_when_a_grid_mixes_precisions():
    from unigrad.experiments.grid import mixed_precision_warning, results_markdown

    base = {
        "group": "g",
        "method": "unigrad",
        "form": "grad",
        "row": "UniGrad",
        "target": "momentum",
        "norm": "l2",
        "pos_grad": "-u2",
        "balance": "25",
        "neg_grad": "F u1",
        "sample_set": "ema",
        "knn_top1": 40.0,
        "seed": 0,
    }
    rows = [{**base, "run": "a-s0", "precision": "fp32"}, {**base, "run": "b-s0"}]
    assert mixed_precision_warning(rows) is None  # a result without the field is not counted
    rows.append({**base, "run": "c-s0", "precision": "bf16"})
    assert "bf16: c-s0; fp32: a-s0" in mixed_precision_warning(rows)
    assert "mixes precisions" in results_markdown(rows)


def test_results_say_where_the_runs_ran():
    from unigrad.experiments.grid import host_summary

    gpu = {"host": "NVIDIA H200", "precision": "fp32"}
    assert host_summary([gpu, gpu]) == "NVIDIA H200, fp32"
    assert host_summary([{}, {}]) == ""  # nothing recorded: nothing to say
    assert host_summary([gpu, {}, {"host": "Xeon (AVX512)", "precision": "bf16"}]) == (
        "NVIDIA H200, fp32: 1 run; Xeon (AVX512), bf16: 1 run; not recorded: 1 run"
    )


def test_budget_ladder_figure(tmp_path):
    from unigrad.experiments.ladder import draw_ladder, ladder_axis

    def row(base, epochs, knn):
        return dict(base=base, group=f"{base}-{epochs}", rung=f"epochs={epochs}", knn_top1=knn)

    rows = [row("a", 4, 40.0), row("a", 16, 52.0), row("b", 4, 47.0), row("b", 16, 57.0)]
    rows[0]["init_knn_top1"] = 32.9
    assert ladder_axis(rows) == "epochs"
    assert ladder_axis(rows[::2]) is None  # one rung: not a ladder
    assert ladder_axis([*rows, dict(rows[0], rung="epochs=4, lambd=2")]) is None
    assert ladder_axis([dict(r, rung="target=momentum") for r in rows]) is None  # not numeric
    png = tmp_path / "ladder.png"
    assert draw_ladder(rows, png) and png.stat().st_size > 1000
    assert not draw_ladder(rows[::2], tmp_path / "none.png")


def test_seeds_flag_replaces_the_grid_and_its_runs_seeds(tmp_path, capsys):
    args = ["compare", "--grid", "lag", "--out", str(tmp_path), "--dry-run"]
    assert main([*args, "--data", "unused"]) == 0
    ids = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert "unigrad-corr-online-s1" in ids and "unigrad-m0.9-s1" not in ids  # a run's own seeds
    assert main([*args, "--data", "unused", "--seeds", "3"]) == 0
    ids = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert ids and all(i.endswith("-s3") for i in ids)
