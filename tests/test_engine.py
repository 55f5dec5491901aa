"""Training loop: schedules, early stopping, checkpoints, resume, run folder."""

import csv
import json
import math
import pickle

import numpy as np
import pytest
import torch

from medclass.core.config import RunConfig, TrainConfig
from medclass.core.runs import RunError
from medclass.engine import (
    CheckpointError,
    EarlyStopping,
    LRSchedule,
    load_checkpoint,
    load_run,
    save_checkpoint,
    train,
)
from medclass.engine import trainer as trainer_module

from helpers import make_folder_dataset, tiny_config


def lrs_over(cfg, steps_per_epoch, epochs, metric=None):
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=cfg.lr)
    sched = LRSchedule(cfg, opt, steps_per_epoch)
    out = []
    for e in range(epochs):
        for _ in range(steps_per_epoch):
            out.append(sched.lr)
            opt.step()
            sched.step_batch()
        sched.step_epoch(metric[e] if metric else 0.0)
    return out


def test_exponential_decay_is_kerass_continuous_formula():
    cfg = TrainConfig(schedule="exponential", lr=1e-4, decay_steps=40, decay_rate=0.96, epochs=2)
    lrs = lrs_over(cfg, 50, 2)
    for step in (0, 1, 40, 77, 99):
        assert lrs[step] == pytest.approx(1e-4 * 0.96 ** (step / 40), rel=1e-9)


def test_cosine_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(schedule="cosine", lr=1.0, warmup_epochs=1, epochs=5, min_lr_ratio=0.01)
    lrs = lrs_over(cfg, 10, 5)
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)  # linear warm-up
    assert lrs[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # monotone decay
    assert lrs[30] == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 20 / 40)))
    assert lrs[-1] > 0.01 and lrs[-1] < 0.02


def test_reduce_on_plateau_cuts_lr_after_patience():
    cfg = TrainConfig(schedule="plateau", lr=1.0, plateau_factor=0.5, plateau_patience=2, monitor="val_loss", epochs=6)
    lrs = lrs_over(cfg, 1, 6, metric=[1.0, 0.9, 0.9, 0.9, 0.9, 0.9])
    # best at epoch 2 (0.9); epochs 3 and 4 do not improve; the cut happens after the 3rd bad epoch
    assert lrs == [1.0, 1.0, 1.0, 1.0, 1.0, 0.5]


def test_unknown_schedule_is_an_error():
    with pytest.raises(ValueError, match="schedule"):
        lrs_over(TrainConfig(schedule="linear"), 1, 1)


def test_early_stopping_patience_min_delta_and_mode():
    es = EarlyStopping("val_loss", patience=2, min_delta=0.05)
    assert es.update(1.0, 1)
    assert not es.update(0.97, 2)  # better, but by less than min_delta
    assert not es.should_stop
    assert not es.update(0.99, 3)
    assert es.should_stop and es.best_epoch == 1
    acc = EarlyStopping("val_accuracy", patience=1)
    assert acc.mode == "max" and acc.update(0.5, 1) and acc.update(0.6, 2) and not acc.update(0.6, 3)
    assert acc.should_stop and acc.best == 0.6
    never = EarlyStopping("val_loss", patience=None)
    for e in range(20):
        never.update(1.0, e)
    assert not never.should_stop


def test_training_stops_early_and_restores_best(tmp_path):
    data = make_folder_dataset(tmp_path / "data")
    # with min_delta larger than any possible change, only epoch 1 counts as an improvement:
    # training stops after 1 + patience epochs and the best checkpoint is epoch 1's
    cfg = tiny_config(data, epochs=10, early_stopping=True, patience=2, min_delta=100.0)
    result = train(cfg, tmp_path / "run")
    assert result.stopped_early
    assert len(result.history) == 3 and result.best_epoch == 1
    assert load_checkpoint(result.files.best)["epoch"] == 1


def test_run_folder_contents_and_metrics_csv(tmp_path):
    data = make_folder_dataset(tmp_path / "data")
    result = train(tiny_config(data, epochs=2), tmp_path / "run")
    root = result.files.root
    for name in ("config.yaml", "manifest.csv", "classes.json", "metrics.csv", "curves.png", "train_summary.json"):
        assert (root / name).is_file(), name
    assert (root / "checkpoints" / "best.pt").is_file() and (root / "checkpoints" / "last.pt").is_file()
    assert any((root / "tensorboard").iterdir())
    rows = list(csv.DictReader(open(root / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert set(rows[0]) == {"epoch", "loss", "accuracy", "val_loss", "val_accuracy", "val_balanced_accuracy", "lr",
                            "seconds"}
    assert json.loads((root / "classes.json").read_text()) == ["bright", "dark"]
    assert RunConfig.load(root / "config.yaml").train.epochs == 2
    # a run that exists is not overwritten
    with pytest.raises(RunError, match="--resume"):
        train(tiny_config(data, epochs=2), root)


def test_same_seed_gives_the_same_run(tmp_path):
    data = make_folder_dataset(tmp_path / "data")
    a = train(tiny_config(data, epochs=2), tmp_path / "a")
    b = train(tiny_config(data, epochs=2), tmp_path / "b")
    assert [r["loss"] for r in a.history] == [r["loss"] for r in b.history]


def test_resume_gives_the_same_state_as_an_uninterrupted_run(tmp_path, monkeypatch):
    data = make_folder_dataset(tmp_path / "data")
    straight = train(tiny_config(data, epochs=3), tmp_path / "straight")

    real_write = trainer_module.write_metrics_csv

    def crash_after_epoch_2(history, path):
        real_write(history, path)
        if len(history) == 2:
            raise KeyboardInterrupt("simulated interruption")

    monkeypatch.setattr(trainer_module, "write_metrics_csv", crash_after_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(data, epochs=3), tmp_path / "resumed")
    monkeypatch.setattr(trainer_module, "write_metrics_csv", real_write)
    assert load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")["epoch"] == 2

    cfg = RunConfig.load(tmp_path / "resumed" / "config.yaml")
    cfg.train.progress = False
    resumed = train(cfg, tmp_path / "resumed", resume=True)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    for a, b in zip(straight.history, resumed.history):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
    sa = load_checkpoint(straight.files.last)
    sb = load_checkpoint(resumed.files.last)
    for k, v in sa["model"].items():
        assert torch.allclose(v.float(), sb["model"][k].float(), atol=1e-5), k
    assert sa["optimizer"]["state"].keys() == sb["optimizer"]["state"].keys()


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(RunError, match="last.pt"):
        train(tiny_config(tmp_path), tmp_path / "nothing", resume=True)


def test_unwritable_run_folder_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(RunError, match="not writable"):
        train(tiny_config(tmp_path), blocker / "run")


def test_checkpoint_is_written_atomically(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    save_checkpoint({"w": torch.ones(3)}, path)

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["w"], torch.ones(3))  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]  # no temporary file left


def test_malicious_checkpoint_is_not_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"model": Evil()}, f)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert not marker.exists()


def test_single_logit_binary_and_class_weighted_loss_train(tmp_path):
    data = make_folder_dataset(tmp_path / "data")
    cfg = tiny_config(data, epochs=1)
    cfg.model.single_logit = True
    cfg.data.class_balance = "loss"
    result = train(cfg, tmp_path / "run")
    run = load_run(result.files.root)
    assert run.model.fc.out_features == 1
    cfg = tiny_config(data, epochs=1)
    cfg.data.class_balance = "sampler"
    assert train(cfg, tmp_path / "run2").history[0]["loss"] > 0


def test_domain_transfer_from_a_run_with_frozen_backbone_and_two_phases(tmp_path):
    data = make_folder_dataset(tmp_path / "data")
    source = train(tiny_config(data, epochs=1), tmp_path / "source")
    start = load_checkpoint(source.files.best)["model"]

    cfg = tiny_config(data, epochs=2)
    cfg.model.pretrained = str(source.files.root)
    cfg.model.finetune = "feature_extraction"
    frozen = train(cfg, tmp_path / "frozen")
    after = load_checkpoint(frozen.files.last)["model"]
    backbone = [k for k in start if not k.startswith("fc.")]
    # backbone weights and BN statistics are exactly the source run's; the head trained
    assert all(torch.equal(start[k], after[k]) for k in backbone)
    assert not torch.equal(start["fc.weight"], after["fc.weight"])

    # a source run with other class names (same count): its head is not reused
    relabelled = tmp_path / "relabelled"
    import shutil
    shutil.copytree(source.files.root, relabelled)
    (relabelled / "classes.json").write_text(json.dumps(["x", "y"]))
    cfg = tiny_config(data, epochs=1)
    cfg.model.pretrained = str(relabelled)
    cfg.model.finetune = "feature_extraction"
    cfg.train.lr = 0.0
    fresh = load_checkpoint(train(cfg, tmp_path / "fresh-head").files.last)["model"]
    assert not torch.equal(start["fc.weight"], fresh["fc.weight"])
    assert torch.equal(start["layer1.0.conv1.weight"], fresh["layer1.0.conv1.weight"])

    cfg = tiny_config(data, epochs=2)
    cfg.model.pretrained = str(source.files.root)
    cfg.model.finetune = "two_phase"
    cfg.model.head_epochs = 1
    cfg.model.backbone_lr_mult = 0.1
    two = train(cfg, tmp_path / "two")
    final = load_checkpoint(two.files.last)
    assert not torch.equal(start["layer1.0.conv1.weight"], final["model"]["layer1.0.conv1.weight"])
    lrs = sorted({round(g["lr"] / cfg.train.lr, 6) for g in final["optimizer"]["param_groups"]})
    schedule_factor = two.history[-1]["lr"] / cfg.train.lr
    assert lrs == sorted({round(0.1 * schedule_factor, 6), round(schedule_factor, 6)})


def test_imagenet_weights_turn_on_imagenet_normalisation_and_missing_file_is_explained(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    data = make_folder_dataset(tmp_path / "data")
    cfg = tiny_config(data, epochs=1)
    cfg.model.pretrained = "imagenet"
    import medclass.models.pretrained as pre

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(pre.torch.hub, "download_url_to_file", offline)
    with pytest.raises(pre.PretrainedError, match="resnet50-0676ba61.pth"):
        train(cfg, tmp_path / "run")
    saved = RunConfig.load(tmp_path / "run" / "config.yaml")
    assert saved.data.normalize and saved.data.mean == [0.485, 0.456, 0.406]


def test_custom_cnn_and_chained_model_train_evaluate_and_load(tmp_path):
    data = make_folder_dataset(tmp_path / "data")
    cfg = tiny_config(data, epochs=1)
    cfg.model.arch = "custom_cnn"
    cfg.model.cnn_widths = [8, 16]
    cfg.model.dropout = 0.3
    cnn = train(cfg, tmp_path / "cnn")
    assert type(load_run(cnn.files.root).model).__name__ == "CustomCNN"

    # a ResNet-50 run as the source of the chained model's ResNet part, kept frozen
    src_cfg = tiny_config(data, epochs=1)
    src_cfg.model.arch = "resnet50"
    source = train(src_cfg, tmp_path / "resnet")
    start = load_checkpoint(source.files.best)["model"]
    cfg = tiny_config(data, epochs=2)
    cfg.model.arch = "chained"
    cfg.model.chain_stage = 1
    cfg.model.cnn_widths = [16]
    cfg.model.pretrained = str(source.files.root)
    cfg.model.chain_freeze_resnet = True
    chained = train(cfg, tmp_path / "chained")
    after = load_checkpoint(chained.files.last)["model"]
    resnet_keys = [k for k in after if k.startswith("resnet.")]
    assert resnet_keys and all(torch.equal(after[k], start[k[len("resnet."):]]) for k in resnet_keys)
    assert type(load_run(chained.files.root).model).__name__ == "ChainedModel"


@pytest.mark.slow
def test_ensemble_soft_votes_and_compare_writes_the_table(tmp_path):
    from medclass.engine import logits_to_probs, predict_logits
    from medclass.evaluation import compare_runs, evaluate_run, fit_ensemble_weights, make_ensemble

    data = make_folder_dataset(tmp_path / "data")
    a = train(tiny_config(data, epochs=1), tmp_path / "a")
    cfg = tiny_config(data, epochs=1)
    cfg.model.arch = "custom_cnn"
    cfg.model.cnn_widths = [8]
    cfg.data.normalize = True  # members may normalise differently
    b = train(cfg, tmp_path / "b")
    spec = make_ensemble([a.files.root, b.files.root], tmp_path / "ens", [3, 1], progress=False)
    assert spec["weights"] == [0.75, 0.25]

    ens, ra, rb = load_run(tmp_path / "ens"), load_run(a.files.root), load_run(b.files.root)
    images = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8)
    p = lambda r: logits_to_probs(predict_logits(r.model, images, r.preprocess, r.device))
    assert torch.allclose(p(ens), 0.75 * p(ra) + 0.25 * p(rb), atol=1e-5)
    metrics = evaluate_run(tmp_path / "ens", progress=False)
    assert metrics["n"] == 6

    # weights fitted on validation put everything on a perfect member
    y = np.array([0, 1, 1, 0])
    perfect = np.eye(2)[y] * 0.98 + 0.01
    useless = np.full((4, 2), 0.5)
    w = fit_ensemble_weights([useless, perfect], y)
    assert w[1] > 0.99 and abs(sum(w) - 1) < 1e-9
    auto = make_ensemble([a.files.root, b.files.root], tmp_path / "auto", "auto", progress=False)
    assert abs(sum(auto["weights"]) - 1) < 1e-6

    rows = compare_runs([a.files.root, b.files.root, tmp_path / "ens"], tmp_path / "cmp", progress=False)
    assert [r["run"] for r in rows] == ["a", "b", "ens"]
    assert rows[2]["parameters"] == rows[0]["parameters"] + rows[1]["parameters"]
    assert rows[2]["train_seconds"] == pytest.approx(rows[0]["train_seconds"] + rows[1]["train_seconds"])
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "soft-voting ensemble (a x0.75, b x0.25)" in md and md.count("\n") == 5
    assert (tmp_path / "cmp" / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    assert len(list(csv.DictReader(open(tmp_path / "cmp" / "comparison.csv")))) == 3


def test_ensemble_refuses_members_with_other_classes_or_splits(tmp_path):
    from medclass.data import DataError
    from medclass.evaluation import make_ensemble

    data = make_folder_dataset(tmp_path / "data")
    a = train(tiny_config(data, epochs=1), tmp_path / "a")
    cfg = tiny_config(data, epochs=1)
    cfg.data.split_seed = 5
    other_split = train(cfg, tmp_path / "b")
    with pytest.raises(DataError, match="valid split"):
        make_ensemble([a.files.root, other_split.files.root], tmp_path / "e", progress=False)
    with pytest.raises(RunError, match="at least two"):
        make_ensemble([a.files.root], tmp_path / "e1", progress=False)
