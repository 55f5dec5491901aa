"""Predicting unseen images or folders with a trained run (the torch backend of ``medclass predict``).

The loop and its result type are :mod:`medclass.serving.prediction`'s, shared with the ONNX and
TorchScript backends; this module adds the loaded run as a backend and Grad-CAM figures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..core import pipeline
from ..data.io import expand_image_paths
from ..engine import LoadedRun
from .prediction import Prediction, predict_read, read_files

__all__ = ["Prediction", "expand_paths", "predict_images"]

expand_paths = expand_image_paths  # the name this module has always exported


class _RunBackend:
    """A loaded run behind the backend interface of :mod:`medclass.serving.prediction` (``spec``,
    ``predict_proba``, and the run's OOD detector: ``ood``, ``predict_proba_ood``)."""

    def __init__(self, run: LoadedRun, tta: Sequence[str], batch_size: int) -> None:
        self.run, self.spec, self.tta, self.batch_size = run, run.spec, tuple(tta), batch_size
        self.ood = run.ood

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        return self.run.predict_proba(images, self.tta, self.batch_size)

    def predict_proba_ood(self, images: np.ndarray):
        return self.run.predict_proba_ood(images, self.tta, self.batch_size)


def predict_images(
    run: LoadedRun,
    paths: Sequence[str | Path],
    batch_size: int = 32,
    tta: Sequence[str] = (),
    explain_dir: Optional[Path] = None,
    target_layer: Optional[str] = None,
) -> list[Prediction]:
    """Predict each image; a file that cannot be read gets its own error and the others are
    still predicted. Returns one :class:`~medclass.serving.prediction.Prediction` per expanded path, in order.

    Images are read and predicted by the run's spec (``run.spec``): when the run was calibrated
    (``medclass evaluate`` stores temperature and threshold in it), the probabilities are
    temperature-scaled and a binary prediction uses the operating threshold chosen on validation
    instead of the arg-max. When the run has an OOD detector (``RUN/ood.json``, see
    :mod:`medclass.core.ood`), each prediction carries its ``ood`` score and flag. ``tta`` averages flip views; ``explain_dir`` saves a Grad-CAM figure
    per image there (:func:`medclass.evaluation.explain.save_explanations`).

    Raises:
        ValueError: an unknown TTA view.
    """
    results, images, ok = read_files(paths, run.spec)
    predict_read(_RunBackend(run, tta, batch_size), results, images, ok)
    if ok and explain_dir is not None:
        from ..evaluation.explain import save_explanations

        save_explanations(run.model, torch.from_numpy(pipeline.hwc_to_nchw(images)), run.preprocess, run.device,
                          explain_dir, [Path(results[i].path).name for i in ok], run.class_names,
                          target_layer=target_layer)
    return results
