"""`medclass train --resume` with another --epochs (the LR schedule re-planned for the new total)
or a time-budgeted run continued with more time."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from helpers import make_folder_dataset, tiny_config
from medclass.cli import app
from medclass.config import ConfigError, RunConfig
from medclass.engine import RunError, load_checkpoint, train
from medclass.preflight import apply_resume_overrides


def test_resume_with_more_epochs_runs_them_and_the_schedule_ends_at_the_new_total(tmp_path):
    data = make_folder_dataset(tmp_path / "data", per_class=8)
    four = train(tiny_config(data, epochs=4), tmp_path / "four")  # planned for 4 from the start
    two = train(tiny_config(data, epochs=2), tmp_path / "run")
    assert two.history[-1]["lr"] == pytest.approx(1e-3 * 0.01)  # a finished cosine: at its minimum

    cfg = RunConfig.load(tmp_path / "run" / "config.yaml")
    cfg.train.progress = False
    apply_resume_overrides(cfg, epochs=4)
    resumed = train(cfg, tmp_path / "run", resume=True)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4]
    # epochs 3 and 4 follow the schedule of a run planned for 4 epochs, ending at its minimum
    for epoch in (3, 4):
        assert resumed.history[epoch - 1]["lr"] == pytest.approx(four.history[epoch - 1]["lr"], rel=1e-9)
    assert resumed.history[2]["lr"] > two.history[-1]["lr"] * 5
    assert resumed.history[-1]["lr"] == pytest.approx(1e-3 * 0.01)
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    steps = last["schedule"]["total_steps"] // 4
    assert last["epoch"] == 4 and last["schedule"]["total_steps"] == 4 * steps
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["epochs_run"] == 4 and summary["planned_epochs"] == 4
    assert summary["epochs_replanned"][0] | {"lr": 0, "time": 0} == {"after_epoch": 2, "from_epochs": 2,
                                                                    "to_epochs": 4, "lr": 0, "time": 0}
    assert RunConfig.load(tmp_path / "run" / "config.yaml").train.epochs == 4  # a later --resume keeps it

    # fewer epochs than already trained: refused, naming the count
    cfg.train.epochs = 3
    with pytest.raises(RunError, match="already trained 4 epochs"):
        train(cfg, tmp_path / "run", resume=True)


def test_resume_options_are_checked_before_training(tmp_path):
    cfg = RunConfig()
    apply_resume_overrides(cfg, epochs=7)
    assert cfg.train.epochs == 7
    with pytest.raises(ConfigError, match="continue it with --epochs"):
        apply_resume_overrides(cfg, time_budget="20m")
    budgeted = RunConfig()
    budgeted.train.time_budget = "10m"
    apply_resume_overrides(budgeted, time_budget="20m")
    assert budgeted.train.time_budget == "20m"
    with pytest.raises(ConfigError, match="--time-budget"):
        apply_resume_overrides(budgeted, epochs=5)
    with pytest.raises(ConfigError, match="--time-budget must be a duration"):
        apply_resume_overrides(budgeted, time_budget="later")
    with pytest.raises(ConfigError, match="only --epochs and --time-budget may change, got --lr"):
        apply_resume_overrides(budgeted, ignored={"--lr": 0.1, "--arch": None, "--set": []})
    # through the CLI: one error line
    run = tmp_path / "r"
    run.mkdir()
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.pt").write_bytes(b"x")
    RunConfig().save(run / "config.yaml")
    result = CliRunner().invoke(app, ["train", "--name", "r", "--runs-dir", str(tmp_path), "--resume", "--lr", "0.1"])
    assert result.exit_code == 2 and "only --epochs and --time-budget may change, got --lr" in result.output


@pytest.mark.slow
def test_a_time_budget_run_continues_with_more_time(tmp_path):
    data = make_folder_dataset(tmp_path / "data", per_class=8)
    cfg = tiny_config(data, epochs=50)
    cfg.train.time_budget = "20s"
    first = train(cfg, tmp_path / "run")
    n1 = len(first.history)
    saved = RunConfig.load(tmp_path / "run" / "config.yaml")
    apply_resume_overrides(saved, time_budget="30s")
    resumed = train(saved, tmp_path / "run", resume=True)
    assert len(resumed.history) > n1  # the extra time bought epochs
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["budget"]["seconds"] == 30.0 and summary["epochs_run"] == len(resumed.history)
    assert RunConfig.load(tmp_path / "run" / "config.yaml").train.time_budget == "30s"
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    steps = last["schedule"]["total_steps"] // max(1, len(resumed.history))
    assert last["schedule"]["total_steps"] == len(resumed.history) * steps  # the schedule ends at the last epoch run
    assert resumed.history[-1]["lr"] == pytest.approx(1e-3 * 0.01, rel=1e-6)
