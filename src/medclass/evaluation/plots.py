"""Confusion matrix and ROC curve figures (scikit-learn displays, matplotlib Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay  # noqa: E402

from ..fileio import atomic_write

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


def plot_roc(y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str], path: Path) -> None:
    """Save ROC curves as PNG: one curve for a binary task (positive = class 1), one-vs-rest
    curves per class otherwise."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    if len(class_names) == 2:
        RocCurveDisplay.from_predictions(y_true, probs[:, 1], name=f"{class_names[1]} vs {class_names[0]}", ax=ax)
    else:
        for i, name in enumerate(class_names):
            if 0 < (y_true == i).sum() < len(y_true):
                RocCurveDisplay.from_predictions(y_true == i, probs[:, i], name=name, ax=ax)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    ax.set_title("ROC")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110))
    plt.close(fig)
