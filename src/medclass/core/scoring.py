"""The one definition of the scores that training and evaluation both compute.

Torch-free (NumPy; scikit-learn imported on first use): the training loop's validation pass
(:func:`medclass.engine.fit.balanced_accuracy`, on tensors) and the evaluation's metrics
(:mod:`medclass.evaluation.metrics`) call :func:`balanced_accuracy` here, so a run's
``val_balanced_accuracy`` and its evaluation's ``balanced_accuracy`` are the same number.
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["balanced_accuracy"]


def balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    """scikit-learn's ``balanced_accuracy_score`` (Brodersen et al. 2010): the mean over the classes
    present in ``y`` (int ``(N,)``) of their recall among ``pred`` (int ``(N,)``).

    Its warnings that ``pred`` holds a class absent from ``y``, or that both hold a single class, are
    silenced: in a small test split, its groups and most bootstrap resamples of one, that is expected
    (and warned once per resample, hundreds of lines).

    Returns:
        float in [0, 1]; NaN for an empty ``y``.
    """
    y, pred = np.asarray(y), np.asarray(pred)
    if y.size == 0:
        return float("nan")
    from sklearn.metrics import balanced_accuracy_score

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        warnings.filterwarnings("ignore", message="A single label was found in 'y_true' and 'y_pred'")
        return float(balanced_accuracy_score(y, pred))
