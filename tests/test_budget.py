"""The time budget (issue 12): durations, the planner's arithmetic, re-planning, the LR schedule
re-sized to the epochs actually run, ``--image-size auto``, the long-run note, and a 60 s budget on
real images that ends on time."""

import json
import time

import pytest
import torch
import yaml
from typer.testing import CliRunner

from medclass.cli import app
from medclass.config import (
    DEFAULT_IMAGE_SIZE, ConfigError, RunConfig, TrainConfig, check_budget_config, fixed_image_size, parse_duration,
)
from medclass.engine import LRSchedule, train
from medclass.engine import budget as budget_module
from medclass.engine.budget import (
    END_SECONDS, Budget, RunClock, Throughput, TimedLoader, choose_resolution, epochs_that_fit, preserved_state,
)
from medclass.spec import read_spec

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
    import medclass.engine.trainer as trainer_module

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
    import medclass.engine.trainer as trainer_module

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
    import medclass.engine.trainer as trainer_module

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
    from medclass.cli import _build_config

    cfg = _build_config(None, None, [], **{"train.epochs": None, "train.time_budget": None})
    assert cfg.train.time_budget == "10m" and cfg.data.image_size == "auto" and cfg.data.channels == 1
    cfg = _build_config(None, None, [], **{"train.epochs": 5, "train.time_budget": None})
    assert cfg.train.time_budget is None and cfg.train.epochs == 5
    assert (cfg.data.image_size, cfg.model.stem) == (28, "small")  # not auto's 224 px without a budget
    cfg = _build_config(None, None, [], **{"train.epochs": 5, "train.time_budget": "2m"})
    assert cfg.train.time_budget == "2m" and cfg.data.image_size == "auto"
