"""Stratified (and group-aware) train/valid/test splits, made with scikit-learn.

scikit-learn is imported when a split is made, not with this module: ``medclass.data.sources``
(which imports it) stays light for the CLI's argument checks."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

__all__ = ["stratified_split"]


def _holdout(labels: np.ndarray, groups: Optional[np.ndarray], fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of a stratified holdout of about ``fraction`` of the items."""
    from sklearn.model_selection import StratifiedGroupKFold, train_test_split

    n = len(labels)
    idx = np.arange(n)
    mask = np.zeros(n, dtype=bool)
    if fraction <= 0:
        return mask
    if groups is None:
        # the only image of a class stays in training; the holdout is drawn from the other images,
        # stratified, with at least one image of each of their classes and one left on the other
        # side (scikit-learn's condition for a stratified split; tiny data sets reach it)
        counts = np.bincount(labels)
        candidates = idx[counts[labels] >= 2]
        k = len(np.unique(labels[candidates]))
        size = min(max(math.ceil(fraction * n), k), len(candidates) - k)  # = sklearn's ceil(fraction * n) if it fits
        if size <= 0:
            return mask
        _, held = train_test_split(candidates, test_size=size, random_state=seed, stratify=labels[candidates])
    else:
        # StratifiedGroupKFold keeps every group in one fold and balances the class mix across
        # folds; one fold of round(1 / fraction) is the holdout.
        n_splits = max(2, int(round(1.0 / fraction)))
        n_groups = len(np.unique(groups))
        if n_groups < n_splits:
            raise ValueError(f"only {n_groups} groups: too few for a {fraction:.0%} group-wise holdout")
        sgkf = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        _, held = next(sgkf.split(idx, labels, groups))
    mask[held] = True
    return mask


def stratified_split(
    labels: Sequence[int],
    groups: Optional[Sequence[str]] = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
) -> np.ndarray:
    """Assign each item to ``"train"``, ``"valid"`` or ``"test"``.

    Stratified by label (scikit-learn ``train_test_split``); with ``groups`` (patient or lesion
    ids) by ``StratifiedGroupKFold`` so that every group lies on one side only. The fractions are
    of all items (approximate with groups). Without groups, small data sets still split: a
    holdout takes at least one image of each class that has two or more (so it may exceed its
    fraction), and the only image of a class stays in training. Same inputs and seed give the same
    split.

    Returns:
        array of ``len(labels)`` split names (dtype ``<U5``).

    Raises:
        ValueError: fractions outside [0, 1) or summing to 1 or more; too few groups.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"split fractions must be in [0, 1) and sum below 1: valid {val_fraction}, test {test_fraction}")
    g = None if groups is None else np.asarray([str(x) for x in groups])
    out = np.full(len(labels), "train", dtype="<U5")
    test = _holdout(labels, g, test_fraction, seed)
    out[test] = "test"
    rest = np.flatnonzero(~test)
    if val_fraction > 0 and len(rest):
        rel = val_fraction / (1.0 - test_fraction)
        valid = _holdout(labels[rest], None if g is None else g[rest], rel, seed + 1)
        out[rest[valid]] = "valid"
    return out
