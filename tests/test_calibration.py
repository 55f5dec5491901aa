"""Temperature scaling, ECE, reliability diagram, bootstrap intervals, thresholds, TTA."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from medclass.engine import predict_logits, train
from medclass.evaluation import (
    bootstrap_ci,
    choose_threshold,
    evaluate_run,
    expected_calibration_error,
    fit_temperature,
    sensitivity_specificity,
)
from medclass.evaluation.calibration import reliability_bins
from medclass.data import Preprocess

from helpers import make_folder_dataset, tiny_config


def _sampled(n=6000, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, k, generator=g) * 2.0
    y = torch.multinomial(torch.softmax(z, 1), 1, generator=g)[:, 0]
    return z, y


def test_temperature_recovers_the_overconfidence_factor():
    z, y = _sampled()
    assert fit_temperature(z * 3.0, y) == pytest.approx(3.0, rel=0.15)
    assert fit_temperature(z, y) == pytest.approx(1.0, rel=0.15)
    # single logit: sigmoid(z) with labels drawn from it, logits made 2x too large
    g = torch.Generator().manual_seed(1)
    s = torch.randn(6000, 1, generator=g) * 2
    yb = torch.bernoulli(torch.sigmoid(s[:, 0]), generator=g).long()
    assert fit_temperature(s * 2.0, yb) == pytest.approx(2.0, rel=0.15)


def test_ece_small_when_calibrated_large_when_overconfident_and_matches_hand_computation():
    z, y = _sampled()
    p_cal = torch.softmax(z, 1).numpy()
    p_over = torch.softmax(z * 3, 1).numpy()
    assert expected_calibration_error(p_cal, y.numpy()) < 0.03
    assert expected_calibration_error(p_over, y.numpy()) > 0.08
    # hand example: 4 images, confidences 0.9 (right), 0.9 (wrong), 0.6 (right), 0.6 (right)
    p = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.6, 0.4]])
    labels = np.array([0, 1, 1, 0])
    # bin of 0.9: acc 0.5, conf 0.9 -> 0.4 * 2/4; bin of 0.6: acc 1.0, conf 0.6 -> 0.4 * 2/4
    assert expected_calibration_error(p, labels, n_bins=10) == pytest.approx(0.4, abs=1e-6)
    bins = reliability_bins(p, labels, n_bins=10)
    assert sum(bins["count"]) == 4 and bins["accuracy"][8] == 0.5 and bins["accuracy"][5] == 1.0


def test_bootstrap_intervals_are_seeded_contain_the_estimate_and_shrink_with_n():
    rng = np.random.default_rng(0)

    def data(n):
        y = rng.integers(0, 3, n)
        p = rng.dirichlet(np.ones(3), n)
        p[np.arange(n), y] += 0.8
        return y, p / p.sum(1, keepdims=True)

    y, p = data(200)
    a, b = bootstrap_ci(y, p, 300, seed=5), bootstrap_ci(y, p, 300, seed=5)
    assert a == b
    assert bootstrap_ci(y, p, 300, seed=6) != a
    for m in ("accuracy", "balanced_accuracy", "macro_f1", "auroc"):
        ci = a["metrics"][m]
        assert ci["low"] <= ci["estimate"] <= ci["high"], m
    y2, p2 = data(2000)
    wide = a["metrics"]["accuracy"]["high"] - a["metrics"]["accuracy"]["low"]
    big = bootstrap_ci(y2, p2, 300)["metrics"]["accuracy"]
    assert big["high"] - big["low"] < wide / 2
    tiny = bootstrap_ci(np.array([0, 1, 1]), np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]]), 200)
    assert tiny["metrics"]["auroc"]["undefined"] > 0  # resamples with one class only


def test_youden_and_target_sensitivity_thresholds():
    scores = np.array([0.1, 0.2, 0.3, 0.45, 0.5, 0.6, 0.7, 0.9])
    labels = np.array([0, 0, 1, 1, 0, 1, 1, 1])
    youden = choose_threshold(scores, labels)
    # at 0.3: sensitivity 5/5, specificity 2/3, J = 0.667, the unique maximum
    assert youden["threshold"] == pytest.approx(0.3)
    assert youden["sensitivity"] == 1.0 and youden["specificity"] == pytest.approx(2 / 3)
    strict = choose_threshold(scores, labels, target_sensitivity=0.7)
    assert strict["threshold"] == pytest.approx(0.45) and strict["sensitivity"] == pytest.approx(0.8)
    at = sensitivity_specificity(scores, labels, 0.6)
    assert at["sensitivity"] == pytest.approx(0.6) and at["specificity"] == 1.0
    with pytest.raises(ValueError, match="both classes"):
        choose_threshold(scores, np.zeros(8))


class _LeftRight(nn.Module):
    """Logits that see which half of the image is bright: not flip invariant."""

    def forward(self, x):
        left, right = x[..., : x.shape[-1] // 2].mean((1, 2, 3)), x[..., x.shape[-1] // 2 :].mean((1, 2, 3))
        return torch.stack([left, right * 2], 1)


def test_tta_averages_the_flipped_views():
    images = torch.randint(0, 255, (5, 1, 8, 8), dtype=torch.uint8)
    pre, dev, model = Preprocess(), torch.device("cpu"), _LeftRight()
    plain = predict_logits(model, images, pre, dev)
    flipped = predict_logits(model, images.flip(3), pre, dev)
    tta = predict_logits(model, images, pre, dev, tta=("hflip",))
    torch.testing.assert_close(tta, (plain + flipped) / 2)
    assert not torch.allclose(tta, plain)
    with pytest.raises(ValueError, match="unknown test-time augmentation"):
        predict_logits(model, images, pre, dev, tta=("rot90",))


def test_evaluate_reports_intervals_calibration_and_operating_point(tmp_path):
    data = make_folder_dataset(tmp_path / "data", per_class=16)
    run = tmp_path / "run"
    train(tiny_config(data, epochs=2), run)
    m = evaluate_run(run, progress=False, n_bootstrap=200, tta=("hflip",))
    ci = m["confidence_intervals"]
    assert ci["n_resamples"] == 200 and set(ci["metrics"]) == {"accuracy", "balanced_accuracy", "macro_f1", "auroc"}
    cal = m["calibration"]
    assert cal["temperature"] > 0 and cal["n_bins"] == 15 and cal["ece_after"] >= 0
    op = m["operating_point"]
    assert op["positive_class"] == "dark" and 0 <= op["chosen_on_valid"]["threshold"] <= 1
    assert op["at_chosen"]["positives"] + op["at_chosen"]["negatives"] == m["n"]
    assert (run / "eval-test" / "reliability.png").stat().st_size > 1000
    stored = json.loads((run / "calibration.json").read_text())
    assert stored["temperature"] == cal["temperature"] and stored["tta"] == ["hflip"]
    # predictions.csv holds calibrated probabilities that sum to 1
    rows = (run / "eval-test" / "predictions.csv").read_text().splitlines()[1:]
    assert abs(sum(float(v) for v in rows[0].split(",")[-2:]) - 1) < 1e-5


# ---- multi-class decision rule: post-hoc logit adjustment chosen on validation ---------------------


def _imbalanced_posteriors(n=4000, prior=(0.8, 0.1, 0.1), seed=0):
    """Labels drawn with ``prior`` and the exact posteriors of overlapping 1-D Gaussian classes."""
    rng = np.random.default_rng(seed)
    pi = np.asarray(prior)
    y = rng.choice(len(pi), size=n, p=pi)
    means = np.array([0.0, 1.5, 3.0])[: len(pi)]
    x = rng.normal(means[y], 1.0)
    lik = np.exp(-0.5 * (x[:, None] - means[None, :]) ** 2) * pi[None, :]
    return lik / lik.sum(1, keepdims=True), y


def test_logit_adjustment_raises_balanced_accuracy_on_imbalanced_classes():
    from sklearn.metrics import balanced_accuracy_score
    from medclass.evaluation.calibration import fit_logit_adjustment
    from medclass.core import pipeline

    probs, y = _imbalanced_posteriors()
    prior = np.bincount(y, minlength=3)
    fit = fit_logit_adjustment(probs, y, prior)
    assert fit["tau"] > 0
    assert fit["balanced_accuracy_by_tau"][str(fit["tau"])] > fit["balanced_accuracy_by_tau"]["0.0"] + 0.05
    np.testing.assert_allclose(fit["offsets"], -fit["tau"] * np.log(prior / prior.sum()))
    adjusted = pipeline.decide(probs, None, fit["offsets"])
    assert balanced_accuracy_score(y, adjusted) == pytest.approx(fit["balanced_accuracy_by_tau"][str(fit["tau"])])
    assert balanced_accuracy_score(y, adjusted) > balanced_accuracy_score(y, probs.argmax(1)) + 0.05
    # a uniform prior shifts every class equally: no tau changes a decision, the arg-max (tau 0) is kept
    flat = fit_logit_adjustment(probs, y, [1, 1, 1])
    assert flat["tau"] == 0.0 and flat["offsets"] == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="prior > 0"):
        fit_logit_adjustment(probs, y, [5, 0, 1])
    with pytest.raises(ValueError, match="disagree"):
        fit_logit_adjustment(probs, y, [1, 1])


def test_decide_with_logit_adjustment_numpy_and_torch_agree():
    from medclass.core import pipeline

    probs, _ = _imbalanced_posteriors(n=50)
    offsets = [0.0, 1.0, 2.0]
    a = pipeline.decide(probs.astype(np.float32), None, offsets)
    b = pipeline.decide(torch.from_numpy(probs.astype(np.float32)), None, offsets).numpy()
    np.testing.assert_array_equal(a, b)
    assert (a != probs.argmax(1)).any()  # the offsets change some decisions
    np.testing.assert_array_equal(a, (np.log(probs) + np.array(offsets)).argmax(1))
    with pytest.raises(ValueError, match="3 classes"):
        pipeline.decide(probs, None, [0.0, 1.0])
    # a binary task's threshold takes precedence over an adjustment
    p2 = np.array([[0.7, 0.3], [0.2, 0.8]], dtype=np.float32)
    np.testing.assert_array_equal(pipeline.decide(p2, 0.25, [0.0, -10.0]), [1, 1])
