"""Evaluating a run on a split of its own data or on another labelled data set."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..data import DataError, build_index, cache_dir_for, decode_split, read_manifest
from ..engine import LoadedRun, load_run, logits_to_probs, predict_logits
from .metrics import classification_metrics
from .plots import plot_confusion_matrix, plot_roc

__all__ = ["evaluate_run"]


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


def evaluate_run(
    run_dir: Path,
    data: Optional[str] = None,
    split: str = "test",
    out_dir: Optional[Path] = None,
    checkpoint: str = "best",
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate ``run_dir``'s checkpoint on ``split`` of its own data (its manifest), or on
    ``data`` (all its images when it has no given split). Writes ``metrics.json``,
    ``confusion_matrix.png``, ``roc.png`` and ``predictions.csv`` to ``out_dir`` (default
    ``<run>/eval-<split>``) and returns the metrics.

    Raises:
        RunError, CheckpointError: not a run, no checkpoint.
        DataError: no such split, or classes the run does not know.
    """
    t0 = time.time()
    run = load_run(Path(run_dir), checkpoint)
    samples = _samples_for(run, data, split)
    c = run.cfg.data
    decoded = decode_split(samples, c.channels, c.image_size, c.skip_corrupt, f"decode {split}", progress,
                           cache_dir=cache_dir_for(c))
    logits = predict_logits(run.model, decoded.images, run.preprocess, run.device, 64)
    probs = logits_to_probs(logits).numpy()
    y = decoded.labels.numpy()
    metrics = classification_metrics(y, probs, run.class_names)
    out = Path(out_dir) if out_dir else run.files.root / f"eval-{split}"
    out.mkdir(parents=True, exist_ok=True)
    metrics.update(
        {
            "run": str(run.files.root),
            "data": data or run.cfg.data.source or "bundled breastmnist",
            "split": split,
            "checkpoint": checkpoint,
            "checkpoint_epoch": run.checkpoint_epoch,
            "class_names": run.class_names,
            "image_size": c.image_size,
            "skipped_files": [{"path": p, "reason": r} for p, r in decoded.skipped],
            "seconds": time.time() - t0,
        }
    )
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    plot_confusion_matrix(metrics["confusion_matrix"], run.class_names, out / "confusion_matrix.png")
    plot_roc(y, probs, run.class_names, out / "roc.png")
    with open(out / "predictions.csv", "w") as f:
        f.write("path,label,predicted," + ",".join(f"p_{n}" for n in run.class_names) + "\n")
        for s, yt, pr in zip(decoded.samples, y, probs):
            f.write(f"\"{s.path}\",{run.class_names[yt]},{run.class_names[int(np.argmax(pr))]},"
                    + ",".join(f"{v:.6f}" for v in pr) + "\n")
    metrics["out_dir"] = str(out)
    return metrics
