"""Per-image intensity standardisation (``data.intensity: per_image``, issue 12): one rule in
:mod:`medclass.core.pipeline` (numpy and torch agree), invariant to brightness and contrast, finite on
a blank image, validated in the config, recorded in the run's spec (older specs read as
``fixed``), and used by training, prediction, OOD, Grad-CAM and the exported ONNX/TorchScript
graphs alike."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest
import torch

from helpers import make_folder_dataset, tiny_config
from medclass.core import pipeline
from medclass.core.config import INTENSITY_RULES, ConfigError, DataConfig, RunConfig, check_recipe
from medclass.data import Preprocess
from medclass.core.spec import (
    IMAGENET_MEAN, ModelSpec, legacy_spec, normalization_of, read_spec, recorded_config, spec_from_config, write_spec,
)


def _images(n=5, c=3, side=8, low=30, high=111, seed=0) -> np.ndarray:
    """uint8 ``(n, c, side, side)`` in ``low..high-1``: ``2 * x + 20`` stays below 255 (no saturation)."""
    return np.random.default_rng(seed).integers(low, high, (n, c, side, side), dtype=np.uint8)


def _brighter(images: np.ndarray) -> np.ndarray:
    """``2 * x + 20``: twice the contrast and brighter, exact in uint8 for ``x`` <= 117."""
    assert int(images.max()) <= 117
    return (images.astype(np.int32) * 2 + 20).astype(np.uint8)


# ---- the rule -------------------------------------------------------------------------------------


def test_rules_and_the_default():
    assert INTENSITY_RULES == pipeline.INTENSITY_RULES == ("fixed", "per_image")
    assert DataConfig().intensity == "fixed" and Preprocess().intensity == "fixed"


def test_numpy_and_torch_agree():
    images = np.random.default_rng(0).integers(0, 256, (5, 3, 8, 8), dtype=np.uint8)
    x_np = pipeline.preprocess(images, intensity="per_image")
    x_t = pipeline.preprocess(torch.from_numpy(images), intensity="per_image")
    assert x_np.dtype == np.float32 and x_t.dtype == torch.float32 and x_np.shape == (5, 3, 8, 8)
    np.testing.assert_allclose(x_np, x_t.numpy(), atol=1e-5)
    # each image and channel: mean 0, standard deviation 1 over H x W
    np.testing.assert_allclose(x_np.mean(axis=(2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(x_np.std(axis=(2, 3)), 1.0, atol=1e-4)
    # the formula: (x - mean) / std of each image's channel, in [0, 1] units
    unit = images.astype(np.float64) / 255.0
    want = (unit - unit.mean(axis=(2, 3), keepdims=True)) / unit.std(axis=(2, 3), keepdims=True)
    np.testing.assert_allclose(x_np, want, atol=1e-5)
    # the training module gives the same
    np.testing.assert_allclose(Preprocess(intensity="per_image")(torch.from_numpy(images)).numpy(), x_np, atol=1e-5)
    # fixed is untouched by the option
    np.testing.assert_allclose(pipeline.preprocess(images, [0.5], [0.25], "fixed"), pipeline.preprocess(images, [0.5], [0.25]))


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_brightness_and_contrast_give_the_same_input(kind):
    images = _images()
    bright = _brighter(images)
    to = (lambda a: a) if kind == "numpy" else torch.from_numpy
    a = np.asarray(pipeline.preprocess(to(images), intensity="per_image"))
    b = np.asarray(pipeline.preprocess(to(bright), intensity="per_image"))
    np.testing.assert_allclose(a, b, atol=1e-5)
    # float images, non-integer gain and offset, away from saturation
    x = np.random.default_rng(1).uniform(0.2, 0.5, (3, 1, 12, 12)).astype(np.float32)
    y = np.clip(x * 1.6 + 0.1, 0.0, 1.0)
    assert y.max() < 1.0
    np.testing.assert_allclose(np.asarray(pipeline.normalize(to(x), None, None, "per_image")),
                               np.asarray(pipeline.normalize(to(y), None, None, "per_image")), atol=1e-4)
    # the fixed rule does see the change (the test is not vacuous)
    assert np.abs(np.asarray(pipeline.preprocess(to(images))) - np.asarray(pipeline.preprocess(to(bright)))).max() > 0.1


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_blank_and_flat_images_give_finite_values(kind):
    to = (lambda a: a) if kind == "numpy" else torch.from_numpy
    for value in (0, 128, 255):
        x = np.asarray(pipeline.preprocess(to(np.full((2, 3, 6, 6), value, np.uint8)), intensity="per_image"))
        assert np.isfinite(x).all() and np.all(x == 0.0)
    flat = np.full((1, 1, 8, 8), 100, np.uint8)
    flat[0, 0, 0, 0] = 101  # std ~ 0.0005 in [0, 1] units: floored at 1e-3, not blown up
    x = np.asarray(pipeline.preprocess(to(flat), intensity="per_image"))
    assert np.isfinite(x).all() and np.abs(x).max() < 4.0
    assert pipeline.INTENSITY_EPS == 1e-3


def test_wrong_use_is_an_error():
    x = np.zeros((1, 1, 2, 2), np.float32)
    with pytest.raises(ValueError, match=re.escape("intensity must be one of fixed | per_image, got 'zscore'")):
        pipeline.normalize(x, None, None, "zscore")
    with pytest.raises(ValueError, match="replaces a fixed mean/std"):
        pipeline.normalize(x, [0.5], [0.25], "per_image")
    with pytest.raises(ValueError, match="replaces a fixed mean/std"):
        Preprocess([0.5], [0.25], "per_image")
    with pytest.raises(ValueError, match="intensity must be one of"):
        Preprocess(intensity="zscore")


# ---- the config key -------------------------------------------------------------------------------


def test_config_value_is_checked(tmp_path):
    cfg = RunConfig()
    cfg.set("data.intensity", "per_image")
    assert cfg.data.intensity == "per_image"
    with pytest.raises(ConfigError, match=r"data.intensity must be one of auto \| fixed \| per_image, got 'zscore'"):
        cfg.set("data.intensity", "zscore")
    with pytest.raises(ConfigError, match="data.intensity must be one of"):
        DataConfig(intensity="per-image")
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  intensity: perimage\n")
    with pytest.raises(ConfigError, match=re.escape("data.intensity must be one of auto | fixed | per_image, got 'perimage'")):
        RunConfig.load(path)
    path.write_text("data:\n  intensity: per_image\n")
    assert RunConfig.load(path).data.intensity == "per_image"
    check_recipe(RunConfig.load(path))
    cfg = RunConfig()
    cfg.data.intensity, cfg.data.normalize = "per_image", True
    with pytest.raises(ConfigError, match="data.intensity: per_image .* replaces data.normalize"):
        check_recipe(cfg)


# ---- the spec -------------------------------------------------------------------------------------


def _spec(**kw) -> ModelSpec:
    return ModelSpec(**{**dict(class_names=["a", "b"], channels=1, image_size=16, intensity="per_image"), **kw})


def test_spec_records_it_and_round_trips(tmp_path):
    spec = _spec()
    assert spec.mean is None and spec.intensity == "per_image"
    assert ModelSpec.from_json(spec.to_json()) == spec and json.loads(spec.to_json())["intensity"] == "per_image"
    write_spec(spec, tmp_path)
    assert read_spec(tmp_path) == spec
    assert Preprocess.from_spec(spec).intensity == "per_image"
    with pytest.raises(ValueError, match="ModelSpec.intensity must be one of"):
        _spec(intensity="zscore")
    with pytest.raises(ValueError, match="must be None with intensity 'per_image'"):
        _spec(mean=[0.5], std=[0.25])


def test_old_spec_reads_as_fixed():
    v3 = {"class_names": ["a", "b"], "channels": 1, "image_size": 16, "mean": [0.5], "std": [0.25],
          "dicom_window": None, "temperature": 1.0, "threshold": None, "logit_adjustment": None,
          "single_logit": False, "run": "r", "checkpoint_epoch": 2, "arch": "resnet18", "resize": "squash",
          "medclass_version": "0.3.0", "version": 3, "extra": {}}  # what medclass wrote before data.intensity
    spec = ModelSpec.from_json(json.dumps(v3))
    assert spec.intensity == "fixed" and spec.mean == [0.5]
    pre = Preprocess.from_spec(spec)
    assert pre.intensity == "fixed" and pre.normalize


def test_spec_from_config():
    cfg = RunConfig()
    cfg.data.image_size, cfg.data.intensity = 32, "per_image"
    cfg.model.pretrained = "imagenet"  # per_image replaces ImageNet's mean/std too
    assert normalization_of(cfg) == (None, None)
    spec = spec_from_config(cfg, ["a", "b"], "r")
    assert spec.intensity == "per_image" and spec.mean is None and spec.std is None
    saved = recorded_config(cfg, spec)
    assert saved.data.intensity == "per_image" and not saved.data.normalize
    assert spec_from_config(saved, ["a", "b"], "r") == spec
    cfg.data.intensity = "fixed"
    assert spec_from_config(cfg, ["a", "b"], "r").mean == list(IMAGENET_MEAN)  # unchanged default behaviour
    cfg.model.pretrained, cfg.data.intensity = None, "auto"  # the default: resolved from the images first
    with pytest.raises(ValueError, match="chosen from the training images"):
        spec_from_config(cfg, ["a", "b"], "r")


def test_legacy_and_ensemble_specs(tmp_path):
    cfg = RunConfig()
    cfg.data.image_size, cfg.data.intensity = 16, "per_image"
    assert legacy_spec(cfg, ["a", "b"], tmp_path).intensity == "per_image"
    # an ensemble's members standardise inside the model: the ensemble itself takes [0, 1] input
    ens = legacy_spec(cfg, ["a", "b"], tmp_path, ensemble=True)
    assert ens.intensity == "fixed" and ens.mean is None


# ---- a trained run: every path -------------------------------------------------------------------


@pytest.fixture(scope="module")
def per_image_run(tmp_path_factory):
    """A tiny run trained with data.intensity=per_image, its OOD detector fitted; and how often
    training called the per-image rule."""
    from medclass.engine import train
    from medclass.evaluation.ood import fit_run_ood

    root = tmp_path_factory.mktemp("intensity")
    data = make_folder_dataset(root / "data", per_class=10)
    cfg = tiny_config(data, epochs=1, max_steps_per_epoch=2)
    cfg.data.channels = 1
    cfg.model.arch, cfg.model.cnn_widths = "custom_cnn", [8, 16]  # small: quick to train and to export
    cfg.set("data.intensity", "per_image")
    calls = []
    original = pipeline.normalize_intensity
    mp = pytest.MonkeyPatch()
    mp.setattr(pipeline, "normalize_intensity", lambda x, *a, **k: (calls.append(type(x).__name__), original(x, *a, **k))[1])
    try:
        train(cfg, root / "run")
    finally:
        mp.undo()
    fit_run_ood(root / "run", method="mahalanobis")
    return root / "run", calls


def test_training_uses_the_rule_and_records_it(per_image_run):
    from medclass.engine import load_run

    run_dir, calls = per_image_run
    assert calls and set(calls) == {"Tensor"}  # the engine's Preprocess, batched on the device
    assert read_spec(run_dir).intensity == "per_image" and read_spec(run_dir).mean is None
    assert RunConfig.load(run_dir / "config.yaml").data.intensity == "per_image"
    run = load_run(run_dir)
    assert run.preprocess.intensity == "per_image" and run.spec.intensity == "per_image"


def test_prediction_ood_and_gradcam_are_invariant(per_image_run):
    from medclass.engine import load_run
    from medclass.engine.inference import logits_and_features
    from medclass.serving import TorchClassifier

    run = load_run(per_image_run[0])
    assert run.ood is not None
    images = _images(4, 1, 16).transpose(0, 2, 3, 1).copy()  # (N, H, W, C), as decoded
    bright = _brighter(images)
    clf = TorchClassifier(run)
    p, s = clf.predict_proba_ood(images)
    p2, s2 = clf.predict_proba_ood(bright)
    np.testing.assert_allclose(p, p2, atol=1e-4)
    np.testing.assert_allclose(s, s2, rtol=1e-3, atol=1e-3)
    nchw = torch.from_numpy(pipeline.hwc_to_nchw(images))
    _, f = logits_and_features(run.model, nchw, run.preprocess, run.device)
    _, f2 = logits_and_features(run.model, torch.from_numpy(pipeline.hwc_to_nchw(bright)), run.preprocess, run.device)
    torch.testing.assert_close(f, f2, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(clf.explain(images[0], class_idx=1), clf.explain(bright[0], class_idx=1), atol=1e-3)


def test_export_matches_torch(per_image_run, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    from medclass.engine import load_run
    from medclass.serving import TorchClassifier, export_run, load_onnx_classifier, load_torchscript_classifier

    run = load_run(per_image_run[0])
    reference = TorchClassifier(run)
    images = np.random.default_rng(3).integers(0, 256, (6, 16, 16, 1), dtype=np.uint8)
    images[0] = 0  # a blank image too
    expected, expected_ood = reference.predict_proba_ood(images)
    assert np.isfinite(expected).all()
    for fmt, loader in (("onnx", load_onnx_classifier), ("torchscript", load_torchscript_classifier)):
        result = export_run(run, fmt, out=tmp_path / f"m.{fmt}")
        assert result.spec.intensity == "per_image"
        assert result.max_prob_diff is not None and result.max_prob_diff < 1e-4
        assert result.max_ood_rel_diff is not None and result.max_ood_rel_diff < 1e-3
        exported = loader(result.path)
        assert exported.spec == dataclasses.replace(run.spec, extra=exported.spec.extra)
        assert exported.spec.intensity == "per_image"
        got, got_ood = exported.predict_proba_ood(images)
        assert np.abs(got - expected).max() < 1e-4
        np.testing.assert_allclose(got_ood, expected_ood, rtol=1e-3, atol=1e-3)
