"""Metrics, figures and probability conversion."""

import numpy as np
import pytest
import torch

from medclass.core.config import ConfigError, RunConfig
from medclass.engine import logits_to_probs, predicted_class
from medclass.evaluation import auroc, classification_metrics, plot_confusion_matrix, plot_roc


def test_metrics_on_a_hand_checked_example():
    y = np.array([0, 0, 0, 1, 1, 2])
    probs = np.array([
        [0.8, 0.1, 0.1],  # right
        [0.6, 0.3, 0.1],  # right
        [0.2, 0.7, 0.1],  # wrong: 0 -> 1
        [0.1, 0.8, 0.1],  # right
        [0.3, 0.3, 0.4],  # wrong: 1 -> 2
        [0.1, 0.1, 0.8],  # right
    ])
    m = classification_metrics(y, probs, ["a", "b", "c"])
    assert m["n"] == 6
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert m["per_class"]["b"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert m["per_class"]["c"]["precision"] == pytest.approx(0.5) and m["per_class"]["c"]["recall"] == 1.0
    f1s = [2 * 1.0 * (2 / 3) / (1 + 2 / 3), 0.5, 2 * 0.5 / 1.5]
    assert m["macro_f1"] == pytest.approx(np.mean(f1s))
    expected_loss = -np.mean(np.log([0.8, 0.6, 0.2, 0.8, 0.3, 0.8]))
    assert m["loss"] == pytest.approx(expected_loss, rel=1e-6)
    assert 0.5 < m["auroc"] <= 1.0


def test_auroc_binary_perfect_and_inverted_and_undefined():
    y = np.array([0, 0, 1, 1])
    good = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.1, 0.9]])
    assert auroc(y, good) == 1.0
    assert auroc(y, good[:, ::-1]) == 0.0
    assert auroc(np.array([1, 1]), good[:2]) is None


def test_single_logit_probabilities_and_predictions():
    logits = torch.tensor([[-2.0], [0.0], [3.0]])
    p = logits_to_probs(logits)
    assert p.shape == (3, 2)
    assert torch.allclose(p.sum(1), torch.ones(3))
    assert p[2, 1] == pytest.approx(torch.sigmoid(torch.tensor(3.0)).item())
    assert predicted_class(logits).tolist() == [0, 0, 1]
    multi = torch.tensor([[1.0, 2.0, 0.5]])
    assert torch.allclose(logits_to_probs(multi), torch.softmax(multi, 1))


def test_figures_are_written(tmp_path):
    y = np.array([0, 1, 2, 1])
    probs = np.eye(3)[[0, 1, 2, 0]] * 0.7 + 0.1
    plot_confusion_matrix([[1, 0, 0], [1, 1, 0], [0, 0, 1]], ["a", "b", "c"], tmp_path / "cm.png")
    plot_roc(y, probs, ["a", "b", "c"], tmp_path / "roc.png")
    for name in ("cm.png", "roc.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_config_overrides_yaml_and_errors(tmp_path):
    cfg = RunConfig()
    cfg.set("train.lr", "3e-4")
    cfg.set("model.head_hidden", "[256, 64]")
    cfg.set("data.class_map", "{a: b}")
    assert cfg.train.lr == 3e-4 and cfg.model.head_hidden == [256, 64] and cfg.data.class_map == {"a": "b"}
    cfg.save(tmp_path / "c.yaml")
    assert RunConfig.load(tmp_path / "c.yaml") == cfg
    with pytest.raises(ConfigError, match="train.lrr"):
        cfg.set("train.lrr", "1")
    with pytest.raises(ConfigError, match="train.epochs must be of type int"):
        cfg.set("train.epochs", "many")
    with pytest.raises(ConfigError, match="section"):
        RunConfig.from_dict({"optim": {}})
