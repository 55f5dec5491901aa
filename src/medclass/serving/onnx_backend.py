"""Run an exported classifier with ONNX Runtime, in a process that never imports PyTorch.

An ONNX file written by ``medclass export RUN --format onnx``
(:func:`medclass.serving.export.export_run`) holds the whole pipeline after decoding: graph input
``"image"``, uint8 ``(N, C, H, W)`` with a dynamic batch ``N``; the graph scales to [0, 1],
normalises with the run's mean/std (or per image: ``spec.intensity``), runs the network and outputs
``"logits"`` float32 ``(N, K)`` (``(N, 1)`` for a single-logit binary model) and ``"probabilities"``
float32 ``(N, K)`` (temperature-scaled); a run exported with its out-of-distribution detector (``RUN/ood.json``) also
outputs ``"ood_score"`` float32 ``(N,)`` (:mod:`medclass.core.ood`'s score, computed in the graph). The
:class:`~medclass.core.spec.ModelSpec` (class names, image size, channels, DICOM window, temperature,
threshold; the OOD method and threshold in ``extra["ood"]``) is stored as JSON in the model's
``metadata_props`` under :data:`SPEC_KEY`.

This module imports only numpy, Pillow (through :mod:`medclass.data.io`), onnxruntime (when a model
is opened) and the torch-free :mod:`medclass.core.spec`, :mod:`medclass.core.pipeline` and
and :mod:`medclass.core.ood`. It also holds what every exported-model backend shares (test-time
augmentation by flips in numpy), which the TorchScript backend (:mod:`medclass.serving.predictor`)
reuses; files are predicted by :func:`medclass.serving.prediction.predict_files`, opened by
:func:`medclass.serving.prediction.load_predictor`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from ..core.ood import OODDetector, ood_from_spec
from ..core.pipeline import hwc_to_nchw
from ..core.spec import ModelSpec

__all__ = [
    "SPEC_KEY", "IMAGE_INPUT", "LOGITS_OUTPUT", "PROBS_OUTPUT", "OOD_OUTPUT", "TTA_FLIPS", "ModelFileError",
    "ExportedClassifier", "OnnxClassifier", "load_onnx_classifier", "open_onnx_session",
]

#: ONNX ``metadata_props`` key holding the :class:`ModelSpec` JSON.
SPEC_KEY = "medclass.spec"
#: Graph input: uint8 ``(N, C, H, W)`` decoded and resized images (no scaling, no normalisation).
IMAGE_INPUT = "image"
#: Graph outputs: raw logits ``(N, K)`` (``(N, 1)`` single-logit) and calibrated probabilities ``(N, K)``.
LOGITS_OUTPUT = "logits"
PROBS_OUTPUT = "probabilities"
#: Optional graph output: the OOD score float32 ``(N,)`` of :mod:`medclass.core.ood` (higher = more foreign).
OOD_OUTPUT = "ood_score"

#: Test-time augmentation views, as axes of an ``(N, H, W, C)`` batch to flip; the same views as
#: :data:`medclass.engine.inference.TTA_VIEWS` (which flips ``(N, C, H, W)``).
TTA_FLIPS = {"hflip": (2,), "vflip": (1,), "hvflip": (1, 2)}

_EXPORT_HINT = "export the run with `medclass export RUN --format {fmt}`"


class ModelFileError(ValueError):
    """An exported model file cannot be used: not an ONNX/TorchScript file, no (or an invalid)
    stored :class:`ModelSpec`, or a graph that does not take what its spec says. The message names
    the file and says how to make a good one."""


def _check_tta(tta: Sequence[str]) -> tuple[str, ...]:
    unknown = [v for v in tta if v not in TTA_FLIPS]
    if unknown:
        raise ValueError(f"unknown test-time augmentation {unknown}; choose from {sorted(TTA_FLIPS)}")
    return tuple(tta)


class ExportedClassifier:
    """What every backend offers the CLI and the web service: ``spec``, ``can_explain``,
    :meth:`predict_proba`, ``ood`` and :meth:`predict_proba_ood`. Subclasses implement
    :meth:`_outputs` for one uint8 NCHW batch.

    Attributes:
        spec: the model's :class:`ModelSpec`.
        ood: the :class:`~medclass.core.ood.OODDetector` summary of ``spec.extra["ood"]`` (method,
            threshold; the graph outputs the score), or None (exported without a detector).
        can_explain: False (no gradients through an exported graph: Grad-CAM needs the torch backend).
        tta: flip views averaged with the image (keys of :data:`TTA_FLIPS`).
        batch_size: images per graph run.
        path: the model file.
    """

    can_explain = False

    def __init__(self, spec: ModelSpec, path: Path, tta: Sequence[str] = (), batch_size: int = 32,
                 ood: Optional[OODDetector] = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.spec = spec
        self.path = Path(path)
        self.tta = _check_tta(tta)
        self.batch_size = batch_size
        self.ood = ood

    def _outputs(self, images_nchw: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray]]:  # pragma: no cover
        """Logits ``(N, K)`` and the graph's OOD score ``(N,)`` (None when it has none) of one batch."""
        raise NotImplementedError

    def _run(self, images: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """Logits float32 ``(N, K)`` averaged over the TTA views, and the OOD scores float64
        ``(N,)`` of the images themselves (not the flips), or None."""
        images = self._check_images(images)
        out, scores = [], []
        for i in range(0, len(images), self.batch_size):
            batch = images[i : i + self.batch_size]
            z, s = self._outputs(hwc_to_nchw(batch))
            z = z.astype(np.float64)
            for view in self.tta:
                z = z + self._outputs(hwc_to_nchw(np.flip(batch, TTA_FLIPS[view])))[0]
            out.append((z / (1 + len(self.tta))).astype(np.float32))
            if s is not None:
                scores.append(np.asarray(s, np.float64).reshape(-1))
        if not out:
            return np.zeros((0, self.spec.num_outputs), np.float32), np.zeros(0) if self.ood is not None else None
        return np.concatenate(out), np.concatenate(scores) if self.ood is not None and scores else None

    def _check_images(self, images: np.ndarray) -> np.ndarray:
        return self.spec.check_images(images)

    def predict_logits(self, images: np.ndarray) -> np.ndarray:
        """Logits float32 ``(N, K)`` (``(N, 1)`` for a single-logit model), averaged over the TTA views.

        Args:
            images: uint8 ``(N, H, W, C)`` with ``H = W = spec.image_size`` and ``C = spec.channels``
                (what :func:`medclass.data.io.read_image` returns, stacked).

        Raises:
            ValueError: another dtype or shape.
        """
        return self._run(images)[0]

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities float32 ``(N, K)`` for uint8 ``(N, H, W, C)`` images at
        ``spec.image_size`` (see :meth:`predict_logits`); ``spec.decide`` turns them into classes.

        Raises:
            ValueError: images of another dtype or shape.
        """
        return self.spec.probabilities(self.predict_logits(images))

    def predict_proba_ood(self, images: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """Calibrated probabilities float32 ``(N, K)`` (as :meth:`predict_proba`) and the graph's
        OOD scores float64 ``(N,)`` of the images themselves (None without a detector); one graph
        run per batch (more with TTA).

        Raises:
            ValueError: images of another dtype or shape.
        """
        logits, scores = self._run(images)
        return self.spec.probabilities(logits), scores


def open_onnx_session(path: Union[str, os.PathLike], threads: Optional[int] = None, spinning: bool = True):
    """An ``onnxruntime.InferenceSession`` on ``CPUExecutionProvider`` (see
    :func:`medclass.serving.export.onnx_session`, which calls this).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``threads`` < 1.
        ImportError: ``onnxruntime`` is not installed.
        onnxruntime errors: the file is not a valid ONNX model.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no ONNX model at {path}")
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ImportError('ONNX inference needs onnxruntime: pip install -c constraints.txt -e "."') from exc
    options = ort.SessionOptions()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        options.intra_op_num_threads = threads
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


class OnnxClassifier(ExportedClassifier):
    """An exported ONNX classifier run by ONNX Runtime (CPU); open it with :func:`load_onnx_classifier`.

    Attributes (besides :class:`ExportedClassifier`'s):
        session: the ``onnxruntime.InferenceSession``.
    """

    def __init__(self, path: Path, session, spec: ModelSpec, tta: Sequence[str] = (), batch_size: int = 32,
                 ood: Optional[OODDetector] = None) -> None:
        super().__init__(spec, path, tta, batch_size, ood)
        self.session = session
        self._names = [LOGITS_OUTPUT, OOD_OUTPUT] if ood is not None else [LOGITS_OUTPUT]

    def _outputs(self, images_nchw: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray]]:
        got = self.session.run(self._names, {IMAGE_INPUT: images_nchw})
        return got[0], (got[1] if len(got) > 1 else None)


def load_onnx_classifier(
    path: Union[str, os.PathLike],
    tta: Sequence[str] = (),
    threads: Optional[int] = None,
    spinning: bool = True,
    batch_size: int = 32,
) -> OnnxClassifier:
    """Open a model written by ``medclass export RUN --format onnx``, without PyTorch.

    Args:
        path: the ``.onnx`` file.
        tta: flip views to average with each image (keys of :data:`TTA_FLIPS`, e.g. ``("hflip",)``).
        threads, spinning: ONNX Runtime intra-op threads (None: one per physical core) and whether
            idle threads busy-wait (see :func:`open_onnx_session`).
        batch_size: images per graph run.

    Returns:
        An :class:`OnnxClassifier`: ``spec``, ``can_explain = False``, ``predict_proba(images)``
        with images uint8 ``(N, H, W, C)`` -> float32 ``(N, K)``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ModelFileError: not an ONNX model; no ``medclass.core.spec`` metadata (not written by
            ``medclass export``) or an invalid one; a graph without the ``"image"`` uint8 input
            and ``"logits"`` output its spec implies.
        ValueError: an unknown TTA view, ``threads`` or ``batch_size`` < 1.
        ImportError: onnxruntime is not installed.
    """
    path = Path(path)
    hint = _EXPORT_HINT.format(fmt="onnx")
    if not path.is_file():
        raise FileNotFoundError(f"no ONNX model at {path}: {hint}")
    _check_tta(tta)
    try:
        session = open_onnx_session(path, threads=threads, spinning=spinning)
    except (ImportError, ValueError):
        raise
    except Exception as e:  # onnxruntime's InvalidProtobuf, Fail, InvalidGraph...
        raise ModelFileError(f"{path} is not a usable ONNX model ({type(e).__name__}: {str(e).strip()[:300]}); "
                             f"{hint}") from e
    meta = session.get_modelmeta().custom_metadata_map
    if SPEC_KEY not in meta:
        raise ModelFileError(f"{path} has no medclass model spec (ONNX metadata {SPEC_KEY!r}: class names, "
                             f"preprocessing): it was not written by `medclass export`; {hint}")
    try:
        spec = ModelSpec.from_json(meta[SPEC_KEY])
    except ValueError as e:
        raise ModelFileError(f"{path}: invalid medclass model spec ({e}); {hint}") from e
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name for o in session.get_outputs()}
    image = inputs.get(IMAGE_INPUT)
    want = [spec.channels, spec.image_size, spec.image_size]
    if image is None or image.type != "tensor(uint8)" or list(image.shape[1:]) != want or LOGITS_OUTPUT not in outputs:
        got = ", ".join(f"{i.name} {i.type} {i.shape}" for i in inputs.values())
        raise ModelFileError(f"{path}: the graph does not take {IMAGE_INPUT!r} uint8 (N, {want[0]}, {want[1]}, {want[2]}) "
                             f"and give {LOGITS_OUTPUT!r} as its spec says (inputs: {got}; outputs: "
                             f"{sorted(outputs)}); {hint}")
    return OnnxClassifier(path, session, spec, tta=tta, batch_size=batch_size,
                          ood=exported_ood(path, spec, OOD_OUTPUT in outputs))


def exported_ood(path: Path, spec: ModelSpec, has_output: bool) -> Optional[OODDetector]:
    """The OOD detector of an exported model: its spec's ``extra["ood"]``
    (:func:`medclass.core.ood.ood_from_spec`) when the graph also has the :data:`OOD_OUTPUT` output;
    None when it has neither (exported before medclass stored one, or from a run without one).

    Raises:
        ModelFileError: one without the other, or an invalid record (names the file).
    """
    hint = _EXPORT_HINT.format(fmt="onnx" if path.suffix.lower() == ".onnx" else "torchscript")
    try:
        detector = ood_from_spec(spec)
    except ValueError as e:
        raise ModelFileError(f"{path}: invalid OOD record in its model spec ({e}); {hint}") from e
    if (detector is None) != (not has_output):
        raise ModelFileError(f"{path}: its spec {'has' if detector else 'lacks'} an OOD record but the graph "
                             f"{'lacks' if detector else 'has'} the {OOD_OUTPUT!r} output; {hint}")
    return detector
