"""Minor user-facing defects (issue 45 item 12): --tabulate reads each run's linear-probe
epochs, an image_size above the images' size is noted, --data FILE says it is a file."""

import yaml
from conftest import TINY

from unigrad.cli import main


def test_tabulate_without_linear_epochs_does_not_warn_about_every_run(
    tmp_path, tiny_folder, capsys
):
    grid = {"name": "one", "base": {**TINY, "max_steps": 1, "amp": "off"}, "seeds": [0]}
    grid["runs"] = [{"name": "uni", "method": "unigrad"}]
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(grid))
    args = ["compare", "--grid", str(tmp_path / "g.yaml"), "--out", str(tmp_path / "grid")]
    args += ["--data", str(tiny_folder), "--quiet"]
    assert main([*args, "--linear-epochs", "0"]) == 0
    capsys.readouterr()
    assert main([*args, "--tabulate"]) == 0
    assert "other settings" not in capsys.readouterr().err
    assert main([*args, "--tabulate", "--linear-epochs", "3"]) == 0  # asked: still compared
    assert "final_linear_epochs: 0 -> 3" in capsys.readouterr().err


def test_an_image_size_above_the_images_gets_one_note(tmp_path, tiny_folder, capsys):
    cfg = {**TINY, "image_size": 32, "max_steps": 1, "amp": "off", "knn_every": 0}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    args = ["pretrain", "--config", str(tmp_path / "c.yaml"), "--data", str(tiny_folder)]
    assert main([*args, "--out", str(tmp_path / "run"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert err.count("image_size 32 is above the images' size (16 px)") == 1


def test_data_that_is_a_file_says_so(tmp_path, capsys):
    (tmp_path / "images.zip").write_bytes(b"PK")
    out = ["--out", str(tmp_path / "run")]
    for fallback in ([], ["--fallback-dataset", "cifar10"]):  # no download in its place
        assert main(["pretrain", "--data", str(tmp_path / "images.zip"), *out, *fallback]) == 2
        err = capsys.readouterr().err
        assert "images.zip is a file, not a folder" in err and "does not exist" not in err
