"""Tracking the best epoch of a monitored metric, and early stopping."""

from __future__ import annotations

import math
from typing import Optional

from .schedules import monitor_mode

__all__ = ["EarlyStopping"]


class EarlyStopping:
    """Keras-style early stopping on ``monitor`` (e.g. ``val_loss``, ``val_accuracy``).

    An epoch improves on the best when it is better by more than ``min_delta`` (lower for loss
    metrics, higher otherwise). Training stops after ``patience`` epochs without improvement;
    ``patience=None`` never stops but still tracks the best epoch (for the best checkpoint).
    """

    def __init__(self, monitor: str = "val_loss", patience: Optional[int] = 10, min_delta: float = 0.0) -> None:
        self.monitor = monitor
        self.mode = monitor_mode(monitor)
        self.patience = patience
        self.min_delta = abs(min_delta)
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_epoch = -1
        self.wait = 0

    def update(self, value: float, epoch: int) -> bool:
        """Record the epoch's value; True if it is a new best."""
        better = (
            value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta
        )
        if better:
            self.best, self.best_epoch, self.wait = float(value), epoch, 0
        else:
            self.wait += 1
        return better

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.wait >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch, self.wait = float(state["best"]), int(state["best_epoch"]), int(state["wait"])
