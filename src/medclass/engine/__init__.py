"""Engine: the training loop and its one step (:mod:`~medclass.engine.fit`), the time budget, LR schedules, early
stopping, checkpoints, loading runs, tracking. The run folder's layout is :mod:`medclass.core.runs`.

Names are imported lazily (PEP 562): ``import medclass.engine.tracking`` (torch-free, the CLI checks MLflow
with it before it imports PyTorch) does not import the trainer, PyTorch or tqdm.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> submodule that defines it
_EXPORTS = {
    "CheckpointError": "checkpoint", "load_checkpoint": "checkpoint", "save_checkpoint": "checkpoint",
    "EarlyStopping": "early_stopping",
    "logits_to_probs": "inference", "predict_logits": "inference", "select_device": "inference",
    "LoadedRun": "run", "load_run": "run",
    "SCHEDULES": "schedules", "LRSchedule": "schedules", "cosine_factor": "schedules", "monitor_mode": "schedules",
    "make_loss": "fit", "predicted_class": "fit",
    "TrainResult": "trainer", "train": "trainer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """``medclass.engine.train`` and the other names, imported from their module on first access."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'medclass.engine' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
