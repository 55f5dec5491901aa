"""Results per patient, lesion or study: image probabilities aggregated per group, and subgroup tables.

Clinical studies report per patient (or lesion, or study) as well as per image: several images of
one lesion are one decision. :func:`aggregate_groups` turns image-level probabilities into one row
per group; the image-level metric code (:func:`medclass.evaluation.metrics.classification_metrics`,
:func:`~medclass.evaluation.metrics.bootstrap_ci`) then scores the groups, so the bootstrap
resamples groups, not images. :func:`subgroup_metrics` gives the per-subgroup table (sex, age band,
site ...) with intervals and the gap between the best and the worst subgroup.

Torch-free: numpy and scikit-learn (through :mod:`medclass.evaluation.metrics`).
"""

from __future__ import annotations

import re

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from .metrics import _point_metrics, bootstrap_ci

__all__ = ["AGGREGATIONS", "GroupResult", "aggregate_groups", "subgroup_metrics", "numeric_bins", "is_numeric",
           "MIN_SUBGROUP_N"]

#: How a group's image probabilities become the group's: ``mean`` (the average of the images'
#: probabilities) or ``max`` ("any image positive": each class's largest probability over the
#: images, renormalised to sum to 1; for two classes the positive class's maximum).
AGGREGATIONS = ("mean", "max")

#: Subgroups with fewer images than this are flagged ``too_small`` (kept in the table, not hidden).
MIN_SUBGROUP_N = 30


@dataclass
class GroupResult:
    """Group-level arrays: ``probs`` float64 ``(G, K)``, ``labels`` int64 ``(G,)``, ``groups``
    (the ``G`` group ids, sorted), ``n_images`` int64 ``(G,)``; ``conflicts``: groups whose images
    carry different labels (``{"group", "labels": {label: count}}``), left out of the arrays."""

    probs: np.ndarray
    labels: np.ndarray
    groups: list[str]
    n_images: np.ndarray
    how: str
    conflicts: list[dict[str, Any]] = field(default_factory=list)


def aggregate_groups(probs: np.ndarray, labels: Sequence[int], groups: Sequence[Any], how: str = "mean",
                     positive_class: int = 1) -> GroupResult:
    """One row per group from image-level ``probs`` ``(N, K)`` and ``labels`` ``(N,)``.

    Args:
        probs: ``(N, K)`` probabilities of the ``N`` images (rows sum to 1).
        labels: ``(N,)`` int labels of the images.
        groups: ``(N,)`` group ids (patient, lesion, study); compared as strings.
        how: ``"mean"`` or ``"max"`` (:data:`AGGREGATIONS`).
        positive_class: for ``max`` with two classes: the class whose maximum is taken.
    Returns:
        A :class:`GroupResult`. A group whose images carry different labels is listed in
        ``conflicts`` and left out (never merged into one label).
    Raises:
        ValueError: ``how`` unknown, or lengths that differ.
    """
    if how not in AGGREGATIONS:
        raise ValueError(f"group aggregation must be one of {', '.join(AGGREGATIONS)}, got {how!r}")
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    g = np.asarray([str(v) for v in groups])
    if not (len(p) == len(y) == len(g)):
        raise ValueError(f"probs, labels and groups differ in length: {len(p)}, {len(y)}, {len(g)}")
    k = p.shape[1] if p.ndim == 2 else 0
    out_p, out_y, out_g, out_n, conflicts = [], [], [], [], []
    for gid in sorted(set(g.tolist())):
        idx = np.flatnonzero(g == gid)
        values, counts = np.unique(y[idx], return_counts=True)
        if len(values) > 1:
            conflicts.append({"group": gid, "labels": {int(v): int(c) for v, c in zip(values, counts)}})
            continue
        if how == "mean":
            row = p[idx].mean(axis=0)
        elif k == 2:
            top = p[idx, positive_class].max()
            row = np.empty(2)
            row[positive_class], row[1 - positive_class] = top, 1.0 - top
        else:
            row = p[idx].max(axis=0)
            row = row / row.sum()
        out_p.append(row)
        out_y.append(int(values[0]))
        out_g.append(gid)
        out_n.append(len(idx))
    return GroupResult(np.asarray(out_p, dtype=np.float64).reshape(-1, k), np.asarray(out_y, dtype=np.int64), out_g,
                       np.asarray(out_n, dtype=np.int64), how, conflicts)


def _number(v: Any) -> Optional[float]:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if np.isfinite(x) else None


def is_numeric(values: Sequence[Any]) -> bool:
    """True when every value that is not missing (``None``, ``""``, ``"unknown"``) is a number and
    at least one is."""
    present = [v for v in values if v is not None and str(v).strip().lower() not in ("", "unknown", "nan")]
    return bool(present) and all(_number(v) is not None for v in present)


def numeric_bins(values: Sequence[Any], n_bins: int = 4) -> tuple[list[Optional[str]], list[float]]:
    """A numeric column (age in years, ...) as ``n_bins`` quantile bins (quartiles by default) of
    its known values: each value's bin as ``"lo-hi"`` (``lo`` <= value < ``hi``, the last bin
    closed), ``None`` where missing; and the bin edges (the bins stated in the results).
    Tied quantiles merge bins."""
    nums = [_number(v) for v in values]
    known = np.asarray([x for x in nums if x is not None], dtype=np.float64)
    if len(known) == 0:
        return [None] * len(nums), []
    edges = sorted(set(np.quantile(known, np.linspace(0, 1, n_bins + 1)).round(6).tolist()))
    if len(edges) == 1:
        return [(f"{edges[0]:g}" if x is not None else None) for x in nums], edges
    labels = [f"{lo:g}-{hi:g}" for lo, hi in zip(edges[:-1], edges[1:])]
    inner = np.asarray(edges[1:-1])
    return [(labels[int(np.searchsorted(inner, x, side="right"))] if x is not None else None) for x in nums], edges


_LEADING_NUMBER = re.compile(r"^-?\d+(?:\.\d+)?(?:e[+-]?\d+)?")


def _subgroup_order(name: str) -> tuple:
    """Sort key of subgroup names: those that start with a number (the ``"lo-hi"`` bins of
    :func:`numeric_bins`, ages) in numeric order first, then the others by name, ``"unknown"`` last;
    so ``"5-30"`` comes before ``"30-45"``, which a string sort puts the other way round."""
    m = _LEADING_NUMBER.match(name)
    if name == "unknown":
        return (2, 0.0, name)
    return (0, float(m.group()), name) if m else (1, 0.0, name)


def subgroup_metrics(probs: np.ndarray, labels: Sequence[int], values: Sequence[Any], *, n_resamples: int = 1000,
                     seed: int = 0, min_n: int = MIN_SUBGROUP_N) -> dict[str, Any]:
    """Accuracy, balanced accuracy and AUROC per subgroup, with percentile bootstrap 95 % intervals
    (:func:`~medclass.evaluation.metrics.bootstrap_ci`, resampling within the subgroup).

    Args:
        probs: ``(N, K)`` probabilities. labels: ``(N,)`` int labels.
        values: ``(N,)`` the subgroup of each image (``None`` or ``""``: unknown, reported as
            ``"unknown"``).
        min_n: subgroups with fewer images are flagged ``too_small`` (still reported).
    Returns:
        ``{"subgroups": {name: {"n", "too_small", "accuracy", "balanced_accuracy", "auroc",
        "ci95": {metric: [low, high]}}}, "gap": {metric: {"best", "worst", "difference"}}}``; the
        gap is taken over the subgroups that are not too small and where the metric is defined.
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    names = np.asarray(["unknown" if v is None or str(v).strip() == "" else str(v) for v in values])
    table: dict[str, Any] = {}
    for name in sorted(set(names.tolist()), key=_subgroup_order):
        idx = np.flatnonzero(names == name)
        point = _point_metrics(y[idx], p[idx], p.shape[1])
        ci = bootstrap_ci(y[idx], p[idx], n_resamples=n_resamples, seed=seed)["metrics"]
        table[name] = {
            "n": int(len(idx)), "too_small": bool(len(idx) < min_n),
            **{m: point[m] for m in ("accuracy", "balanced_accuracy", "auroc")},
            "ci95": {m: [ci[m]["low"], ci[m]["high"]] for m in ("accuracy", "balanced_accuracy", "auroc")},
        }
    gap = {}
    for m in ("accuracy", "balanced_accuracy", "auroc"):
        scored = {k: v[m] for k, v in table.items() if not v["too_small"] and v[m] is not None}
        if len(scored) >= 2:
            best, worst = max(scored, key=scored.get), min(scored, key=scored.get)
            gap[m] = {"best": best, "worst": worst, "difference": scored[best] - scored[worst]}
    return {"subgroups": table, "gap": gap, "min_n": min_n}
