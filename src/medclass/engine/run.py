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

from ..core import pipeline
from ..core.config import RunConfig
from ..data import Preprocess
from ..models import SoftVotingEnsemble, build_model
from ..core.ood import OODDetector, read_ood
from ..core.runs import RunError, RunFiles
from ..core.spec import ModelSpec, legacy_spec, read_spec
from .checkpoint import CheckpointError, load_checkpoint
from .inference import channels_last_wanted, ood_scores, predict_logits, select_device

__all__ = ["LoadedRun", "load_run"]


@dataclass
class LoadedRun:
    """A run's config, class names and model (eval mode, on ``device``) with its preprocessing.

    ``spec`` is the run's :class:`~medclass.core.spec.ModelSpec` (:func:`medclass.core.spec.read_spec`, with
    ``checkpoint_epoch`` the loaded checkpoint's): class names, input, mean/std, calibration and
    threshold every consumer uses. A ``LoadedRun`` assembled by hand without one gets
    :func:`medclass.core.spec.legacy_spec` of its config, class names and folder (``calibration.json``).

    ``ood`` is the run's out-of-distribution detector (:func:`medclass.core.ood.read_ood`), or None: a
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
        ``(N, H, W, C)`` (:func:`medclass.core.pipeline.hwc_to_nchw`, then
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
        logits, scores = ood_scores(self.ood, self.model, x, self.preprocess, self.device, batch_size)
        if tta:
            logits = predict_logits(self.model, x, self.preprocess, self.device, batch_size, tta=tta)
        return self.spec.probabilities(logits.numpy().astype(np.float32, copy=False)), scores


def load_run(run_dir: Path, checkpoint: str = "best", device: str = "auto", ood: bool = True,
             _within: tuple[Path, ...] = ()) -> LoadedRun:
    """Load ``run_dir``'s spec (:func:`medclass.core.spec.read_spec`), config and its ``best`` (or
    ``last``) checkpoint. The network is built from the config's ``model`` section for the spec's
    classes and channels; the preprocessing is the spec's (mean/std, intensity rule). With ``ood`` the run's
    out-of-distribution detector is read too (``RUN/ood.json``, :func:`medclass.core.ood.read_ood`;
    ``LoadedRun.ood``, None when there is none or it was fitted on another epoch); ``ood=False``
    leaves it unread (refitting it).

    Raises:
        RunError: not a run folder (no model_spec.json, and no config.yaml / classes.json).
        CheckpointError: the checkpoint is missing or unreadable.
        ValueError: an invalid model_spec.json, classes.json, calibration.json, ensemble.json or
            (with ``ood``) ood.json / ood.npz, or class names that do not match the checkpoint's
            output layer (names the file).
    """
    files = RunFiles(Path(run_dir))
    if files.ensemble.is_file():
        return _load_ensemble(files, device, _within)
    spec = read_spec(files.root)
    if not files.config.is_file():
        raise RunError(f"{run_dir} is not a medclass run folder (no config.yaml or classes.json)")
    cfg = RunConfig.load(files.config)
    dev = select_device(device)
    path = files.best if checkpoint == "best" else files.last
    state = load_checkpoint(path, map_location="cpu")
    # the spec says what the network is (architecture, task kind); the config's model section how it is built
    arch = dict(arch=spec.arch, single_logit=spec.single_logit) if spec.arch else {}
    names_file = files.spec if files.spec.is_file() else files.classes
    weights = state.get("model") if isinstance(state, dict) else None
    if not isinstance(weights, dict) or not weights:
        raise CheckpointError(f"{path} has no model weights (no 'model' entry); restore it from a copy, or train "
                              "the run again")
    model = build_model(dataclasses.replace(cfg.model, **arch), len(spec.class_names), spec.channels)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        head = _head_outputs(weights)
        if head is not None and head != spec.num_outputs:
            raise ValueError(f"{names_file} gives {len(spec.class_names)} class names ({spec.num_outputs} outputs), but "
                             f"the checkpoint {path} has an output layer of {head}; the run folder is inconsistent: "
                             f"restore {names_file.name} from the run's training, or train the run again") from None
        detail = " ".join(str(e).split())[:300]
        raise ValueError(f"the checkpoint {path} does not fit the network described by {files.config.name} and "
                         f"{names_file.name} ({detail}); restore the run folder's files, or train the run again") from None
    model.to(dev).eval()
    if channels_last_wanted(dev, spec.image_size):
        model.to(memory_format=torch.channels_last)
    epoch = int(state["epoch"])
    spec = dataclasses.replace(spec, checkpoint_epoch=epoch)
    return LoadedRun(files, cfg, list(spec.class_names), model, Preprocess.from_spec(spec).to(dev), dev, epoch, spec,
                     _ood_for(files, epoch, model) if ood else None)


def _ood_for(files: RunFiles, epoch: int, model: Optional[nn.Module] = None) -> Optional[OODDetector]:
    """The run's OOD detector (:func:`medclass.core.ood.read_ood`) when it was fitted on the loaded
    checkpoint's ``epoch``; otherwise None and a warning that says how to refit it.

    Raises:
        ValueError: an invalid ``ood.json`` / ``ood.npz``, or one naming feature layers ``model``
            does not have (the message names the file and says to refit it).
    """
    detector = read_ood(files.root)
    if detector is not None and detector.needs_features and model is not None and hasattr(model, "stage_indices"):
        try:
            model.stage_indices(detector.layers)
        except ValueError as e:
            raise ValueError(f"{files.ood}: invalid OOD detector ({e}); refit it with `medclass ood-fit "
                             f"{files.root}` (or delete it)") from None
    if detector is not None and detector.checkpoint_epoch not in (-1, epoch):
        warnings.warn(f"{files.ood} was fitted on the checkpoint of epoch {detector.checkpoint_epoch}, not the loaded "
                      f"one (epoch {epoch}); predictions carry no OOD score: refit it with `medclass ood-fit "
                      f"{files.root}`", RuntimeWarning, stacklevel=3)
        return None
    return detector


def _head_outputs(weights: dict) -> Optional[int]:
    """Outputs of the network's last layer, as far as a state dict tells (the first dimension of its
    last 1-D or 2-D tensor, the head's bias or weight), or None; used to explain a failed load."""
    for value in reversed(list(weights.values())):
        if isinstance(value, torch.Tensor) and value.ndim == 1:
            return int(value.shape[0])
        if isinstance(value, torch.Tensor) and value.ndim == 2:
            return int(value.shape[0])
    return None


def _read_ensemble(files: RunFiles) -> dict:
    """``ensemble.json`` checked: ``members`` a non-empty list of folder names, ``weights`` one number each.

    Raises:
        ValueError: not JSON, or another layout (names the file).
    """
    path = files.ensemble
    again = "write it again with `medclass ensemble`"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not JSON ({e}); {again}") from None
    members = data.get("members") if isinstance(data, dict) else None
    weights = data.get("weights") if isinstance(data, dict) else None
    if not isinstance(members, list) or not members or not all(isinstance(m, str) and m for m in members):
        raise ValueError(f"{path}: 'members' must be a non-empty list of run folders; {again}")
    if (not isinstance(weights, list) or len(weights) != len(members)
            or not all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights)):
        raise ValueError(f"{path}: 'weights' must be a list of {len(members)} numbers, one per member; {again}")
    if data.get("checkpoint", "best") not in ("best", "last"):
        raise ValueError(f"{path}: 'checkpoint' must be best or last; {again}")
    return data


def _load_ensemble(files: RunFiles, device: str, within: tuple[Path, ...] = ()) -> LoadedRun:
    """An ensemble run: its members' models, each behind its own normalisation, voting softly.

    Raises:
        RunError: the ensemble lists itself, directly or through another ensemble (a cycle).
        ValueError: an invalid ``ensemble.json`` (see :func:`_read_ensemble`).
    """
    members_file = _read_ensemble(files)
    here = files.root.resolve()
    chain = (*within, here)
    for m in members_file["members"]:
        if Path(m).resolve() in chain:
            raise RunError(f"{files.ensemble} lists {m}, which is the ensemble itself or one that contains it: an "
                           "ensemble cannot contain itself; list the member runs only")
    members = [load_run(Path(m), members_file.get("checkpoint", "best"), device, chain)
               for m in members_file["members"]]
    spec = read_spec(files.root)
    cfg = RunConfig.load(files.config)
    wrapped = [nn.Sequential(_Normalise(m.preprocess), m.model) for m in members]
    model = SoftVotingEnsemble(wrapped, members_file["weights"]).to(members[0].device).eval()
    return LoadedRun(files, cfg, list(spec.class_names), model, Preprocess().to(members[0].device), members[0].device,
                     -1, dataclasses.replace(spec, checkpoint_epoch=-1))


class _Normalise(nn.Module):
    """A member's normalisation (mean/std or per-image, :func:`medclass.core.pipeline.normalize`) applied to a batch
    already scaled to [0, 1] ``(N, C, H, W)``."""

    def __init__(self, preprocess: Preprocess) -> None:
        super().__init__()
        self.preprocess = preprocess

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.preprocess.normalize_(x)
