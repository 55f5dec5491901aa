"""Evaluating a run on a split of its own data or on another labelled data set."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from ..data import DataError, build_index, cache_dir_for, decode_split, read_manifest
from ..data.audit import NEAR_THRESHOLD, dedupe
from ..engine import LoadedRun, load_run, logits_to_probs, predict_logits
from ..core.fileio import atomic_write_text, safe_dir
from ..core.positive_class import choose_positive_class
from ..core.runs import RunFiles
from ..core.progress import Progress
from ..core.spec import calibration_record, update_calibration
from ..engine.tracking import log_evaluation
from .calibration import (
    ECE_BINS,
    apply_temperature,
    choose_threshold,
    expected_calibration_error,
    fit_logit_adjustment,
    fit_temperature,
    plot_reliability,
    sensitivity_specificity,
)
from .explain import save_explanations, select_examples
from ..core.scoring import balanced_accuracy
from .metrics import bootstrap_ci, classification_metrics
from .plots import plot_confusion_matrix, plot_roc

__all__ = ["evaluate_run", "calibrate_run", "final_split", "format_metrics", "format_breastmnist_comparison",
           "PUBLISHED_BREASTMNIST"]


def final_split(run_dir: Path) -> tuple[str, Optional[str]]:
    """The split a run is scored on when its training ends (``train``, ``ensemble``, the Python
    API's ``train(evaluate=True)``): ``"test"``; when the run's data has no test images (given
    ``train/`` and ``val/`` folders, or CSV split rows, without test ones), ``"valid"`` with a
    warning to show the user, since the validation split chose the best checkpoint and its figures
    are optimistic. Returns ``(split, warning or None)``."""
    manifest = RunFiles(Path(run_dir)).manifest
    if not manifest.is_file() or read_manifest(manifest).splits.get("test"):
        return "test", None
    return "valid", ("the data has no test split, so the run is scored on its validation split, which chose the "
                     "best checkpoint: these figures are optimistic. For an honest figure give a test/ folder (or test "
                     "rows in the CSV's split column), or give train/ alone and medclass makes valid and test from it")


def _samples_for(run: LoadedRun, data: Optional[str], split: str):
    """The samples to evaluate, with labels in the run's class order."""
    if data is None:
        index = read_manifest(run.files.manifest)
        if split not in index.splits or not index.splits[split]:
            raise DataError(f"the run's manifest has no {split!r} images; choose train, valid or test")
        return index.splits[split]
    dcfg = dataclasses.replace(run.cfg.data, source=data, manifest=None, val_fraction=0.0, test_fraction=0.0)
    index = build_index(dcfg)
    given = [s for s in ("train", "valid", "test") if index.splits.get(s)]
    samples = index.splits[split] if index.given_splits else [x for s in given for x in index.splits[s]]
    unknown = sorted(set(index.class_names) - set(run.class_names))
    if unknown:
        raise DataError(
            f"{data}: classes {unknown} are not among the run's classes {run.class_names}; "
            "rename them or give data.class_map"
        )
    to_run = {i: run.class_names.index(c) for i, c in enumerate(index.class_names)}
    return [dataclasses.replace(x, label=to_run[x.label]) for x in samples]


def positive_index(run: LoadedRun) -> tuple[int, str]:
    """The positive class of a binary run (index into ``run.class_names``) and why: the name the run
    recorded (``spec.extra["positive_class"]``, else ``config.yaml``'s ``data.positive_class``),
    else :func:`medclass.core.positive_class.choose_positive_class`'s default (runs trained before it
    was recorded). Multi-class runs: ``(1, "")``."""
    name = run.spec.extra.get("positive_class") or run.cfg.data.positive_class
    if len(run.class_names) == 2 and name in run.class_names:
        return run.class_names.index(name), f"positive class {name!r} (recorded in the run)"
    return choose_positive_class(run.class_names)


def _step(what: str, total: Optional[int] = None, unit: str = "", progress: bool = True) -> Progress:
    """A long step of the evaluation, reported as ``evaluate: WHAT`` (:class:`medclass.core.progress.Progress`:
    a bar on a terminal, a start line and a line every log interval in a log; silent without ``progress``)."""
    return Progress(f"evaluate: {what}", total, unit, enabled=progress)


def _logits(run: LoadedRun, images, tta: Sequence[str], what: str, progress: bool):
    """The model's logits for decoded ``images`` (uint8 ``(N, C, H, W)``), reported as the step ``what``."""
    with _step(what, len(images), "images", progress) as p:
        return predict_logits(run.model, images, run.preprocess, run.device, 64, tta=tta, on_batch=p.update)


def _bootstrap(y: np.ndarray, probs: np.ndarray, n: int, seed: int, what: str, progress: bool) -> dict[str, Any]:
    """:func:`bootstrap_ci` with ``n`` resamples, reported as the step ``what``."""
    with _step(what, n, "resamples", progress) as p:
        return bootstrap_ci(y, probs, n, seed, on_resample=p.update)


def _decode(run: LoadedRun, samples, desc: str, progress: bool):
    """``samples`` decoded as the run's model takes them: the spec's channels, size, DICOM window
    and resize rule (:func:`medclass.data.decode_split`, through the decode cache)."""
    spec, c = run.spec, run.cfg.data
    return decode_split(samples, spec.channels, spec.image_size, c.skip_corrupt, f"evaluate: {desc}", progress,
                        cache_dir=cache_dir_for(c), dicom_window=spec.dicom_window, resize=spec.resize)


def _leaked_positions(run: LoadedRun, decoded, split: str, progress: bool = False) -> Optional[dict[str, Any]]:
    """Positions in ``decoded`` of images of ``split`` that duplicate (exactly or nearly) an
    image of an earlier split of the run's manifest; None when there are none."""
    if split == "train" or not run.files.manifest.is_file():
        return None
    index = read_manifest(run.files.manifest)
    n = sum(len(v) for v in index.splits.values())
    with _step(f"duplicate check of {split} against the earlier splits (hashing {n:,} images)", progress=progress):
        _, removed = dedupe(index, near=True, near_threshold=NEAR_THRESHOLD)
    paths = {r["path"]: r for r in removed if r["split"] == split}
    positions = [i for i, s in enumerate(decoded.samples) if s.path in paths]
    if not positions:
        return None
    return {"positions": positions, "near_threshold": NEAR_THRESHOLD,
            "items": [paths[decoded.samples[i].path] for i in positions]}


def _explain(run: LoadedRun, decoded, probs: np.ndarray, y: np.ndarray, idx: np.ndarray, n: int,
             target_layer: Optional[str], out: Path) -> dict[str, dict[str, list[str]]]:
    """Grad-CAM figures of the ``n`` most confident right and wrong predictions per true class."""
    chosen = select_examples(probs[idx], y[idx], n, run.class_names)
    written: dict[str, dict[str, list[str]]] = {}
    for cls, kinds in chosen.items():
        written[cls] = {}
        for kind, local in kinds.items():
            rows = idx[np.asarray(local, dtype=np.int64)]
            if len(rows) == 0:
                written[cls][kind] = []
                continue
            paths = save_explanations(
                run.model, decoded.images[torch.as_tensor(rows)], run.preprocess, run.device,
                out / f"{_safe(cls)}-{kind}", [Path(decoded.samples[i].path).name for i in rows],
                run.class_names, target_layer=target_layer, labels=y[rows].tolist(),
            )
            written[cls][kind] = [str(p) for p in paths]
    return written


def _group_level(decoded, idx: np.ndarray, y: np.ndarray, probs: np.ndarray, class_names: Sequence[str],
                 how: str, n_bootstrap: int, seed: int, progress: bool = False,
                 positive: int = 1) -> Optional[dict[str, Any]]:
    """Metrics per group (patient, lesion) of the evaluated images ``idx``, or None when the
    images carry no groups or every group holds one image (then it equals image level)."""
    from .groups import aggregate_groups

    if how not in ("mean", "max"):
        raise ValueError(f"group aggregation must be mean or max, got {how!r}")
    groups = [decoded.samples[i].group for i in idx]
    if any(g is None or g == "" for g in groups) or len(set(groups)) == len(groups):
        return None
    g = aggregate_groups(probs[idx], y[idx], groups, how, positive_class=positive)
    out: dict[str, Any] = {"aggregation": how, "n_images": int(len(idx)), "n_groups": len(g.groups),
                           "conflicts": g.conflicts}
    if len(g.groups):
        out.update(classification_metrics(g.labels, g.probs, class_names))
        out["confidence_intervals"] = _bootstrap(g.labels, g.probs, n_bootstrap, seed,
                                                 f"bootstrap of {len(g.groups)} groups", progress)
    return out


def _subgroups(run: LoadedRun, data: Optional[str], samples, y: np.ndarray, probs: np.ndarray,
               columns: Sequence[str], n_bootstrap: int, seed: int) -> dict[str, Any]:
    """:func:`~medclass.evaluation.groups.subgroup_metrics` per CSV column of ``columns``."""
    from ..data.sources import csv_columns
    from .groups import is_numeric, numeric_bins, subgroup_metrics

    source = data or run.cfg.data.source
    if not source or not str(source).lower().endswith(".csv"):
        raise DataError(f"--subgroups needs a CSV manifest with the columns {list(columns)}; the data is {source!r}")
    values = csv_columns(Path(source), run.cfg.data, samples, columns)
    out: dict[str, Any] = {}
    for column in columns:
        col, bins = values[column], None
        if is_numeric(col):
            col, bins = numeric_bins(col)
        table = subgroup_metrics(probs, y, col, n_resamples=n_bootstrap, seed=seed)
        out[column] = {**table, "bins": bins}
    return out


def _ood_on_split(run: LoadedRun, decoded, idx: np.ndarray) -> dict[str, Any]:
    """The run's OOD detector on the evaluated images ``idx``: its method and threshold, and how
    many of these (in-distribution) images it flags; about 5 % is what the 95 % threshold on
    validation promises (Liu et al. 2020 and Lee et al. 2018 report the same false-alarm rate)."""
    from ..engine.inference import ood_scores

    _, scores = ood_scores(run.ood, run.model, decoded.images[torch.as_tensor(idx)], run.preprocess, run.device, 64)
    flagged = run.ood.flag(scores)
    return {"method": run.ood.method, "threshold": run.ood.threshold, "quantile": run.ood.quantile,
            "n": int(len(scores)), "n_flagged": int(flagged.sum()),
            "flagged_share": float(flagged.mean()) if len(scores) else None}


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


#: Recorded with each calibration; a stored record of another version is fitted again (version 2
#: added the multi-class logit adjustment).
DECISION_RULE_VERSION = 2


def _training_class_counts(run: LoadedRun) -> Optional[list[int]]:
    """Images per class in the run's training split (its manifest), or None without one."""
    if not run.files.manifest.is_file():
        return None
    train = read_manifest(run.files.manifest).splits.get("train") or []
    if not train:
        return None
    counts = [0] * len(run.class_names)
    for s in train:
        counts[s.label] += 1
    return counts


def _as_deployed(spec, probs: np.ndarray, y: np.ndarray, n_bootstrap: int, seed: int) -> dict[str, Any]:
    """Accuracy and balanced accuracy of the decisions every consumer makes (``spec.decide``: the
    binary threshold or multi-class logit adjustment chosen on validation, else the arg-max), with
    bootstrap 95 % intervals (the decisions as one-hot probabilities through :func:`bootstrap_ci`)."""
    from sklearn.metrics import accuracy_score

    pred = np.asarray(spec.decide(probs))
    rule = ("threshold" if spec.threshold is not None and probs.shape[1] == 2
            else "logit_adjustment" if spec.logit_adjustment is not None else "argmax")
    onehot = np.eye(probs.shape[1])[pred]
    ci = bootstrap_ci(y, onehot, n_bootstrap, seed)
    ci["metrics"] = {m: v for m, v in ci["metrics"].items() if m in ("accuracy", "balanced_accuracy", "macro_f1")}
    return {"rule": rule, "accuracy": float(accuracy_score(y, pred)),
            "balanced_accuracy": balanced_accuracy(y, pred), "confidence_intervals": ci,
            "predicted": pred.tolist()}


def _spec_probabilities(run: LoadedRun, logits) -> np.ndarray:
    """float ``(N, K)`` probabilities of ``logits`` as predict, export and serve compute them: the
    run's spec (:meth:`medclass.core.spec.ModelSpec.probabilities`, its temperature)."""
    p = run.spec.probabilities(logits)
    return p.numpy() if hasattr(p, "numpy") else np.asarray(p)


def calibrate_run(
    run: LoadedRun,
    checkpoint: str = "best",
    tta: Sequence[str] = (),
    target_sensitivity: Optional[float] = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Fit the temperature (and, for binary tasks, the operating threshold) on the run's
    validation split and store them in the run's spec (:func:`medclass.core.spec.update_calibration`,
    the record in ``spec.extra["calibration"]``, so that predict, export and serve use them) and,
    for people and reports, in ``RUN/calibration.json``; reused while the checkpoint, TTA and
    target sensitivity stay the same. ``run.spec`` is updated too.

    Returns the stored dict: ``temperature``, ``n_bins``, validation ``ece_before`` /
    ``ece_after`` and ``loss_before`` / ``loss_after``, and for two classes ``threshold``
    (see :func:`choose_threshold`) on the probability of the positive class ``positive_class``
    (:func:`positive_index`); the spec stores it as the equivalent threshold on ``P(class 1)``. For
    more classes ``logit_adjustment`` (:func:`fit_logit_adjustment`: ``tau`` chosen for validation
    balanced accuracy, the prior from the training split's labels), the multi-class counterpart
    of Youden's J (which maximises balanced accuracy for two classes).

    Raises:
        DataError: the run has no validation images.
    """
    path = run.files.calibration
    pos, _ = positive_index(run)
    key = {"checkpoint": checkpoint, "checkpoint_epoch": run.checkpoint_epoch, "tta": list(tta),
           "target_sensitivity": target_sensitivity, "decision_rule": DECISION_RULE_VERSION}
    if len(run.class_names) == 2:
        key["positive_class"] = run.class_names[pos]
    stored = calibration_record(run.spec)
    if stored is not None and all(stored.get(k) == v for k, v in key.items()):
        return stored
    val = _decode(run, _samples_for(run, None, "valid"), "decode valid", progress)
    logits = _logits(run, val.images, tta, "validation inference for calibration", progress)
    t = fit_temperature(logits, val.labels)
    y = val.labels.numpy()
    before, after = logits_to_probs(logits).numpy(), logits_to_probs(apply_temperature(logits, t)).numpy()
    out: dict[str, Any] = {
        **key, "fitted_on": "valid", "n_valid": len(y), "temperature": t, "n_bins": ECE_BINS,
        "ece_before": expected_calibration_error(before, y), "ece_after": expected_calibration_error(after, y),
        "loss_before": classification_metrics(y, before, run.class_names)["loss"],
        "loss_after": classification_metrics(y, after, run.class_names)["loss"],
    }
    if len(run.class_names) == 2:  # the threshold on the positive class's probability
        out["threshold"] = choose_threshold(after[:, pos], (y == pos).astype(np.int64), target_sensitivity)
    else:
        counts = _training_class_counts(run)
        if counts is not None and all(c > 0 for c in counts):
            out["logit_adjustment"] = fit_logit_adjustment(after, y, counts)
    atomic_write_text(path, json.dumps(out, indent=1))  # for people and the report; the spec is what models read
    threshold = out["threshold"]["threshold"] if "threshold" in out else None
    if threshold is not None and pos == 0:  # the spec decides on P(class 1): P(0) >= t is P(1) <= 1 - t
        threshold = min(1.0, float(np.nextafter(1.0 - threshold, 2.0)))
    adjustment = out.get("logit_adjustment")
    offsets = adjustment["offsets"] if adjustment and adjustment["tau"] > 0 else None
    spec = update_calibration(run.files.root, t, threshold, record=out, logit_adjustment=offsets)
    run.spec = dataclasses.replace(spec, checkpoint_epoch=run.checkpoint_epoch)
    return out


def evaluate_run(
    run_dir: Path,
    data: Optional[str] = None,
    split: str = "test",
    out_dir: Optional[Path] = None,
    checkpoint: str = "best",
    progress: bool = True,
    tta: Sequence[str] = (),
    n_bootstrap: int = 1000,
    seed: int = 0,
    calibrate: bool = True,
    target_sensitivity: Optional[float] = None,
    dedupe: bool = False,
    explain: int = 0,
    target_layer: Optional[str] = None,
    group_how: str = "mean",
    subgroups: Sequence[str] = (),
    skip_corrupt: Optional[bool] = None,
) -> dict[str, Any]:
    """Evaluate ``run_dir``'s checkpoint on ``split`` of its own data (its manifest), or on
    ``data`` (all its images when it has no given split). Writes ``metrics.json``,
    ``confusion_matrix.png``, ``roc.png``, ``reliability.png`` and ``predictions.csv`` to
    ``out_dir`` (default ``<run>/eval-<split>``) and returns the metrics.

    Besides the point metrics of :func:`classification_metrics` (of the uncalibrated model;
    temperature scaling changes no prediction), ``metrics.json`` holds ``confidence_intervals``
    (:func:`bootstrap_ci`, ``n_bootstrap`` resamples, ``seed``), ``calibration`` (temperature
    fitted on the validation split, ECE before and after with :data:`ECE_BINS` bins) and, for
    binary tasks, ``operating_point``: sensitivity and specificity at the threshold chosen on
    validation (Youden's J, or ``target_sensitivity``) and at 0.5; for more classes
    ``logit_adjustment`` (its ``tau`` chosen on validation, :func:`calibrate_run`).
    ``as_deployed`` holds accuracy and balanced accuracy, with intervals, of the decisions that
    predict, export and serve make (the run's spec: ``spec.decide`` of ``spec.probabilities``: the
    threshold or logit adjustment when there is one, else the arg-max). ``predictions.csv`` holds the
    calibrated probabilities and those decisions. ``tta`` names flip views averaged at test time.

    Leakage: for a split of the run's own data, images with an exact or near duplicate in an
    earlier split (:func:`medclass.data.dedupe`) are listed under ``held_out_duplicates`` with
    the metrics without them; a warning is printed. With ``dedupe`` those images are left out
    of the main figures, and the figures with them move to ``held_out_duplicates``.

    ``explain`` > 0 saves Grad-CAM figures (:mod:`medclass.evaluation.explain`) of the
    ``explain`` most confident right and wrong predictions per true class into
    ``<out>/explain/<class>-<right|wrong>/``, at ``target_layer`` (default: the last stage).

    Groups: where images share a group (the CSV's group column: patient, lesion, study),
    ``group_level`` holds the same metrics and bootstrap intervals per group (resampling groups),
    the images' probabilities aggregated by ``group_how`` (``mean`` or ``max``,
    :func:`medclass.evaluation.groups.aggregate_groups`); groups whose images carry different
    labels are listed under ``conflicts`` and left out.

    OOD: when the run has an out-of-distribution detector (``RUN/ood.json``), ``ood`` holds its
    method and threshold and the number and share of the evaluated images it flags.

    Subgroups: ``subgroups`` names columns of the CSV manifest (the run's source, or ``data``);
    ``subgroups`` in metrics.json holds per column the per-value n, accuracy, balanced accuracy and
    AUROC with bootstrap intervals, small subgroups flagged, and the best-worst gap
    (:func:`medclass.evaluation.groups.subgroup_metrics`); numeric columns are cut into quartile
    bins, stated as ``bins``.

    Unreadable images stop the evaluation (:class:`medclass.data.ImageReadError`, naming the file)
    unless ``skip_corrupt`` (default: the run's ``data.skip_corrupt``) leaves them out; they are
    listed in ``metrics.json`` (``skipped_files``).

    MLflow: a run tracked in training (``RUN/mlflow_run.json``), or any run while tracking is on,
    gets the metrics with their intervals and the figures, ``metrics.json`` and the model card
    (:func:`medclass.engine.tracking.log_evaluation`).

    Raises:
        TrackingError: MLflow tracking on but mlflow missing or its store unreachable.
        DataError: ``subgroups`` without a CSV source, or a column the CSV lacks.
        ValueError: ``group_how`` not ``mean`` or ``max``.
        RunError, CheckpointError: not a run, no checkpoint.
        DataError: no such split, or classes the run does not know.
    """
    t0 = time.time()
    run = load_run(Path(run_dir), checkpoint)
    if skip_corrupt is not None:  # this evaluation only; the run's config.yaml is not changed
        run.cfg.data.skip_corrupt = bool(skip_corrupt)
    pos, pos_reason = positive_index(run)
    decoded = _decode(run, _samples_for(run, data, split), f"decode {split}", progress)
    logits = _logits(run, decoded.images, tta, f"{split} inference", progress)
    probs = logits_to_probs(logits).numpy()
    y = decoded.labels.numpy()
    leaked = _leaked_positions(run, decoded, split, progress) if data is None else None
    keep = np.ones(len(y), dtype=bool)
    if leaked:
        print(f"warning: {len(leaked['positions'])} of {len(y)} {split} images have an exact or near duplicate "
              f"in an earlier split (listed in metrics.json){'; left out (--dedupe)' if dedupe else '; use --dedupe'}")
        if dedupe:
            keep[leaked["positions"]] = False
    if not keep.any():
        raise DataError(f"every {split} image duplicates an earlier split; nothing left to evaluate")
    idx = np.flatnonzero(keep)
    metrics = classification_metrics(y[idx], probs[idx], run.class_names)
    metrics["confidence_intervals"] = _bootstrap(y[idx], probs[idx], n_bootstrap, seed, "bootstrap", progress)
    if leaked:
        other = np.ones(len(y), dtype=bool)
        other[leaked["positions"]] = False
        other_idx = np.flatnonzero(other) if not dedupe else np.arange(len(y))
        other_metrics = classification_metrics(y[other_idx], probs[other_idx], run.class_names) if len(other_idx) else None
        if other_metrics is not None:
            other_metrics["confidence_intervals"] = _bootstrap(y[other_idx], probs[other_idx], n_bootstrap, seed,
                                                               "bootstrap with the duplicates swapped", progress)
        metrics["held_out_duplicates"] = {
            "deduplicated": dedupe, "n": len(leaked["positions"]), "near_threshold": leaked["near_threshold"],
            "removed" if dedupe else "found": leaked["items"],
            "metrics_with_duplicates" if dedupe else "metrics_without_duplicates": other_metrics,
        }
    if run.ood is not None:
        metrics["ood"] = _ood_on_split(run, decoded, idx)
    group_level = _group_level(decoded, idx, y, probs, run.class_names, group_how, n_bootstrap, seed, progress, pos)
    if group_level is not None:
        metrics["group_level"] = group_level
    if subgroups:
        with _step(f"subgroup metrics by {', '.join(subgroups)} ({n_bootstrap} resamples each)", progress=progress):
            metrics["subgroups"] = _subgroups(run, data, [decoded.samples[i] for i in idx], y[idx], probs[idx], subgroups,
                                              n_bootstrap, seed)
    out = Path(out_dir) if out_dir else run.files.eval_dir(split)
    safe_dir(out)  # refuses a folder that is a symbolic link; every file below is written atomically
    cal_probs = probs
    has_valid = run.files.manifest.is_file() and bool(read_manifest(run.files.manifest).splits.get("valid"))
    calibrated = calibrate and has_valid
    if calibrated:
        cal = calibrate_run(run, checkpoint, tta, target_sensitivity, progress)  # updates run.spec
        cal_probs = _spec_probabilities(run, logits)
        metrics["calibration"] = {
            "temperature": cal["temperature"], "n_bins": ECE_BINS, "fitted_on": "valid",
            "ece_before": expected_calibration_error(probs[idx], y[idx]),
            "ece_after": expected_calibration_error(cal_probs[idx], y[idx]),
            "loss_after": classification_metrics(y[idx], cal_probs[idx], run.class_names)["loss"],
            "valid": {k: cal[k] for k in ("ece_before", "ece_after", "loss_before", "loss_after")},
        }
        if "threshold" in cal:
            chosen = cal["threshold"]
            is_pos = (y[idx] == pos).astype(np.int64)
            metrics["operating_point"] = {
                "positive_class": run.class_names[pos], "positive_reason": pos_reason, "chosen_on_valid": chosen,
                "at_chosen": sensitivity_specificity(cal_probs[idx, pos], is_pos, chosen["threshold"]),
                "at_0.5": sensitivity_specificity(cal_probs[idx, pos], is_pos, 0.5),
            }
        if cal.get("logit_adjustment"):
            metrics["logit_adjustment"] = cal["logit_adjustment"]
        plot_reliability(probs[idx], y[idx], out / "reliability.png", cal_probs[idx], ECE_BINS, cal["temperature"])
    else:
        metrics["calibration"] = {"n_bins": ECE_BINS, "ece_before": expected_calibration_error(probs[idx], y[idx]),
                                  "temperature": None, "note": "no validation split to fit a temperature on"}
        plot_reliability(probs[idx], y[idx], out / "reliability.png")
    spec_probs = cal_probs if calibrated else _spec_probabilities(run, logits)  # the spec's, as deployed
    deployed = _as_deployed(run.spec, spec_probs[idx], y[idx], n_bootstrap, seed)
    decided = deployed.pop("predicted")
    metrics["as_deployed"] = deployed
    metrics.update(
        {
            "run": str(run.files.root),
            "data": data or run.cfg.data.source or "bundled breastmnist",
            "split": split,
            "checkpoint": checkpoint,
            "checkpoint_epoch": run.checkpoint_epoch,
            "class_names": run.class_names,
            "image_size": run.spec.image_size,
            "tta": list(tta),
            "skipped_files": [{"path": p, "reason": r} for p, r in decoded.skipped],
            "seconds": time.time() - t0,
        }
    )
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=1))
    if explain > 0:
        with _step(f"Grad-CAM of up to {explain} right and {explain} wrong images per class", progress=progress):
            metrics["explanations"] = _explain(run, decoded, cal_probs, y, idx, explain, target_layer, out / "explain")
        atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=1))
    plot_confusion_matrix(metrics["confusion_matrix"], run.class_names, out / "confusion_matrix.png")
    plot_roc(y[idx], probs[idx], run.class_names, out / "roc.png", positive=pos)
    rows = ["path,label,predicted," + ",".join(f"p_{n}" for n in run.class_names) + "\n"]
    for s_, yt, pr, k in zip([decoded.samples[i] for i in idx], y[idx], cal_probs[idx], decided):
        rows.append(f"\"{s_.path}\",{run.class_names[yt]},{run.class_names[int(k)]},"
                    + ",".join(f"{v:.6f}" for v in pr) + "\n")
    atomic_write_text(out / "predictions.csv", "".join(rows))
    metrics["out_dir"] = str(out)
    from .model_card import build_model_card, render_model_card

    log_evaluation(run.files, run.cfg, metrics, out,  # to the run's MLflow run, when it is tracked
                   model_card=lambda: render_model_card(build_model_card(run.files.root)))
    return metrics


# --------------------------------------------------------------------------- the results as text

#: MedMNIST v2 (Yang et al., Scientific Data 2023, Table 3) test results on BreastMNIST.
PUBLISHED_BREASTMNIST = {"ResNet-50 (28)": {"accuracy": 0.812, "auroc": 0.857},
                         "ResNet-18 (28)": {"accuracy": 0.863, "auroc": 0.901}}


def format_metrics(metrics: dict[str, Any]) -> str:
    """The metrics of :func:`evaluate_run` as the lines ``medclass evaluate`` prints (no final
    newline): the headline figures, the bootstrap 95 % intervals, calibration, the operating point,
    the figures with or without held-out duplicates (when there are any) and where ``metrics.json``
    was written."""
    auc = metrics["auroc"]
    lines = [
        f"{metrics['split']}: n={metrics['n']}  accuracy {metrics['accuracy']:.4f}  balanced accuracy "
        f"{metrics['balanced_accuracy']:.4f}  macro F1 {metrics['macro_f1']:.4f}  AUROC "
        + (f"{auc:.4f}" if auc is not None else "n/a") + f"  loss {metrics['loss']:.4f}"
    ]
    ci = metrics.get("confidence_intervals", {}).get("metrics", {})
    if ci:
        lines.append("  95% CI (bootstrap): " + "  ".join(
            f"{k} {v['low']:.3f}-{v['high']:.3f}" for k, v in ci.items() if v.get("low") is not None))
    cal = metrics.get("calibration") or {}
    if cal.get("temperature"):
        lines.append(f"  calibration: T={cal['temperature']:.3f} (fitted on valid); ECE ({cal['n_bins']} bins) "
                     f"{cal['ece_before']:.4f} before, {cal['ece_after']:.4f} after")
    op = metrics.get("operating_point")
    if op:
        a = op["at_chosen"]
        lines.append(f"  operating point ({op['chosen_on_valid']['method']} on valid, positive {op['positive_class']}): "
                     f"threshold {a['threshold']:.3f}  sensitivity {a['sensitivity']:.3f}  specificity {a['specificity']:.3f}")
    la = metrics.get("logit_adjustment")
    if la:
        lines.append(f"  logit adjustment (Menon et al. 2021) chosen on valid: tau {la['tau']:g} "
                     f"(valid balanced accuracy {la['balanced_accuracy_by_tau'][str(la['tau'])]:.3f}, "
                     f"{la['balanced_accuracy_by_tau']['0.0']:.3f} at the arg-max)")
    dep = metrics.get("as_deployed")
    if dep and dep["rule"] != "argmax":
        ci = dep["confidence_intervals"]["metrics"]
        lines.append(f"  as deployed ({dep['rule']}): accuracy {dep['accuracy']:.4f} "
                     f"[{ci['accuracy']['low']:.3f}, {ci['accuracy']['high']:.3f}]  balanced accuracy "
                     f"{dep['balanced_accuracy']:.4f} [{ci['balanced_accuracy']['low']:.3f}, "
                     f"{ci['balanced_accuracy']['high']:.3f}]")
    ood = metrics.get("ood")
    if ood and ood.get("n"):
        lines.append(f"  out-of-distribution ({ood['method']}, threshold {ood['threshold']:.4g}): {ood['n_flagged']} of "
                     f"{ood['n']} images flagged as unlike the training images ({ood['flagged_share']:.1%}; "
                     f"{1 - ood['quantile']:.0%} of validation by construction)")
    grp = metrics.get("group_level")
    if grp:
        line = f"  per group ({grp['n_groups']} groups of {grp['n_images']} images, {grp['aggregation']} of their probabilities)"
        if grp.get("accuracy") is not None:
            line += ": " + "  ".join(
                f"{name} " + (f"{grp[k]:.4f}" if grp.get(k) is not None else "n/a")
                for k, name in (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"), ("auroc", "AUROC")))
        if grp["conflicts"]:
            line += f"; {len(grp['conflicts'])} groups with images of different labels left out (metrics.json)"
        lines.append(line)
    for column, table in (metrics.get("subgroups") or {}).items():
        parts = []
        for name, r in table["subgroups"].items():
            acc = f"{r['accuracy']:.3f}" if r.get("accuracy") is not None else "n/a"
            parts.append(f"{name} (n={r['n']}{', too few' if r['too_small'] else ''}) {acc}")
        gap = table["gap"].get("balanced_accuracy") or table["gap"].get("accuracy")
        lines.append(f"  by {column}: accuracy " + "; ".join(parts)
                     + (f"; gap {gap['difference']:.3f} ({gap['best']} over {gap['worst']})" if gap else ""))
    dup = metrics.get("held_out_duplicates")
    if dup:
        other = dup.get("metrics_with_duplicates") or dup.get("metrics_without_duplicates")
        label = "with them" if dup["deduplicated"] else "without them"
        if other:
            lines.append(f"  {dup['n']} images duplicate an earlier split; {label}: accuracy {other['accuracy']:.4f}"
                         + (f"  AUROC {other['auroc']:.4f}" if other.get("auroc") is not None else ""))
    lines.append(f"written to {metrics['out_dir']}/metrics.json")
    return "\n".join(lines)


def format_breastmnist_comparison(metrics: dict[str, Any]) -> str:
    """Test ``metrics`` on the bundled BreastMNIST beside :data:`PUBLISHED_BREASTMNIST`: a heading
    and one line per model (no final newline)."""
    lines = ["published MedMNIST v2 test results on BreastMNIST (Yang et al. 2023):"]
    for model, m in PUBLISHED_BREASTMNIST.items():
        lines.append(f"  {model:15s} accuracy {m['accuracy']:.3f}  AUROC {m['auroc']:.3f}")
    lines.append(f"  {'medclass':15s} accuracy {metrics['accuracy']:.3f}  AUROC {metrics['auroc']:.3f}")
    return "\n".join(lines)
