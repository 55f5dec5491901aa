"""Cross-validation that keeps every patient inside one fold, with out-of-fold predictions.

``medclass cv DATA --folds K`` (:func:`cross_validate`): the training and validation images are
pooled and cut into ``K`` stratified folds that never split a group (patient, lesion, study:
the CSV's group column, or ``--group-pattern``, a regular expression whose first group, searched
in each file name, names it), with scikit-learn's ``StratifiedGroupKFold``; the test split is not
touched. Fold ``i`` is an ordinary run in ``RUN/fold-<i>/`` trained on the other folds and
validated on fold ``i``, with its out-of-distribution detector fitted as ``medclass train`` fits
it (:func:`medclass.evaluation.ood.fit_run_ood`). Then:

* **out-of-fold predictions**: each pooled image predicted by the one model that did not train on
  it (``RUN/oof_predictions.csv``), and the metrics computed on them with bootstrap intervals:
  the honest figure of a small data set, from every image rather than one validation split;
* the per-fold validation metrics, their mean and standard deviation;
* the ``K`` fold models as one soft-voting ensemble run (``RUN/ensemble``,
  :func:`medclass.evaluation.make_ensemble`), evaluated on the test split.

Everything goes to ``RUN/cv.json``. ``train.time_budget`` is the budget of the whole
cross-validation: each fold gets ``budget / K`` (the ensemble's evaluation comes after). An
interrupted ``cv`` resumes (``resume=True``): finished folds are kept, the fold that was
training continues from its ``last.pt``, the others start.
"""

from __future__ import annotations

import copy
import csv
import json
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ..core.config import RunConfig, parse_duration
from ..core.fileio import atomic_write, atomic_write_text
from ..core.runs import CV_FILE
from ..data import DataError, DataIndex, build_index, cache_dir_for, decode_split, read_manifest, write_manifest
from ..engine import load_run, logits_to_probs, predict_logits, train
from ..core.runs import RunError, RunFiles
from ..core.progress import Progress
from .metrics import bootstrap_ci, classification_metrics

__all__ = ["cross_validate", "format_cv", "fold_assignments", "group_ids", "CV_FILE", "DEFAULT_FOLDS"]

#: The record of a cross-validation in its folder.

#: Folds of ``medclass cv`` unless ``--folds`` says otherwise.
DEFAULT_FOLDS = 5

#: The summary metrics whose mean and standard deviation over folds are reported.
FOLD_METRICS = ("accuracy", "balanced_accuracy", "auroc")


def group_ids(samples: Sequence[Any], pattern: Optional[str] = None) -> list[str]:
    """The group of each sample: ``pattern``'s first group searched in the file name (``re.search``)
    when a pattern is given, else the sample's own group (a CSV group column), else the image
    itself (its path: no grouping).

    Raises:
        DataError: a pattern that is not a regular expression with a group, or a file name it does
            not match (the message names the file).
    """
    if pattern is None:
        return [s.group if s.group else s.path for s in samples]
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise DataError(f"--group-pattern {pattern!r} is not a regular expression: {e}") from None
    if rx.groups < 1:
        raise DataError(f"--group-pattern {pattern!r} needs a group in parentheses, e.g. '^(\\w+)_'")
    out = []
    for s in samples:
        name = s.path if "::" in s.path else Path(s.path).name  # an .npz entry "FILE::KEY" has no file name
        m = rx.search(name)
        if m is None or m.group(1) is None:
            raise DataError(f"--group-pattern {pattern!r} does not match the file name {name!r} ({s.path}); "
                            "give a pattern every file name matches")
        out.append(m.group(1))
    return out


def fold_assignments(labels: Sequence[int], groups: Sequence[str], folds: int, seed: int) -> np.ndarray:
    """The fold (0..K-1) of each image: scikit-learn ``StratifiedGroupKFold(n_splits=folds,
    shuffle=True, random_state=seed)``, so every group lies in one fold and the class
    proportions are kept as far as the groups allow. int64 ``(N,)``.

    Raises:
        DataError: fewer than 2 folds, or fewer groups than folds.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    if folds < 2:
        raise DataError(f"cross-validation needs at least 2 folds, got {folds}")
    n_groups = len(set(groups))
    if n_groups < folds:
        raise DataError(f"{folds} folds need at least {folds} groups; the training and validation images "
                        f"hold {n_groups}")
    y = np.asarray(labels, dtype=np.int64)
    out = np.full(len(y), -1, dtype=np.int64)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for i, (_, held) in enumerate(splitter.split(np.zeros(len(y)), y, np.asarray(groups))):
        out[held] = i
    return out


def _settings(cfg: RunConfig, folds: int, group_pattern: Optional[str]) -> dict[str, Any]:
    return {"folds": folds, "group_pattern": group_pattern, "seed": cfg.data.split_seed,
            "time_budget": cfg.train.time_budget}


def _write_json(path: Path, record: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(record, indent=1))


def cross_validate(cfg: RunConfig, run_dir: Path, folds: int = DEFAULT_FOLDS, group_pattern: Optional[str] = None,
                   resume: bool = False, progress: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """K-fold cross-validation of ``cfg`` into ``run_dir`` (see the module's description).

    Args:
        cfg: the run configuration (not changed); its ``train.time_budget``, if any, is the
            budget of all folds together.
        run_dir: the cross-validation's folder (``RUN``).
        folds: K, at least 2.
        group_pattern: a regular expression whose first group names an image's group, searched in
            its file name (default: the CSV group column, else no grouping).
        resume: continue an interrupted cross-validation in ``run_dir``.
    Returns:
        The record written to ``RUN/cv.json``: settings, fold sizes, per-fold validation metrics
        with their mean and standard deviation, the out-of-fold metrics with bootstrap intervals,
        and the ensemble's test metrics.
    Raises:
        RunError: ``run_dir`` exists without ``resume``, or ``resume`` with other settings than
            the interrupted cross-validation's, or nothing to resume.
        DataError: bad data, groups or pattern (see :func:`group_ids`, :func:`fold_assignments`).
    """
    from .ensemble import make_ensemble
    from .evaluate import evaluate_run
    from .ood import fit_run_ood_or_warn

    root = Path(run_dir)
    record_path = root / CV_FILE
    settings = _settings(cfg, folds, group_pattern)
    if resume:
        if not record_path.is_file():
            raise RunError(f"{root} holds no interrupted cross-validation ({CV_FILE}); start it without --resume")
        earlier = json.loads(record_path.read_text())["settings"]
        if earlier != settings:
            raise RunError(f"{root} was started with {earlier}, not {settings}; resume it with the same settings")
        index = read_manifest(RunFiles(root).manifest)
    else:
        if root.exists() and any(root.iterdir()):
            raise RunError(f"{root} already exists; choose another --name, or --resume it")
        root.mkdir(parents=True, exist_ok=True)
        index = build_index(copy.deepcopy(cfg).data)
        write_manifest(index, RunFiles(root).manifest)
        cfg.save(RunFiles(root).config)  # what --resume reads back
    pool = list(index.splits.get("train", [])) + list(index.splits.get("valid", []))
    test = list(index.splits.get("test", []))
    groups = group_ids(pool, group_pattern)
    labels = [s.label for s in pool]
    assign = fold_assignments(labels, groups, folds, cfg.data.split_seed)
    record: dict[str, Any] = {"settings": settings, "class_names": index.class_names, "n_pool": len(pool),
                              "n_test": len(test), "n_groups": len(set(groups)),
                              "fold_sizes": [int(np.sum(assign == i)) for i in range(folds)], "folds": []}
    _write_json(record_path, record)

    fold_budget = None
    if cfg.train.time_budget is not None:
        fold_budget = f"{parse_duration(cfg.train.time_budget) / folds:.1f}s"
    (root / "folds").mkdir(exist_ok=True)
    fold_dirs = []
    for i in range(folds):
        fold_dir = root / f"fold-{i + 1}"
        fold_dirs.append(fold_dir)
        manifest = root / "folds" / f"fold-{i + 1}.csv"
        split = DataIndex(index.class_names, {
            "train": [s for s, f in zip(pool, assign) if f != i],
            "valid": [s for s, f in zip(pool, assign) if f == i],
            "test": test,
        })
        write_manifest(split, manifest)
        files = RunFiles(fold_dir)
        if files.summary.is_file():
            log(f"fold {i + 1}/{folds}: finished earlier, kept")
            if not files.ood.is_file():  # interrupted between training and the OOD fit
                fit_run_ood_or_warn(fold_dir, progress=progress, log=log, warn=log)
            continue
        c = copy.deepcopy(cfg)
        c.data.manifest = str(manifest)
        c.train.time_budget = fold_budget
        again = files.last.is_file()
        if not again and fold_dir.exists() and not files.best.is_file():
            shutil.rmtree(fold_dir)  # stopped before its first checkpoint: nothing in it to keep
        log(f"fold {i + 1}/{folds}: {'resuming' if again else 'training'} on {len(split.splits['train'])} images, "
            f"validating on {len(split.splits['valid'])}" + (f", budget {fold_budget}" if fold_budget else ""))
        train(c, fold_dir, resume=again)
        fit_run_ood_or_warn(fold_dir, progress=progress, log=log, warn=log)  # as `medclass train` does

    # out-of-fold predictions: each pooled image by the model that did not train on it
    oof = np.zeros((len(pool), len(index.class_names)))
    per_fold = []
    for i, fold_dir in enumerate(fold_dirs):
        run = load_run(fold_dir)
        # the fold's own split (pool order), not the run's copy (which --dedupe may have thinned)
        valid = read_manifest(root / "folds" / f"fold-{i + 1}.csv").splits["valid"]
        s, dc = run.spec, run.cfg.data
        decoded = decode_split(valid, s.channels, s.image_size, dc.skip_corrupt, f"cv: decode fold {i + 1} valid", progress,
                               cache_dir=cache_dir_for(dc), dicom_window=s.dicom_window, resize=s.resize)
        if len(decoded) != len(valid):
            raise DataError(f"fold {i + 1}: {len(valid) - len(decoded)} validation images could not be read; "
                            "fix or remove them (out-of-fold predictions need every image)")
        with Progress(f"cv: out-of-fold inference, fold {i + 1}/{len(fold_dirs)}", len(decoded), "images",
                      enabled=progress) as p:
            logits = predict_logits(run.model, decoded.images, run.preprocess, run.device, on_batch=p.update)
        probs = logits_to_probs(logits).numpy()
        oof[assign == i] = probs
        m = classification_metrics(decoded.labels.numpy(), probs, index.class_names)
        per_fold.append({"fold": i + 1, "n_valid": len(valid), **{k: m[k] for k in FOLD_METRICS}})
    y = np.asarray(labels)
    oof_metrics = classification_metrics(y, oof, index.class_names)
    with Progress("cv: out-of-fold bootstrap", 1000, "resamples", enabled=progress) as p:
        oof_metrics["confidence_intervals"] = bootstrap_ci(y, oof, on_resample=p.update)

    def write_oof(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "group", "fold", "label", "predicted", *[f"p_{c}" for c in index.class_names]])
            for s, g, fo, p in zip(pool, groups, assign, oof):
                w.writerow([s.path, g, int(fo) + 1, index.class_names[s.label], index.class_names[int(p.argmax())],
                            *[f"{v:.6f}" for v in p]])

    atomic_write(root / "oof_predictions.csv", write_oof)
    spread = {k: {"mean": float(np.mean([f[k] for f in per_fold if f[k] is not None])),
                  "std": float(np.std([f[k] for f in per_fold if f[k] is not None], ddof=1))}
              for k in FOLD_METRICS if sum(f[k] is not None for f in per_fold) >= 2}
    record.update({"folds": per_fold, "fold_mean_std": spread, "out_of_fold": oof_metrics})

    # the K fold models as one soft-voting ensemble, scored on the untouched test split
    ensemble_dir = root / "ensemble"
    if test:
        if not RunFiles(ensemble_dir).ensemble.is_file():
            ens_manifest = root / "folds" / "ensemble.csv"  # pool as train, no validation: no fold's valid is honest
            write_manifest(DataIndex(index.class_names, {"train": pool, "valid": [], "test": test}), ens_manifest)
            make_ensemble(fold_dirs, ensemble_dir, "equal", progress=progress, manifest=ens_manifest)
        test_metrics = evaluate_run(ensemble_dir, progress=progress, calibrate=False)
        record["ensemble_test"] = {k: test_metrics[k] for k in ("n", "accuracy", "balanced_accuracy", "macro_f1", "auroc")}
        record["ensemble_test"]["confidence_intervals"] = test_metrics["confidence_intervals"]
    _write_json(record_path, record)
    return record


def format_cv(record: dict[str, Any]) -> str:
    """The lines ``medclass cv`` prints: fold spread, out-of-fold figures with intervals, the
    ensemble's test figures."""
    def num(v: Optional[float]) -> str:
        return f"{v:.4f}" if v is not None else "n/a"

    lines = [f"{record['settings']['folds']} folds over {record['n_pool']} images in {record['n_groups']} groups "
             f"(sizes {record['fold_sizes']})"]
    for f in record["folds"]:
        lines.append(f"  fold {f['fold']} (valid n={f['n_valid']}): accuracy {num(f['accuracy'])}  balanced accuracy "
                     f"{num(f['balanced_accuracy'])}  AUROC {num(f['auroc'])}")
    spread = record.get("fold_mean_std", {})
    if spread:
        lines.append("  over folds: " + "  ".join(f"{k} {v['mean']:.4f} +- {v['std']:.4f}" for k, v in spread.items()))
    o = record["out_of_fold"]
    ci = o["confidence_intervals"]["metrics"]
    lines.append(f"out-of-fold (n={o['n']}): " + "  ".join(
        f"{k} {num(o[k])} [{num(ci[k]['low'])}, {num(ci[k]['high'])}]" for k in FOLD_METRICS))
    e = record.get("ensemble_test")
    if e:
        lines.append(f"ensemble of the {record['settings']['folds']} fold models on test (n={e['n']}): accuracy "
                     f"{num(e['accuracy'])}  balanced accuracy {num(e['balanced_accuracy'])}  AUROC {num(e['auroc'])}")
    return "\n".join(lines)
