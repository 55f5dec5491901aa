"""MLflow tracking (medclass.engine.tracking): a tiny run logged to a local store in tmp_path and read back
with MlflowClient; the switch (config, $MEDCLASS_MLFLOW); the error without mlflow; failures."""

import csv
import json
import sys

import pytest

from medclass.core.config import ConfigError
from medclass.engine.tracking import RECORD, RunTracker, TrackingError, flatten_config, tracking_enabled

from helpers import make_folder_dataset, tiny_config


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh local MLflow store (SQLite + artifact folder) in tmp_path; $MEDCLASS_MLFLOW unset."""
    pytest.importorskip("mlflow", reason="pip install 'medclass[mlflow]'")
    pytest.importorskip("sqlalchemy", reason="the SQLite store needs sqlalchemy (medclass[mlflow])")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.delenv("MEDCLASS_MLFLOW", raising=False)
    monkeypatch.chdir(tmp_path)  # the artifacts' default folder ./mlruns lands here
    return uri


def _tiny(tmp_path, **train):
    data = make_folder_dataset(tmp_path / "data", per_class=8, size=16)
    return tiny_config(data, epochs=2, max_steps_per_epoch=2, **train)


def test_a_tracked_run_reads_back_with_the_mlflow_client(tmp_path, store):
    from mlflow.tracking import MlflowClient

    from medclass.engine import train
    from medclass.evaluation import evaluate_run

    cfg = _tiny(tmp_path, mlflow=True)
    run_dir = tmp_path / "runs" / "tiny"
    train(cfg, run_dir)
    metrics = evaluate_run(run_dir, n_bootstrap=50, progress=False)

    record = json.loads((run_dir / RECORD).read_text())
    assert record["tracking_uri"] == store
    client = MlflowClient(tracking_uri=store)
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny"
    assert client.get_experiment(run.info.experiment_id).name == "medclass"
    # params: the resolved config, flattened
    params = run.data.params
    assert params["train.epochs"] == "2" and params["model.arch"] == "resnet18" and params["data.image_size"] == "16"
    assert params["train.mlflow"] == "true" and params["data.crop_scale"] == "[0.8,1.0]"
    assert set(params) == set(flatten_config(cfg))
    # one point per epoch, equal to metrics.csv
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    for key in ("loss", "val_accuracy", "val_balanced_accuracy", "lr"):
        history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
        assert [m.step for m in history] == [1, 2]
        assert [m.value for m in history] == pytest.approx([float(r[key]) for r in rows])
    # the test metrics with their bootstrap intervals
    logged = run.data.metrics
    assert logged["test_accuracy"] == pytest.approx(metrics["accuracy"])
    assert logged["test_n"] == metrics["n"]
    ci = metrics["confidence_intervals"]["metrics"]["accuracy"]
    assert logged["test_accuracy_ci_low"] == pytest.approx(ci["low"])
    assert logged["test_accuracy_ci_high"] == pytest.approx(ci["high"])
    assert logged["test_accuracy_ci_low"] <= logged["test_accuracy"] <= logged["test_accuracy_ci_high"]
    # artifacts: training files, the evaluation's figures, metrics.json and the model card
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"curves.png", "metrics.csv", "train_summary.json", "config.yaml"} <= top
    evaluated = {a.path for a in client.list_artifacts(run.info.run_id, "eval-test")}
    assert {"eval-test/metrics.json", "eval-test/confusion_matrix.png", "eval-test/roc.png",
            "eval-test/model_card.html"} <= evaluated
    local = client.download_artifacts(run.info.run_id, "eval-test/metrics.json", str(tmp_path / "dl"))
    assert json.loads(open(local).read())["accuracy"] == pytest.approx(metrics["accuracy"])


def test_a_failed_training_is_marked_failed_and_its_resume_logs_to_the_same_mlflow_run(tmp_path, store, monkeypatch):
    from mlflow.tracking import MlflowClient

    from medclass.engine import train
    from medclass.engine import trainer as trainer_module

    real, calls = trainer_module.validate, []

    def validate_then_fail(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom in epoch 2")
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "validate", validate_then_fail)
    monkeypatch.setenv("MEDCLASS_MLFLOW", "1")  # on by the environment, the config says nothing
    run_dir = tmp_path / "runs" / "fails"
    with pytest.raises(RuntimeError, match="boom"):
        train(_tiny(tmp_path), run_dir)
    record = json.loads((run_dir / RECORD).read_text())
    client = MlflowClient(tracking_uri=store)
    assert client.get_run(record["run_id"]).info.status == "FAILED"
    assert [m.step for m in client.get_metric_history(record["run_id"], "loss")] == [1]

    monkeypatch.setattr(trainer_module, "validate", real)
    monkeypatch.delenv("MEDCLASS_MLFLOW")  # a run tracked before stays tracked when resumed
    train(_tiny(tmp_path / "again"), run_dir, resume=True)  # epoch 2, into the same MLflow run
    assert json.loads((run_dir / RECORD).read_text())["run_id"] == record["run_id"]
    assert len(client.search_runs([client.get_run(record["run_id"]).info.experiment_id])) == 1
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["train.epochs"] == "2"
    assert [m.step for m in client.get_metric_history(record["run_id"], "loss")] == [1, 2]


def test_the_switch_config_and_environment(monkeypatch):
    cfg = tiny_config("x")
    monkeypatch.delenv("MEDCLASS_MLFLOW", raising=False)
    assert not tracking_enabled(cfg) and not tracking_enabled(None)
    cfg.set("train.mlflow", "true")
    assert tracking_enabled(cfg)
    monkeypatch.setenv("MEDCLASS_MLFLOW", "0")  # the environment overrides the config both ways
    assert not tracking_enabled(cfg)
    cfg.train.mlflow = False
    monkeypatch.setenv("MEDCLASS_MLFLOW", "Yes")
    assert tracking_enabled(cfg)
    monkeypatch.setenv("MEDCLASS_MLFLOW", "maybe")
    with pytest.raises(ConfigError, match=r"\$MEDCLASS_MLFLOW must be 1 or 0.*'maybe'"):
        tracking_enabled(cfg)


def test_without_mlflow_training_stops_before_any_work_and_says_what_to_install(tmp_path, monkeypatch):
    from medclass.engine import train

    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow -> ImportError
    monkeypatch.delenv("MEDCLASS_MLFLOW", raising=False)
    run_dir = tmp_path / "runs" / "no-mlflow"
    with pytest.raises(TrackingError, match=r"pip install 'medclass\[mlflow\]'.*MEDCLASS_MLFLOW=0"):
        train(_tiny(tmp_path, mlflow=True), run_dir)
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "manifest.csv").exists()


def test_the_cli_reports_missing_mlflow_in_one_line(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from medclass.cli.app import app

    monkeypatch.setitem(sys.modules, "mlflow", None)
    data = make_folder_dataset(tmp_path / "data", per_class=4, size=16)
    result = CliRunner().invoke(app, ["train", str(data), "--runs-dir", str(tmp_path / "runs"), "--mlflow"])
    assert result.exit_code == 2
    assert "error: MLflow tracking is on" in result.output and "pip install 'medclass[mlflow]'" in result.output
    assert not (tmp_path / "runs").exists()  # refused before a run folder was made


def test_the_default_sqlite_store_without_sqlalchemy_says_what_to_install(tmp_path, store, monkeypatch):
    from medclass.core.runs import RunFiles

    monkeypatch.setitem(sys.modules, "sqlalchemy", None)  # mlflow-skinny alone
    with pytest.raises(TrackingError, match=r"is a database, which needs sqlalchemy and alembic.*medclass\[mlflow\]"):
        RunTracker.open(RunFiles(tmp_path), tiny_config("x"))
    assert not (tmp_path / RECORD).exists()


class _DownClient:
    def log_batch(self, *args, **kwargs):
        raise ConnectionError("tracking server unreachable")


def test_a_tracking_server_error_mid_run_is_one_warning_not_a_lost_training(tmp_path, capsys):
    pytest.importorskip("mlflow")
    from medclass.core.runs import RunFiles

    tracker = RunTracker(_DownClient(), "abc", "http://mlflow.example:5000", RunFiles(tmp_path))
    tracker.log_epoch({"epoch": 1, "loss": 0.5, "accuracy": 0.8})
    tracker.log_epoch({"epoch": 2, "loss": 0.4, "accuracy": 0.9})  # no second try, no exception
    out = capsys.readouterr().out
    assert out.count("warning: MLflow tracking stopped") == 1 and "tracking server unreachable" in out
    assert not tracker.active


def test_the_record_names_local_stores_by_absolute_path(tmp_path, monkeypatch):
    from medclass.engine.tracking import _absolute_uri

    monkeypatch.chdir(tmp_path)
    assert _absolute_uri("sqlite:///mlflow.db") == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert _absolute_uri("sqlite:////srv/mlflow.db") == "sqlite:////srv/mlflow.db"
    assert _absolute_uri("mlruns") == (tmp_path / "mlruns").as_uri()
    assert _absolute_uri("file:mlruns") == (tmp_path / "mlruns").as_uri()
    assert _absolute_uri("http://mlflow.team:5000") == "http://mlflow.team:5000"
    assert _absolute_uri("databricks") == "databricks"
