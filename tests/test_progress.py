"""Progress that reaches a log: periodic lines with the ETA when stderr is not a terminal."""

from __future__ import annotations

import io
import re

import pytest

from helpers import make_folder_dataset, tiny_config
from medclass.core.config import ConfigError, RunConfig
from medclass.core.progress import Progress, TrainProgress, format_seconds


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_progress_prints_a_start_line_then_one_line_per_interval_with_rate_and_eta():
    clock, out = FakeClock(), io.StringIO()
    with Progress("evaluate: bootstrap", 100, "resamples", bar=False, interval=30, stream=out, clock=clock) as p:
        for _ in range(100):
            clock.now += 1.0  # one resample a second
            p.update(1)
    lines = out.getvalue().splitlines()
    assert lines[0] == "evaluate: bootstrap (100 resamples) ..."
    periodic = lines[1:-1]
    assert len(periodic) == 3  # at 30, 60 and 90 s
    assert periodic[0] == "evaluate: bootstrap: 30/100 resamples (30%), 1.0/s, elapsed 30s, ETA 1m10s"
    assert lines[-1] == "evaluate: bootstrap: done, 100 resamples in 1m40s"


def test_a_short_step_says_only_what_it_does_and_silence_is_silent():
    out = io.StringIO()
    with Progress("export: tracing", bar=False, stream=out) as p:
        p.update(1)
    assert out.getvalue() == "export: tracing ...\n"
    quiet = io.StringIO()
    Progress("x", 3, enabled=False, stream=quiet, bar=False).update(3)
    assert quiet.getvalue() == ""


def test_train_progress_eta_counts_this_epoch_and_the_epochs_after_it():
    clock, out = FakeClock(), io.StringIO()
    tp = TrainProgress(10, 32, run_start=clock.now, bar=False, interval=5, stream=out, clock=clock)
    tp.start_epoch(2, 4, epoch_walls=[20.0])  # one epoch took 20 s wall (validation included)
    clock.now += 6.0
    assert tp.step(3, 96, 0.5, 0.75) is None  # a log: a line, no bar fields
    epoch_left, run_left = tp.eta(3)
    assert epoch_left == pytest.approx(14.0)  # 7 steps of 2 s
    assert run_left == pytest.approx(14.0 + 2 * 20.0)
    assert out.getvalue().strip() == ("train: epoch 2/4 step 3/10 (global 13/40)  loss 0.5000  acc 0.750  16.0 img/s  "
                                      "elapsed 6.0s  ETA 54s")
    bar = TrainProgress(10, 32, run_start=clock.now, bar=True, clock=clock)
    bar.start_epoch(1, 2)
    clock.now += 2.0
    assert bar.step(1, 32, 0.5, 0.5) == {"img/s": "16.0", "run ETA": "38s"}


def test_log_interval_is_a_checked_config_key():
    cfg = RunConfig()
    assert cfg.train.log_interval == 30.0
    cfg.set("train.log_interval", "5")
    assert cfg.train.log_interval == 5.0
    with pytest.raises(ConfigError, match="train.log_interval"):
        cfg.set("train.log_interval", "0")
    assert format_seconds(None) == "?" and format_seconds(3725) == "1h02m"


def test_training_and_evaluation_in_a_log_print_periodic_lines_with_eta(tmp_path, capsys):
    from medclass.engine import train
    from medclass.evaluation import evaluate_run

    data = make_folder_dataset(tmp_path / "data", per_class=10)
    cfg = tiny_config(data, epochs=2, progress=True, log_interval=1e-6)  # a line after every step
    train(cfg, tmp_path / "run")
    err = capsys.readouterr().err  # pytest's capture: not a terminal
    lines = [ln for ln in err.splitlines() if ln.startswith("train: ")]
    assert len(lines) >= 4, err
    pattern = (r"train: epoch (\d)/2 step \d+/\d+ \(global \d+/\d+\)  loss \d+\.\d{4}  acc \d\.\d{3}  "
               r"\d+\.\d img/s  elapsed \S+  ETA \S+")
    assert all(re.fullmatch(pattern, ln) for ln in lines), lines
    assert {re.match(pattern, ln).group(1) for ln in lines} == {"1", "2"}
    assert "decode train" in err  # the decoding said what it did
    evaluate_run(tmp_path / "run", progress=True, n_bootstrap=20)
    err = capsys.readouterr().err
    for step in ("evaluate: test inference", "evaluate: bootstrap (20 resamples) ...",
                 "evaluate: validation inference for calibration"):
        assert step in err, err
