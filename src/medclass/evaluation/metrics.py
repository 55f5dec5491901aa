"""Classification metrics from labels and probabilities (scikit-learn)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)

__all__ = ["classification_metrics", "auroc"]


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
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
        "auroc": auroc(y, p),
        "per_class": {
            name: {"precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]), "support": int(support[i])}
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": confusion_matrix(y, pred, labels=labels).tolist(),
    }
