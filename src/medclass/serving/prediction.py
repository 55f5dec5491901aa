"""Predicting image files with any backend: the one :class:`Predictor` adapter from a run folder or an
exported file to its backend (:func:`load_predictor`), the one loop behind ``medclass predict``, the web
service and ``Run.predict`` (:func:`predict_files`), with one result type, :class:`Prediction`.

A backend (a :class:`Predictor`) is any object with ``spec`` (a :class:`medclass.core.spec.ModelSpec`)
and ``predict_proba(images)`` (uint8 ``(N, H, W, C)`` at ``spec.image_size`` and ``spec.channels`` ->
float32 calibrated probabilities ``(N, K)``): :class:`medclass.serving.predictor.TorchClassifier`
(a run's checkpoint), :class:`medclass.serving.onnx_backend.OnnxClassifier`,
:class:`medclass.serving.predictor.TorchScriptClassifier`.

A backend may also have ``ood`` (a :class:`medclass.core.ood.OODDetector`, or None) and
``predict_proba_ood(images)`` (-> probabilities and OOD scores ``(N,)`` or None); then every
prediction carries the out-of-distribution score and flag, decided by :func:`classify`, the one
place that turns a backend's outputs into classes and OOD results (``medclass predict`` and the
web service both call it). A backend without them (an ensemble, a run without ``ood.json``, an
export without the ``ood_score`` output) predicts as before, with no OOD fields.

Torch-free (numpy, Pillow and pydicom through :mod:`medclass.data.io`), so ``predict --backend
onnx`` runs without PyTorch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Protocol, Sequence, Union

import numpy as np

from ..data.io import expand_image_paths, read_image
from ..data.pixels import ImageReadError
from ..core.ood import OODResult
from ..core.runs import RunFiles
from ..core.spec import ModelSpec

__all__ = ["Predictor", "BACKENDS", "load_predictor", "Prediction", "read_files", "predict_files", "predict_read",
           "classify"]

#: The backends a :class:`Predictor` can stand for: a run's PyTorch checkpoint, an ONNX export (ONNX Runtime,
#: no PyTorch), a TorchScript export.
BACKENDS = ("torch", "onnx", "torchscript")


class Predictor(Protocol):
    """What every backend offers (:class:`~medclass.serving.predictor.TorchClassifier`,
    :class:`~medclass.serving.onnx_backend.OnnxClassifier`,
    :class:`~medclass.serving.predictor.TorchScriptClassifier`).

    Attributes:
        spec: the :class:`~medclass.core.spec.ModelSpec` (class names, preprocessing, calibration).
        can_explain: whether ``explain(image)`` (Grad-CAM) is available (the torch backend).
        ood: the out-of-distribution detector (:class:`medclass.core.ood.OODDetector`) or None.
    """

    spec: ModelSpec
    can_explain: bool
    ood: Any

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """uint8 ``(N, H, W, C)`` at ``spec.image_size`` -> float32 calibrated probabilities ``(N, K)``."""


def load_predictor(model: Union[str, os.PathLike], backend: str = "torch", *, tta: Sequence[str] = (),
                   checkpoint: str = "best", device: str = "auto", batch_size: int = 32) -> Predictor:
    """The one adapter from a run folder or an exported file to a backend, for ``medclass predict``,
    ``medclass serve`` and the API.

    - ``torch``: the run folder's checkpoint (``best`` or ``last``) through
      :func:`medclass.engine.load_run` (Grad-CAM works); on ``device`` (``auto``: CUDA when available).
    - ``onnx``: ``RUN/export/model.onnx`` (:attr:`medclass.core.runs.RunFiles.export_onnx`) or the given
      ``.onnx`` file, in ONNX Runtime on the CPU; PyTorch is not imported.
    - ``torchscript``: ``RUN/export/model.pt`` or the given ``.pt`` file, on the CPU.

    Args:
        tta: flip views averaged with each image (``"hflip"``, ...). batch_size: images per forward pass.

    Returns:
        A :class:`Predictor`.
    Raises:
        ValueError: an unknown backend; an exported file given to the torch backend (the message
            names the backend to add).
        FileNotFoundError: a run folder without the export the backend needs (the message says what to run).
        RunError, CheckpointError, ModelFileError: not a run, no checkpoint, not an exported model.
    """
    path = Path(model)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be torch, onnx or torchscript, got {backend!r}")
    if backend == "torch":
        if path.is_file() and path.suffix.lower() in (".onnx", ".pt"):
            other = "onnx" if path.suffix.lower() == ".onnx" else "torchscript"
            raise ValueError(f"{path} is an exported model, not a run folder: add --backend {other}")
        from ..engine import load_run
        from .predictor import TorchClassifier

        return TorchClassifier(load_run(path, checkpoint=checkpoint, device=device), tta=tta, batch_size=batch_size)
    file = RunFiles(path).export_path(backend) if path.is_dir() else path
    if path.is_dir() and not file.is_file():
        raise FileNotFoundError(f"{path} has no {backend} export ({file} is missing): run "
                                f"`medclass export {path} --format {backend}` first, or give the exported file")
    if backend == "onnx":
        from .onnx_backend import load_onnx_classifier

        return load_onnx_classifier(file, tta=tta, batch_size=batch_size)
    from .predictor import load_torchscript_classifier

    return load_torchscript_classifier(file, tta=tta, batch_size=batch_size)


@dataclass
class Prediction:
    """One file's outcome: the predicted class and per-class probabilities, or an error.

    Attributes:
        path: the file, as given or found under a given folder.
        predicted: the predicted class name (``spec.decide``), None when the file could not be read.
        probabilities: class name -> calibrated probability, None when the file could not be read.
        error: why the file could not be read, else None.
        ood: the out-of-distribution result (:class:`medclass.core.ood.OODResult`: score, threshold,
            flag, method), None when the model has no OOD detector or the file could not be read.
    """

    path: str
    predicted: Optional[str] = None
    probabilities: Optional[dict[str, float]] = None
    error: Optional[str] = None
    ood: Optional[OODResult] = None

    @property
    def ood_score(self) -> Optional[float]:
        """The OOD score (higher = less like the training images), or None."""
        return self.ood.score if self.ood is not None else None

    @property
    def ood_flag(self) -> Optional[bool]:
        """True when the image is unlike the training images (score above the stored threshold), or None."""
        return self.ood.flag if self.ood is not None else None

    def to_dict(self) -> dict:
        """``path``, ``predicted``, ``probabilities``, ``error``, ``ood_score`` and ``ood_flag``
        (None without an OOD detector) as a JSON-serialisable dict."""
        return {"path": self.path, "predicted": self.predicted, "probabilities": self.probabilities,
                "error": self.error, "ood_score": self.ood_score, "ood_flag": self.ood_flag}


def read_files(paths: Sequence[Union[str, os.PathLike]], spec: ModelSpec) -> tuple[list[Prediction], np.ndarray, list[int]]:
    """Read image files (and the images under folders) as the model takes them.

    Each file is decoded as in training (:func:`medclass.data.io.read_image` at ``spec.image_size``,
    ``spec.channels``, ``spec.dicom_window`` and ``spec.resize``); a file that cannot be read gets
    its own ``error``.

    Returns:
        ``(results, images, ok)``: one :class:`Prediction` per expanded path, in order (no class
        yet); the readable images uint8 ``(M, image_size, image_size, channels)``; ``ok``: the
        position in ``results`` of each of the ``M`` images.
    """
    results: list[Prediction] = []
    arrays, ok = [], []
    for p in expand_image_paths(paths):
        results.append(Prediction(str(p)))
        try:
            arrays.append(read_image(p, spec.channels, spec.image_size, dicom_window=spec.dicom_window,
                                     resize=spec.resize))
            ok.append(len(results) - 1)
        except ImageReadError as e:
            results[-1].error = str(e)
    s, c = spec.image_size, spec.channels
    images = np.stack(arrays) if arrays else np.zeros((0, s, s, c), np.uint8)
    return results, images, ok


def predict_files(classifier: Predictor, paths: Sequence[Union[str, os.PathLike]], *,
                  explain_dir: Optional[Path] = None, target_layer: Optional[str] = None) -> list[Prediction]:
    """Predict image files (and the images under folders) with any backend.

    Files are read by :func:`read_files`; one that cannot be read gets its own ``error`` and the
    others are still predicted. The class is ``spec.decide`` of the calibrated probabilities (the
    operating threshold for a binary task that has one, else the arg-max); with an OOD detector each
    prediction carries its score and flag (:func:`classify`).

    Args:
        classifier: a :class:`Predictor` (:func:`load_predictor`).
        paths: files and folders.
        explain_dir: save a Grad-CAM figure per readable image there
            (:func:`medclass.evaluation.explain.save_explanations`; the torch backend only).
        target_layer: the Grad-CAM layer (None: the model's last stage).

    Returns:
        One :class:`Prediction` per expanded path, in order.
    Raises:
        ValueError: ``explain_dir`` with a backend that cannot explain.
    """
    if explain_dir is not None and not getattr(classifier, "can_explain", False):
        raise ValueError("explanations (Grad-CAM) need the torch backend: it takes gradients through the PyTorch "
                         "model")
    results, images, ok = read_files(paths, classifier.spec)
    predict_read(classifier, results, images, ok)
    if ok and explain_dir is not None:
        classifier.save_explanations(images, [Path(results[i].path).name for i in ok], Path(explain_dir),
                                     target_layer)
    return results


def scored(classifier, images: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """A backend's calibrated probabilities float32 ``(N, K)`` for uint8 ``(N, H, W, C)`` images and
    its OOD scores float64 ``(N,)`` (``predict_proba_ood``: one forward pass for both), or None for
    the scores when the backend has no OOD detector."""
    if getattr(classifier, "ood", None) is not None and hasattr(classifier, "predict_proba_ood"):
        return classifier.predict_proba_ood(images)
    return classifier.predict_proba(images), None


def classify(classifier, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, Optional[list[OODResult]]]:
    """A backend's answer for uint8 ``(N, H, W, C)`` images: calibrated probabilities float32
    ``(N, K)``, the classes int64 ``(N,)`` (``spec.decide``: the operating threshold of a binary
    task that has one, else the arg-max), and one :class:`~medclass.core.ood.OODResult` per image
    (``classifier.ood.results`` of its scores: flagged above the stored threshold), or None when
    the backend has no OOD detector."""
    spec: ModelSpec = classifier.spec
    detector = getattr(classifier, "ood", None)
    probs, scores = scored(classifier, images)
    ood = detector.results(scores) if detector is not None and scores is not None else None
    return probs, spec.decide(probs), ood


def predict_read(classifier, results: list[Prediction], images: np.ndarray, ok: Sequence[int]) -> list[Prediction]:
    """Fill in ``results`` (from :func:`read_files`) with :func:`classify`'s calibrated
    probabilities, class and OOD result of ``images`` uint8 ``(M, H, W, C)``, at the positions
    ``ok``. Returns ``results``."""
    spec: ModelSpec = classifier.spec
    if len(ok):
        probs, classes, ood = classify(classifier, images)
        for j, (i, pr, k) in enumerate(zip(ok, probs.tolist(), classes.tolist())):
            results[i].probabilities = {n: float(v) for n, v in zip(spec.class_names, pr)}
            results[i].predicted = spec.class_names[k]
            results[i].ood = ood[j] if ood is not None else None
    return results
