"""`medclass runs`: the table of runs and their status, read from run folders without loading models;
`medclass compare` takes any of them; a failed run leaves a marker or, on bad data, no folder."""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from helpers import make_folder_dataset, tiny_config
from medclass.cli.app import app
from medclass.core.runs import RunError
from medclass.cli.runs_table import format_runs, runs_table
from medclass.core.run_index import describe_run, run_status


def fake_run(root, name, *, summary=None, test=None, last=False, metrics_rows=0, failed=False, running_pid=None,
             arch="resnet18", budget=None, source="data/chest-ct"):
    """A run folder holding only the files the table reads."""
    run = root / name
    (run / "checkpoints").mkdir(parents=True)
    train = {"epochs": 30, **({"time_budget": budget} if budget else {})}
    (run / "config.yaml").write_text(json.dumps({"data": {"source": source, "image_size": 64},
                                                 "model": {"arch": arch}, "train": train}))
    if summary is not None:
        (run / "train_summary.json").write_text(json.dumps(summary))
    if test is not None:
        (run / "eval-test").mkdir()
        (run / "eval-test" / "metrics.json").write_text(json.dumps(test))
    if last:
        (run / "checkpoints" / "last.pt").write_bytes(b"x")
    if metrics_rows:
        (run / "metrics.csv").write_text("epoch,seconds\n" + "".join(f"{i},10\n" for i in range(1, metrics_rows + 1)))
    if failed:
        (run / "failed.json").write_text(json.dumps({"error": "OSError", "message": "disk full"}))
    if running_pid is not None:
        import socket

        (run / "running.json").write_text(json.dumps({"pid": running_pid, "host": socket.gethostname()}))
    return run


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    fake_run(root, "a-finished", summary={"epochs_run": 30, "train_seconds": 600.0},
             test={"accuracy": 0.8, "balanced_accuracy": 0.7, "auroc": 0.9})
    fake_run(root, "b-budget", summary={"epochs_run": 12, "train_seconds": 100.0, "budget": {"actual_seconds": 290.0}},
             test={"accuracy": 0.9, "balanced_accuracy": 0.85, "auroc": 0.95}, budget="5m", arch="custom_cnn")
    fake_run(root, "c-interrupted", last=True, metrics_rows=4)
    fake_run(root, "d-failed", last=True, metrics_rows=2, failed=True)
    fake_run(root, "e-running", running_pid=os.getpid())
    fake_run(root, "f-killed", running_pid=2**22 + 12345)  # a pid that is not alive: killed before an epoch
    (root / "not-a-run").mkdir()
    return root


def test_each_run_gets_its_status_and_figures(runs):
    rows = {r["name"]: r for r in runs_table(runs)}
    assert "not-a-run" not in rows
    assert {n: r["status"] for n, r in rows.items()} == {
        "a-finished": "finished", "b-budget": "finished", "c-interrupted": "interrupted", "d-failed": "failed",
        "e-running": "running", "f-killed": "not started"}
    b = rows["b-budget"]
    assert (b["data"], b["model"], b["image_size"], b["epochs"], b["budget"]) == ("chest-ct", "custom_cnn", 64, 12, "5m")
    assert b["wall_seconds"] == 290.0 and rows["a-finished"]["wall_seconds"] == 600.0  # the budget's total first
    assert rows["c-interrupted"]["epochs"] == 4 and rows["c-interrupted"]["wall_seconds"] == 40.0
    assert rows["c-interrupted"]["test_accuracy"] is None


def test_sorting_puts_the_best_first_and_missing_values_last(runs):
    names = [r["name"] for r in runs_table(runs, sort="balanced_accuracy")]
    assert names[:2] == ["b-budget", "a-finished"]
    assert [r["name"] for r in runs_table(runs, sort="name")] == sorted(names)
    with pytest.raises(ValueError, match="--sort must be one of"):
        runs_table(runs, sort="speed")
    with pytest.raises(RunError, match="does not exist"):
        runs_table(runs / "nope")


def test_table_csv_and_json_output(runs):
    rows = runs_table(runs, sort="auroc")
    table = format_runs(rows, "table").splitlines()
    assert table[0].split()[:4] == ["name", "status", "data", "model"]
    assert "0.850" in table[1] and "4.8 min" in table[1] and "b-budget" in table[1]
    csv_lines = format_runs(rows, "csv").splitlines()
    assert csv_lines[0].startswith("name,status,data,model,image_size") and len(csv_lines) == len(rows) + 1
    assert json.loads(format_runs(rows, "json"))[0]["auroc"] == 0.95
    result = CliRunner().invoke(app, ["runs", str(runs), "--sort", "auroc", "--format", "json"])
    assert result.exit_code == 0 and json.loads(result.output)[0]["name"] == "b-budget"
    bad = CliRunner().invoke(app, ["runs", str(runs), "--format", "xml"])
    assert bad.exit_code == 2 and "--format must be" in bad.output


def test_compare_takes_runs_without_checkpoints_or_summary(runs, tmp_path):
    from medclass.evaluation import compare_runs

    rows = compare_runs([runs / "a-finished", runs / "c-interrupted", runs / "d-failed"], tmp_path / "cmp",
                        progress=False)
    assert [r["status"] for r in rows] == ["finished", "interrupted", "failed"]
    assert rows[0]["test_accuracy"] == 0.8 and rows[1]["test_accuracy"] is None
    text = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "c-interrupted" in text and "n/a" in text


def test_a_real_run_is_finished_then_bad_data_leaves_no_folder_and_other_failures_a_marker(tmp_path, monkeypatch):
    from medclass.data import DataError, ImageReadError
    from medclass.engine import train
    import medclass.engine.trainer as trainer_module

    data = make_folder_dataset(tmp_path / "data", per_class=8)
    run = train(tiny_config(data, epochs=1), tmp_path / "runs" / "ok").files.root
    assert run_status(run) == "finished" and not (run / "running.json").exists()
    assert describe_run(run)["epochs"] == 1

    corrupt = make_folder_dataset(tmp_path / "corrupt", per_class=8)
    (corrupt / "dark" / "dark_3.png").write_bytes(b"not a png")  # found when decoding, after the setup
    with pytest.raises(ImageReadError, match="dark_3.png"):
        train(tiny_config(corrupt, epochs=1), tmp_path / "runs" / "bad")
    assert not (tmp_path / "runs" / "bad").exists()  # no run folder without a run left behind
    missing_label = make_folder_dataset(tmp_path / "single", per_class=8)
    import shutil

    shutil.rmtree(missing_label / "bright")  # one class: refused when indexing
    with pytest.raises(DataError):
        train(tiny_config(missing_label, epochs=1), tmp_path / "runs" / "bad2")
    assert not (tmp_path / "runs" / "bad2").exists()

    def broken(*a, **k):
        raise OSError("simulated failure while validating")

    monkeypatch.setattr(trainer_module, "validate", broken)
    with pytest.raises(OSError):
        train(tiny_config(data, epochs=1), tmp_path / "runs" / "broken")
    broken_run = tmp_path / "runs" / "broken"
    assert run_status(broken_run) == "failed"
    assert "simulated failure" in json.loads((broken_run / "failed.json").read_text())["message"]


def test_a_cross_validation_is_listed_with_its_folds_and_the_ensembles_test_figures(tmp_path):
    # a `medclass cv` folder: config.yaml and cv.json at its root, no train_summary.json
    root = tmp_path / "runs"
    done = fake_run(root, "cv-done")
    (done / "cv.json").write_text(json.dumps({
        "settings": {"folds": 5}, "folds": [{"fold": i} for i in range(1, 6)], "out_of_fold": {"accuracy": 0.7},
        "ensemble_test": {"accuracy": 0.75, "balanced_accuracy": 0.7, "auroc": 0.88}}))
    half = fake_run(root, "cv-half")
    (half / "cv.json").write_text(json.dumps({"settings": {"folds": 3}, "folds": [{"fold": 1}]}))
    rows = {r["name"]: r for r in runs_table(root)}
    assert rows["cv-done"]["status"] == "finished" and rows["cv-half"]["status"] == "interrupted"
    assert rows["cv-done"]["model"] == "resnet18, 5-fold cv"
    assert (rows["cv-done"]["test_accuracy"], rows["cv-done"]["balanced_accuracy"], rows["cv-done"]["auroc"]) == \
        (0.75, 0.7, 0.88)
    assert rows["cv-half"]["test_accuracy"] is None
    from medclass.evaluation import compare_runs

    compared = compare_runs([done, half], tmp_path / "cmp", progress=False)  # the same figures side by side
    assert [(r["status"], r["test_accuracy"], r["auroc"]) for r in compared] == [("finished", 0.75, 0.88),
                                                                                 ("interrupted", None, None)]
