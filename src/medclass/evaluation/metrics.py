"""Classification metrics from labels and probabilities (scikit-learn)."""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import numpy as np

from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)

from ..core.scoring import balanced_accuracy

__all__ = ["classification_metrics", "auroc", "bootstrap_ci", "CI_METRICS"]


def auroc(y_true: np.ndarray, probs: np.ndarray) -> float | None:
    """Area under the ROC curve: binary (probability of class 1), or the macro average of
    one-vs-rest AUROCs for K > 2 (scikit-learn ``roc_auc_score(multi_class="ovr")``).
    None when a class is absent from ``y_true`` (AUROC is undefined)."""
    k = probs.shape[1]
    present = np.unique(y_true)
    if len(present) < 2:
        return None
    if k == 2:
        return float(roc_auc_score(y_true, probs[:, 1]))
    if len(present) < k:
        # one-vs-rest over the classes present, as an honest partial figure
        aucs = [roc_auc_score(y_true == c, probs[:, c]) for c in present]
        return float(np.mean(aucs))
    return float(roc_auc_score(y_true, probs, multi_class="ovr", average="macro"))


def _renormalised(p: np.ndarray) -> np.ndarray:
    """Probabilities clipped away from 0 and rows summed to exactly 1 (float32 softmax rounding)."""
    p = np.clip(p, 1e-12, 1.0)
    return p / p.sum(axis=1, keepdims=True)


def classification_metrics(y_true: Sequence[int], probs: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Metrics of predictions ``argmax(probs)`` against integer labels.

    Args:
        y_true: ``(N,)`` int class indices.
        probs: ``(N, K)`` float class probabilities (rows sum to 1).
        class_names: ``K`` names.

    Returns:
        ``loss`` (cross-entropy, nats), ``accuracy``, ``balanced_accuracy`` (mean recall),
        ``macro_f1``, ``auroc``, ``per_class`` (precision, recall, f1, support per class name),
        ``confusion_matrix`` (rows true, columns predicted), ``n``.
    """
    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    k = len(class_names)
    labels = list(range(k))
    pred = p.argmax(1)
    prec, rec, f1, support = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    return {
        "n": int(len(y)),
        "loss": float(log_loss(y, _renormalised(p), labels=labels)),
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": balanced_accuracy(y, pred),
        "macro_f1": float(f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
        "auroc": auroc(y, p),
        "per_class": {
            name: {"precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]), "support": int(support[i])}
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": confusion_matrix(y, pred, labels=labels).tolist(),
    }


#: Metrics that get bootstrap confidence intervals.
CI_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auroc")


def _point_metrics(y: np.ndarray, p: np.ndarray, k: int) -> dict[str, Optional[float]]:
    pred = p.argmax(1)
    labels = list(range(k))
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": balanced_accuracy(y, pred) if len(np.unique(y)) > 1 else None,
        "macro_f1": float(f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
        "auroc": auroc(y, p),
    }


def bootstrap_ci(
    y_true: Sequence[int],
    probs: np.ndarray,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    on_resample: Optional[Callable[[int], None]] = None,
) -> dict[str, Any]:
    """Percentile bootstrap confidence intervals (Efron & Tibshirani 1993) for accuracy,
    balanced accuracy, macro F1 and AUROC.

    The ``N`` images are resampled with replacement ``n_resamples`` times (NumPy
    ``default_rng(seed)``, so the intervals are reproducible); each metric's interval is the
    ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of its resampled values. Resamples in
    which a metric is undefined (AUROC or balanced accuracy with a class missing) are left out
    of that metric and counted in ``undefined``.

    Args:
        y_true: ``(N,)`` int labels. probs: ``(N, K)`` probabilities.
        on_resample: called with 1 after each resample (progress, :meth:`medclass.core.progress.Progress.update`).

    Returns:
        ``{"n_resamples", "seed", "level", "metrics": {name: {"estimate", "low", "high",
        "undefined"}}}``.
    """
    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    k = p.shape[1]
    point = _point_metrics(y, p, k)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {m: [] for m in CI_METRICS}
    for _ in range(n_resamples):
        idx = rng.integers(0, len(y), len(y))
        for m, v in _point_metrics(y[idx], p[idx], k).items():
            if v is not None:
                draws[m].append(v)
        if on_resample is not None:
            on_resample(1)
    lo_q, hi_q = (1 - level) / 2, (1 + level) / 2
    out = {}
    for m in CI_METRICS:
        vals = np.asarray(draws[m])
        out[m] = {
            "estimate": point[m],
            "low": float(np.quantile(vals, lo_q)) if len(vals) else None,
            "high": float(np.quantile(vals, hi_q)) if len(vals) else None,
            "undefined": n_resamples - len(vals),
        }
    return {"n_resamples": n_resamples, "seed": seed, "level": level, "method": "percentile", "metrics": out}
