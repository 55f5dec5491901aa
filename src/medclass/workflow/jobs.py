"""The three workflows behind ``medclass train``, ``predict`` and ``export`` (see :mod:`medclass.workflow`)."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

from ..core.config import RunConfig

__all__ = ["TrainOutcome", "ExportOutcome", "train_run", "predict", "export"]

PathLike = Union[str, os.PathLike]


def _warn(message: str) -> None:
    warnings.warn(message, stacklevel=3)


@dataclass
class TrainOutcome:
    """What :func:`train_run` did.

    Attributes:
        run_dir: the run folder.
        result: :class:`medclass.engine.TrainResult` (history, best epoch, seconds; ``is_main`` False on
            DDP ranks other than 0, which stop after training).
        ood_fitted: whether ``RUN/ood.json`` was written.
        split: the split evaluated (``test``, or ``valid`` without a test split), None when not evaluated.
        metrics: :func:`medclass.evaluation.evaluate_run`'s metrics of ``split``, or None.
    """

    run_dir: Path
    result: Any
    ood_fitted: bool = False
    split: Optional[str] = None
    metrics: Optional[dict[str, Any]] = None


def train_run(cfg: RunConfig, run_dir: PathLike, *, resume: bool = False, fit_ood: bool = True,
              evaluate: bool = True, log: Callable[[str], None] = print,
              warn: Callable[[str], None] = _warn) -> TrainOutcome:
    """Train ``cfg`` into ``run_dir`` (:func:`medclass.engine.train`), then on rank 0 fit the
    out-of-distribution detector on the best checkpoint (``fit_ood``;
    :func:`medclass.evaluation.ood.fit_run_ood_or_warn`: a failure is a warning, the model is kept) and
    evaluate it on the final split (``evaluate``; :func:`medclass.evaluation.evaluate.final_split`).

    Args:
        cfg: the run's configuration (checked, e.g. by :func:`medclass.cli.preflight.check_train_config`).
        run_dir: the run folder (:func:`medclass.core.runs.new_run_dir`).
        resume: continue the run in ``run_dir`` from its ``last.pt``.
        log, warn: where progress lines and warnings go (the CLI: stdout and yellow stderr lines;
            the API: ``print`` and :func:`warnings.warn`).

    Returns:
        :class:`TrainOutcome`.
    Raises:
        ConfigError, RunError, DataError, CheckpointError, TrackingError: as :func:`medclass.engine.train`.
        ImageReadError: an unreadable test image; the message says the model is trained and saved, and
            how to evaluate it.
    """
    from ..data.pixels import ImageReadError
    from ..engine import train as run_training
    from ..evaluation import evaluate_run
    from ..evaluation.evaluate import final_split
    from ..evaluation.ood import fit_run_ood_or_warn

    run_dir = Path(run_dir)
    result = run_training(cfg, run_dir, resume=resume)
    outcome = TrainOutcome(run_dir, result)
    if not result.is_main:  # DDP ranks other than 0: rank 0 fits the detector and evaluates
        return outcome
    log(f"best epoch {result.best_epoch} ({cfg.train.monitor} {result.best_value:.4f}); run in {run_dir}")
    if fit_ood:
        outcome.ood_fitted = fit_run_ood_or_warn(run_dir, progress=cfg.train.progress, log=log, warn=warn) is not None
    if evaluate:
        split, warning = final_split(run_dir)  # test; valid (said) when the data has no test split
        if warning:
            warn(warning)
        try:
            outcome.metrics = evaluate_run(run_dir, split=split, progress=cfg.train.progress)
        except ImageReadError as e:  # the model is trained and saved: say so, and how to evaluate it
            raise ImageReadError(e.path, e.reason, f"the model is trained and saved in {run_dir}; replace or "
                                 f"remove the file and run `medclass evaluate {run_dir}`, or run `medclass "
                                 f"evaluate {run_dir} --skip-corrupt` to leave unreadable images out") from e
        outcome.split = split
    return outcome


def predict(model: PathLike, paths: Sequence[PathLike], *, backend: str = "torch", tta: Sequence[str] = (),
            checkpoint: str = "best", batch_size: int = 32, explain_dir: Optional[PathLike] = None,
            target_layer: Optional[str] = None):
    """Predict image files and folders with a run folder or an exported model (``medclass predict``).

    ``model`` and ``backend`` open one :class:`~medclass.serving.prediction.Predictor`
    (:func:`medclass.serving.prediction.load_predictor`: the run's checkpoint; its
    ``export/model.onnx`` / ``export/model.pt`` or the given file with ``onnx`` / ``torchscript``, which
    import no PyTorch for ONNX); the images are read by its spec and predicted
    (:func:`medclass.serving.prediction.predict_files`; a file that cannot be read gets its own error).

    Returns:
        ``(predictions, class_names)``: one :class:`~medclass.serving.prediction.Prediction` per
        expanded path, in order, and the model's class names.
    Raises:
        ValueError: an unknown backend or TTA view; ``explain_dir`` with a backend that cannot explain;
            an exported file given to the torch backend (the message names the backend to use).
        FileNotFoundError: no export where one is needed (the message says what to run).
        RunError, CheckpointError, ModelFileError: not a run, no checkpoint, not an exported model.
    """
    from ..serving.prediction import load_predictor, predict_files

    predictor = load_predictor(model, backend, tta=tta, checkpoint=checkpoint, batch_size=batch_size)
    preds = predict_files(predictor, paths, explain_dir=None if explain_dir is None else Path(explain_dir),
                          target_layer=target_layer)
    return preds, list(predictor.spec.class_names)


@dataclass
class ExportOutcome:
    """What :func:`export` wrote: ``export`` (:class:`medclass.serving.export.ExportResult`: ``path``,
    ``seconds``, ``max_prob_diff``, ``spec``) and, with ``quantize="int8"``, ``int8``
    (:class:`medclass.serving.quantize.QuantizeResult`), else None."""

    export: Any
    int8: Any = None


def export(run_dir: PathLike, fmt: str = "onnx", out: Optional[PathLike] = None, *, checkpoint: str = "best",
           quantize: Optional[str] = None, tolerance_points: float = 1.0, force: bool = False,
           progress: bool = False) -> ExportOutcome:
    """Export a run's checkpoint for deployment (``medclass export``): :func:`medclass.serving.export.export_run`
    on the run loaded on the CPU (checked against PyTorch); with ``quantize="int8"`` also the INT8 ONNX model
    (:func:`medclass.serving.quantize.quantize_run`, calibrated on the validation images, refused when it loses
    more than ``tolerance_points`` accuracy points unless ``force``; ``out`` then names the INT8 file).

    Returns:
        :class:`ExportOutcome`.
    Raises:
        ValueError: an unknown format; ``quantize`` other than int8 or without ONNX.
        ImportError: onnx/onnxruntime missing. RunError, CheckpointError: not a run, no checkpoint.
        medclass.serving.quantize.QuantizationRefused: the INT8 model loses too much (nothing written).
    """
    from ..engine import load_run
    from ..serving.export import FORMATS, export_run

    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if quantize is not None and (quantize != "int8" or fmt != "onnx"):
        raise ValueError(f"quantize must be int8 with the onnx format, got {quantize!r} with {fmt}")
    loaded = load_run(Path(run_dir), checkpoint=checkpoint, device="cpu")
    result = export_run(loaded, fmt, None if (out is None or quantize) else Path(out), progress=progress)
    if quantize is None:
        return ExportOutcome(result)
    from ..serving.quantize import quantize_run

    q = quantize_run(loaded, result.path, out, tolerance_points=tolerance_points, force=force)
    return ExportOutcome(result, q)
