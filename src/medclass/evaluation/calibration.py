"""Calibration and operating points: temperature scaling, ECE, reliability diagrams, thresholds.

- Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017): one
  scalar ``T > 0`` divides the logits; fitted on the validation split by minimising the negative
  log-likelihood. It changes no prediction (argmax and the sign of a single logit are unchanged),
  only how confident the probabilities are.
- Expected calibration error (Naeini et al. AAAI 2015; Guo et al. 2017): confidences (the top
  class's probability) in ``n_bins`` equal-width bins over [0, 1],
  ``ECE = sum_b |B_b| / N * |accuracy(B_b) - mean confidence(B_b)|``; computed by torchmetrics'
  ``multiclass_calibration_error`` (norm "l1"). medclass uses 15 bins, as Guo et al.
- Binary operating threshold on the positive class's probability, chosen on validation: Youden's
  J = sensitivity + specificity - 1 maximal (Youden 1950), or the highest threshold that reaches a
  target sensitivity.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from ..core.fileio import atomic_write

__all__ = [
    "ECE_BINS",
    "fit_temperature",
    "apply_temperature",
    "expected_calibration_error",
    "reliability_bins",
    "plot_reliability",
    "choose_threshold",
    "sensitivity_specificity",
]

#: Number of equal-width confidence bins for ECE and the reliability diagram (Guo et al. 2017).
ECE_BINS = 15


def _nll(logits: Tensor, labels: Tensor) -> Tensor:
    if logits.shape[1] == 1:
        return torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], labels.float())
    return torch.nn.functional.cross_entropy(logits, labels)


def fit_temperature(logits: Tensor, labels: Tensor, max_iter: int = 100) -> float:
    """The temperature ``T`` minimising the NLL of ``logits / T`` (L-BFGS over ``log T``).

    Args:
        logits: ``(N, K)`` float logits, or ``(N, 1)`` for a single-logit binary model.
        labels: ``(N,)`` int64 class indices.

    Returns:
        ``T`` as a float in [0.05, 20] (clamped: a handful of validation images can otherwise
        push it to extremes).

    Raises:
        ValueError: empty input or mismatched lengths.
    """
    if len(logits) == 0 or len(logits) != len(labels):
        raise ValueError(f"need matching, non-empty logits and labels, got {len(logits)} and {len(labels)}")
    z, y = logits.detach().double(), labels.long()
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = _nll(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20.0))


def apply_temperature(logits: Tensor, temperature: float) -> Tensor:
    """``logits / T`` (same shape and dtype)."""
    return logits / temperature


def _as_two_column(probs: np.ndarray) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    return np.concatenate([1 - p, p], axis=1) if p.shape[1] == 1 else p


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE of class probabilities ``(N, K)`` against labels ``(N,)`` with ``n_bins`` equal-width
    bins over the top-class confidence (torchmetrics ``multiclass_calibration_error``, l1)."""
    from torchmetrics.functional.classification import multiclass_calibration_error

    p = torch.from_numpy(_as_two_column(probs)).float()
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    return float(multiclass_calibration_error(p, y, num_classes=p.shape[1], n_bins=n_bins, norm="l1"))


def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> dict[str, list]:
    """Per confidence bin (equal width over [0, 1]): ``lower``, ``upper``, ``count``,
    ``confidence`` (mean top-class probability) and ``accuracy``; empty bins have None."""
    p = _as_two_column(probs)
    conf, pred = p.max(1), p.argmax(1)
    correct = pred == np.asarray(labels)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    out: dict[str, list] = {"lower": [], "upper": [], "count": [], "confidence": [], "accuracy": []}
    for b in range(n_bins):
        m = which == b
        out["lower"].append(float(edges[b]))
        out["upper"].append(float(edges[b + 1]))
        out["count"].append(int(m.sum()))
        out["confidence"].append(float(conf[m].mean()) if m.any() else None)
        out["accuracy"].append(float(correct[m].mean()) if m.any() else None)
    return out


def plot_reliability(
    probs_before: np.ndarray,
    labels: np.ndarray,
    path: Path,
    probs_after: Optional[np.ndarray] = None,
    n_bins: int = ECE_BINS,
    temperature: Optional[float] = None,
) -> None:
    """Reliability diagram (accuracy against confidence per bin, with the diagonal of perfect
    calibration), before and, if given, after temperature scaling; ECE in the legend. PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("uncalibrated", probs_before)]
    if probs_after is not None:
        panels.append((f"temperature T={temperature:.2f}" if temperature else "calibrated", probs_after))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.6), squeeze=False)
    for ax, (title, p) in zip(axes[0], panels):
        bins = reliability_bins(p, labels, n_bins)
        centres = [(lo + hi) / 2 for lo, hi in zip(bins["lower"], bins["upper"])]
        acc = [a if a is not None else 0.0 for a in bins["accuracy"]]
        ax.bar(centres, acc, width=1.0 / n_bins, edgecolor="black", alpha=0.8, label="accuracy")
        gap_x = [c for c, a in zip(centres, bins["confidence"]) if a is not None]
        gap_y = [a for a in bins["confidence"] if a is not None]
        ax.plot(gap_x, gap_y, "o", color="crimson", label="mean confidence")
        ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1)
        ece = expected_calibration_error(p, labels, n_bins)
        ax.set_title(f"{title}: ECE {ece:.3f} ({n_bins} bins)")
        ax.set_xlabel("confidence (top-class probability)")
        ax.set_ylabel("accuracy")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.legend(loc="upper left")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100))
    plt.close(fig)


def choose_threshold(scores: np.ndarray, labels: np.ndarray, target_sensitivity: Optional[float] = None) -> dict:
    """Operating threshold on positive-class scores ``(N,)`` (labels 1 = positive), from the ROC
    curve (scikit-learn ``roc_curve``): Youden's J maximal, or with ``target_sensitivity`` the
    highest threshold whose sensitivity reaches it (the most specific such point).

    Returns:
        ``{"method", "threshold", "sensitivity", "specificity", "target_sensitivity"}`` on the
        given data.

    Raises:
        ValueError: only one class present, or a target outside (0, 1].
    """
    from sklearn.metrics import roc_curve

    y = np.asarray(labels).astype(int)
    if len(np.unique(y)) < 2:
        raise ValueError("choosing a threshold needs both classes in the validation split")
    fpr, tpr, thr = roc_curve(y, scores, drop_intermediate=False)
    thr = np.minimum(thr, 1.0)  # scikit-learn's first threshold is +inf
    if target_sensitivity is None:
        i = int(np.argmax(tpr - fpr))
        method = "youden"
    else:
        if not 0 < target_sensitivity <= 1:
            raise ValueError(f"target sensitivity must be in (0, 1], got {target_sensitivity}")
        i = int(np.flatnonzero(tpr >= target_sensitivity)[0])
        method = "target_sensitivity"
    return {"method": method, "threshold": float(thr[i]), "sensitivity": float(tpr[i]),
            "specificity": float(1 - fpr[i]), "target_sensitivity": target_sensitivity}


#: The ``tau`` values :func:`fit_logit_adjustment` tries: 0 (the arg-max) to 1 (the Bayes rule for
#: balanced error when the probabilities are calibrated, Menon et al. 2021, Theorem 1).
LOGIT_ADJUSTMENT_TAUS = (0.0, 0.25, 0.5, 0.75, 1.0)


def fit_logit_adjustment(probs: np.ndarray, labels: np.ndarray, prior: Sequence[float],
                         taus: Sequence[float] = LOGIT_ADJUSTMENT_TAUS) -> dict:
    """Choose post-hoc logit adjustment on validation: the decision ``argmax(log p - tau * log prior)``
    (Menon et al., "Long-tail learning via logit adjustment", ICLR 2021, arXiv:2007.07314) with the
    ``tau`` of ``taus`` that gives the highest balanced accuracy on ``(probs, labels)`` (ties: the
    smallest ``tau``). Balanced accuracy (the mean of per-class recalls) is what an imbalanced
    medical task is judged by (e.g. ISIC 2018's balanced multi-class accuracy); the arg-max of a
    model trained on imbalanced data favours the common classes. ``tau`` = 0 keeps the arg-max.

    Args:
        probs: ``(N, K)`` float validation probabilities (temperature-scaled).
        labels: ``(N,)`` int labels.
        prior: ``K`` class frequencies of the training split (> 0; normalised here).
        taus: the values tried, each >= 0.

    Returns:
        ``{"method": "logit_adjustment", "tau", "offsets" (K floats, ``-tau * log prior``; all 0
        when tau is 0), "prior", "fitted_on": "valid", "n_valid", "balanced_accuracy_by_tau",
        "accuracy_by_tau"}``.

    Raises:
        ValueError: shapes disagree, a prior value is not > 0, or a ``tau`` < 0.
    """
    from sklearn.metrics import accuracy_score

    from ..core.scoring import balanced_accuracy

    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels).astype(int)
    pi = np.asarray(prior, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != len(y) or p.shape[1] != len(pi):
        raise ValueError(f"probs {p.shape}, labels ({len(y)},) and prior ({len(pi)},) disagree")
    if not (pi > 0).all():
        raise ValueError(f"every class needs a prior > 0 (a training image), got {pi.tolist()}")
    if any(t < 0 for t in taus):
        raise ValueError(f"tau must be >= 0, got {list(taus)}")
    pi = pi / pi.sum()
    logp = np.log(np.maximum(p, 1e-12))
    bal: dict[str, float] = {}
    acc: dict[str, float] = {}
    best_tau, best = 0.0, -1.0
    for tau in sorted(taus):
        pred = (logp - tau * np.log(pi)).argmax(axis=1)
        bal[str(tau)] = balanced_accuracy(y, pred)
        acc[str(tau)] = float(accuracy_score(y, pred))
        if bal[str(tau)] > best + 1e-12:
            best_tau, best = float(tau), bal[str(tau)]
    offsets = (-best_tau * np.log(pi)).tolist() if best_tau > 0 else [0.0] * len(pi)
    return {"method": "logit_adjustment", "tau": best_tau, "offsets": offsets, "prior": pi.tolist(),
            "fitted_on": "valid", "n_valid": int(len(y)), "balanced_accuracy_by_tau": bal, "accuracy_by_tau": acc}


def sensitivity_specificity(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    """Sensitivity (recall of class 1) and specificity (recall of class 0) of ``scores >= threshold``."""
    y = np.asarray(labels).astype(int)
    pred = np.asarray(scores) >= threshold
    pos, neg = y == 1, y == 0
    return {
        "threshold": float(threshold),
        "sensitivity": float(pred[pos].mean()) if pos.any() else None,
        "specificity": float((~pred[neg]).mean()) if neg.any() else None,
        "positives": int(pos.sum()),
        "negatives": int(neg.sum()),
    }
