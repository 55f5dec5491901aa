"""Out-of-distribution scores (issue 13, part 4): medclass.evaluation.ood and the features they read."""

import numpy as np
import pytest
import torch

from medclass.evaluation.ood import energy_score, fit_mahalanobis, fit_threshold, ood_auroc


def test_energy_is_minus_logsumexp_and_single_logits_are_two():
    z = np.array([[2.0, 0.0, -1.0], [0.1, 0.1, 0.1]])
    np.testing.assert_allclose(energy_score(z), -np.log(np.exp(z).sum(1)))
    np.testing.assert_allclose(energy_score(z, temperature=2.0), -2.0 * np.log(np.exp(z / 2).sum(1)))
    np.testing.assert_allclose(energy_score(np.array([3.0, -1.0])), -np.log(1 + np.exp([3.0, -1.0])))
    np.testing.assert_allclose(energy_score(np.array([[1000.0, 0.0]])), [-1000.0])  # no overflow
    # a confident logit vector has lower energy (more in-distribution) than a flat one
    assert energy_score(np.array([[8.0, 0.0]]))[0] < energy_score(np.array([[0.5, 0.4]]))[0]
    with pytest.raises(ValueError, match="> 0"):
        energy_score(z, temperature=0)


def test_mahalanobis_flags_features_far_from_every_class():
    rng = np.random.default_rng(0)
    means = np.array([[0.0] * 8, [4.0] * 8])
    y = rng.integers(0, 2, 300)
    feats = means[y] + rng.normal(0, 1, (300, 8))
    model = fit_mahalanobis(feats, y, 2)
    np.testing.assert_allclose(model.means, [feats[y == 0].mean(0), feats[y == 1].mean(0)])
    near = means[rng.integers(0, 2, 100)] + rng.normal(0, 1, (100, 8))
    far = rng.normal(0, 1, (100, 8)) + np.r_[[12.0] * 4, [-8.0] * 4]
    s_in, s_out = model.score(near), model.score(far)
    threshold = fit_threshold(s_in)
    assert np.mean(s_in > threshold) == pytest.approx(0.05, abs=0.011)
    assert np.mean(s_out > threshold) == 1.0 and ood_auroc(s_in, s_out) == 1.0
    with pytest.raises(ValueError, match="classes \\[2\\]"):
        fit_mahalanobis(feats, y, 3)


def test_threshold_and_auroc_edges():
    assert fit_threshold(np.arange(101.0)) == pytest.approx(95.0)
    with pytest.raises(ValueError):
        fit_threshold(np.array([]))
    with pytest.raises(ValueError):
        fit_threshold(np.arange(3.0), quantile=1.0)
    assert ood_auroc(np.array([]), np.array([1.0])) is None
    assert ood_auroc(np.array([0.0, 1.0]), np.array([0.5, 2.0])) == pytest.approx(0.75)


def test_features_are_the_heads_input_in_one_pass():
    from medclass.data import Preprocess
    from medclass.engine.inference import logits_and_features
    from medclass.models.registry import create_model

    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=3, in_channels=1, stem="small").eval()
    images = torch.randint(0, 255, (5, 1, 16, 16), dtype=torch.uint8)
    logits, feats = logits_and_features(model, images, Preprocess(None, None), torch.device("cpu"), batch_size=2)
    assert logits.shape == (5, 3) and feats.shape == (5, model.get_classifier().in_features)
    torch.testing.assert_close(model.get_classifier()(feats), logits)
    assert not model.get_classifier()._forward_pre_hooks  # the hook is removed


@pytest.mark.slow
def test_ood_benchmark_scores_a_run_against_foreign_sets_and_corruptions(tmp_path):
    import importlib.util
    import json
    from pathlib import Path

    from helpers import make_folder_dataset, tiny_config

    from medclass.engine import train

    spec = importlib.util.spec_from_file_location("ood_bench", Path(__file__).resolve().parents[1] / "benchmarks" / "ood.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    data = make_folder_dataset(tmp_path / "data", size=16, splits={"train": 12, "valid": 6, "test": 6})
    foreign = make_folder_dataset(tmp_path / "other", size=16, per_class=5, stripe=3, seed=4)
    train(tiny_config(data, epochs=1), tmp_path / "run")
    out = tmp_path / "ood.json"
    assert bench.main([str(tmp_path / "run"), "--foreign", str(data), str(foreign), "--per-set", "6",
                       "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    (r,) = record["runs"]
    assert set(r["methods"]) == {"energy", "mahalanobis"} and r["n_valid"] == 12
    for m in r["methods"].values():
        assert set(m["foreign"]) == {"blank", "noise", "inverted", "other"}  # its own set is not foreign
        assert m["foreign"]["other"]["n"] == 6 and 0 <= m["foreign"]["noise"]["flagged"] <= 1
        assert 0 <= m["own_test_flagged"] <= 1
    assert record["hardware"]["cpu_model"]
