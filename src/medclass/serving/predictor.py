"""PyTorch backends: a run's own checkpoint (:class:`TorchClassifier`) and an exported TorchScript
file (:func:`load_torchscript_classifier`); :func:`spec_from_run` gives a loaded run's :class:`ModelSpec`.

Every backend (these two and :class:`medclass.serving.onnx_backend.OnnxClassifier`) offers the same
interface (:class:`medclass.serving.prediction.Predictor`; opened by
:func:`medclass.serving.prediction.load_predictor`), used by ``medclass predict``, the web service and
the API:

* ``spec``: the :class:`~medclass.core.spec.ModelSpec` (class names, preprocessing, calibration);
* ``can_explain``: whether :meth:`TorchClassifier.explain` (Grad-CAM) is available;
* ``predict_proba(images)``: uint8 ``(N, H, W, C)`` at ``spec.image_size`` -> float32 ``(N, K)``
  calibrated probabilities;
* ``ood`` (a :class:`medclass.core.ood.OODDetector` or None) and ``predict_proba_ood(images)``: the
  probabilities and the OOD scores ``(N,)`` (None without a detector); see
  :func:`medclass.serving.prediction.classify`.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from ..engine import LoadedRun
from ..engine.inference import TTA_VIEWS
from ..core.pipeline import hwc_to_nchw
from ..core.spec import ModelSpec
from .onnx_backend import ExportedClassifier, ModelFileError, exported_ood

__all__ = ["spec_from_run", "TorchClassifier", "TorchScriptClassifier", "load_torchscript_classifier",
           "TORCHSCRIPT_SPEC_FILE"]

#: Name of the :class:`ModelSpec` JSON inside a TorchScript archive (``torch.jit.save``'s ``_extra_files``).
TORCHSCRIPT_SPEC_FILE = "medclass_spec.json"


def spec_from_run(run: LoadedRun) -> ModelSpec:
    """The :class:`~medclass.core.spec.ModelSpec` of a loaded run: ``run.spec``, the run folder's
    ``model_spec.json`` written at training time (:func:`medclass.core.spec.read_spec`; for a run from
    before it, rebuilt from ``config.yaml``, ``classes.json`` and ``calibration.json``), with the
    loaded checkpoint's epoch. What an exported or served copy needs to behave alike.
    """
    return run.spec


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
        ood: the run's OOD detector (``run.ood``: ``RUN/ood.json``), or None.

    Raises:
        ValueError: an unknown TTA view.
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
        self.ood = run.ood

    def _check_images(self, images: np.ndarray) -> np.ndarray:
        return self.spec.check_images(images)

    def predict_logits(self, images: np.ndarray) -> np.ndarray:
        """Logits float32 ``(N, K)`` (``(N, 1)`` single-logit) for uint8 ``(N, H, W, C)`` images.

        Raises:
            ValueError: another dtype or shape than ``(N, spec.image_size, spec.image_size, spec.channels)``.
        """
        return self.run.logits(self._check_images(images), self.tta, self.batch_size)

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """Calibrated probabilities float32 ``(N, K)`` (``spec.probabilities`` of :meth:`predict_logits`).

        Raises:
            ValueError: images of another dtype or shape.
        """
        return self.spec.probabilities(self.predict_logits(images))

    def predict_proba_ood(self, images: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """Calibrated probabilities float32 ``(N, K)`` and OOD scores float64 ``(N,)`` (None
        without a detector): :meth:`medclass.engine.LoadedRun.predict_proba_ood`.

        Raises:
            ValueError: images of another dtype or shape.
        """
        return self.run.predict_proba_ood(self._check_images(images), self.tta, self.batch_size)

    def save_explanations(self, images: np.ndarray, names: Sequence[str], out_dir: Path,
                          target_layer: Optional[str] = None) -> None:
        """A Grad-CAM figure per image of uint8 ``images`` ``(N, H, W, C)`` into ``out_dir``, named after
        ``names`` (:func:`medclass.evaluation.explain.save_explanations`)."""
        from ..evaluation.explain import save_explanations

        run = self.run
        save_explanations(run.model, torch.from_numpy(hwc_to_nchw(self._check_images(images))), run.preprocess,
                          run.device, out_dir, list(names), run.class_names, target_layer=target_layer)

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
        x = torch.from_numpy(hwc_to_nchw(batch)).to(self.run.device)
        heat = gradcam(self.run.model, self.run.preprocess(x), class_idx=cls, target_layer=target_layer)
        return heat[0].numpy().astype(np.float32, copy=False)


class TorchScriptClassifier(ExportedClassifier):
    """An exported TorchScript classifier (``medclass export RUN --format torchscript``), on the CPU.

    Attributes (besides :class:`~medclass.serving.onnx_backend.ExportedClassifier`'s):
        module: the ``torch.jit.ScriptModule``: uint8 ``(N, C, H, W)`` -> ``(logits, probabilities)``,
            and ``ood_score`` ``(N,)`` third when exported with an OOD detector.
    """

    def __init__(self, path: Path, module, spec: ModelSpec, tta: Sequence[str] = (), batch_size: int = 32,
                 ood=None) -> None:
        super().__init__(spec, path, tta, batch_size, ood)
        self.module = module

    def _outputs(self, images_nchw: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray]]:
        with torch.inference_mode():
            out = self.module(torch.from_numpy(np.require(images_nchw, requirements=["C", "W"])))
        score = out[2].float().numpy() if self.ood is not None and len(out) > 2 else None
        return out[0].float().numpy(), score


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
    # the spec's OOD record says whether the graph returns the score third (export_run writes both or neither)
    ood = exported_ood(path, spec, has_output=bool(spec.extra.get("ood")))
    return TorchScriptClassifier(path, module, spec, tta=tta, batch_size=batch_size, ood=ood)
