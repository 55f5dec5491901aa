"""Out-of-distribution scores: "this image is unlike what the model was trained on".

A classifier answers every image with one of its classes; a chest CT model given a skin photo must
also say that the photo is foreign. Two scores, both "higher = more foreign":

* **Energy** (Liu et al. 2020, "Energy-based Out-of-distribution Detection", NeurIPS,
  arXiv:2010.03759): ``E(x) = -T * logsumexp(f(x) / T)`` of the logits ``f(x)``. It needs nothing
  but the logits, so every backend (torch, ONNX, TorchScript) computes it from its output.
* **Mahalanobis** (Lee et al. 2018, "A Simple Unified Framework for Detecting Out-of-Distribution
  Samples and Adversarial Attacks", NeurIPS, arXiv:1807.03888): the smallest Mahalanobis distance
  of the penultimate features (the classifier head's input, ``(N, F)``) to a class mean, with one
  covariance shared by the classes. The covariance is the Ledoit-Wolf shrinkage estimate
  (scikit-learn ``LedoitWolf``; Ledoit & Wolf 2004): a few hundred images cannot estimate 512 x 512
  entries without it.

The threshold is the :data:`IN_DISTRIBUTION_QUANTILE` quantile of the score on in-distribution
validation images: 95 % of them pass, and an image above it is flagged.

Torch-free (numpy and scikit-learn).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

__all__ = ["IN_DISTRIBUTION_QUANTILE", "OOD_METHODS", "energy_score", "MahalanobisModel", "fit_mahalanobis",
           "fit_threshold", "ood_auroc"]

#: Share of in-distribution validation images below the stored threshold (not flagged).
IN_DISTRIBUTION_QUANTILE = 0.95

#: The scores this module computes.
OOD_METHODS = ("energy", "mahalanobis")


def energy_score(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """The energy ``-T * logsumexp(logits / T)`` of each row (Liu et al. 2020), float64 ``(N,)``;
    higher means less like the training images.

    Args:
        logits: ``(N, K)`` logits, or ``(N,)`` / ``(N, 1)`` single logits of a binary model (taken
            as the two logits ``(0, z)``, whose softmax is the sigmoid of ``z``).
        temperature: ``T`` > 0 (1 in Liu et al.'s experiments).
    Raises:
        ValueError: ``temperature`` not positive.
    """
    if not temperature > 0:
        raise ValueError(f"energy temperature must be > 0, got {temperature}")
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim == 1 or z.shape[1] == 1:
        z = z.reshape(-1, 1)
        z = np.concatenate([np.zeros_like(z), z], axis=1)
    z = z / temperature
    top = z.max(axis=1, keepdims=True)
    return -temperature * (top[:, 0] + np.log(np.exp(z - top).sum(axis=1)))


@dataclass
class MahalanobisModel:
    """Class means ``means`` float64 ``(K, F)`` and the shared precision matrix ``precision``
    float64 ``(F, F)`` (inverse of the Ledoit-Wolf covariance of the class-centred features)."""

    means: np.ndarray
    precision: np.ndarray

    def score(self, features: np.ndarray) -> np.ndarray:
        """Smallest squared Mahalanobis distance to a class mean, float64 ``(N,)`` for features
        ``(N, F)``; higher means less like the training images."""
        f = np.asarray(features, dtype=np.float64)
        out = np.full(len(f), np.inf)
        for mu in self.means:
            d = f - mu
            out = np.minimum(out, np.einsum("nf,fg,ng->n", d, self.precision, d))
        return out


def fit_mahalanobis(features: np.ndarray, labels: Sequence[int], num_classes: int) -> MahalanobisModel:
    """Fit :class:`MahalanobisModel` on in-distribution ``features`` ``(N, F)`` with ``labels``
    ``(N,)`` (the training images: Lee et al. 2018 fit on the training set).

    Raises:
        ValueError: a class without features, or fewer than 2 images.
    """
    from sklearn.covariance import LedoitWolf

    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if len(f) < 2:
        raise ValueError("Mahalanobis score: at least 2 images are needed to fit it")
    missing = [k for k in range(num_classes) if not np.any(y == k)]
    if missing:
        raise ValueError(f"Mahalanobis score: no features of classes {missing}")
    means = np.stack([f[y == k].mean(axis=0) for k in range(num_classes)])
    centred = f - means[y]
    lw = LedoitWolf(assume_centered=True).fit(centred)
    return MahalanobisModel(means, lw.precision_)


def fit_threshold(scores_in: np.ndarray, quantile: float = IN_DISTRIBUTION_QUANTILE) -> float:
    """The score below which ``quantile`` of the in-distribution ``scores_in`` ``(N,)`` lie
    (``numpy.quantile``, linear): the flagging threshold.

    Raises:
        ValueError: no scores, or ``quantile`` outside (0, 1).
    """
    s = np.asarray(scores_in, dtype=np.float64)
    if len(s) == 0:
        raise ValueError("no in-distribution scores to set an OOD threshold on")
    if not 0 < quantile < 1:
        raise ValueError(f"the OOD quantile must be in (0, 1), got {quantile}")
    return float(np.quantile(s, quantile))


def ood_auroc(scores_in: np.ndarray, scores_out: np.ndarray) -> Optional[float]:
    """AUROC of telling foreign images (positive) from in-distribution ones by the score
    (scikit-learn ``roc_auc_score``); None when either side is empty."""
    from sklearn.metrics import roc_auc_score

    a, b = np.asarray(scores_in, dtype=np.float64), np.asarray(scores_out, dtype=np.float64)
    if len(a) == 0 or len(b) == 0:
        return None
    return float(roc_auc_score(np.r_[np.zeros(len(a)), np.ones(len(b))], np.r_[a, b]))
