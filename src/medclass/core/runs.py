"""The run folder: where a run keeps each file (:class:`RunFiles`), and :class:`RunError`.

Torch-free, so that the spec reader, the ONNX backend and the CLI's argument checks can name a
run's files without importing PyTorch. This is the one definition of the layout; every stage
(training, evaluation, export, serving, reports) reads paths from here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from .config import RunConfig

__all__ = ["RunError", "RunFiles", "new_run_dir", "resume_run_dir", "resume_cv_dir", "CV_FILE", "EVAL_PREFIX",
           "EXPORT_FORMATS"]

#: A cross-validation's record, ``RUN/cv.json`` (:mod:`medclass.evaluation.cv`).
CV_FILE = "cv.json"
#: ``RUN/eval-<split>/``: the folder of one split's evaluation (:meth:`RunFiles.eval_dir`).
EVAL_PREFIX = "eval-"
#: What ``medclass export`` writes (:meth:`RunFiles.export_path`).
EXPORT_FORMATS = ("onnx", "torchscript")


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
    spec = _run_file("model_spec.json")  # the run contract (medclass.core.spec.ModelSpec)
    ood = _run_file("ood.json")  # the out-of-distribution detector (medclass.core.ood), optional
    ood_params = _run_file("ood.npz")  # its Mahalanobis class means and precision matrix
    budget = _run_file("budget.json")  # a time budget's plan and clock (medclass.engine.budget)
    resumes = _run_file("resumes.json")  # what each --resume changed
    running = _run_file("running.json")  # while a training process works here (pid, host, start time)
    failed = _run_file("failed.json")  # training failed: the error and the last saved epoch
    cv = _run_file(CV_FILE)  # a cross-validation's record (medclass.evaluation.cv)
    export_dir = _run_file("export")
    export_onnx = _run_file("export", "model.onnx")  # medclass export --format onnx
    export_torchscript = _run_file("export", "model.pt")  # medclass export --format torchscript
    export_int8 = _run_file("export", "model.int8.onnx")  # medclass export --quantize int8

    def eval_dir(self, split: str) -> Path:
        """``RUN/eval-<split>``: what ``medclass evaluate`` writes for ``split`` (test, val, ...)."""
        return self.root / f"{EVAL_PREFIX}{split}"

    def export_path(self, fmt: str) -> Path:
        """``RUN/export/model.onnx`` (``fmt`` "onnx") or ``RUN/export/model.pt`` ("torchscript").

        Raises:
            ValueError: another ``fmt``.
        """
        if fmt == "onnx":
            return self.export_onnx
        if fmt == "torchscript":
            return self.export_torchscript
        raise ValueError(f"export format must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")


def new_run_dir(runs_dir: Path, name: Optional[str], cfg: "RunConfig", world_size: Optional[int] = None,
                now: Optional[datetime] = None) -> Path:
    """The folder of a new run: ``runs_dir / name``, or without a name
    ``runs_dir / "<stem>-<arch>-<YYYYmmdd-HHMMSS>"`` where ``stem`` is the file name (without suffix)
    of ``cfg.data.source`` (``breastmnist`` for the bundled data) and the time is ``now`` (default:
    the local time). Nothing is created.

    Raises:
        RunError: no ``name`` under ``torchrun`` (``world_size``, default the ``WORLD_SIZE``
            environment variable, > 1): every process must use the same folder, and their clocks
            may differ by a second.
    """
    if name:
        return Path(runs_dir) / name
    if world_size is None:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1:
        raise RunError("under torchrun give --name, so that every process uses the same run folder")
    from .config import auto_arch  # model.arch auto: named after what it stands for

    stem = Path(cfg.data.source).stem if cfg.data.source else "breastmnist"
    return Path(runs_dir) / f"{stem}-{auto_arch(cfg)}-{now or datetime.now():%Y%m%d-%H%M%S}"


def resume_run_dir(runs_dir: Path, name: Optional[str]) -> "tuple[Path, RunConfig]":
    """The folder and saved configuration of a run to continue: ``runs_dir / name`` and its
    ``config.yaml``.

    Raises:
        RunError: no ``name``; no ``config.yaml`` in the folder.
        medclass.core.config.ConfigError: the ``config.yaml`` is not a valid configuration.
    """
    from .config import RunConfig

    if not name:
        raise RunError("--resume needs --name of the run to continue")
    files = RunFiles(Path(runs_dir) / name)
    if not files.config.exists():
        raise RunError(f"cannot resume: {files.root}/config.yaml not found")
    return files.root, RunConfig.load(files.config)


def resume_cv_dir(runs_dir: Path, name: Optional[str]) -> "tuple[Path, RunConfig, int, Optional[str]]":
    """The folder, saved configuration, number of folds and group pattern of an interrupted
    cross-validation to continue: ``runs_dir / name``, its ``config.yaml`` and the settings in its
    :data:`CV_FILE` (read without importing PyTorch, so the CLI fails fast).

    Raises:
        RunError: no ``name``; the folder holds no ``cv.json`` or ``config.yaml``.
        medclass.core.config.ConfigError: the ``config.yaml`` is not a valid configuration.
    """
    import json

    from .config import RunConfig

    if not name:
        raise RunError("--resume needs the --name of the cross-validation to continue")
    root = Path(runs_dir) / name
    files = RunFiles(root)
    if not files.cv.is_file() or not files.config.is_file():
        raise RunError(f"{root} holds no interrupted cross-validation ({CV_FILE}, config.yaml)")
    settings = json.loads(files.cv.read_text())["settings"]
    return root, RunConfig.load(files.config), settings["folds"], settings["group_pattern"]
