"""Confusion matrix and ROC curve figures (scikit-learn displays, matplotlib Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay  # noqa: E402

from ..core.fileio import atomic_write

__all__ = ["plot_confusion_matrix", "plot_roc"]


def plot_confusion_matrix(cm: Sequence[Sequence[int]], class_names: Sequence[str], path: Path) -> None:
    """Save the confusion matrix (rows true, columns predicted; counts) as PNG."""
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(2.0 + 1.1 * k, 1.6 + 1.0 * k))
    ConfusionMatrixDisplay(np.asarray(cm), display_labels=list(class_names)).plot(
        ax=ax, cmap="Blues", colorbar=False, xticks_rotation=30
    )
    ax.set_title("Confusion matrix")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110))
    plt.close(fig)


def plot_roc(y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str], path: Path,
             positive: int = 1) -> None:
    """Save ROC curves as PNG: for a binary task one curve of the ``positive`` class (index; its
    probability against the other class, axes naming it), otherwise one-vs-rest curves per class
    (axes without scikit-learn's "(Positive label: 1)", which means nothing there)."""
    y_true = np.asarray(y_true)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    if len(class_names) == 2:
        other = 1 - positive
        RocCurveDisplay.from_predictions(y_true == positive, probs[:, positive], pos_label=True,
                                         name=f"{class_names[positive]} vs {class_names[other]}", ax=ax)
        ax.set_xlabel(f"False positive rate (1 - specificity; positive: {class_names[positive]})")
        ax.set_ylabel(f"True positive rate (sensitivity; positive: {class_names[positive]})")
    else:
        for i, name in enumerate(class_names):
            if 0 < (y_true == i).sum() < len(y_true):
                RocCurveDisplay.from_predictions(y_true == i, probs[:, i], pos_label=True, name=name, ax=ax)
        ax.set_xlabel("False positive rate (one class against the rest)")
        ax.set_ylabel("True positive rate (one class against the rest)")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    ax.set_title("ROC")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110))
    plt.close(fig)
