"""PyTorch backends: a run's own checkpoint (:class:`TorchClassifier`), an exported TorchScript
file (:func:`load_torchscript_classifier`), and the :class:`ModelSpec` of a run (:func:`spec_from_run`).

Every backend (these two and :class:`medclass.serving.onnx_backend.OnnxClassifier`) offers the same
interface, used by ``medclass predict`` and the web service:

* ``spec``: the :class:`~medclass.serving.spec.ModelSpec` (class names, preprocessing, calibration);
* ``can_explain``: whether :meth:`TorchClassifier.explain` (Grad-CAM) is available;
* ``predict_proba(images)``: uint8 ``(N, H, W, C)`` at ``spec.image_size`` -> float32 ``(N, K)``
  calibrated probabilities.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from ..engine import LoadedRun, predict_logits
from ..engine.inference import TTA_VIEWS
from .onnx_backend import ExportedClassifier, ModelFileError
from .spec import ModelSpec

__all__ = ["spec_from_run", "TorchClassifier", "TorchScriptClassifier", "load_torchscript_classifier",
           "TORCHSCRIPT_SPEC_FILE"]

#: Name of the :class:`ModelSpec` JSON inside a TorchScript archive (``torch.jit.save``'s ``_extra_files``).
TORCHSCRIPT_SPEC_FILE = "medclass_spec.json"


def _output_width(run: LoadedRun) -> int:
    """Logits per image of the run's model, from one forward pass on a blank image."""
    c = run.cfg.data
    x = run.preprocess(torch.zeros(1, c.channels, c.image_size, c.image_size, dtype=torch.uint8, device=run.device))
    was_training = run.model.training
    run.model.eval()
    try:
        with torch.inference_mode():
            return int(run.model(x).shape[1])
    finally:
        run.model.train(was_training)


def spec_from_run(run: LoadedRun) -> ModelSpec:
    """The :class:`ModelSpec` of a loaded run: what an exported or served copy needs to behave alike.

    Class names from ``classes.json``; channels, image size and DICOM window from the config's
    ``data`` section; mean/std from the run's :class:`~medclass.data.Preprocess` (``None`` when it
    does not normalise, e.g. an ensemble, whose members normalise inside the model); temperature
    and binary operating threshold from ``calibration.json`` (1.0 and ``None`` when the run was
    never evaluated); ``single_logit`` from the model's output width (one forward pass); the run
    folder's name and the checkpoint's epoch (-1 for an ensemble).

    Raises:
        ValueError: a ``calibration.json`` that is not JSON, or a spec field out of range.
    """
    c = run.cfg.data
    pre = run.preprocess
    normalise = bool(getattr(pre, "normalize", False))
    cal_path = run.files.calibration
    cal = {}
    if cal_path.is_file():
        try:
            cal = json.loads(cal_path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{cal_path} is not JSON ({e}); re-run `medclass evaluate` on the run") from e
    threshold = (cal.get("threshold") or {}).get("threshold")
    return ModelSpec(
        class_names=list(run.class_names),
        channels=int(c.channels),
        image_size=int(c.image_size),
        mean=[float(v) for v in pre.mean.flatten().tolist()] if normalise else None,
        std=[float(v) for v in pre.std.flatten().tolist()] if normalise else None,
        dicom_window=[float(v) for v in c.dicom_window] if c.dicom_window is not None else None,
        temperature=float(cal.get("temperature") or 1.0),
        threshold=float(threshold) if threshold is not None else None,
        single_logit=_output_width(run) == 1,
        run=run.files.root.resolve().name,
        checkpoint_epoch=int(run.checkpoint_epoch),
    )


class TorchClassifier:
    """A loaded run behind the backend interface: calibrated probabilities, and Grad-CAM.

    Args:
        run: from :func:`medclass.engine.load_run` (model in eval mode on ``run.device``).
        tta: flip views averaged with the image (keys of :data:`medclass.engine.inference.TTA_VIEWS`).
        batch_size: images per forward pass.

    Attributes:
        spec: :func:`spec_from_run` of ``run``.
        can_explain: True.
        run: the :class:`~medclass.engine.LoadedRun`.

    Raises:
        ValueError: an unknown TTA view (or see :func:`spec_from_run`).
    """

    can_explain = True

    def __init__(self, run: LoadedRun, tta: Sequence[str] = (), batch_size: int = 32) -> None:
        unknown = [v for v in tta if v not in TTA_VIEWS]
        if unknown:
            raise ValueError(f"unknown test-time augmentation {unknown}; choose from {sorted(TTA_VIEWS)}")
        self.run = run
        self.tta = tuple(tta)
        self.batch_size = batch_size
        self.spec = spec_from_run(run)

    def _check_images(self, images: np.ndarray) -> np.ndarray:
        return self.spec.check_images(images)

    def predict_logits(self, images: np.ndarray) -> np.ndarray:
        """Logits float32 ``(N, K)`` (``(N, 1)`` single-logit) for uint8 ``(N, H, W, C)`` images.

        Raises:
            ValueError: another dtype or shape than ``(N, spec.image_size, spec.image_size, spec.channels)``.
        """
        images = self._check_images(images)
        x = torch.from_numpy(np.array(images, copy=True)).permute(0, 3, 1, 2).contiguous()  # copy: read-only input
        z = predict_logits(self.run.model, x, self.run.preprocess, self.run.device, self.batch_size, tta=self.tta)
        if len(images) == 0:
            return np.zeros((0, 1 if self.spec.single_logit else len(self.spec.class_names)), np.float32)
        return z.numpy().astype(np.float32, copy=False)

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """Calibrated probabilities float32 ``(N, K)`` (``spec.probabilities`` of :meth:`predict_logits`).

        Raises:
            ValueError: images of another dtype or shape.
        """
        return self.spec.probabilities(self.predict_logits(images))

    def explain(self, image: np.ndarray, target_layer: Optional[str] = None,
                class_idx: Optional[int] = None) -> np.ndarray:
        """Grad-CAM heat map (:func:`medclass.evaluation.explain.gradcam`) of the predicted class.

        The explained class is ``class_idx`` when given (a caller that has already predicted the
        image passes its class and saves a forward pass), else ``spec.decide`` of
        :meth:`predict_proba` (so the operating threshold of a calibrated binary run counts, and
        TTA too): the class a user is shown.

        Args:
            image: uint8 ``(H, W, C)`` at ``spec.image_size`` and ``spec.channels``.
            target_layer: Grad-CAM layer; None: the model's last convolutional stage.
            class_idx: the class to explain, an index into ``spec.class_names``; None: the predicted one.

        Returns:
            float32 ``(H, W)`` in [0, 1], 1 = most important.

        Raises:
            ValueError: an image of another dtype or shape; an unknown ``target_layer``; a model
                without a default layer (an ensemble: give ``target_layer``).
        """
        from ..evaluation.explain import gradcam

        batch = self._check_images(np.asarray(image)[None])
        cls = int(self.spec.decide(self.predict_proba(batch))[0]) if class_idx is None else int(class_idx)
        x = torch.from_numpy(np.array(batch, copy=True)).permute(0, 3, 1, 2).to(self.run.device)
        heat = gradcam(self.run.model, self.run.preprocess(x), class_idx=cls, target_layer=target_layer)
        return heat[0].numpy().astype(np.float32, copy=False)


class TorchScriptClassifier(ExportedClassifier):
    """An exported TorchScript classifier (``medclass export RUN --format torchscript``), on the CPU.

    Attributes (besides :class:`~medclass.serving.onnx_backend.ExportedClassifier`'s):
        module: the ``torch.jit.ScriptModule``: uint8 ``(N, C, H, W)`` -> ``(logits, probabilities)``.
    """

    def __init__(self, path: Path, module, spec: ModelSpec, tta: Sequence[str] = (), batch_size: int = 32) -> None:
        super().__init__(spec, path, tta, batch_size)
        self.module = module

    def _logits(self, images_nchw: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            logits = self.module(torch.from_numpy(np.require(images_nchw, requirements=["C", "W"])))[0]
        return logits.float().numpy()


def load_torchscript_classifier(
    path: Union[str, os.PathLike], tta: Sequence[str] = (), batch_size: int = 32
) -> TorchScriptClassifier:
    """Open a model written by ``medclass export RUN --format torchscript`` (on the CPU).

    Args:
        path: the ``.pt`` file (a ``torch.jit.save`` archive with ``medclass_spec.json`` inside).
        tta: flip views averaged with each image (``"hflip"``, ``"vflip"``, ``"hvflip"``).
        batch_size: images per forward pass.

    Returns:
        A :class:`TorchScriptClassifier`: ``spec``, ``can_explain = False``, ``predict_proba``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ModelFileError: not a TorchScript archive (e.g. a training checkpoint), or no/invalid spec.
        ValueError: an unknown TTA view or ``batch_size`` < 1.
    """
    path = Path(path)
    hint = "export the run with `medclass export RUN --format torchscript`"
    if not path.is_file():
        raise FileNotFoundError(f"no TorchScript model at {path}: {hint}")
    extra = {TORCHSCRIPT_SPEC_FILE: ""}
    try:
        with warnings.catch_warnings():  # torch >= 2.9: "torch.jit.load is deprecated"; it still loads
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as e:  # RuntimeError "PytorchStreamReader failed...", "file not found: ..."
        raise ModelFileError(f"{path} is not a TorchScript model ({type(e).__name__}: {str(e).strip().splitlines()[0][:200]}); "
                             f"{hint}") from e
    text = extra[TORCHSCRIPT_SPEC_FILE]
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    if not text:
        raise ModelFileError(f"{path} has no medclass model spec ({TORCHSCRIPT_SPEC_FILE} with class names and "
                             f"preprocessing): it was not written by `medclass export`; {hint}")
    try:
        spec = ModelSpec.from_json(text)
    except ValueError as e:
        raise ModelFileError(f"{path}: invalid medclass model spec ({e}); {hint}") from e
    module.eval()
    return TorchScriptClassifier(path, module, spec, tta=tta, batch_size=batch_size)
