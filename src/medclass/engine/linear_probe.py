"""``model.finetune: linear_probe``: a frozen pretrained backbone and a logistic-regression head, fitted
in seconds instead of trained for epochs.

The backbone's globally pooled features (what the classifier head sees, float32 ``(N, F)``) are
computed once per split, in eval mode, from the images as validation sees them (no augmentation,
the run's preprocessing); a scikit-learn ``LogisticRegression`` (L-BFGS, multinomial for more than
two classes) is fitted on the standardised training features for each ``C`` of :data:`C_GRID`, and
the ``C`` whose validation score (``train.monitor``) is best is kept. Its weights, with the
standardisation folded in, become the model's linear classifier, so the run is an ordinary run:
``best.pt`` holds the whole network, and evaluate, predict, export and serve use it as any other.

Source: the linear-evaluation protocol of self-supervised and transfer learning (Kornblith, Shlens &
Le, "Do Better ImageNet Models Transfer Better?", CVPR 2019: L2-regularised multinomial logistic
regression on the penultimate features, the regularisation chosen on a validation split; CLIP's
linear probes, Radford et al. 2021, likewise with L-BFGS).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["C_GRID", "LinearProbe", "pooled_features", "fit_linear_probe", "set_linear_head"]

#: Inverse regularisation strengths tried, weakest regularisation last (scikit-learn's ``C``).
C_GRID: tuple[float, ...] = (1e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 10.0)


@dataclass
class LinearProbe:
    """The fitted probe: ``weight`` float32 ``(K, F)`` and ``bias`` ``(K,)`` over the raw pooled
    features (standardisation folded in), the chosen ``c``, and the validation scores per ``C``
    (``{"C": [...], "val_accuracy": [...], "val_balanced_accuracy": [...]}``)."""

    weight: np.ndarray
    bias: np.ndarray
    c: float
    scores: dict = field(default_factory=dict)


@torch.no_grad()
def pooled_features(model: nn.Module, images: Tensor, preprocess: Callable[[Tensor], Tensor], device: torch.device,
                    batch_size: int = 64) -> np.ndarray:
    """The head's input for uint8 images ``(N, C, H, W)``: ``mean over (h, w)`` of
    ``model.forward_features(preprocess(x))``, float32 ``(N, F)``, the model in eval mode."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = preprocess(images[start:start + batch_size].to(device))
        out.append(model.forward_features(x).float().mean(dim=(2, 3)).cpu())
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def fit_linear_probe(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
                     num_classes: int, monitor: str = "val_accuracy",
                     log: Optional[Callable[[str], None]] = None) -> LinearProbe:
    """Fit the logistic regression for each ``C`` of :data:`C_GRID` on the standardised training
    features and keep the one with the best validation ``monitor`` (``val_accuracy`` or
    ``val_balanced_accuracy``; ``val_loss`` uses the log-loss; ties: the stronger regularisation).

    Args:
        train_x, val_x: float32 features ``(N, F)``; train_y, val_y: int class indices ``(N,)``.
        num_classes: ``K``; every class index is below it.

    Returns:
        :class:`LinearProbe` with ``weight`` ``(K, F)`` and ``bias`` ``(K,)``: logits ``x @ weight.T + bias``
        (for two classes the first row is zero: the softmax then equals the fitted sigmoid).

    Raises:
        ValueError: the training features hold fewer than two classes.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    from .fit import balanced_accuracy  # the validation pass's own

    if len(np.unique(train_y)) < 2:
        raise ValueError("a linear probe needs training images of at least two classes")
    mean = train_x.mean(0)
    std = train_x.std(0) + 1e-6
    zt, zv = (train_x - mean) / std, (val_x - mean) / std
    scores: dict[str, list] = {"C": [], "val_accuracy": [], "val_balanced_accuracy": [], "val_loss": []}
    best = None
    for c in C_GRID:
        clf = LogisticRegression(C=c, max_iter=3000)
        clf.fit(zt, train_y)
        proba = np.zeros((len(zv), num_classes))
        proba[:, clf.classes_] = clf.predict_proba(zv)
        pred = proba.argmax(1)
        acc = float((pred == val_y).mean()) if len(val_y) else 0.0
        bal = balanced_accuracy(torch.from_numpy(pred), torch.from_numpy(val_y)) if len(val_y) else 0.0
        clipped = np.clip(proba, 1e-7, 1.0)
        clipped /= clipped.sum(1, keepdims=True)
        loss = float(log_loss(val_y, clipped, labels=list(range(num_classes)))) if len(val_y) else 0.0
        for key, value in (("C", c), ("val_accuracy", acc), ("val_balanced_accuracy", bal), ("val_loss", loss)):
            scores[key].append(value)
        score = -loss if monitor == "val_loss" else (bal if monitor == "val_balanced_accuracy" else acc)
        if best is None or score > best[0]:
            best = (score, c, clf)
        if log is not None:
            log(f"linear probe: C {c:g}  val_acc {acc:.4f}  val_balanced_acc {bal:.4f}  val_loss {loss:.4f}")
    _, c, clf = best
    coef = np.zeros((num_classes, zt.shape[1]))
    intercept = np.zeros(num_classes)
    if clf.coef_.shape[0] == 1:  # binary: sigmoid(w.z + b) of the second class present
        coef[clf.classes_[1]], intercept[clf.classes_[1]] = clf.coef_[0], clf.intercept_[0]
        coef[clf.classes_[0]], intercept[clf.classes_[0]] = 0.0, 0.0
    else:
        coef[clf.classes_], intercept[clf.classes_] = clf.coef_, clf.intercept_
        missing = np.setdiff1d(np.arange(num_classes), clf.classes_)
        intercept[missing] = -1e4  # a class without training images is never predicted
    weight = coef / std  # fold the standardisation in: w.(x - m)/s + b = (w/s).x + (b - (w/s).m)
    bias = intercept - weight @ mean
    return LinearProbe(weight.astype(np.float32), bias.astype(np.float32), float(c), scores)


def set_linear_head(model: nn.Module, probe: LinearProbe) -> None:
    """Copy the probe into ``model.get_classifier()``: a ``Linear(F, K)``, or ``Linear(F, 1)`` for a
    single-logit binary model (the second class's logit minus the first's).

    Raises:
        ValueError: the head is not a single linear layer of matching size.
    """
    head = model.get_classifier()
    if not isinstance(head, nn.Linear):
        raise ValueError("model.finetune linear_probe needs a plain linear head: leave model.head_hidden empty, "
                         "model.dropout 0 and model.head_kind dense")
    weight, bias = torch.from_numpy(probe.weight), torch.from_numpy(probe.bias)
    if head.out_features == 1 and weight.shape[0] == 2:
        weight, bias = (weight[1] - weight[0])[None], (bias[1] - bias[0])[None]
    if tuple(head.weight.shape) != tuple(weight.shape):
        raise ValueError(f"the probe has shape {tuple(weight.shape)}, the head {tuple(head.weight.shape)}")
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
