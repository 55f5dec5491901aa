"""Predicting unseen images or folders with a trained run."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import torch

from ..data.io import ImageReadError, expand_image_paths, read_image
from ..engine import LoadedRun, logits_to_probs, predict_logits

__all__ = ["Prediction", "expand_paths", "predict_images"]


@dataclass
class Prediction:
    """One file's outcome: the predicted class and per-class probabilities, or an error."""

    path: str
    predicted: Optional[str] = None
    probabilities: Optional[dict[str, float]] = None
    error: Optional[str] = None

    def to_dict(self) -> dict:
        return {"path": self.path, "predicted": self.predicted, "probabilities": self.probabilities, "error": self.error}


expand_paths = expand_image_paths  # the name this module has always exported


def stored_calibration(run: LoadedRun) -> dict:
    """The run's ``calibration.json`` (temperature, binary threshold) or ``{}``."""
    path = run.files.calibration
    return json.loads(path.read_text()) if path.is_file() else {}


def predict_images(
    run: LoadedRun,
    paths: Sequence[str | Path],
    batch_size: int = 32,
    tta: Sequence[str] = (),
    explain_dir: Optional[Path] = None,
    target_layer: Optional[str] = None,
) -> list[Prediction]:
    """Predict each image; a file that cannot be read gets its own error and the others are
    still predicted. Returns one :class:`Prediction` per expanded path, in order.

    When the run was calibrated (``medclass evaluate`` writes ``calibration.json``), the
    probabilities are temperature-scaled and a binary prediction uses the operating threshold
    chosen on validation instead of 0.5. ``tta`` averages flip views; ``explain_dir`` saves a
    Grad-CAM figure per image there (:func:`medclass.evaluation.explain.save_explanations`).
    """
    c = run.cfg.data
    cal = stored_calibration(run)
    results: list[Prediction] = []
    arrays, ok_index = [], []
    for p in expand_paths(paths):
        results.append(Prediction(str(p)))
        try:
            arrays.append(read_image(p, c.channels, c.image_size, dicom_window=c.dicom_window))
            ok_index.append(len(results) - 1)
        except ImageReadError as e:
            results[-1].error = str(e)
    if arrays:
        images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
        logits = predict_logits(run.model, images, run.preprocess, run.device, batch_size, tta=tta)
        probs = logits_to_probs(logits / cal.get("temperature", 1.0))
        threshold = (cal.get("threshold") or {}).get("threshold")
        for i, pr in zip(ok_index, probs.tolist()):
            results[i].probabilities = {n: float(v) for n, v in zip(run.class_names, pr)}
            if threshold is not None and len(pr) == 2:
                results[i].predicted = run.class_names[int(pr[1] >= threshold)]
            else:
                results[i].predicted = run.class_names[max(range(len(pr)), key=pr.__getitem__)]
        if explain_dir is not None:
            from .explain import save_explanations

            save_explanations(run.model, images, run.preprocess, run.device, explain_dir,
                              [Path(results[i].path).name for i in ok_index], run.class_names,
                              target_layer=target_layer)
    return results
