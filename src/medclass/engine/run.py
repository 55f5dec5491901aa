"""Loading a finished (or interrupted) run for evaluation and prediction."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..config import RunConfig
from ..data import Preprocess
from ..models import SoftVotingEnsemble, build_model
from .checkpoint import load_checkpoint
from .inference import channels_last_wanted, select_device
from ..runs import RunError, RunFiles

__all__ = ["LoadedRun", "load_run"]


@dataclass
class LoadedRun:
    """A run's config, class names and model (eval mode, on ``device``) with its preprocessing."""

    files: RunFiles
    cfg: RunConfig
    class_names: list[str]
    model: nn.Module
    preprocess: Preprocess
    device: torch.device
    checkpoint_epoch: int


def load_run(run_dir: Path, checkpoint: str = "best", device: str = "auto") -> LoadedRun:
    """Load ``run_dir``'s config and its ``best`` (or ``last``) checkpoint.

    Raises:
        RunError: not a run folder (no config.yaml / classes.json).
        CheckpointError: the checkpoint is missing or unreadable.
    """
    files = RunFiles(Path(run_dir))
    if files.ensemble.is_file():
        return _load_ensemble(files, device)
    if not files.config.is_file() or not files.classes.is_file():
        raise RunError(f"{run_dir} is not a medclass run folder (no config.yaml or classes.json)")
    cfg = RunConfig.load(files.config)
    class_names = json.loads(files.classes.read_text())
    dev = select_device(device)
    path = files.best if checkpoint == "best" else files.last
    state = load_checkpoint(path, map_location="cpu")
    model = build_model(cfg.model, len(class_names), cfg.data.channels)
    model.load_state_dict(state["model"])
    model.to(dev).eval()
    if channels_last_wanted(dev, cfg.data.image_size):
        model.to(memory_format=torch.channels_last)
    return LoadedRun(files, cfg, class_names, model, Preprocess.from_config(cfg.data).to(dev), dev, int(state["epoch"]))


def _load_ensemble(files: RunFiles, device: str) -> LoadedRun:
    """An ensemble run: its members' models, each behind its own normalisation, voting softly."""
    spec = json.loads(files.ensemble.read_text())
    members = [load_run(Path(m), spec.get("checkpoint", "best"), device) for m in spec["members"]]
    class_names = json.loads(files.classes.read_text())
    cfg = RunConfig.load(files.config)
    wrapped = [nn.Sequential(_Normalise(m.preprocess), m.model) for m in members]
    model = SoftVotingEnsemble(wrapped, spec["weights"]).to(members[0].device).eval()
    return LoadedRun(files, cfg, class_names, model, Preprocess().to(members[0].device), members[0].device, -1)


class _Normalise(nn.Module):
    """A member's mean/std normalisation applied to a batch already scaled to [0, 1]."""

    def __init__(self, preprocess: Preprocess) -> None:
        super().__init__()
        self.preprocess = preprocess

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.preprocess.normalize_(x)
