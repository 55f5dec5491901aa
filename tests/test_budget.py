"""The time budget (issue 12): durations, the planner's arithmetic, re-planning, the LR schedule
re-sized to the epochs actually run, ``--image-size auto``, the long-run note, and a 60 s budget on
real images that ends on time."""

import json
import random
import time
from types import SimpleNamespace

import pytest
import torch
import yaml
from typer.testing import CliRunner

from medclass.cli.app import app
from medclass.core.config import (
    DEFAULT_IMAGE_SIZE, ConfigError, RunConfig, TrainConfig, check_budget_config, fixed_image_size, parse_duration,
)
from medclass.engine import LRSchedule, train
from medclass.engine import budget as budget_module
from medclass.engine import trainer as trainer_module
from medclass.engine.distributed import DistContext
from medclass.engine.budget import (
    END_SECONDS, Budget, RunClock, Throughput, TimedLoader, choose_resolution, epochs_that_fit, preserved_state,
)
from medclass.core.spec import read_spec

from helpers import SHARED_DATA, make_folder_dataset, need, tiny_config

runner = CliRunner()


# --------------------------------------------------------------------------- durations and config


@pytest.mark.parametrize("text, seconds", [
    ("90s", 90.0), ("15m", 900.0), ("1.5h", 5400.0), ("90", 90.0), (" 2 M ", 120.0), (45, 45.0), (2.5, 2.5),
])
def test_parse_duration_reads_seconds_minutes_hours(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["abc", "15x", "m", "-5m", "0", "nan", "inf", True, ""])
def test_parse_duration_errors_name_the_key(bad):
    with pytest.raises(ConfigError, match="train.time_budget"):
        parse_duration(bad)


def test_config_keeps_the_budget_as_written_and_rejects_a_bad_one():
    cfg = RunConfig()
    assert cfg.train.time_budget is None  # off by default
    cfg.set("train.time_budget", "15m")
    assert cfg.train.time_budget == "15m"
    cfg.set("train.time_budget", "90")
    assert cfg.train.time_budget == 90
    with pytest.raises(ConfigError, match="train.time_budget"):
        cfg.set("train.time_budget", "soon")
    cfg.update({"train": {"time_budget": "1.5h"}})
    assert parse_duration(cfg.train.time_budget) == 5400.0


def test_image_size_auto_is_the_default_and_224_px_without_a_budget(tmp_path):
    cfg = RunConfig()
    assert cfg.data.image_size == "auto"
    check_budget_config(cfg)
    fixed_image_size(cfg)
    assert cfg.data.image_size == DEFAULT_IMAGE_SIZE == 224
    with pytest.raises(ConfigError, match="data.image_size"):
        cfg.set("data.image_size", "big")
    cfg = RunConfig()
    cfg.set("train.time_budget", "10m")
    fixed_image_size(cfg)
    assert cfg.data.image_size == "auto"  # chosen from the budget when training starts

    data = make_folder_dataset(tmp_path / "data", per_class=4, size=16)
    cfg = tiny_config(data, image_size="auto", epochs=1, max_steps_per_epoch=1)
    cfg.model.stem = "imagenet"  # a 224 px step of the small stem would take seconds
    run = tmp_path / "run"
    train(cfg, run)
    assert read_spec(run).image_size == 224
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["image_size"] == 224

    result = runner.invoke(app, ["train", str(data), "--time-budget", "soon", "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2 and "train.time_budget" in result.output
    assert not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------- the planner's arithmetic


class FakeClock:
    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_epochs_that_fit():
    assert epochs_that_fit(100.0, 10.0) == 10
    assert epochs_that_fit(99.9, 10.0) == 9
    assert epochs_that_fit(5.0, 10.0) == 0
    assert epochs_that_fit(-3.0, 10.0) == 0
    assert epochs_that_fit(1e9, 1.0, cap=50) == 50
    with pytest.raises(ValueError):
        epochs_that_fit(10.0, 0.0)


def test_plan_fits_the_epochs_in_what_is_left_of_the_budget():
    clock = FakeClock(10.0)  # setup (decode, model) took 10 s
    b = Budget(seconds=100.0, start=0.0, clock=clock)
    tp = Throughput(step_seconds=0.5, val_seconds=2.0, save_seconds=1.0, steps_per_epoch=10, batch_size=32)
    assert tp.epoch_seconds == 8.0 and tp.train_img_per_s == 64.0
    epochs = b.plan(tp)
    assert epochs == int((100 - 10 - END_SECONDS) // 8)  # 11
    assert b.planned_epochs == epochs
    assert b.estimated_seconds == pytest.approx(10 + epochs * 8 + END_SECONDS)
    assert b.estimated_seconds <= 100
    assert b.measured_img_per_s == 64.0

    short = Budget(seconds=12.0, start=0.0, clock=clock)
    assert short.plan(tp) == 0
    err = short.too_small(tp)
    assert "cannot fit one epoch" in str(err) and "--time-budget" in str(err)


def test_a_slow_epoch_shortens_the_plan_and_a_fast_one_lengthens_it_only_with_a_margin():
    clock = FakeClock(10.0)
    b = Budget(seconds=100.0, start=0.0, clock=clock)
    b.plan(Throughput(0.5, 2.0, 1.0, 10, 32))  # 11 epochs of 8 s
    assert b.planned_epochs == 11
    # the machine slows down: epoch 1 took 20 s
    clock.t = 30.0
    assert b.replan(1, 20.0) == 1 + int((100 - 30 - END_SECONDS) // 20)  # 4
    assert b.replans[-1]["from"] == 11 and b.replans[-1]["to"] == 4 and "longer" in b.replans[-1]["reason"]
    # the next epochs are fast again (8 s): the estimate stays cautious (max of last and the mean)
    clock.t = 38.0
    planned = b.replan(2, 8.0)  # estimate max(8, mean(20, 8) = 14) = 14: 60.5 s left -> 4 more, with margin 3
    assert planned == 2 + int((100 - 38 - END_SECONDS) // (14 * budget_module.EXTEND_MARGIN))
    assert planned <= 2 + int((100 - 38 - END_SECONDS) // 14)  # never more than fits
    for _ in range(3):
        b.note_epoch(8.0)
    clock.t = 62.0
    n = b.replan(5)
    assert n == 5 + int((100 - 62 - END_SECONDS) // (8 * budget_module.EXTEND_MARGIN))
    assert (n - 5) * 8 + 62 + END_SECONDS <= 100  # the lengthened plan fits


def test_when_not_one_more_epoch_fits_the_run_stops_and_says_so():
    clock = FakeClock(0.0)
    b = Budget(seconds=60.0, start=0.0, clock=clock)
    b.plan(Throughput(1.0, 0.0, 0.0, 10, 8))  # 5 epochs of 10 s
    clock.t = 55.0  # epoch 2 ended late
    assert b.replan(2, 30.0) == 2
    assert b.stop_reason and "cannot fit another epoch" in b.stop_reason
    # a plan that is simply done is no stop
    done = Budget(seconds=60.0, start=0.0, clock=FakeClock(0.0), planned_epochs=3, recent_epoch_seconds=[15.0])
    done.clock.t = 50.0
    assert done.replan(3) == 3 and done.stop_reason is None


def test_resumed_budget_counts_the_time_already_spent(tmp_path):
    clock = FakeClock(5.0)
    b = Budget(seconds=100.0, start=0.0, clock=clock)
    b.plan(Throughput(1.0, 0.0, 0.0, 10, 8))
    b.note_epoch(10.5)
    clock.t = 15.5
    b.save(tmp_path, 1)
    history = [{"epoch": 1, "seconds": 10.0}, {"epoch": 2, "seconds": 10.0}]  # killed after last.pt of epoch 2
    r = Budget.resume_from(tmp_path, 100.0, start=1000.0, history=history, planned_epochs=9,
                           clock=FakeClock(1003.0))  # this invocation's setup: 3 s
    assert r.spent_before == pytest.approx(15.5 + 10.0)
    assert r.elapsed() == pytest.approx(15.5 + 10.0 + 3.0)
    assert r.planned_epochs == 9 and r.recent_epoch_seconds == [10.5, 10.0]
    assert r.measured_img_per_s == b.measured_img_per_s
    # no budget.json: the epochs' seconds of the history
    fresh = Budget.resume_from(tmp_path / "none", 100.0, start=0.0, history=history, planned_epochs=9, clock=FakeClock(0.0))
    assert fresh.spent_before == 20.0


@pytest.mark.slow
def test_a_resumed_budget_run_counts_the_time_already_spent(tmp_path, monkeypatch):
    data = make_folder_dataset(tmp_path / "data", per_class=12)
    cfg = tiny_config(data, epochs=50)
    cfg.train.time_budget = "15s"
    real_write = trainer_module.write_metrics_csv

    def crash_after_epoch_2(history, path):
        real_write(history, path)
        if len(history) == 2:
            raise KeyboardInterrupt("simulated interruption")

    monkeypatch.setattr(trainer_module, "write_metrics_csv", crash_after_epoch_2)
    t0 = time.time()
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "run")
    first = time.time() - t0
    monkeypatch.setattr(trainer_module, "write_metrics_csv", real_write)
    record = json.loads((tmp_path / "run" / "budget.json").read_text())
    # the interruption fell after last.pt of epoch 2, before budget.json: the resume adds epoch 2's seconds
    assert record["epoch"] == 1 and record["planned_epochs"] >= 2

    saved = RunConfig.load(tmp_path / "run" / "config.yaml")
    assert saved.train.time_budget == "15s"
    time.sleep(1.0)  # time between the interruption and the resume is not counted
    t0 = time.time()
    resumed = train(saved, tmp_path / "run", resume=True)
    second = time.time() - t0
    b = json.loads((tmp_path / "run" / "train_summary.json").read_text())["budget"]
    assert [r["epoch"] for r in resumed.history][:3] == [1, 2, 3] or len(resumed.history) == 2
    assert b["actual_seconds"] == pytest.approx(first + second, abs=1.0)
    assert first + second <= 15 * 1.15
    assert b["measured_img_per_s"] == record["measured_img_per_s"]  # the plan of the first invocation


# --------------------------------------------------------------------------- the LR schedule follows the plan


def lrs_with_replans(cfg, steps_per_epoch, plan_after_epoch):
    """Run a schedule epoch by epoch; ``plan_after_epoch[e]`` = new total epochs after epoch e."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=cfg.lr)
    sched = LRSchedule(cfg, opt, steps_per_epoch)
    lrs, epoch, total = [], 0, cfg.epochs
    while epoch < total:
        epoch += 1
        for _ in range(steps_per_epoch):
            lrs.append(sched.lr)
            opt.step()
            sched.step_batch()
        if epoch in plan_after_epoch:
            total = plan_after_epoch[epoch]
            sched.set_total_steps(total * steps_per_epoch)
    return lrs, sched


def test_re_planned_cosine_ends_at_its_minimum_at_the_last_epoch_run():
    cfg = TrainConfig(schedule="cosine", lr=1.0, warmup_epochs=1, epochs=10, min_lr_ratio=0.01)
    lrs, sched = lrs_with_replans(cfg, 10, {3: 6, 4: 7})  # shortened after epoch 3, lengthened after 4
    assert len(lrs) == 70
    assert sched.lr == pytest.approx(0.01)  # the minimum, right after the last epoch run
    assert lrs[-1] < 0.02
    after_warmup = lrs[10:]
    assert all(a >= b - 1e-12 for a, b in zip(after_warmup, after_warmup[1:]))  # still decays monotonically
    steps = [b - a for a, b in zip(lrs[10:], lrs[11:])]
    assert max(abs(d) for d in steps) < 0.1  # continuous: no jump at the re-plans

    # without re-planning it is the plain schedule, unchanged
    plain, _ = lrs_with_replans(cfg, 10, {})
    same, _ = lrs_with_replans(cfg, 10, {3: 10})  # the same total again: nothing changes
    assert same == plain


def test_re_planned_schedule_resumes_exactly():
    cfg = TrainConfig(schedule="cosine", lr=1.0, warmup_epochs=1, epochs=10, min_lr_ratio=0.01)
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    sched = LRSchedule(cfg, opt, 5)
    for _ in range(20):
        opt.step()
        sched.step_batch()
    sched.set_total_steps(30)
    for _ in range(3):
        opt.step()
        sched.step_batch()
    state, opt_state = sched.state_dict(), opt.state_dict()
    ahead = []
    for _ in range(7):
        opt.step()
        sched.step_batch()
        ahead.append(sched.lr)

    param2 = torch.nn.Parameter(torch.zeros(1))
    opt2 = torch.optim.SGD([param2], lr=1.0)
    resumed = LRSchedule(cfg, opt2, 5)  # built from the config (50 steps), then restored
    opt2.load_state_dict(opt_state)
    resumed.load_state_dict(state)
    assert resumed.total_steps == 30 and resumed.anchor == sched.anchor
    again = []
    for _ in range(7):
        opt2.step()
        resumed.step_batch()
        again.append(resumed.lr)
    assert again == ahead
    assert again[-1] == pytest.approx(0.01)


# --------------------------------------------------------------------------- the plan ends at the epochs run
# The trainer's own re-planning helpers (trainer._replan after each epoch, trainer._replan_during_epoch
# after each step) driven by a fake clock: no wall time, so these cannot flake.


def budget_fit(clock, *, seconds=100.0, step_seconds=1.0, tail_seconds=0.0, steps=10):
    """A budget planned as ``_plan_budget`` plans it (epochs of ``steps`` steps of ``step_seconds``
    plus ``tail_seconds`` of validation and checkpoints) and the cosine schedule sized to it."""
    b = Budget(seconds=seconds, start=0.0, clock=clock)
    b.plan(Throughput(step_seconds, tail_seconds, 0.0, steps, 8))
    tc = TrainConfig(schedule="cosine", lr=1.0, epochs=b.planned_epochs, min_lr_ratio=0.01,
                     warmup_epochs=min(1.0, budget_module.MAX_WARMUP_FRACTION * b.planned_epochs))
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    return b, tc, SimpleNamespace(schedule=LRSchedule(tc, opt, steps), device=torch.device("cpu"), opt=opt)


def simulate_budget_run(step_seconds, *, seconds=100.0, tail_seconds=0.5, steps=10, planned_step_seconds=1.0):
    """The budget part of the trainer's epoch loop on a fake clock: re-plan after each epoch
    (``trainer._replan``; stop when it says so), run the epoch's ``steps`` steps, each taking
    ``step_seconds(epoch, step)`` s and followed by ``trainer._replan_during_epoch``, then
    ``tail_seconds`` of validation and checkpoints, and note the epoch. Returns the budget, the
    schedule, the LR after each epoch (``metrics.csv``'s ``lr``) and the epochs run."""
    clock = FakeClock(0.0)
    b, tc, fit = budget_fit(clock, seconds=seconds, step_seconds=planned_step_seconds, tail_seconds=tail_seconds,
                            steps=steps)
    ctx, lrs, epoch = DistContext(), [], 0
    while True:
        if epoch > 0 and not trainer_module._replan(b, fit, tc, epoch, steps, ctx, lambda *a: None):
            break
        if epoch >= tc.epochs:
            break
        epoch += 1
        t0 = clock.t
        for step in range(steps):
            clock.t += step_seconds(epoch, step)
            fit.opt.step()
            fit.schedule.step_batch()
            trainer_module._replan_during_epoch(b, fit, tc, epoch, clock.t - t0, step + 1, steps, ctx,
                                                lambda *a: None)
        lrs.append(fit.schedule.lr)
        train_seconds = clock.t - t0
        clock.t += tail_seconds
        b.note_epoch(clock.t - t0, tail_seconds=clock.t - t0 - train_seconds)
    return b, fit.schedule, tc, lrs, epoch


def test_a_stop_the_plan_did_not_foresee_ends_the_plan_and_the_schedule_at_the_epochs_run():
    # the CI failure: planned for one epoch more than ran (total_steps 188 vs 93 epochs x 2)
    clock = FakeClock(0.0)
    b, tc, fit = budget_fit(clock)  # epochs of 10 s: 9 fit in 100 s
    assert b.planned_epochs == tc.epochs == 9 and fit.schedule.total_steps == 90
    ctx, log = DistContext(), []
    for done in range(1, 8):  # epochs 1-7 take 10 s, as planned
        clock.t += 10.0
        b.note_epoch(10.0)
        assert trainer_module._replan(b, fit, tc, done, 10, ctx, log.append)
    assert b.planned_epochs == 9  # 28.5 s left after epoch 7: two epochs of 10 s with room to spare
    clock.t += 20.0  # epoch 8 takes twice as long: 8.5 s left, not one more epoch of 20 s
    b.note_epoch(20.0)
    assert not trainer_module._replan(b, fit, tc, 8, 10, ctx, log.append)
    assert b.planned_epochs == tc.epochs == 8  # the plan is the epochs run
    assert fit.schedule.total_steps == 8 * 10  # and so is the schedule
    assert "stopping after epoch 8" in b.stop_reason and "stopping after epoch 8" in log[-1]
    summary = b.summary(90.0)
    assert summary["planned_epochs"] == 8 and summary["replans"][-1]["to"] == 8
    assert not trainer_module._replan(b, fit, tc, 8, 10, ctx, log.append)  # asked again: the same answer
    assert b.planned_epochs == tc.epochs == 8 and fit.schedule.total_steps == 80


def test_the_next_epoch_is_planned_as_the_last_when_no_epoch_would_fit_after_it_with_the_margin():
    clock = FakeClock(0.0)
    b = Budget(seconds=100.0, start=0.0, clock=clock)
    b.plan(Throughput(1.0, 0.0, 0.0, 10, 8))  # 9 epochs of 10 s
    clock.t = 78.0  # after 7 epochs of about 11 s: 20.5 s left, two epochs of 10 s fit only just
    assert b.replan(7, 10.0) == 8  # epoch 8 is the last: after it 10.5 s < 10 s x 1.1 is left
    assert b.replans[-1]["to"] == 8 and "epoch 8 is the last" in b.replans[-1]["reason"]
    clock.t = 88.0  # epoch 8 took 10 s as planned: 10.5 s left; the plan holds (no flip-flop, no stop reason)
    assert b.replan(8, 10.0) == 8 and b.stop_reason is None
    # with room for the margin the plan is not cut
    roomy = Budget(seconds=100.0, start=0.0, clock=FakeClock(0.0))
    roomy.plan(Throughput(1.0, 0.0, 0.0, 10, 8))
    roomy.clock.t = 77.0  # 21.5 s left: 11.5 s after epoch 8, more than 11 s
    assert roomy.replan(7, 10.0) == 9 and roomy.replans == []


def test_an_epoch_that_runs_slow_becomes_the_last_while_it_runs_and_the_cosine_ends_on_it():
    # epochs 1-7 as planned (10 steps of 1 s, 0.5 s after them); the steps of epoch 8 take 2 s each
    b, sched, tc, lrs, run = simulate_budget_run(lambda epoch, step: 2.0 if epoch == 8 else 1.0)
    assert run == 8 and b.planned_epochs == tc.epochs == 8  # epoch 9 no longer fits
    assert sched.total_steps == 8 * 10
    assert lrs[-1] == pytest.approx(0.01)  # the cosine's minimum at the last step run
    during = [r for r in b.replans if "during_epoch" in r]
    assert len(during) == 1 and during[0]["during_epoch"] == 8 and 0 < during[0]["after_step"] < 10
    assert during[0]["from"] == 9 and during[0]["to"] == 8 and "runs slower than planned" in during[0]["reason"]
    assert b.stop_reason is None  # foreseen: the plan was run to its end
    assert all(a >= c - 1e-12 for a, c in zip(lrs[1:], lrs[2:]))  # still decaying, no jump upwards


def test_the_re_plan_during_an_epoch_keeps_the_plan_while_another_epoch_fits():
    clock = FakeClock(0.0)
    b = Budget(seconds=100.0, start=0.0, clock=clock, throughput={"val_seconds": 0.5, "save_seconds": 0.0})
    b.set_plan(9, 10.5)
    b.note_epoch(10.5, tail_seconds=0.5)
    clock.t = 10.5 + 6.0  # a slow first step in epoch 2 (5 s, then 1 s): the pace so far is not extrapolated
    assert b.replan_during_epoch(2, 6.0, 2, 10) == 9 and b.replans == []
    clock.t = 90.0  # 2 s into epoch 8, on pace: 8.5 s of it to go, then 0 s left of the budget...
    assert b.replan_during_epoch(8, 2.0, 2, 10) == 8  # ...so it is the last
    assert b.replans[-1]["during_epoch"] == 8 and b.replans[-1]["after_step"] == 2
    # not asked before the first step, at the last one (too late for its LR), nor in the planned last epoch
    late = Budget(seconds=100.0, start=0.0, clock=FakeClock(95.0), planned_epochs=9, recent_epoch_seconds=[10.0])
    assert late.replan_during_epoch(8, 9.0, 10, 10) == 9
    assert late.replan_during_epoch(8, 0.0, 0, 10) == 9
    assert late.replan_during_epoch(9, 5.0, 5, 10) == 9 and late.replans == []


@pytest.mark.parametrize("seed", range(40))
def test_every_budget_run_ends_with_the_plan_and_the_schedule_at_the_epochs_run(seed):
    # epochs whose steps take 0.5-2.5 x the planned second, at random (a loaded machine), and some
    # whose whole pace changes: however the run ends, the plan and the schedule end with it
    rng = random.Random(seed)
    pace = {e: rng.choice([0.6, 1.0, 1.0, 1.3, 2.0]) for e in range(1, 200)}
    jitter = {(e, s): rng.uniform(0.5, 2.5) if rng.random() < 0.1 else 1.0 for e in range(1, 200) for s in range(10)}
    b, sched, tc, lrs, run = simulate_budget_run(lambda e, s: pace[e] * jitter[e, s], seconds=rng.uniform(60, 200))
    assert b.planned_epochs == tc.epochs == run
    assert sched.total_steps == run * 10
    if b.stop_reason is None:  # the end was foreseen: the cosine's minimum at the last step run
        assert lrs[-1] == pytest.approx(0.01)


def test_a_budget_stop_rewrites_last_pt_with_the_schedule_ended_at_the_epochs_run(tmp_path, monkeypatch):
    # the machine "slows down" after epoch 2: from then on no time is left (a fake, not the wall clock),
    # a stop the plan of 1000 epochs did not foresee
    monkeypatch.setattr(Budget, "available", lambda self: 1e6 if len(self.recent_epoch_seconds) < 2 else 0.0)
    data = make_folder_dataset(tmp_path / "data", per_class=8)
    cfg = tiny_config(data, epochs=50)
    cfg.train.time_budget = "10m"
    result = train(cfg, tmp_path / "run")
    assert [r["epoch"] for r in result.history] == [1, 2]
    b = json.loads((tmp_path / "run" / "train_summary.json").read_text())["budget"]
    steps = b["throughput"]["steps_per_epoch"]
    assert b["planned_epochs"] == 2 and "stopping after epoch 2" in b["stop_reason"]
    assert b["replans"][-1]["from"] == budget_module.MAX_PLANNED_EPOCHS and b["replans"][-1]["to"] == 2
    last = trainer_module.load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert last["epoch"] == 2 and last["schedule"]["total_steps"] == 2 * steps
    assert last["config"]["train"]["epochs"] == 2
    assert json.loads((tmp_path / "run" / "budget.json").read_text())["planned_epochs"] == 2


def test_preserved_state_undoes_a_measurement():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with preserved_state([model, opt], gen):
        for _ in range(3):
            model(torch.randn(8, 4, generator=gen)).sum().backward()
            opt.step()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert opt.state_dict()["state"] == {}
    assert torch.equal(torch.randn(3, generator=gen), torch.randn(3, generator=torch.Generator().manual_seed(3)))


# --------------------------------------------------------------------------- image size auto


def test_choose_resolution_takes_the_first_candidate_that_affords_the_minimum_epochs():
    candidates = ((128, "small"), (128, "imagenet"), (64, "imagenet"))
    speeds = {(128, "small"): 10.0, (128, "imagenet"): 100.0, (64, "imagenet"): 400.0}
    # 1000 images: 100 s, 10 s, 2.5 s an epoch; 300 s affords 3, 30, 120 epochs
    c = choose_resolution(300.0, 1000, speeds, min_epochs=15, candidates=candidates)
    assert (c.image_size, c.stem) == (128, "imagenet")
    assert "15 epochs" in c.reason and [r["epochs"] for r in c.candidates] == [3, 30, 120]
    c = choose_resolution(3000.0, 1000, speeds, min_epochs=15, candidates=candidates)
    assert (c.image_size, c.stem) == (128, "small")
    c = choose_resolution(20.0, 1000, speeds, min_epochs=15, candidates=candidates)  # none affords 15
    assert (c.image_size, c.stem) == (64, "imagenet") and "fastest" in c.reason
    # validation counts: with a validation split as large as the training one, fewer epochs fit
    c = choose_resolution(300.0, 1000, speeds, n_val_images=1000, min_epochs=25, candidates=candidates)
    assert (c.image_size, c.stem) == (64, "imagenet")
    with pytest.raises(ValueError):
        choose_resolution(300.0, 1000, {}, candidates=candidates)


def test_auto_never_upsamples_and_takes_the_small_stem_for_thumbnails(tmp_path):
    from medclass.data import build_index, native_side

    candidates = ((224, "imagenet"), (128, "imagenet"), (64, "imagenet"))
    m = budget_module
    assert m.auto_candidates(None, candidates) == (list(candidates), m.MIN_EPOCHS_FOR_SIZE)
    assert m.auto_candidates(150, candidates) == ([(128, "imagenet"), (64, "imagenet")], m.MIN_EPOCHS_FOR_SIZE)
    assert m.auto_candidates(28, candidates) == ([(28, "small"), (28, "imagenet")], m.MIN_EPOCHS_FOR_THUMBNAIL_STEM)
    # the native side is the median shorter side of the images, read at their own size
    data = make_folder_dataset(tmp_path / "data", per_class=4, size=40)
    index = build_index(tiny_config(data).data)
    assert native_side(index.splits["train"], 3) == 40


def test_candidates_are_measured_cheapest_first_until_one_is_too_slow(monkeypatch):
    table = {(224, "imagenet"): 5.0, (128, "imagenet"): 30.0, (96, "imagenet"): 60.0, (64, "imagenet"): 120.0}
    asked = []

    def fake(cfg, samples, n, device, cands, **k):
        asked.extend(cands)
        return {c: table[c] for c in cands}

    monkeypatch.setattr(budget_module, "measure_candidate_speeds", fake)
    # 600 images in 600 s at twice these speeds (speed_scale): 64 px affords 240 epochs, 96 px 120,
    # 128 px 60 (fewer than 70: the last one measured; 224 px is never timed)
    speeds = budget_module.measure_affordable_speeds(None, [0] * 600, 2, torch.device("cpu"), 600.0, list(table),
                                                     min_epochs=70, speed_scale=2.0)
    assert asked == [(64, "imagenet"), (96, "imagenet"), (128, "imagenet")]
    assert speeds[(96, "imagenet")] == 120.0
    choice = choose_resolution(600.0, 600, speeds, min_epochs=70, candidates=list(table))
    assert (choice.image_size, choice.stem) == (96, "imagenet")


def test_candidate_speeds_are_measured_on_the_real_images_without_changing_the_run(tmp_path):
    from medclass.data import build_index

    data = make_folder_dataset(tmp_path / "data", per_class=8)
    cfg = tiny_config(data)
    index = build_index(cfg.data)
    torch.manual_seed(5)
    speeds = budget_module.measure_candidate_speeds(cfg, index.splits["train"], index.num_classes,
                                                    torch.device("cpu"), candidates=((16, "small"), (24, "imagenet")))
    assert set(speeds) == {(16, "small"), (24, "imagenet")} and all(v > 0 for v in speeds.values())
    after = torch.randn(2)
    torch.manual_seed(5)
    assert torch.equal(after, torch.randn(2))  # the global RNG is put back


@pytest.mark.slow
def test_budget_run_with_image_size_auto_records_the_choice(tmp_path, monkeypatch, capsys):
    data = make_folder_dataset(tmp_path / "data", per_class=12, size=24)
    monkeypatch.setattr(budget_module, "RESOLUTION_CANDIDATES", ((24, "small"), (16, "small")))
    # 24 px cannot afford MIN_EPOCHS_FOR_SIZE epochs, 16 px can: the choice is 16 px
    table = {(24, "small"): 0.05, (16, "small"): 1000.0}
    monkeypatch.setattr(budget_module, "measure_candidate_speeds",
                        lambda cfg, samples, n, device, cands, **k: {c: table[c] for c in cands})
    cfg = tiny_config(data, image_size="auto", epochs=50)
    cfg.train.time_budget = "12s"
    t0 = time.time()
    result = train(cfg, tmp_path / "run")
    wall = time.time() - t0
    out = capsys.readouterr().out
    spec = json.loads((tmp_path / "run" / "model_spec.json").read_text())
    assert spec["image_size"] == 16
    saved = RunConfig.load(tmp_path / "run" / "config.yaml")
    assert saved.data.image_size == 16 and saved.model.stem == "small"
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    b = summary["budget"]
    assert b["resolution"]["image_size"] == 16 and b["resolution"]["native_side"] == 24
    assert f"{budget_module.MIN_EPOCHS_FOR_SIZE} epochs" in b["resolution"]["reason"]
    assert b["seconds"] == 12.0 and b["planned_epochs"] >= 1 and b["measured_img_per_s"] > 0
    assert set(b) >= {"seconds", "planned_epochs", "measured_img_per_s", "estimated_seconds", "replans", "actual_seconds"}
    assert len(result.history) == b["planned_epochs"]
    assert "image size auto" in out and "time budget 12 s" in out and "train.epochs (50) is ignored" in out
    assert wall < 12.0 * 1.5


# --------------------------------------------------------------------------- without a budget


def test_long_run_note_names_the_estimate_and_the_options():
    cfg = RunConfig()  # 30 epochs
    fixed_image_size(cfg)  # as train() does first: auto without a budget is 224 px
    cfg.model.arch = "resnet50"  # the note suggests the smaller resnet18
    notes = []
    clock = RunClock(cfg, time.time(), steps_per_epoch=160, n_val_images=800, write=notes.append)
    loader = clock.timed(list(range(20)), epochs_left=30)
    assert isinstance(loader, TimedLoader)
    clock._on_steps(5.0)  # 5 s a step of 32 images: 160 steps = 13 min an epoch, 7 h in all
    assert len(notes) == 1
    note = notes[0]
    assert "h" in note and "--time-budget" in note and "--image-size" in note and "--epochs" in note
    assert "resnet18" in note
    assert clock.eta(30) > 3600
    clock._maybe_warn(1000.0, 30, 6.0)
    assert len(notes) == 1  # once

    quick = RunClock(cfg, time.time(), steps_per_epoch=10, n_val_images=10, write=notes.append)
    quick._on_steps(0.1)
    assert len(notes) == 1  # a short run says nothing


def test_timed_loader_times_the_first_steps_as_they_happen():
    got = []
    loader = TimedLoader(list(range(10)), got.append, steps=3)
    assert len(loader) == 10
    out = []
    for b in loader:
        time.sleep(0.01)
        out.append(b)
    assert out == list(range(10))
    assert len(got) == 1 and got[0] >= 0.009


def test_timed_loader_leaves_the_random_draws_of_the_run_as_they_were():
    # a DataLoader iterator draws its base seed from the global RNG when it is made (tqdm.auto makes
    # one more in its constructor): timing the first epoch must not shift the run's augmentation draws
    from torch.utils.data import DataLoader, TensorDataset
    from tqdm.auto import tqdm

    loader = DataLoader(TensorDataset(torch.arange(12)), batch_size=4, shuffle=True)
    draws = []
    for wrapped in (loader, TimedLoader(loader, lambda s: None, steps=1)):
        torch.manual_seed(1)
        batches = [b[0].tolist() for b in tqdm(wrapped, total=3, disable=True)]
        draws.append((batches, torch.rand(2).tolist()))
    assert draws[0] == draws[1]


def test_eta_shows_in_each_epoch_line_and_the_progress_bar(tmp_path, capsys, monkeypatch):
    descs = []
    real_tqdm = trainer_module.tqdm

    def recording_tqdm(*args, **kwargs):
        descs.append(kwargs.get("desc"))
        return real_tqdm(*args, **kwargs)

    recording_tqdm.write = real_tqdm.write
    monkeypatch.setattr(trainer_module, "tqdm", recording_tqdm)
    data = make_folder_dataset(tmp_path / "data", per_class=8)
    train(tiny_config(data, epochs=2), tmp_path / "run")
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("epoch")]
    assert "ETA" in lines[0] and "ETA" not in lines[-1]
    assert descs[0] == "epoch 1/2" and descs[1].startswith("epoch 2/2 (run ETA ")


# --------------------------------------------------------------------------- the test


@pytest.mark.slow
@pytest.mark.integration
def test_a_60_second_budget_on_real_images_ends_within_15_percent(tmp_path):
    data = need(SHARED_DATA / "brain-tumor-mri-yn")
    # epochs of a few seconds (ImageNet stem at 48 px), so the last one ends close to the budget;
    # the re-planning holds it while other processes load the machine
    cfg = tiny_config(data, image_size=48, epochs=3)
    cfg.model.stem = "imagenet"
    cfg.data.channels = 1
    cfg.data.val_fraction = 0.15
    cfg.data.test_fraction = 0.15
    cfg.train.batch_size = 32
    cfg.train.time_budget = "60s"
    t0 = time.time()
    result = train(cfg, tmp_path / "run")
    wall = time.time() - t0
    b = json.loads((tmp_path / "run" / "train_summary.json").read_text())["budget"]
    assert 0.85 * 60 <= wall <= 1.15 * 60, (wall, b)
    assert len(result.history) >= 2 and b["planned_epochs"] == len(result.history)
    if not b["stop_reason"]:  # the plan was run to its end: the cosine is at its minimum
        assert result.history[-1]["lr"] == pytest.approx(cfg.train.lr * cfg.train.min_lr_ratio)


def test_quickstart_is_a_10_minute_budget_unless_epochs_are_given():
    from medclass.cli.app import _build_config

    cfg = _build_config(None, None, [], **{"train.epochs": None, "train.time_budget": None})
    assert cfg.train.time_budget == "10m" and cfg.data.image_size == "auto" and cfg.data.channels == 1
    cfg = _build_config(None, None, [], **{"train.epochs": 5, "train.time_budget": None})
    assert cfg.train.time_budget is None and cfg.train.epochs == 5
    assert (cfg.data.image_size, cfg.model.stem) == (28, "small")  # not auto's 224 px without a budget
    cfg = _build_config(None, None, [], **{"train.epochs": 5, "train.time_budget": "2m"})
    assert cfg.train.time_budget == "2m" and cfg.data.image_size == "auto"


def test_a_plan_run_to_its_end_is_not_lengthened_after_its_last_epoch():
    # Real runs did this (chest-ct seed 1: "re-planned from 106 to 107" after epoch 106 of 106): the last
    # planned epoch ran fast, time was left, and one more epoch ran at the cosine's floor. The schedule
    # had ended, so the run ends with it.
    b, sched, tc, lrs, run = simulate_budget_run(lambda epoch, step: 0.2 if epoch == 9 else 1.0)
    assert run == 9 and b.planned_epochs == tc.epochs == 9
    assert sched.total_steps == 9 * 10 and lrs[-1] == pytest.approx(0.01)
    assert [r for r in b.replans if r["after_epoch"] >= 9] == []
    assert b.stop_reason is None
