"""Out-of-distribution scores and the stored detector: "this image is unlike the training images".

A classifier answers every image with one of its classes; a chest CT model given a skin photo must
also say that the photo is foreign. Two scores, both "higher = more foreign":

* **Energy** (Liu et al. 2020, "Energy-based Out-of-distribution Detection", NeurIPS,
  arXiv:2010.03759): ``E(x) = -T * logsumexp(f(x) / T)`` of the logits ``f(x)``. It needs nothing
  but the logits.
* **Mahalanobis** (Lee et al. 2018, "A Simple Unified Framework for Detecting Out-of-Distribution
  Samples and Adversarial Attacks", NeurIPS, arXiv:1807.03888): the smallest squared Mahalanobis
  distance of pooled features to a class mean, with one covariance shared by the classes, fitted
  on the training images. The covariance is the Ledoit-Wolf shrinkage estimate (scikit-learn
  ``LedoitWolf``; Ledoit & Wolf 2004): a few hundred images cannot estimate 512 x 512 entries
  without it. Lee et al.'s **feature ensemble** (their Section 2) scores the global-average-pooled
  output of every stage (``layer1`` .. ``layer4`` of a ResNet: :meth:`medclass.models.ClassifierModel.feature_stages`),
  each layer with its own class means and precision: a blank image that the last stage maps near a
  class mean is still far from the training images in ``layer1``. Lee et al. weight the layers by
  a logistic regression fitted on foreign validation images; a run has none, so each layer's score
  is standardised by its own in-distribution validation scores (``(s - median) / IQR``) and the
  layers are combined by :data:`DEFAULT_OOD_COMBINE` (``max`` or ``sum``, measured in
  ``benchmarks/ood.py``; :func:`combine_layer_scores`). Version-1 detectors (``ood.json``
  ``"version": 1``) scored the penultimate features alone; they are read as a one-layer detector
  with median 0 and IQR 1, so their scores and threshold are unchanged.

The threshold is the :data:`IN_DISTRIBUTION_QUANTILE` quantile of the (combined) score on
in-distribution validation images (:func:`fit_threshold`; the ``conformal`` rule takes the
``ceil((n + 1) q)``-th smallest of the ``n`` scores, which keeps at least ``q`` of new
in-distribution images below it however small ``n`` is: Vovk et al. 2005, split conformal
prediction); an image above it is flagged.

A trained run keeps its fitted detector (:class:`OODDetector`) in ``RUN/ood.json`` (method,
threshold, quantile, sizes; :func:`write_ood`, :func:`read_ood`) and ``RUN/ood.npz`` (class means
and precision matrix); :func:`medclass.evaluation.ood.fit_run_ood` fits it. Every prediction path
(``medclass predict`` with each backend, ``POST /predict``, the web page) turns scores into the
same :class:`OODResult` with :meth:`OODDetector.results`. An exported model computes the score
inside its graph (:func:`layered_mahalanobis_score`, which :meth:`OODDetector.score` calls, is
traceable; :meth:`OODDetector.tensors` gives its float32 constants) and stores :meth:`OODDetector.summary`
(no matrices) in its spec's ``extra["ood"]``. Runs without ``ood.json`` (trained before it
existed, ensembles) have no detector: every consumer treats it as optional.

Like :mod:`medclass.core.pipeline`, the score functions take numpy arrays or torch tensors and return
the same kind, and this module never imports PyTorch (numpy, scikit-learn when fitting), so the
ONNX Runtime backend uses it in a process without PyTorch.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from .fileio import atomic_write, sha256_of_file
from .pipeline import _torch, is_torch
from .runs import RunError, RunFiles

__all__ = ["IN_DISTRIBUTION_QUANTILE", "OOD_METHODS", "DEFAULT_OOD_METHOD", "OOD_COMBINE_RULES",
           "DEFAULT_OOD_COMBINE", "OOD_LAYER_CHOICES", "DEFAULT_OOD_LAYERS", "THRESHOLD_RULES",
           "DEFAULT_THRESHOLD_RULE", "OOD_WARNING", "OOD_VERSION", "energy_score", "mahalanobis_score",
           "MahalanobisModel", "fit_mahalanobis", "robust_scale", "combine_layer_scores", "layered_mahalanobis_score",
           "fit_threshold", "ood_auroc", "OODResult", "OODDetector", "fit_detector", "write_ood", "read_ood",
           "ood_from_spec"]

#: Share of in-distribution validation images below the stored threshold (not flagged).
IN_DISTRIBUTION_QUANTILE = 0.95

#: The scores this module computes.
OOD_METHODS = ("energy", "mahalanobis")

#: The score a run's detector uses when :func:`medclass.evaluation.ood.fit_run_ood` is not told
#: otherwise; both thresholds are stored either way. To be set from ``benchmarks/ood.py``'s
#: measured comparison.
DEFAULT_OOD_METHOD = "mahalanobis"

#: How the standardised per-layer Mahalanobis scores are combined (:func:`combine_layer_scores`).
OOD_COMBINE_RULES = ("max", "sum")

#: The rule a new detector combines its layers with: measured in ``benchmarks/ood.py``
#: (``benchmarks/results/ood.json``; see the README's "Out-of-distribution warning, measured"):
#: over the five shared sets' models, the sum flagged every other modality with at most 4.7 %
#: (``stages+std``) / 5.1 % (``stages``) of a model's own test images flagged, the max 9.0 % / 5.8 %.
DEFAULT_OOD_COMBINE = "sum"

#: Which features the Mahalanobis score reads: ``"stages"`` (the average-pooled map of every
#: stage of :meth:`medclass.models.ClassifierModel.feature_stages`: Lee et al.'s feature
#: ensemble), ``"stages+std"`` (those and each stage's spatial standard deviation, ``"<stage>:std"``:
#: the feature-map variation average pooling loses, cf. the higher moments of Sastry & Oore 2020,
#: arXiv:1912.12510) or ``"penultimate"`` (the head's input only, as version 1 did).
OOD_LAYER_CHOICES = ("stages", "stages+std", "penultimate")
#: Measured in ``benchmarks/ood.py``: with the sum and the conformal threshold, ``stages+std`` kept
#: every model's own test images at or under 5 % flagged (at most 4.7 %) and ``stages`` at 5.1 %
#: (one BreastMNIST test image more: a tie within noise); the penultimate features alone missed
#: 29 to 46 % of one foreign modality for BreastMNIST and chest-ct.
DEFAULT_OOD_LAYERS = "stages+std"

#: How the threshold is read off the validation scores (:func:`fit_threshold`).
THRESHOLD_RULES = ("quantile", "conformal")
#: Measured in ``benchmarks/ood.py``: the 95 % quantile of 38 to 489 validation scores let 5.4 to
#: 27 % of the own test images through the ensembles' thresholds (brain MRI has 38 validation
#: images, and the standardisation is fitted on the same ones); the conformal rank kept them at or
#: under 5 % and still flagged every other modality. Standardising on one half of the validation
#: images and thresholding on the other (``split``) was worse (up to 19 % with the sum).
DEFAULT_THRESHOLD_RULE = "conformal"

#: What a flagged image is told, on the web page and in the CLI's table.
OOD_WARNING = "this image is unlike the training images"

#: Layout version of ``ood.json``; readers refuse a newer one. 1: the penultimate features only
#: (``means``, ``precision`` in ``ood.npz``); 2: one or more layers (``means_<i>``,
#: ``precision_<i>``) standardised and combined.
OOD_VERSION = 2

#: The feature name of the classifier head's input (what version 1 read).
PENULTIMATE = "penultimate"


def energy_score(logits, temperature: float = 1.0):
    """The energy ``-T * logsumexp(logits / T)`` of each row (Liu et al. 2020); higher means less
    like the training images.

    Args:
        logits: ``(N, K)`` logits, or ``(N,)`` / ``(N, 1)`` single logits of a binary model (taken
            as the two logits ``(0, z)``, whose softmax is the sigmoid of ``z``). numpy or torch.
        temperature: ``T`` > 0 (1 in Liu et al.'s experiments).
    Returns:
        numpy: float64 ``(N,)``; torch: float32 ``(N,)`` on the logits' device (traceable).
    Raises:
        ValueError: ``temperature`` not positive.
    """
    if not temperature > 0:
        raise ValueError(f"energy temperature must be > 0, got {temperature}")
    if is_torch(logits):
        z = logits.float()
        if z.dim() == 1 or z.shape[1] == 1:
            z = z.reshape(-1, 1)
            z = _torch().cat([z * 0.0, z], dim=1)
        return -temperature * (z / temperature).logsumexp(dim=1)
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim == 1 or z.shape[1] == 1:
        z = z.reshape(-1, 1)
        z = np.concatenate([np.zeros_like(z), z], axis=1)
    z = z / temperature
    top = z.max(axis=1, keepdims=True)
    return -temperature * (top[:, 0] + np.log(np.exp(z - top).sum(axis=1)))


def mahalanobis_score(features, means, precision):
    """Smallest squared Mahalanobis distance ``min_k (f - mu_k)^T P (f - mu_k)`` of each row of
    ``features`` to the class means (Lee et al. 2018); higher means less like the training images.

    Args:
        features: ``(N, F)`` penultimate features (numpy, or a torch tensor).
        means: ``(K, F)`` class means; precision: ``(F, F)`` shared precision matrix (the same kind
            as ``features``; numpy arrays are taken in float64).
    Returns:
        numpy: float64 ``(N,)``; torch: float32 ``(N,)`` (traceable: no data-dependent control flow).
    Raises:
        ValueError: the feature widths differ (numpy input).
    """
    if is_torch(features):
        d = features.float().unsqueeze(1) - means.unsqueeze(0)  # (N, K, F)
        return ((d @ precision) * d).sum(dim=2).min(dim=1).values
    f = np.asarray(features, dtype=np.float64)
    mu = np.asarray(means, dtype=np.float64)
    p = np.asarray(precision, dtype=np.float64)
    if f.ndim != 2 or f.shape[1] != mu.shape[1] or p.shape != (mu.shape[1], mu.shape[1]):
        raise ValueError(f"features (N, F) must match the means (K, F) and precision (F, F): got {f.shape}, "
                         f"{mu.shape}, {p.shape}")
    out = np.full(len(f), np.inf)
    for m in mu:  # one class at a time: N x F memory, not N x K x F
        d = f - m
        out = np.minimum(out, np.einsum("nf,nf->n", d @ p, d))
    return out


@dataclass
class MahalanobisModel:
    """Class means ``means`` float64 ``(K, F)`` and the shared precision matrix ``precision``
    float64 ``(F, F)`` (inverse of the Ledoit-Wolf covariance of the class-centred features)."""

    means: np.ndarray
    precision: np.ndarray

    def score(self, features: np.ndarray) -> np.ndarray:
        """:func:`mahalanobis_score`: float64 ``(N,)`` for features ``(N, F)``; higher means less
        like the training images."""
        return mahalanobis_score(features, self.means, self.precision)


def fit_mahalanobis(features: np.ndarray, labels: Sequence[int], num_classes: int) -> MahalanobisModel:
    """Fit :class:`MahalanobisModel` on in-distribution ``features`` ``(N, F)`` with ``labels``
    ``(N,)`` int (the training images: Lee et al. 2018 fit on the training set): the class means,
    and the Ledoit-Wolf estimate (scikit-learn ``LedoitWolf(assume_centered=True)``) of the
    covariance of the features minus their class mean, inverted.

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


def robust_scale(scores: np.ndarray) -> tuple[float, float]:
    """``(median, IQR)`` of in-distribution scores ``(N,)`` (``numpy.percentile`` 25/50/75,
    linear), the IQR floored at ``1e-12 * max(1, |median|)`` so that a constant layer divides by no
    zero: the standardisation of one layer's score."""
    s = np.asarray(scores, dtype=np.float64)
    if len(s) == 0:
        raise ValueError("no in-distribution scores to standardise a layer's OOD score on")
    q1, med, q3 = np.percentile(s, [25, 50, 75])
    return float(med), float(max(q3 - q1, 1e-12 * max(1.0, abs(med))))


def combine_layer_scores(layer_scores: Sequence, centre, scale, rule: str):
    """One score per image from ``L`` per-layer scores: each standardised, ``(s_l - centre_l) /
    scale_l``, then their maximum (``"max"``: flagged when any layer is far out) or their sum
    (``"sum"``).

    Args:
        layer_scores: ``L`` arrays ``(N,)`` (numpy or torch, all the same kind).
        centre, scale: ``(L,)`` (sequences of floats, numpy, or torch tensors with the scores').
        rule: one of :data:`OOD_COMBINE_RULES`.
    Returns:
        ``(N,)``: numpy float64, or torch float32 (traceable: ``L`` is fixed).
    Raises:
        ValueError: an unknown rule, or ``L`` that differs from the centres'.
    """
    if rule not in OOD_COMBINE_RULES:
        raise ValueError(f"OOD combine rule must be one of {', '.join(OOD_COMBINE_RULES)}, got {rule!r}")
    if len(layer_scores) != len(centre) or len(centre) != len(scale):
        raise ValueError(f"{len(layer_scores)} layer scores for {len(centre)} centres and {len(scale)} scales")
    if layer_scores and is_torch(layer_scores[0]):
        torch = _torch()
        z = torch.stack([(s - centre[i]) / scale[i] for i, s in enumerate(layer_scores)], dim=1)
        return z.max(dim=1).values if rule == "max" else z.sum(dim=1)
    z = np.stack([(np.asarray(s, np.float64) - float(centre[i])) / float(scale[i]) for i, s in enumerate(layer_scores)],
                 axis=1)
    return z.max(axis=1) if rule == "max" else z.sum(axis=1)


def layered_mahalanobis_score(features: Sequence, means: Sequence, precisions: Sequence, centre, scale,
                              rule: str):
    """The detector's Mahalanobis score: :func:`mahalanobis_score` of each layer's features with
    that layer's class means and precision, combined by :func:`combine_layer_scores`; higher
    means less like the training images (Lee et al. 2018's feature ensemble, standardised on
    validation images instead of their logistic regression on foreign ones).

    The one definition every path uses: :meth:`OODDetector.score` (numpy float64) and the
    exported graphs (torch float32 constants, :meth:`OODDetector.tensors`; traceable).

    Args:
        features: ``L`` arrays ``(N, F_l)``, the pooled features of the detector's layers.
        means: ``L`` arrays ``(K, F_l)``; precisions: ``L`` arrays ``(F_l, F_l)``.
        centre, scale: ``(L,)`` the validation median and IQR of each layer's score.
        rule: one of :data:`OOD_COMBINE_RULES`.
    Returns:
        ``(N,)``: numpy float64 or torch float32.
    Raises:
        ValueError: as :func:`mahalanobis_score` and :func:`combine_layer_scores`.
    """
    if not (len(features) == len(means) == len(precisions)):
        raise ValueError(f"{len(features)} feature arrays for {len(means)} layers of means and "
                         f"{len(precisions)} precisions")
    return combine_layer_scores([mahalanobis_score(f, m, p) for f, m, p in zip(features, means, precisions)],
                                centre, scale, rule)


def fit_threshold(scores_in: np.ndarray, quantile: float = IN_DISTRIBUTION_QUANTILE,
                  rule: str = DEFAULT_THRESHOLD_RULE) -> float:
    """The flagging threshold on the in-distribution ``scores_in`` ``(N,)``.

    ``"quantile"``: ``numpy.quantile(scores_in, quantile)`` (linear interpolation), below which
    ``quantile`` of them lie. ``"conformal"``: the ``ceil((N + 1) * quantile)``-th smallest score
    (the largest when that exceeds ``N``): split conformal prediction's rule (Vovk et al. 2005;
    Angelopoulos & Bates 2021, arXiv:2107.07511), under which a new exchangeable in-distribution
    image is above it with probability at most ``1 - quantile``, whatever ``N``.

    Raises:
        ValueError: no scores, ``quantile`` outside (0, 1), or an unknown rule.
    """
    s = np.asarray(scores_in, dtype=np.float64)
    if len(s) == 0:
        raise ValueError("no in-distribution scores to set an OOD threshold on")
    if not 0 < quantile < 1:
        raise ValueError(f"the OOD quantile must be in (0, 1), got {quantile}")
    if rule == "quantile":
        return float(np.quantile(s, quantile))
    if rule == "conformal":
        k = min(len(s), int(np.ceil((len(s) + 1) * quantile - 1e-9)))
        return float(np.sort(s)[k - 1])
    raise ValueError(f"OOD threshold rule must be one of {', '.join(THRESHOLD_RULES)}, got {rule!r}")


def ood_auroc(scores_in: np.ndarray, scores_out: np.ndarray) -> Optional[float]:
    """AUROC of telling foreign images (positive) from in-distribution ones by the score
    (scikit-learn ``roc_auc_score``); None when either side is empty."""
    from sklearn.metrics import roc_auc_score

    a, b = np.asarray(scores_in, dtype=np.float64), np.asarray(scores_out, dtype=np.float64)
    if len(a) == 0 or len(b) == 0:
        return None
    return float(roc_auc_score(np.r_[np.zeros(len(a)), np.ones(len(b))], np.r_[a, b]))


# ---- the detector a run stores ----------------------------------------------------------------


@dataclass
class OODResult:
    """One image's out-of-distribution answer: ``score`` (the method's score, higher = more
    foreign), the stored ``threshold``, ``flag`` (``score > threshold``: unlike the training
    images) and the ``method`` (one of :data:`OOD_METHODS`)."""

    score: float
    threshold: float
    flag: bool
    method: str

    def to_dict(self) -> dict[str, Any]:
        """``{"score", "threshold", "flag", "method"}``, JSON-serialisable (the ``ood`` object of
        ``POST /predict``)."""
        return {"score": self.score, "threshold": self.threshold, "flag": self.flag, "method": self.method}


@dataclass
class OODDetector:
    """A run's fitted out-of-distribution detector.

    Attributes:
        method: the score used, one of :data:`OOD_METHODS`.
        threshold: flag an image whose score is above it (from the validation scores by
            ``threshold_rule`` at ``quantile``).
        quantile: share of validation images at or below the threshold (:data:`IN_DISTRIBUTION_QUANTILE`).
        thresholds: the threshold of every method in :data:`OOD_METHODS` (fitted together; only
            ``method``'s is used).
        temperature: ``T`` of the energy score.
        layers: the ``L`` feature stages the Mahalanobis score reads (names of
            :meth:`medclass.models.ClassifierModel.feature_stages`, or ``"penultimate"``: the
            head's input, all a version-1 detector read).
        combine: how the layers' standardised scores are combined, one of :data:`OOD_COMBINE_RULES`.
        threshold_rule: one of :data:`THRESHOLD_RULES` (:func:`fit_threshold`).
        means: ``L`` float64 ``(K, F_l)`` class means of the training features, or None (an
            exported model's copy, whose graph computes the score; or an energy-only record).
        precisions: ``L`` float64 ``(F_l, F_l)`` Ledoit-Wolf precision matrices, or None (as ``means``).
        centre, scale: ``L`` floats, the median and IQR of each layer's score on the validation
            images (:func:`robust_scale`; 0 and 1 for a version-1 detector).
        feature_dims: ``F_l`` of each layer; num_classes: ``K`` (the means' rows: the classes,
            also for a single-logit model).
        n_train, n_valid: images the means/covariances and the standardisation and threshold
            were fitted on.
        checkpoint_epoch: epoch of the checkpoint the features came from (-1: unknown).
        valid_flagged: share of the validation images above ``threshold`` per method.
        extra: free-form provenance (medclass version, seconds, the version read).

    Raises:
        ValueError: an unknown method, combine or threshold rule, a threshold that is not a
            finite number, no layers, or centres/scales/dims that do not match the layers.
    """

    method: str
    threshold: float
    quantile: float = IN_DISTRIBUTION_QUANTILE
    thresholds: dict[str, float] = field(default_factory=dict)
    temperature: float = 1.0
    layers: tuple[str, ...] = (PENULTIMATE,)
    combine: str = DEFAULT_OOD_COMBINE
    threshold_rule: str = DEFAULT_THRESHOLD_RULE
    means: Optional[list[np.ndarray]] = None
    precisions: Optional[list[np.ndarray]] = None
    centre: list[float] = field(default_factory=lambda: [0.0])
    scale: list[float] = field(default_factory=lambda: [1.0])
    feature_dims: list[int] = field(default_factory=list)
    num_classes: int = 0
    n_train: int = 0
    n_valid: int = 0
    checkpoint_epoch: int = -1
    valid_flagged: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in OOD_METHODS:
            raise ValueError(f"OOD method must be one of {', '.join(OOD_METHODS)}, got {self.method!r}")
        if not isinstance(self.threshold, (int, float)) or not np.isfinite(self.threshold):
            raise ValueError(f"OOD threshold must be a finite number, got {self.threshold!r}")
        self.threshold = float(self.threshold)
        if self.combine not in OOD_COMBINE_RULES:
            raise ValueError(f"OOD combine rule must be one of {', '.join(OOD_COMBINE_RULES)}, got {self.combine!r}")
        if self.threshold_rule not in THRESHOLD_RULES:
            raise ValueError(f"OOD threshold rule must be one of {', '.join(THRESHOLD_RULES)}, "
                             f"got {self.threshold_rule!r}")
        self.layers = tuple(str(n) for n in self.layers)
        self.centre, self.scale = [float(v) for v in self.centre], [float(v) for v in self.scale]
        self.feature_dims = [int(v) for v in self.feature_dims]
        if not self.layers or len(self.centre) != len(self.layers) or len(self.scale) != len(self.layers):
            raise ValueError(f"OOD detector: {len(self.layers)} layers, {len(self.centre)} centres and "
                             f"{len(self.scale)} scales; give one of each per layer")
        if not all(np.isfinite(self.centre)) or not all(v > 0 and np.isfinite(v) for v in self.scale):
            raise ValueError(f"OOD detector: layer centres must be finite and scales > 0, got {self.centre}, "
                             f"{self.scale}")
        if self.feature_dims and len(self.feature_dims) != len(self.layers):
            raise ValueError(f"OOD detector: {len(self.feature_dims)} feature sizes for {len(self.layers)} layers")
        if (self.means is None) != (self.precisions is None):
            raise ValueError("OOD detector: give both the class means and the precisions, or neither")
        if self.means is not None:
            self.means = [np.asarray(m, np.float64) for m in self.means]
            self.precisions = [np.asarray(p, np.float64) for p in self.precisions]
            dims = self.feature_dims or [m.shape[1] if m.ndim == 2 else -1 for m in self.means]
            k = self.num_classes or (self.means[0].shape[0] if self.means and self.means[0].ndim == 2 else -1)
            if len(self.means) != len(self.layers) or len(self.precisions) != len(self.layers) or any(
                    m.shape != (k, f) or p.shape != (f, f) for m, p, f in zip(self.means, self.precisions, dims)):
                raise ValueError(f"OOD detector: matrices of shapes {[m.shape for m in self.means]}, "
                                 f"{[p.shape for p in self.precisions]} do not match {k} classes and the "
                                 f"{len(self.layers)} layers of {dims} features")
            self.feature_dims, self.num_classes = list(dims), int(k)

    @property
    def needs_features(self) -> bool:
        """Whether :meth:`score` needs the pooled features of :attr:`layers` (Mahalanobis)
        besides the logits."""
        return self.method == "mahalanobis"

    def layer_scores(self, features) -> list[np.ndarray]:
        """:func:`mahalanobis_score` of each layer: ``L`` float64 ``(N,)``, before standardising.

        Args:
            features: ``L`` arrays ``(N, F_l)`` in the order of :attr:`layers` (a single
                ``(N, F)`` array when ``L`` is 1).
        Raises:
            ValueError: no stored means/precisions, or features of other widths than
                :attr:`feature_dims` (refit: ``medclass ood-fit RUN``).
        """
        if features is None or self.means is None or self.precisions is None:
            raise ValueError("the Mahalanobis OOD score needs the layers' pooled features and the fitted class means "
                             "and precisions (ood.npz)")
        if not isinstance(features, (list, tuple)):
            features = [features]
        feats = [np.asarray(f) for f in features]
        widths = [f.shape[1] if f.ndim == 2 else None for f in feats]
        if len(feats) != len(self.layers) or widths != self.feature_dims:
            raise ValueError(f"the OOD detector was fitted on the layers {list(self.layers)} of {self.feature_dims} "
                             f"features per image, got shapes {[f.shape for f in feats]}; refit it "
                             "(medclass ood-fit RUN)")
        return [mahalanobis_score(f, m, p) for f, m, p in zip(feats, self.means, self.precisions)]

    def score(self, logits: np.ndarray, features=None) -> np.ndarray:
        """The detector's score of each image, float64 ``(N,)``, higher = more foreign:
        :func:`energy_score` of ``logits`` ``(N, K)`` / ``(N, 1)`` at :attr:`temperature`, or
        :func:`layered_mahalanobis_score` of ``features`` (``L`` arrays ``(N, F_l)`` of
        :attr:`layers`, e.g. from :func:`medclass.engine.inference.logits_and_layer_features`)
        with the stored means, precisions, centres and scales. An exported graph computes the
        same function on tensors (:meth:`tensors`; :mod:`medclass.serving.export`).

        Raises:
            ValueError: as :meth:`layer_scores`.
        """
        if self.method == "energy":
            return energy_score(np.asarray(logits), self.temperature)
        return combine_layer_scores(self.layer_scores(features), self.centre, self.scale, self.combine)

    def tensors(self) -> dict[str, Any]:
        """The Mahalanobis constants as float32 torch tensors for a graph that calls
        :func:`layered_mahalanobis_score`: ``{"means": [(K, F_l)], "precisions": [(F_l, F_l)],
        "centre": (L,), "scale": (L,)}`` (imports PyTorch).

        Raises:
            ValueError: no stored matrices.
        """
        if self.means is None or self.precisions is None:
            raise ValueError("the OOD detector has no class means and precisions to put in a graph")
        torch = _torch()
        return {"means": [torch.as_tensor(m, dtype=torch.float32) for m in self.means],
                "precisions": [torch.as_tensor(p, dtype=torch.float32) for p in self.precisions],
                "centre": torch.tensor(self.centre, dtype=torch.float32),
                "scale": torch.tensor(self.scale, dtype=torch.float32)}

    def flag(self, scores) -> np.ndarray:
        """bool ``(N,)``: ``scores > threshold`` (the one rule every backend applies)."""
        return np.asarray(scores, dtype=np.float64) > self.threshold

    def results(self, scores) -> list[OODResult]:
        """One :class:`OODResult` per score of ``scores`` ``(N,)`` (numpy), flagged by :meth:`flag`."""
        s = np.asarray(scores, dtype=np.float64).reshape(-1)
        return [OODResult(float(v), self.threshold, bool(f), self.method) for v, f in zip(s, self.flag(s))]

    def summary(self) -> dict[str, Any]:
        """Everything but the matrices, JSON-serialisable: the content of ``ood.json`` (without its
        file fields) and of an exported spec's ``extra["ood"]`` (layout :data:`OOD_VERSION`)."""
        return {
            "version": OOD_VERSION, "method": self.method, "threshold": self.threshold, "quantile": self.quantile,
            "threshold_rule": self.threshold_rule,
            "thresholds": {k: float(v) for k, v in self.thresholds.items()}, "temperature": self.temperature,
            "layers": list(self.layers), "combine": self.combine, "centre": list(self.centre),
            "scale": list(self.scale), "feature_dims": list(self.feature_dims),
            "num_classes": int(self.num_classes), "n_train": int(self.n_train),
            "n_valid": int(self.n_valid), "checkpoint_epoch": int(self.checkpoint_epoch),
            "valid_flagged": {k: float(v) for k, v in self.valid_flagged.items()},
            "references": {"energy": "Liu et al. 2020, arXiv:2010.03759",
                           "mahalanobis": "Lee et al. 2018, arXiv:1807.03888 (feature ensemble over the layers, "
                                          "each standardised by its validation median and IQR); Ledoit-Wolf "
                                          "covariance"},
            "extra": self.extra,
        }

    @classmethod
    def from_summary(cls, data: dict[str, Any], means: Optional[Sequence[np.ndarray]] = None,
                     precisions: Optional[Sequence[np.ndarray]] = None) -> "OODDetector":
        """The detector described by :meth:`summary`'s dict (and the matrices, when given). A
        version-1 record (penultimate features only, ``feature_dim``) becomes a one-layer detector
        on ``"penultimate"`` with centre 0 and scale 1: the same scores and threshold.

        Raises:
            ValueError: a missing or invalid field, or a newer layout (the message says which).
        """
        if not isinstance(data, dict):
            raise ValueError("the OOD record is not a JSON object")
        version = int(data.get("version", 1))
        if version > OOD_VERSION:
            raise ValueError(f"the OOD record has version {data['version']}; this medclass reads up to {OOD_VERSION}: "
                             "upgrade medclass")
        try:
            if version == 1:
                dim = int(data.get("feature_dim", 0))
                layered = {"layers": (PENULTIMATE,), "combine": "max", "threshold_rule": "quantile",
                           "centre": [0.0], "scale": [1.0], "feature_dims": [dim] if dim else []}
            else:
                layered = {"layers": tuple(data["layers"]), "combine": data["combine"],
                           "threshold_rule": data.get("threshold_rule", "quantile"), "centre": list(data["centre"]),
                           "scale": list(data["scale"]), "feature_dims": list(data.get("feature_dims") or [])}
            extra = dict(data.get("extra") or {})
            if version != OOD_VERSION:
                extra["read_from_version"] = version
            return cls(method=data["method"], threshold=data["threshold"],
                       quantile=float(data.get("quantile", IN_DISTRIBUTION_QUANTILE)),
                       thresholds={k: float(v) for k, v in (data.get("thresholds") or {}).items()},
                       temperature=float(data.get("temperature", 1.0)), means=means, precisions=precisions,
                       num_classes=int(data.get("num_classes", 0)),
                       n_train=int(data.get("n_train", 0)), n_valid=int(data.get("n_valid", 0)),
                       checkpoint_epoch=int(data.get("checkpoint_epoch", -1)),
                       valid_flagged=dict(data.get("valid_flagged") or {}), extra=extra, **layered)
        except KeyError as e:
            raise ValueError(f"the OOD record lacks the field {e.args[0]!r}") from None
        except (TypeError, AttributeError) as e:
            raise ValueError(f"the OOD record has an invalid field: {e}") from None


def fit_detector(
    train_features: Sequence[np.ndarray],
    train_labels: Sequence[int],
    valid_features: Sequence[np.ndarray],
    valid_logits: np.ndarray,
    num_classes: int,
    layers: Sequence[str],
    method: str = DEFAULT_OOD_METHOD,
    combine: str = DEFAULT_OOD_COMBINE,
    quantile: float = IN_DISTRIBUTION_QUANTILE,
    threshold_rule: str = DEFAULT_THRESHOLD_RULE,
    **provenance: Any,
) -> OODDetector:
    """Fit an :class:`OODDetector` on features already computed (numpy; no PyTorch).

    1. Per layer ``l``: :func:`fit_mahalanobis` on the training features ``(N_train, F_l)`` and
       ``train_labels`` ``(N_train,)`` int (class means, Ledoit-Wolf precision; Lee et al. fit on
       the training set);
    2. per layer: the validation scores' median and IQR (:func:`robust_scale`), the
       standardisation that stands in for Lee et al.'s logistic regression on foreign data;
    3. the combined validation score (:func:`combine_layer_scores` by ``combine``) and the energy
       of ``valid_logits`` ``(N_valid, K)`` set each method's threshold (:func:`fit_threshold`
       at ``quantile`` by ``threshold_rule``).

    Args:
        train_features, valid_features: ``L`` float arrays each, in the order of ``layers``.
        layers: the feature names stored with the detector; a layer whose training features
            are all constant (the ``:std`` of a 1 x 1 map) is left out (the detector's
            :attr:`OODDetector.layers` says which were kept).
        provenance: further :class:`OODDetector` fields (``n_train``, ``checkpoint_epoch``, ``extra``).
    Raises:
        ValueError: a class without training features, fewer than 2 training images, no
            validation images, mismatched layer counts, an unknown method, rule or quantile.
    """
    if method not in OOD_METHODS:
        raise ValueError(f"OOD method must be one of {', '.join(OOD_METHODS)}, got {method!r}")
    if not (len(train_features) == len(valid_features) == len(layers)) or not layers:
        raise ValueError(f"{len(train_features)} training and {len(valid_features)} validation feature arrays for "
                         f"{len(layers)} layers")
    constant = [str(n) for n, f in zip(layers, train_features) if not np.any(np.ptp(np.asarray(f), axis=0) > 0)]
    if constant:  # e.g. the ':std' of a 1 x 1 map: no variation to fit a covariance on, nothing to tell
        keep = [i for i, n in enumerate(layers) if str(n) not in constant]
        if not keep:
            raise ValueError(f"OOD detector: the features of every layer ({', '.join(constant)}) are constant over "
                             "the training images")
        layers = [layers[i] for i in keep]
        train_features = [train_features[i] for i in keep]
        valid_features = [valid_features[i] for i in keep]
    models = [fit_mahalanobis(f, train_labels, num_classes) for f in train_features]
    raw = [m.score(f) for m, f in zip(models, valid_features)]
    stats = [robust_scale(s) for s in raw]
    centre, scale = [c for c, _ in stats], [w for _, w in stats]
    scores = {"energy": energy_score(np.asarray(valid_logits)),
              "mahalanobis": combine_layer_scores(raw, centre, scale, combine)}
    thresholds = {m: fit_threshold(s, quantile, threshold_rule) for m, s in scores.items()}
    return OODDetector(
        method=method, threshold=thresholds[method], quantile=quantile, thresholds=thresholds, temperature=1.0,
        layers=tuple(layers), combine=combine, threshold_rule=threshold_rule,
        means=[m.means for m in models], precisions=[m.precision for m in models], centre=centre, scale=scale,
        feature_dims=[int(np.asarray(f).shape[1]) for f in train_features], num_classes=num_classes,
        n_valid=len(scores["energy"]), valid_flagged={m: float(np.mean(s > thresholds[m])) for m, s in scores.items()},
        **{"n_train": len(train_labels), **provenance})


def _atomic_write(path: Path, write) -> None:
    """:func:`medclass.core.fileio.atomic_write` of ``write(tmp)`` onto ``path``, with the OOD files' errors.

    Raises:
        RunError: a symbolic link sits at ``path`` (nothing is written through it, nor is the link
            replaced), or the file cannot be written (the message names it).
    """
    if path.is_symlink():
        raise RunError(f"{path} is a symbolic link; refusing to write the OOD detector through it (remove the link)")
    try:
        atomic_write(path, write)
    except OSError as e:
        raise RunError(f"cannot write the OOD detector {path}: {e}") from e


def write_ood(detector: OODDetector, run_dir: Union[str, os.PathLike]) -> Path:
    """Store ``detector`` in the run folder: ``ood.npz`` (``means_<l>`` float64 ``(K, F_l)`` and
    ``precision_<l>`` float64 ``(F_l, F_l)`` per layer ``l = 0 .. L-1``; when it has them) first,
    then ``ood.json`` (:meth:`OODDetector.summary` plus the npz's file name and SHA-256), each
    atomically (a temporary file in the folder, then ``os.replace``); ``ood.json`` is written
    last, so a reader never pairs it with another fit's matrices. Returns the path of ``ood.json``.

    Raises:
        RunError: a symbolic link at either file, or a folder that cannot be written.
    """
    files = RunFiles(Path(run_dir))
    record = detector.summary()
    if detector.means is not None and detector.precisions is not None:
        arrays = {}
        for i, (m, p) in enumerate(zip(detector.means, detector.precisions)):
            arrays[f"means_{i}"], arrays[f"precision_{i}"] = np.asarray(m, np.float64), np.asarray(p, np.float64)

        def save_npz(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)

        _atomic_write(files.ood_params, save_npz)
        record["parameters"] = {"file": files.ood_params.name, "sha256": sha256_of_file(files.ood_params)}
    text = json.dumps(record, indent=1, sort_keys=True) + "\n"
    _atomic_write(files.ood, lambda tmp: tmp.write_text(text))
    return files.ood


def read_ood(run_dir: Union[str, os.PathLike]) -> Optional[OODDetector]:
    """The detector stored in ``RUN/ood.json`` (and ``ood.npz``), or None when the run has none
    (trained before medclass fitted one, an ensemble, or a fit that failed). A version-1 file
    (penultimate features only: ``means`` and ``precision`` in ``ood.npz``) is read as a one-layer
    detector that scores as it did (:meth:`OODDetector.from_summary`).

    Raises:
        ValueError: ``ood.json`` that is not a valid record, an ``ood.npz`` that is missing,
            unreadable or not the one ``ood.json`` was written with (SHA-256), or matrices whose
            shapes disagree with the record; the message names the file and says to refit
            (``medclass ood-fit RUN``).
    """
    files = RunFiles(Path(run_dir))
    if not files.ood.is_file():
        return None
    hint = f"refit it with `medclass ood-fit {files.root}` (or delete it)"
    try:
        data = json.loads(files.ood.read_text())
        means = precisions = None
        params = data.get("parameters") if isinstance(data, dict) else None
        if params:
            npz = files.root / str(params.get("file", files.ood_params.name))
            if not npz.is_file():
                raise ValueError(f"its matrices {npz} are missing")
            if params.get("sha256") and sha256_of_file(npz) != params["sha256"]:
                raise ValueError(f"{npz} is not the file it was written with (SHA-256 differs)")
            with np.load(npz, allow_pickle=False) as z:
                if "means" in z.files:  # version 1: the penultimate layer only
                    means, precisions = [np.asarray(z["means"], np.float64)], [np.asarray(z["precision"], np.float64)]
                else:
                    n = sum(1 for k in z.files if k.startswith("means_"))
                    means = [np.asarray(z[f"means_{i}"], np.float64) for i in range(n)]
                    precisions = [np.asarray(z[f"precision_{i}"], np.float64) for i in range(n)]
        detector = OODDetector.from_summary(data, means, precisions)
        if detector.needs_features and means is None:
            raise ValueError("the Mahalanobis method needs ood.npz, which it does not name")
    except (OSError, ValueError, KeyError) as e:  # JSONDecodeError is a ValueError; KeyError: an npz without an array
        raise ValueError(f"{files.ood}: invalid OOD detector ({e}); {hint}") from None
    return detector


def ood_from_spec(spec) -> Optional[OODDetector]:
    """The detector summary an exported model's :class:`~medclass.core.spec.ModelSpec` carries in
    ``extra["ood"]`` (no matrices: the graph outputs the score), or None when it has none.

    Raises:
        ValueError: an invalid record (the message says which field).
    """
    data = (getattr(spec, "extra", None) or {}).get("ood")
    return OODDetector.from_summary(data) if data else None
