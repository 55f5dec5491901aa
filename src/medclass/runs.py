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


@dataclass(frozen=True)
class RunFiles:
    """Where a run keeps its files: ``runs/<name>/...``."""

    root: Path

    @property
    def config(self) -> Path: return self.root / "config.yaml"
    @property
    def manifest(self) -> Path: return self.root / "manifest.csv"
    @property
    def classes(self) -> Path: return self.root / "classes.json"
    @property
    def best(self) -> Path: return self.root / "checkpoints" / "best.pt"
    @property
    def last(self) -> Path: return self.root / "checkpoints" / "last.pt"
    @property
    def metrics_csv(self) -> Path: return self.root / "metrics.csv"
    @property
    def curves(self) -> Path: return self.root / "curves.png"
    @property
    def summary(self) -> Path: return self.root / "train_summary.json"
    @property
    def tensorboard(self) -> Path: return self.root / "tensorboard"
    @property
    def ensemble(self) -> Path: return self.root / "ensemble.json"
    @property
    def calibration(self) -> Path: return self.root / "calibration.json"
    @property
    def dedupe(self) -> Path: return self.root / "dedupe.json"

    @property
    def spec(self) -> Path: return self.root / "model_spec.json"
