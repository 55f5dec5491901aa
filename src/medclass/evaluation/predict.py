"""Predicting unseen images or folders with a trained run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import torch

from ..data import ImageReadError, is_image_file, read_image
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


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, and the image files found (recursively, sorted) under given folders."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(q for q in p.rglob("*") if is_image_file(q))
        else:
            out.append(p)
    return out


def predict_images(run: LoadedRun, paths: Sequence[str | Path], batch_size: int = 32) -> list[Prediction]:
    """Predict each image; a file that cannot be read gets its own error and the others are
    still predicted. Returns one :class:`Prediction` per expanded path, in order."""
    c = run.cfg.data
    results: list[Prediction] = []
    arrays, ok_index = [], []
    for p in expand_paths(paths):
        results.append(Prediction(str(p)))
        try:
            arrays.append(read_image(p, c.channels, c.image_size))
            ok_index.append(len(results) - 1)
        except ImageReadError as e:
            results[-1].error = str(e)
    if arrays:
        images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
        probs = logits_to_probs(predict_logits(run.model, images, run.preprocess, run.device, batch_size))
        for i, pr in zip(ok_index, probs.tolist()):
            results[i].probabilities = {n: float(v) for n, v in zip(run.class_names, pr)}
            results[i].predicted = run.class_names[max(range(len(pr)), key=pr.__getitem__)]
    return results
