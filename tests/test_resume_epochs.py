"""`medclass train --resume` with another --epochs (the LR schedule re-planned for the new total)
or a time-budgeted run continued with more time."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from helpers import make_folder_dataset, tiny_config
from medclass.cli.app import app
from medclass.core.config import ConfigError, RunConfig
from medclass.engine import load_checkpoint, train
from medclass.core.runs import RunError
from medclass.engine import budget as budget_module
from medclass.engine import trainer as trainer_module
from medclass.cli.preflight import apply_resume_overrides


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


def assert_the_budget_run_ended_at_its_plan(run, epochs_run):
    """However the budget ended ``run`` after ``epochs_run`` epochs, its plan and its LR schedule
    (``last.pt``) end there; the cosine is at its minimum unless the stop was not foreseen
    (``stop_reason``: the last epoch's validation and checkpoints ran far slower than before,
    which no plan made before them can know; the deterministic cases are in test_budget.py)."""
    summary = json.loads((run / "train_summary.json").read_text())
    b = summary["budget"]
    steps = b["throughput"]["steps_per_epoch"]
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert summary["epochs_run"] == epochs_run == last["epoch"]
    assert b["planned_epochs"] == epochs_run, b["replans"][-3:]
    assert last["schedule"]["total_steps"] == epochs_run * steps, (last["schedule"], steps, b["replans"][-3:])
    if b["stop_reason"] is None:
        assert last["history"][-1]["lr"] == pytest.approx(1e-3 * 0.01, rel=1e-6)
    return b


@pytest.mark.slow
def test_a_time_budget_run_continues_with_more_time(tmp_path, monkeypatch):
    # the budget counts this process' CPU seconds, not wall seconds: other processes loading the
    # machine can neither leave the budget too short for one epoch nor cut the resume's extra epochs
    # (every figure of the plan is read from this one clock; test_budget.py has the wall-clock runs)
    cpu_clock = SimpleNamespace(time=time.process_time, perf_counter=time.process_time, strftime=time.strftime)
    monkeypatch.setattr(trainer_module, "time", cpu_clock)
    monkeypatch.setattr(budget_module, "time", cpu_clock)
    data = make_folder_dataset(tmp_path / "data", per_class=8)
    cfg = tiny_config(data, epochs=50)
    cfg.train.time_budget = "10s"
    first = train(cfg, tmp_path / "run")
    n1 = len(first.history)
    assert_the_budget_run_ended_at_its_plan(tmp_path / "run", n1)
    saved = RunConfig.load(tmp_path / "run" / "config.yaml")
    apply_resume_overrides(saved, time_budget="20s")
    resumed = train(saved, tmp_path / "run", resume=True)
    assert len(resumed.history) > n1  # the extra time bought epochs
    b = assert_the_budget_run_ended_at_its_plan(tmp_path / "run", len(resumed.history))
    assert b["seconds"] == 20.0
    assert RunConfig.load(tmp_path / "run" / "config.yaml").train.time_budget == "20s"
