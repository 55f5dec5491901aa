"""Loading a finished (or interrupted) run for evaluation and prediction."""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from .. import pipeline
from ..config import RunConfig
from ..data import Preprocess
from ..models import SoftVotingEnsemble, build_model
from ..ood import OODDetector, read_ood
from ..runs import RunError, RunFiles
from ..spec import ModelSpec, legacy_spec, read_spec
from .checkpoint import load_checkpoint
from .inference import channels_last_wanted, logits_and_features, predict_logits, select_device

__all__ = ["LoadedRun", "load_run"]


@dataclass
class LoadedRun:
    """A run's config, class names and model (eval mode, on ``device``) with its preprocessing.

    ``spec`` is the run's :class:`~medclass.spec.ModelSpec` (:func:`medclass.spec.read_spec`, with
    ``checkpoint_epoch`` the loaded checkpoint's): class names, input, mean/std, calibration and
    threshold every consumer uses. A ``LoadedRun`` assembled by hand without one gets
    :func:`medclass.spec.legacy_spec` of its config, class names and folder (``calibration.json``).

    ``ood`` is the run's out-of-distribution detector (:func:`medclass.ood.read_ood`), or None: a
    run without ``ood.json`` (older runs, ensembles), or one fitted on another checkpoint.
    """

    files: RunFiles
    cfg: RunConfig
    class_names: list[str]
    model: nn.Module
    preprocess: Preprocess
    device: torch.device
    checkpoint_epoch: int
    spec: Optional[ModelSpec] = None
    ood: Optional[OODDetector] = None

    def __post_init__(self) -> None:
        if self.spec is None:
            self.spec = legacy_spec(self.cfg, self.class_names, self.files.root, self.checkpoint_epoch,
                                    ensemble=isinstance(self.model, SoftVotingEnsemble))

    def logits(self, images: np.ndarray, tta: Sequence[str] = (), batch_size: int = 32) -> np.ndarray:
        """The model's logits float32 ``(N, K)`` (``(N, 1)`` single-logit) for decoded images uint8
        ``(N, H, W, C)`` (:func:`medclass.pipeline.hwc_to_nchw`, then
        :func:`medclass.engine.predict_logits` with this run's preprocessing, in batches, ``tta``
        flip views averaged).

        Raises:
            ValueError: images that are not 4-dimensional; an unknown TTA view.
        """
        x = torch.from_numpy(pipeline.hwc_to_nchw(images))
        z = predict_logits(self.model, x, self.preprocess, self.device, batch_size, tta=tta)
        if len(x) == 0:
            return np.zeros((0, self.spec.num_outputs), np.float32)
        return z.numpy().astype(np.float32, copy=False)

    def predict_proba(self, images: np.ndarray, tta: Sequence[str] = (), batch_size: int = 32) -> np.ndarray:
        """Calibrated probabilities float32 ``(N, K)`` for uint8 ``(N, H, W, C)`` images:
        ``spec.probabilities`` of :meth:`logits` (the spec's temperature)."""
        return self.spec.probabilities(self.logits(images, tta, batch_size))

    def predict_proba_ood(self, images: np.ndarray, tta: Sequence[str] = (),
                          batch_size: int = 32) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """Calibrated probabilities float32 ``(N, K)`` (as :meth:`predict_proba`, ``tta`` views
        averaged) and the OOD scores float64 ``(N,)`` of :attr:`ood` (None without a detector)
        for uint8 ``(N, H, W, C)`` images. The score is of the image itself, never of a flip
        (the threshold was fitted that way); without TTA one forward pass gives both.

        Raises:
            ValueError: images that are not 4-dimensional; an unknown TTA view.
        """
        if self.ood is None:
            return self.predict_proba(images, tta, batch_size), None
        x = torch.from_numpy(pipeline.hwc_to_nchw(images))
        if len(x) == 0:
            return np.zeros((0, len(self.class_names)), np.float32), np.zeros(0)
        logits, feats = logits_and_features(self.model, x, self.preprocess, self.device, batch_size)
        scores = self.ood.score(logits.numpy(), feats.numpy())
        if tta:
            logits = predict_logits(self.model, x, self.preprocess, self.device, batch_size, tta=tta)
        return self.spec.probabilities(logits.numpy().astype(np.float32, copy=False)), scores


def load_run(run_dir: Path, checkpoint: str = "best", device: str = "auto", ood: bool = True) -> LoadedRun:
    """Load ``run_dir``'s spec (:func:`medclass.spec.read_spec`), config and its ``best`` (or
    ``last``) checkpoint. The network is built from the config's ``model`` section for the spec's
    classes and channels; the preprocessing is the spec's mean/std. With ``ood`` the run's
    out-of-distribution detector is read too (``RUN/ood.json``, :func:`medclass.ood.read_ood`;
    ``LoadedRun.ood``, None when there is none or it was fitted on another epoch); ``ood=False``
    leaves it unread (refitting it).

    Raises:
        RunError: not a run folder (no model_spec.json, and no config.yaml / classes.json).
        CheckpointError: the checkpoint is missing or unreadable.
        ValueError: an invalid model_spec.json, classes.json, calibration.json or (with ``ood``)
            ood.json / ood.npz (names the file).
    """
    files = RunFiles(Path(run_dir))
    if files.ensemble.is_file():
        return _load_ensemble(files, device)
    spec = read_spec(files.root)
    if not files.config.is_file():
        raise RunError(f"{run_dir} is not a medclass run folder (no config.yaml or classes.json)")
    cfg = RunConfig.load(files.config)
    dev = select_device(device)
    path = files.best if checkpoint == "best" else files.last
    state = load_checkpoint(path, map_location="cpu")
    # the spec says what the network is (architecture, task kind); the config's model section how it is built
    arch = dict(arch=spec.arch, single_logit=spec.single_logit) if spec.arch else {}
    model = build_model(dataclasses.replace(cfg.model, **arch), len(spec.class_names), spec.channels)
    model.load_state_dict(state["model"])
    model.to(dev).eval()
    if channels_last_wanted(dev, spec.image_size):
        model.to(memory_format=torch.channels_last)
    epoch = int(state["epoch"])
    spec = dataclasses.replace(spec, checkpoint_epoch=epoch)
    return LoadedRun(files, cfg, list(spec.class_names), model, Preprocess.from_spec(spec).to(dev), dev, epoch, spec,
                     _ood_for(files, epoch) if ood else None)


def _ood_for(files: RunFiles, epoch: int) -> Optional[OODDetector]:
    """The run's OOD detector (:func:`medclass.ood.read_ood`) when it was fitted on the loaded
    checkpoint's ``epoch``; otherwise None and a warning that says how to refit it.

    Raises:
        ValueError: an invalid ``ood.json`` / ``ood.npz`` (names the file).
    """
    detector = read_ood(files.root)
    if detector is not None and detector.checkpoint_epoch not in (-1, epoch):
        warnings.warn(f"{files.ood} was fitted on the checkpoint of epoch {detector.checkpoint_epoch}, not the loaded "
                      f"one (epoch {epoch}); predictions carry no OOD score: refit it with `medclass ood-fit "
                      f"{files.root}`", RuntimeWarning, stacklevel=3)
        return None
    return detector


def _load_ensemble(files: RunFiles, device: str) -> LoadedRun:
    """An ensemble run: its members' models, each behind its own normalisation, voting softly."""
    members_file = json.loads(files.ensemble.read_text())
    members = [load_run(Path(m), members_file.get("checkpoint", "best"), device) for m in members_file["members"]]
    spec = read_spec(files.root)
    cfg = RunConfig.load(files.config)
    wrapped = [nn.Sequential(_Normalise(m.preprocess), m.model) for m in members]
    model = SoftVotingEnsemble(wrapped, members_file["weights"]).to(members[0].device).eval()
    return LoadedRun(files, cfg, list(spec.class_names), model, Preprocess().to(members[0].device), members[0].device,
                     -1, dataclasses.replace(spec, checkpoint_epoch=-1))


class _Normalise(nn.Module):
    """A member's mean/std normalisation (:func:`medclass.pipeline.normalize`) applied to a batch
    already scaled to [0, 1] ``(N, C, H, W)``."""

    def __init__(self, preprocess: Preprocess) -> None:
        super().__init__()
        self.preprocess = preprocess

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.preprocess.normalize_(x)
