"""The HTML report: self-contained, every figure loads in headless Chromium, and the leakage
section appears with and without --dedupe."""

import re
import shutil

import pytest

from medclass.engine import train
from medclass.evaluation.report import build_report

from browser import render
from helpers import make_folder_dataset, tiny_config


def _split_dataset(root, per_class=14, size=20):
    """train/valid/test folders; two test images are byte copies of train images (leakage)."""
    make_folder_dataset(root, size=size, splits={"train": per_class, "valid": 6, "test": 6}, noise=25,
                        name="{split}_{cls}_{i}.png")
    for cls in ("dark", "bright"):
        shutil.copy(root / "train" / cls / f"train_{cls}_0.png", root / "test" / cls / f"leak_{cls}.png")
    return root


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    data = _split_dataset(tmp / "data")
    run = tmp / "run"
    train(tiny_config(data, epochs=2), run)
    return run


def test_report_is_self_contained_and_lists_the_leaked_images(trained_run):
    plain = build_report(trained_run, n_bootstrap=100, explain=1)
    deduped = build_report(trained_run, n_bootstrap=100, explain=1, dedupe=True)
    assert plain.name == "report-test.html" and deduped.name == "report-test-dedupe.html"
    html = plain.read_text()
    srcs = re.findall(r'<img[^>]+src="([^"]+)"', html)
    assert len(srcs) >= 5 and all(s.startswith("data:image/png;base64,") for s in srcs)  # nothing external
    assert "Leakage: 2 test images duplicate" in html and "leak_dark.png" in html
    assert "95% CI" in html and "Grad-CAM" in html and "reliability diagram" in html
    dd = deduped.read_text()
    assert "are left out of the figures above" in dd and "(14 images)" in dd  # 16 test images minus 2
    assert "With the duplicates kept" in dd


def test_report_renders_in_headless_chromium_with_every_image_loaded(chromium, trained_run, tmp_path):
    page = build_report(trained_run, tmp_path / "report.html", n_bootstrap=100, explain=1)
    result = render(page, tmp_path / "report.png", width=1200, height=2400)
    assert result["total"] >= 5
    assert result["all_images_loaded"], result["broken"]
    assert not result["blank"]


def test_train_dedupe_leaves_leaked_copies_out_of_the_held_out_splits(tmp_path, capsys):
    from medclass.data import read_manifest

    data = _split_dataset(tmp_path / "data")
    warned = tmp_path / "warned"
    train(tiny_config(data, epochs=1), warned)
    assert "2 test images duplicate" in capsys.readouterr().out
    assert len(read_manifest(warned / "manifest.csv").splits["test"]) == 14
    cfg = tiny_config(data, epochs=1)
    cfg.data.dedupe = True
    run = tmp_path / "deduped"
    train(cfg, run)
    index = read_manifest(run / "manifest.csv")
    assert len(index.splits["test"]) == 12 and len(index.splits["train"]) == 28
    assert not any("leak_" in s.path for s in index.splits["test"])
    assert (run / "dedupe.json").is_file()
