"""The one definition of the scores that training and evaluation both compute.

Torch-free and NumPy only: the training loop's validation pass
(:func:`medclass.engine.fit.balanced_accuracy`, on tensors) and the evaluation's metrics
(:mod:`medclass.evaluation.metrics`) call :func:`balanced_accuracy` here, so a run's
``val_balanced_accuracy`` and its evaluation's ``balanced_accuracy`` are the same number.
"""

from __future__ import annotations

import numpy as np

__all__ = ["balanced_accuracy"]


def balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    """Balanced accuracy (Brodersen et al. 2010): the mean over the classes present in ``y`` (int ``(N,)``)
    of their recall among ``pred`` (int ``(N,)``); a class that only ``pred`` holds does not count.

    The same number as scikit-learn's ``balanced_accuracy_score`` (``tests/test_recipe.py`` checks it),
    computed in NumPy: no scikit-learn import in the training loop's validation pass (the time budget
    times that pass), and none of its warnings for a class absent from ``y`` or a single class, which
    small test splits, their groups and most bootstrap resamples of one meet by design.

    Returns:
        float in [0, 1]; NaN for an empty ``y``.
    """
    y, pred = np.asarray(y).ravel(), np.asarray(pred).ravel()
    if y.size == 0:
        return float("nan")
    recalls = [float(np.mean(pred[y == c] == c)) for c in np.unique(y)]
    return float(np.mean(recalls))
