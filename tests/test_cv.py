"""Grouped cross-validation (issue 13, part 1): medclass.evaluation.cv and `medclass cv`."""

import csv
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from medclass.cli.app import app
from medclass.data import DataError, Sample
from medclass.core.runs import RunError
from medclass.evaluation.cv import cross_validate, fold_assignments, group_ids

from helpers import make_folder_dataset, tiny_config


def test_group_ids_from_a_pattern_the_csv_group_or_the_image():
    samples = [Sample("/d/a/P01_1.png", 0), Sample("/d/a/P01_2.png", 0), Sample("/d/b/P02_1.png", 1, "lesion9")]
    assert group_ids(samples, r"^(P\d+)_") == ["P01", "P01", "P02"]
    assert group_ids(samples) == ["/d/a/P01_1.png", "/d/a/P01_2.png", "lesion9"]
    # the pattern is searched in the file name only, not the folders; an .npz entry FILE::KEY has none: the whole entry
    assert group_ids([Sample("/P09_x/a/P01_1.png", 0)], r"(P\d+)_") == ["P01"]
    assert group_ids([Sample("/d/set.npz::train/3", 0)], r"::(\w+)/") == ["train"]
    with pytest.raises(DataError, match="P01_1.png"):
        group_ids(samples, r"^(Q\d+)_")
    with pytest.raises(DataError, match="needs a group"):
        group_ids(samples, r"^P\d+_")
    with pytest.raises(DataError, match="not a regular expression"):
        group_ids(samples, r"^(P")


def test_folds_keep_each_group_whole_and_the_classes_balanced():
    rng = np.random.default_rng(0)
    groups = [f"g{i // 3}" for i in range(120)]  # 40 groups of 3 images
    labels = [int(g[1:]) % 2 for g in groups]
    folds = fold_assignments(labels, groups, 4, seed=1)
    assert set(folds.tolist()) == {0, 1, 2, 3}
    for g in set(groups):
        assert len({folds[i] for i, x in enumerate(groups) if x == g}) == 1
    for k in range(4):
        share = np.mean(np.asarray(labels)[folds == k])
        assert 0.3 < share < 0.7
    assert (fold_assignments(labels, groups, 4, seed=1) == folds).all()  # reproducible
    with pytest.raises(DataError, match="at least 5 groups"):
        fold_assignments([0, 1, 0, 1], ["a", "a", "b", "c"], 5, 0)
    with pytest.raises(DataError, match="at least 2 folds"):
        fold_assignments(labels, groups, 1, 0)
    del rng


@pytest.fixture(scope="module")
def cv_data(tmp_path_factory):
    # file names dark_0.png ... dark_11.png: the pattern groups dark_1 with dark_10, dark_11
    return make_folder_dataset(tmp_path_factory.mktemp("cv") / "data", size=16,
                               splits={"train": 9, "valid": 3, "test": 4})


@pytest.mark.slow
def test_cv_trains_k_folds_and_reports_out_of_fold_and_ensemble_figures(cv_data, tmp_path):
    cfg = tiny_config(cv_data, epochs=1)
    root = tmp_path / "cv"
    record = cross_validate(cfg, root, folds=3, group_pattern=r"^([a-z]+_\d)", log=lambda m: None)
    assert record["n_pool"] == 24 and sum(record["fold_sizes"]) == 24 and record["n_test"] == 8
    assert [f["fold"] for f in record["folds"]] == [1, 2, 3]
    assert record["out_of_fold"]["n"] == 24 and "confidence_intervals" in record["out_of_fold"]
    assert set(record["fold_mean_std"]) >= {"accuracy"} and record["fold_mean_std"]["accuracy"]["std"] >= 0
    assert record["ensemble_test"]["n"] == 8
    ensemble = json.loads((root / "ensemble" / "ensemble.json").read_text())
    assert len(ensemble["members"]) == 3
    # each fold has its out-of-distribution detector, as `medclass train` fits it; the ensemble has none
    assert all((root / f"fold-{i}" / "ood.json").is_file() for i in (1, 2, 3))
    assert not (root / "ensemble" / "ood.json").exists()
    with open(root / "oof_predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 24 and len({r["path"] for r in rows}) == 24
    fold_of_group: dict[str, set] = {}
    for r in rows:
        fold_of_group.setdefault(r["group"], set()).add(r["fold"])
    assert all(len(v) == 1 for v in fold_of_group.values())  # no group in two folds
    # each fold validated on its own images and trained on the others
    for i in (1, 2, 3):
        with open(root / "folds" / f"fold-{i}.csv") as f:
            split = list(csv.DictReader(f))
        valid = {r["path"] for r in split if r["split"] == "valid"}
        train = {r["path"] for r in split if r["split"] == "train"}
        assert valid == {r["path"] for r in rows if r["fold"] == str(i)} and not valid & train
    assert json.loads((root / "cv.json").read_text())["out_of_fold"]["n"] == 24

    # an interruption after fold 2: the resume keeps folds 1-2 and trains fold 3 again
    kept = (root / "fold-1" / "train_summary.json").stat().st_mtime_ns
    import shutil

    shutil.rmtree(root / "fold-3")
    shutil.rmtree(root / "ensemble")
    again = cross_validate(cfg, root, folds=3, group_pattern=r"^([a-z]+_\d)", resume=True, log=lambda m: None)
    assert (root / "fold-1" / "train_summary.json").stat().st_mtime_ns == kept
    assert (root / "fold-3" / "train_summary.json").is_file() and again["out_of_fold"]["n"] == 24
    with pytest.raises(RunError, match="same settings"):
        cross_validate(cfg, root, folds=4, group_pattern=r"^([a-z]+_\d)", resume=True, log=lambda m: None)
    with pytest.raises(RunError, match="already exists"):
        cross_validate(cfg, root, folds=3, log=lambda m: None)


@pytest.mark.slow
def test_cv_command(cv_data, tmp_path):
    runner = CliRunner()
    args = ["cv", str(cv_data), "--folds", "2", "--epochs", "1", "--image-size", "16", "--name", "c",
            "--runs-dir", str(tmp_path), "--set", "model.stem=small", "--set", "train.batch_size=4"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "out-of-fold (n=24)" in result.output and "ensemble of the 2 fold models" in result.output
    result = runner.invoke(app, ["cv", "--resume", "--name", "nothing", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 2 and "no interrupted cross-validation" in result.output
