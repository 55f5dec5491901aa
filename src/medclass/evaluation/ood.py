"""Out-of-distribution detection for a trained run: fitting the detector a run stores.

The scores, the threshold rule and the stored :class:`~medclass.core.ood.OODDetector` are defined in the
torch-free :mod:`medclass.core.ood` (so the ONNX Runtime backend uses them without PyTorch):
:func:`~medclass.core.ood.energy_score` (Liu et al. 2020, arXiv:2010.03759),
:func:`~medclass.core.ood.fit_mahalanobis` (Lee et al. 2018, arXiv:1807.03888, with the Ledoit-Wolf
covariance), :func:`~medclass.core.ood.fit_detector` (their feature ensemble over the model's stages),
:func:`~medclass.core.ood.fit_threshold` and :func:`~medclass.core.ood.ood_auroc`.

This module adds :func:`fit_run_ood`: the detector of one run, fitted on its own images and
written to ``RUN/ood.json`` + ``RUN/ood.npz``. ``medclass train`` calls it after training, and
``medclass ood-fit RUN`` (re)fits it for an existing run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Optional

from ..core import __version__
from ..core.fileio import atomic_write_text
from ..engine import load_run
from ..core.runs import RunFiles
from ..engine.inference import logits_and_layer_features, model_feature_layers
from ..core.ood import (
    DEFAULT_OOD_COMBINE, DEFAULT_OOD_LAYERS, DEFAULT_OOD_METHOD, DEFAULT_THRESHOLD_RULE, IN_DISTRIBUTION_QUANTILE,
    OOD_COMBINE_RULES, OOD_LAYER_CHOICES, OOD_METHODS, THRESHOLD_RULES, OODDetector, fit_detector, write_ood,
)
from ..core.runs import RunError

__all__ = ["fit_run_ood", "fit_run_ood_or_warn"]


def fit_run_ood(
    run_dir: Path,
    method: Optional[str] = None,
    checkpoint: str = "best",
    quantile: float = IN_DISTRIBUTION_QUANTILE,
    batch_size: int = 64,
    progress: bool = False,
    log: Callable[[str], None] = lambda _: None,
    layers: str = DEFAULT_OOD_LAYERS,
    combine: str = DEFAULT_OOD_COMBINE,
    threshold_rule: str = DEFAULT_THRESHOLD_RULE,
) -> OODDetector:
    """Fit the out-of-distribution detector of a trained run and store it in the run folder.

    1. The run's ``checkpoint`` (best by default) computes logits ``(N, K)`` and the pooled
       features of each of its stages (``(N, F_l)``; ``layer1`` .. ``layer4`` of a ResNet:
       :func:`medclass.engine.inference.logits_and_layer_features`, eval mode) of its
       **training** images, un-augmented, decoded as the model takes them (the spec's size,
       channels, DICOM window and resize rule, through the decode cache training filled);
    2. per layer, the Mahalanobis class means and shared Ledoit-Wolf precision are fitted on them
       (Lee et al. 2018 fit on the training set), and the **validation** images' scores give
       the layer's median and IQR; the layers' standardised scores are combined by ``combine``
       (:func:`medclass.core.ood.fit_detector`);
    3. both scores (energy, Liu et al. 2020, temperature 1; the combined Mahalanobis) of the
       validation images set each method's threshold at ``quantile`` (95 %:
       :func:`fit_threshold` by ``threshold_rule``);
    4. :func:`medclass.core.ood.write_ood` writes ``RUN/ood.json`` (method, threshold, quantile, both
       thresholds, layers, their medians/IQRs and feature sizes, split sizes, checkpoint epoch)
       and ``RUN/ood.npz`` (per layer: means float64 ``(K, F_l)``, precision float64
       ``(F_l, F_l)``) atomically; the seconds it took go to ``train_summary.json`` under ``ood``
       when the run has one.

    Args:
        run_dir: a run folder trained by ``medclass train`` (not an ensemble).
        method: the score the detector flags by, one of :data:`OOD_METHODS`; None:
            :data:`DEFAULT_OOD_METHOD`.
        checkpoint: ``"best"`` or ``"last"``.
        quantile: share of validation images below the threshold, in (0, 1).
        layers: ``"stages"`` (every stage of the model, the default) or ``"penultimate"`` (the
            head's input only, as version 1 of ``ood.json``).
        combine: one of :data:`medclass.core.ood.OOD_COMBINE_RULES`.
        threshold_rule: one of :data:`medclass.core.ood.THRESHOLD_RULES`.
        batch_size: images per forward pass.
        progress: progress bars while decoding.
        log: where a one-line summary goes.

    Returns:
        The stored :class:`~medclass.core.ood.OODDetector`.

    Raises:
        RunError: an ensemble run (its members' features differ: no detector; see the README), not
            a run folder, or files that cannot be written.
        CheckpointError: no such checkpoint.
        DataError: the manifest has no training or validation images.
        ValueError: an unknown method, layers choice, combine or threshold rule, a quantile
            outside (0, 1), or a class without training images (the message says which).
    """
    from ..data import DataError, read_manifest
    from .evaluate import _decode

    t0 = time.time()
    method = DEFAULT_OOD_METHOD if method is None else method
    if method not in OOD_METHODS:
        raise ValueError(f"OOD method must be one of {', '.join(OOD_METHODS)}, got {method!r}")
    if not 0 < quantile < 1:
        raise ValueError(f"the OOD quantile must be in (0, 1), got {quantile}")
    for name, value, choices in (("layers", layers, OOD_LAYER_CHOICES), ("combine rule", combine, OOD_COMBINE_RULES),
                                 ("threshold rule", threshold_rule, THRESHOLD_RULES)):
        if value not in choices:
            raise ValueError(f"OOD {name} must be one of {', '.join(choices)}, got {value!r}")
    files = RunFiles(Path(run_dir))
    if files.ensemble.is_file():
        raise RunError(f"{files.root} is an ensemble: it has no OOD detector of its own (its members' features "
                       "differ); predictions of an ensemble carry no OOD score")
    run = load_run(files.root, checkpoint, ood=False)  # the detector there (maybe broken) is being replaced
    index = read_manifest(files.manifest) if files.manifest.is_file() else None
    splits = {k: (index.splits.get(k) or []) if index is not None else [] for k in ("train", "valid")}
    if not splits["train"] or not splits["valid"]:
        found = "is missing" if index is None else f"has {len(splits['train'])} and {len(splits['valid'])}"
        raise DataError(f"{files.manifest}: the OOD detector is fitted on the run's training and validation images; "
                        f"the manifest {found}")
    train = _decode(run, splits["train"], "decode train (OOD)", progress)
    valid = _decode(run, splits["valid"], "decode valid (OOD)", progress)
    if len(train) < 2 or len(valid) == 0:
        raise DataError(f"{files.root}: the OOD detector needs readable training (>= 2) and validation images; "
                        f"got {len(train)} and {len(valid)}")
    names = model_feature_layers(run.model, layers)
    _, train_feats = logits_and_layer_features(run.model, train.images, run.preprocess, run.device, names, batch_size)
    valid_logits, valid_feats = logits_and_layer_features(run.model, valid.images, run.preprocess, run.device, names,
                                                          batch_size)
    detector = fit_detector(
        [f.numpy() for f in train_feats], train.labels.numpy(), [f.numpy() for f in valid_feats], valid_logits.numpy(),
        len(run.class_names), names, method=method, combine=combine, quantile=quantile, threshold_rule=threshold_rule,
        checkpoint_epoch=run.checkpoint_epoch,
        extra={"medclass_version": __version__, "checkpoint": checkpoint,
               "fitted_on": {"means": "train", "standardisation": "valid", "threshold": "valid"}},
    )
    seconds = time.time() - t0
    detector.extra["seconds"] = seconds
    write_ood(detector, files.root)
    _record_seconds(files, detector, seconds)
    kept = detector.layers
    what = f"{len(kept)} layers, {combine}" if method == "mahalanobis" and len(kept) > 1 else kept[0]
    log(f"OOD detector ({method}; {what}): threshold {detector.threshold:.4g} at {quantile:.0%} of {len(valid)} "
        f"validation images, means and covariances from {len(train)} training images ({seconds:.1f} s); in {files.ood}")
    return detector


def _record_seconds(files: RunFiles, detector: OODDetector, seconds: float) -> None:
    """Add ``ood: {method, threshold, seconds}`` to ``train_summary.json`` (replaced atomically);
    nothing when the run has no readable summary."""
    try:
        summary = json.loads(files.summary.read_text())
    except (OSError, ValueError):
        return
    if not isinstance(summary, dict):
        return
    summary["ood"] = {"method": detector.method, "threshold": detector.threshold, "seconds": seconds}
    try:
        atomic_write_text(files.summary, json.dumps(summary, indent=1))
    except OSError as e:
        raise RunError(f"cannot update {files.summary}: {e}") from e


def fit_run_ood_or_warn(run_dir: Path, progress: bool = False, log: Callable[[str], None] = print,
                        warn: Callable[[str], None] = print) -> Optional[OODDetector]:
    """:func:`fit_run_ood` with the default method, as ``medclass train`` and ``medclass cv`` run it
    after training: a detector that cannot be fitted (a class without readable training images,
    too few images, an ensemble) is reported through ``warn`` with how to fit it later, and the
    run stays usable without one. Returns the detector, or None.

    Raises:
        RunError: ``ood.json`` or ``ood.npz`` cannot be written (a symbolic link, a full disk).
    """
    from ..data import DataError

    try:
        return fit_run_ood(run_dir, progress=progress, log=log)
    except (ValueError, DataError) as e:
        warn(f"no out-of-distribution detector for {run_dir}: {e}; predictions carry no OOD flag "
             f"(fit it later with `medclass ood-fit {run_dir}`)")
        return None
