"""Out-of-distribution scores and the stored detector: "this image is unlike the training images".

A classifier answers every image with one of its classes; a chest CT model given a skin photo must
also say that the photo is foreign. Two scores, both "higher = more foreign":

* **Energy** (Liu et al. 2020, "Energy-based Out-of-distribution Detection", NeurIPS,
  arXiv:2010.03759): ``E(x) = -T * logsumexp(f(x) / T)`` of the logits ``f(x)``. It needs nothing
  but the logits.
* **Mahalanobis** (Lee et al. 2018, "A Simple Unified Framework for Detecting Out-of-Distribution
  Samples and Adversarial Attacks", NeurIPS, arXiv:1807.03888): the smallest squared Mahalanobis
  distance of the penultimate features (the classifier head's input, ``(N, F)``) to a class mean,
  with one covariance shared by the classes, fitted on the training images. The covariance is the
  Ledoit-Wolf shrinkage estimate (scikit-learn ``LedoitWolf``; Ledoit & Wolf 2004): a few hundred
  images cannot estimate 512 x 512 entries without it.

The threshold is the :data:`IN_DISTRIBUTION_QUANTILE` quantile of the score on in-distribution
validation images: 95 % of them pass, and an image above it is flagged.

A trained run keeps its fitted detector (:class:`OODDetector`) in ``RUN/ood.json`` (method,
threshold, quantile, sizes; :func:`write_ood`, :func:`read_ood`) and ``RUN/ood.npz`` (class means
and precision matrix); :func:`medclass.evaluation.ood.fit_run_ood` fits it. Every prediction path
(``medclass predict`` with each backend, ``POST /predict``, the web page) turns scores into the
same :class:`OODResult` with :meth:`OODDetector.results`. An exported model computes the score
inside its graph (:meth:`OODDetector.score` is traceable) and stores :meth:`OODDetector.summary`
(no matrices) in its spec's ``extra["ood"]``. Runs without ``ood.json`` (trained before it
existed, ensembles) have no detector: every consumer treats it as optional.

Like :mod:`medclass.pipeline`, the score functions take numpy arrays or torch tensors and return
the same kind, and this module never imports PyTorch (numpy, scikit-learn when fitting), so the
ONNX Runtime backend uses it in a process without PyTorch.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from .fileio import sha256_of_file
from .pipeline import _torch, is_torch
from .runs import RunError, RunFiles

__all__ = ["IN_DISTRIBUTION_QUANTILE", "OOD_METHODS", "DEFAULT_OOD_METHOD", "OOD_WARNING", "energy_score",
           "mahalanobis_score", "MahalanobisModel", "fit_mahalanobis", "fit_threshold", "ood_auroc", "OODResult",
           "OODDetector", "write_ood", "read_ood", "ood_from_spec"]

#: Share of in-distribution validation images below the stored threshold (not flagged).
IN_DISTRIBUTION_QUANTILE = 0.95

#: The scores this module computes.
OOD_METHODS = ("energy", "mahalanobis")

#: The score a run's detector uses when :func:`medclass.evaluation.ood.fit_run_ood` is not told
#: otherwise; both thresholds are stored either way. To be set from ``benchmarks/ood.py``'s
#: measured comparison.
DEFAULT_OOD_METHOD = "mahalanobis"

#: What a flagged image is told, on the web page and in the CLI's table.
OOD_WARNING = "this image is unlike the training images"

#: Layout version of ``ood.json``; readers refuse a newer one.
OOD_VERSION = 1


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


def fit_threshold(scores_in: np.ndarray, quantile: float = IN_DISTRIBUTION_QUANTILE) -> float:
    """The score below which ``quantile`` of the in-distribution ``scores_in`` ``(N,)`` lie
    (``numpy.quantile``, linear): the flagging threshold.

    Raises:
        ValueError: no scores, or ``quantile`` outside (0, 1).
    """
    s = np.asarray(scores_in, dtype=np.float64)
    if len(s) == 0:
        raise ValueError("no in-distribution scores to set an OOD threshold on")
    if not 0 < quantile < 1:
        raise ValueError(f"the OOD quantile must be in (0, 1), got {quantile}")
    return float(np.quantile(s, quantile))


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
        threshold: flag an image whose score is above it (the ``quantile`` of the validation scores).
        quantile: share of validation images at or below the threshold (:data:`IN_DISTRIBUTION_QUANTILE`).
        thresholds: the threshold of every method in :data:`OOD_METHODS` (fitted together; only
            ``method``'s is used).
        temperature: ``T`` of the energy score.
        means: float64 ``(K, F)`` class means of the training features, or None (an exported
            model's copy, whose graph computes the score).
        precision: float64 ``(F, F)`` Ledoit-Wolf precision matrix, or None (as ``means``).
        feature_dim: ``F``; num_classes: ``K`` (the means' rows: the classes, also for a
            single-logit model).
        n_train, n_valid: images the means/covariance and the threshold were fitted on.
        checkpoint_epoch: epoch of the checkpoint the features came from (-1: unknown).
        valid_flagged: share of the validation images above ``threshold`` per method.
        extra: free-form provenance (medclass version, seconds).

    Raises:
        ValueError: an unknown method, or a threshold that is not a finite number.
    """

    method: str
    threshold: float
    quantile: float = IN_DISTRIBUTION_QUANTILE
    thresholds: dict[str, float] = field(default_factory=dict)
    temperature: float = 1.0
    means: Optional[np.ndarray] = None
    precision: Optional[np.ndarray] = None
    feature_dim: int = 0
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

    @property
    def needs_features(self) -> bool:
        """Whether :meth:`score` needs the penultimate features (Mahalanobis) besides the logits."""
        return self.method == "mahalanobis"

    def score(self, logits: np.ndarray, features: Optional[np.ndarray] = None) -> np.ndarray:
        """The detector's score of each image, float64 ``(N,)``, higher = more foreign:
        :func:`energy_score` of ``logits`` ``(N, K)`` / ``(N, 1)`` at :attr:`temperature`, or
        :func:`mahalanobis_score` of ``features`` ``(N, F)`` with the stored means and precision.
        (An exported graph computes the same functions on tensors; see
        :mod:`medclass.serving.export`.)

        Raises:
            ValueError: Mahalanobis without ``features`` or without stored means/precision, or
                features of another width than ``feature_dim``.
        """
        if self.method == "energy":
            return energy_score(np.asarray(logits), self.temperature)
        if features is None or self.means is None or self.precision is None:
            raise ValueError("the Mahalanobis OOD score needs the penultimate features and the fitted class means "
                             "and precision (ood.npz)")
        f = np.asarray(features)
        if f.ndim != 2 or f.shape[1] != self.feature_dim:
            raise ValueError(f"the OOD detector was fitted on {self.feature_dim} features per image, got "
                             f"shape {f.shape}; refit it (medclass ood-fit RUN)")
        return mahalanobis_score(f, self.means, self.precision)

    def flag(self, scores) -> np.ndarray:
        """bool ``(N,)``: ``scores > threshold`` (the one rule every backend applies)."""
        return np.asarray(scores, dtype=np.float64) > self.threshold

    def results(self, scores) -> list[OODResult]:
        """One :class:`OODResult` per score of ``scores`` ``(N,)`` (numpy), flagged by :meth:`flag`."""
        s = np.asarray(scores, dtype=np.float64).reshape(-1)
        return [OODResult(float(v), self.threshold, bool(f), self.method) for v, f in zip(s, self.flag(s))]

    def summary(self) -> dict[str, Any]:
        """Everything but the matrices, JSON-serialisable: the content of ``ood.json`` (without its
        file fields) and of an exported spec's ``extra["ood"]``."""
        return {
            "version": OOD_VERSION, "method": self.method, "threshold": self.threshold, "quantile": self.quantile,
            "thresholds": {k: float(v) for k, v in self.thresholds.items()}, "temperature": self.temperature,
            "feature_dim": int(self.feature_dim), "num_classes": int(self.num_classes), "n_train": int(self.n_train),
            "n_valid": int(self.n_valid), "checkpoint_epoch": int(self.checkpoint_epoch),
            "valid_flagged": {k: float(v) for k, v in self.valid_flagged.items()},
            "references": {"energy": "Liu et al. 2020, arXiv:2010.03759",
                           "mahalanobis": "Lee et al. 2018, arXiv:1807.03888; Ledoit-Wolf covariance"},
            "extra": self.extra,
        }

    @classmethod
    def from_summary(cls, data: dict[str, Any], means: Optional[np.ndarray] = None,
                     precision: Optional[np.ndarray] = None) -> "OODDetector":
        """The detector described by :meth:`summary`'s dict (and the matrices, when given).

        Raises:
            ValueError: a missing or invalid field, or a newer layout (the message says which).
        """
        if not isinstance(data, dict):
            raise ValueError("the OOD record is not a JSON object")
        if int(data.get("version", 1)) > OOD_VERSION:
            raise ValueError(f"the OOD record has version {data['version']}; this medclass reads up to {OOD_VERSION}: "
                             "upgrade medclass")
        try:
            return cls(method=data["method"], threshold=data["threshold"],
                       quantile=float(data.get("quantile", IN_DISTRIBUTION_QUANTILE)),
                       thresholds={k: float(v) for k, v in (data.get("thresholds") or {}).items()},
                       temperature=float(data.get("temperature", 1.0)), means=means, precision=precision,
                       feature_dim=int(data.get("feature_dim", 0)), num_classes=int(data.get("num_classes", 0)),
                       n_train=int(data.get("n_train", 0)), n_valid=int(data.get("n_valid", 0)),
                       checkpoint_epoch=int(data.get("checkpoint_epoch", -1)),
                       valid_flagged=dict(data.get("valid_flagged") or {}), extra=dict(data.get("extra") or {}))
        except KeyError as e:
            raise ValueError(f"the OOD record lacks the field {e.args[0]!r}") from None
        except (TypeError, AttributeError) as e:
            raise ValueError(f"the OOD record has an invalid field: {e}") from None


def _atomic_write(path: Path, write) -> None:
    """``write(tmp)`` on a temporary file in ``path``'s folder, then ``os.replace`` it into place.

    Raises:
        RunError: a symbolic link sits at ``path`` (nothing is written through it), or the file
            cannot be written (the message names it).
    """
    if path.is_symlink():
        raise RunError(f"{path} is a symbolic link; refusing to write the OOD detector through it (remove the link)")
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        write(Path(tmp))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as e:
        raise RunError(f"cannot write the OOD detector {path}: {e}") from e
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)



def write_ood(detector: OODDetector, run_dir: Union[str, os.PathLike]) -> Path:
    """Store ``detector`` in the run folder: ``ood.npz`` (``means`` float64 ``(K, F)``,
    ``precision`` float64 ``(F, F)``; when it has them) first, then ``ood.json``
    (:meth:`OODDetector.summary` plus the npz's file name and SHA-256), each atomically (a
    temporary file in the folder, then ``os.replace``); ``ood.json`` is written last, so a reader
    never pairs it with another fit's matrices. Returns the path of ``ood.json``.

    Raises:
        RunError: a symbolic link at either file, or a folder that cannot be written.
    """
    files = RunFiles(Path(run_dir))
    record = detector.summary()
    if detector.means is not None and detector.precision is not None:
        def save_npz(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, means=np.asarray(detector.means, np.float64),
                         precision=np.asarray(detector.precision, np.float64))

        _atomic_write(files.ood_params, save_npz)
        record["parameters"] = {"file": files.ood_params.name, "sha256": sha256_of_file(files.ood_params)}
    text = json.dumps(record, indent=1, sort_keys=True) + "\n"
    _atomic_write(files.ood, lambda tmp: tmp.write_text(text))
    return files.ood


def read_ood(run_dir: Union[str, os.PathLike]) -> Optional[OODDetector]:
    """The detector stored in ``RUN/ood.json`` (and ``ood.npz``), or None when the run has none
    (trained before medclass fitted one, an ensemble, or a fit that failed).

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
        means = precision = None
        params = data.get("parameters") if isinstance(data, dict) else None
        if params:
            npz = files.root / str(params.get("file", files.ood_params.name))
            if not npz.is_file():
                raise ValueError(f"its matrices {npz} are missing")
            if params.get("sha256") and sha256_of_file(npz) != params["sha256"]:
                raise ValueError(f"{npz} is not the file it was written with (SHA-256 differs)")
            with np.load(npz, allow_pickle=False) as z:
                means, precision = np.asarray(z["means"], np.float64), np.asarray(z["precision"], np.float64)
        detector = OODDetector.from_summary(data, means, precision)
        if means is not None and (means.shape != (detector.num_classes, detector.feature_dim)
                                  or precision.shape != (detector.feature_dim, detector.feature_dim)):
            raise ValueError(f"matrices of shapes {means.shape}, {precision.shape} do not match "
                             f"{detector.num_classes} classes of {detector.feature_dim} features")
        if detector.needs_features and means is None:
            raise ValueError("the Mahalanobis method needs ood.npz, which it does not name")
    except (OSError, ValueError, KeyError) as e:  # JSONDecodeError is a ValueError; KeyError: an npz without an array
        raise ValueError(f"{files.ood}: invalid OOD detector ({e}); {hint}") from None
    return detector


def ood_from_spec(spec) -> Optional[OODDetector]:
    """The detector summary an exported model's :class:`~medclass.spec.ModelSpec` carries in
    ``extra["ood"]`` (no matrices: the graph outputs the score), or None when it has none.

    Raises:
        ValueError: an invalid record (the message says which field).
    """
    data = (getattr(spec, "extra", None) or {}).get("ood")
    return OODDetector.from_summary(data) if data else None
