import csv
import math
import warnings

import pytest
import torch
import yaml
from matplotlib.figure import Figure

from unigrad.cli import main
from unigrad.errors import UserError
from unigrad.eval.diagnostics import write_spectrum
from unigrad.experiments.report import PLOTS, draw_plot, load_run, read_metrics, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_run(path, method, steps=20, knn=True, diag=True, spectrum=False):
    """A synthetic run: loss falls, similarities and kNN rise; long-format metrics.csv."""
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump({"method": method, "proj_dim": 64}))
    with open(path / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "epoch", "name", "value"])
        for s in range(1, steps + 1):
            w.writerow([s, s / 10, "loss", 2 * math.exp(-s / 10)])
            w.writerow([s, s / 10, "lr", 0.1])
            if diag:
                w.writerow([s, s / 10, "diag/pos_cos", 1 - math.exp(-s / 5)])
                w.writerow([s, s / 10, "diag/neg_cos", 0.1 * math.exp(-s / 5)])
                w.writerow([s, s / 10, "diag/pc_ratio", 10 + s])
                w.writerow([s, s / 10, "diag/channel_std", 0.1])
            if knn and s % 10 == 0:
                w.writerow([s, s / 10, "knn_top1", 30 + s])
                w.writerow([s, s / 10, "knn_top5", 60 + s])
    if spectrum:
        for s in (10, 20):
            write_spectrum(path, s, torch.linspace(0.1, 0.001, 64) * s)
    return path


def test_two_runs_overlay_into_pngs_and_markdown(tmp_path):
    a = make_run(tmp_path / "runs" / "a", "unigrad", spectrum=True)
    b = make_run(tmp_path / "runs" / "b", "byol", knn=False)
    md_path = write_report([a, b], tmp_path / "out")
    out = tmp_path / "out"
    for name in ("loss", "similarity", "knn", "pc_ratio", "channel_std", "lr", "spectrum"):
        assert (out / f"{name}.png").read_bytes()[:8] == PNG_MAGIC
        assert f"]({name}.png)" in md_path.read_text()
    assert not (out / "barlow_diag.png").exists()
    md = md_path.read_text()
    row_a = next(line for line in md.splitlines() if line.startswith("| a (unigrad) | 20 |"))
    assert "| 50 | 80 |" in row_a  # final knn top-1 / top-5
    assert "| b (byol) | 20 |" in md
    assert "b (byol) has no knn_top1" in md
    assert "Barlow Twins diag(W): not plotted" in md
    assert "F spectrum: b (byol) has no spectrum.csv" in md


def test_one_run_defaults_to_its_report_folder_and_survives_missing_metrics(tmp_path):
    run = make_run(tmp_path / "r", "simsiam", knn=False, diag=False)
    (tmp_path / "r" / "report").mkdir()
    (tmp_path / "r" / "report" / "knn.png").write_bytes(b"stale")
    md = write_report([run]).read_text()
    assert (run / "report" / "loss.png").exists()
    assert not (run / "report" / "knn.png").exists()  # stale figure removed
    assert "kNN accuracy: not plotted, no run logged `knn_top1`" in md
    assert "| r (simsiam) | 20 |" in md and "| – |" in md


def test_unreadable_rows_are_skipped_and_counted(tmp_path):
    run = make_run(tmp_path / "r", "moco", steps=3)
    with open(run / "metrics.csv", "a") as f:
        f.write("4,0.4,loss,\n5,0.5,lo")  # empty value; half-written last line
    metrics, bad = read_metrics(run / "metrics.csv")
    assert bad == 2 and len(metrics["loss"]) == 3
    assert "skipped 2 unreadable rows" in write_report([run]).read_text()


def test_bad_inputs_name_the_problem(tmp_path):
    with pytest.raises(UserError, match=r"metrics\.csv not found"):
        write_report([tmp_path])
    a = make_run(tmp_path / "a", "moco")
    b = make_run(tmp_path / "b", "moco")
    with pytest.raises(UserError, match="pass --out DIR"):
        write_report([a, b])
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "metrics.csv").write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match="not a metrics file"):
        write_report([tmp_path / "c"])


def test_same_folder_names_get_their_parent(tmp_path):
    a = make_run(tmp_path / "x" / "run", "moco", steps=2)
    b = make_run(tmp_path / "y" / "run", "moco", steps=2)
    md = write_report([a, b], tmp_path / "out").read_text()
    assert "| x/run (moco) |" in md and "| y/run (moco) |" in md


def test_cli_report(tmp_path, capsys):
    a = make_run(tmp_path / "a", "unigrad")
    b = make_run(tmp_path / "b", "simclr")
    assert main(["report", str(a), str(b), "--out", str(tmp_path / "o")]) == 0
    assert capsys.readouterr().out.strip().endswith("report.md")
    assert all((tmp_path / "o" / p.file).exists() for p in PLOTS[:5])
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "metrics.csv not found" in capsys.readouterr().err


def test_a_whole_grid_gets_one_legend_under_the_panels(tmp_path):
    runs = [make_run(tmp_path / f"r{i:02d}", "simclr", steps=5) for i in range(44)]
    plot = next(p for p in PLOTS if p.file == "similarity.png")
    drawn = []
    real_savefig = Figure.savefig

    def savefig(fig, *args, **kwargs):
        drawn.append(fig)
        return real_savefig(fig, *args, **kwargs)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. constrained_layout giving up under a huge legend
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(Figure, "savefig", savefig)
            ok, _ = draw_plot(plot, [load_run(r) for r in runs], tmp_path)
    assert ok and (tmp_path / "similarity.png").read_bytes()[:8] == PNG_MAGIC
    (fig,) = drawn
    assert len(fig.legends) == 1 and len(fig.legends[0].get_texts()) == 44
    assert all(ax.get_legend() is None for ax in fig.axes)
    styles = {(str(line.get_color()), line.get_linestyle()) for line in fig.axes[0].get_lines()}
    assert len(styles) == 44  # no two runs drawn alike
