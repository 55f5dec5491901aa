"""The run folder: where a run keeps each file (:class:`RunFiles`), and :class:`RunError`.

Torch-free, so that the spec reader, the ONNX backend and the CLI's argument checks can name a
run's files without importing PyTorch. This is the one definition of the layout; every stage
(training, evaluation, export, serving, reports) reads paths from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["RunError", "RunFiles"]


class RunError(RuntimeError):
    """A run folder cannot be used (exists without ``--resume``, unwritable, too little free disk
    space, nothing to resume), or a checkpoint could not be written during training."""


def _run_file(*parts: str) -> property:
    """A read-only attribute of :class:`RunFiles`: the path ``root / parts[0] / parts[1] ...``."""
    return property(lambda self: self.root.joinpath(*parts), doc=f"``RUN/{'/'.join(parts)}``")


@dataclass(frozen=True)
class RunFiles:
    """Where a run keeps its files: ``runs/<name>/...``; each attribute below is a ``Path``."""

    root: Path

    config = _run_file("config.yaml")  # the RunConfig the run was trained with
    manifest = _run_file("manifest.csv")  # the split: split, path and label of every image
    classes = _run_file("classes.json")
    best = _run_file("checkpoints", "best.pt")  # weights of the best epoch of train.monitor
    last = _run_file("checkpoints", "last.pt")  # the resume point (with optimizer, schedule, history)
    metrics_csv = _run_file("metrics.csv")
    curves = _run_file("curves.png")
    summary = _run_file("train_summary.json")
    tensorboard = _run_file("tensorboard")
    ensemble = _run_file("ensemble.json")  # only in ensemble runs: members and weights
    calibration = _run_file("calibration.json")
    dedupe = _run_file("dedupe.json")
    spec = _run_file("model_spec.json")  # the run contract (medclass.spec.ModelSpec)
    ood = _run_file("ood.json")  # the out-of-distribution detector (medclass.ood), optional
    ood_params = _run_file("ood.npz")  # its Mahalanobis class means and precision matrix
