"""Learning-rate schedules: constant, exponential decay, reduce-on-plateau, cosine with warm-up."""

from __future__ import annotations

import math
from typing import Optional

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau

from ..config import TrainConfig

__all__ = ["LRSchedule", "SCHEDULES", "monitor_mode"]

SCHEDULES = ("constant", "exponential", "plateau", "cosine")


def monitor_mode(monitor: str) -> str:
    """``"min"`` for loss-like metrics (name contains ``loss``), ``"max"`` otherwise."""
    return "min" if "loss" in monitor else "max"


def cosine_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Multiplier of the peak LR at ``step``: linear warm-up over ``warmup`` steps, then half a
    cosine from 1 down to ``min_ratio`` at ``total`` (Loshchilov & Hutter, SGDR, arXiv:1608.03983;
    warm-up as Goyal et al., arXiv:1706.02677)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class LRSchedule:
    """One object for every schedule, stepped by the training loop after each batch and epoch.

    - ``exponential``: ``lr = lr0 * decay_rate ** (step / decay_steps)``, continuous, per batch
      (Keras ``ExponentialDecay(staircase=False)``; the seeds use 1e-4, 40 steps, 0.96).
    - ``plateau``: multiply by ``plateau_factor`` after ``plateau_patience`` epochs without
      improvement of ``monitor`` (PyTorch ``ReduceLROnPlateau``), per epoch.
    - ``cosine``: warm-up for ``warmup_epochs`` then cosine to ``min_lr_ratio * lr``, per batch.
    - ``constant``.

    Raises:
        ValueError: an unknown schedule name.
    """

    def __init__(self, cfg: TrainConfig, optimizer: Optimizer, steps_per_epoch: int) -> None:
        if cfg.schedule not in SCHEDULES:
            raise ValueError(f"unknown train.schedule {cfg.schedule!r}; choose one of {SCHEDULES}")
        self.kind = cfg.schedule
        self.optimizer = optimizer
        total = cfg.epochs * steps_per_epoch
        warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
        self.plateau: Optional[ReduceLROnPlateau] = None
        self.per_step: Optional[LambdaLR] = None
        if self.kind == "plateau":
            self.plateau = ReduceLROnPlateau(
                optimizer, mode=monitor_mode(cfg.monitor), factor=cfg.plateau_factor, patience=cfg.plateau_patience
            )
        elif self.kind == "exponential":
            rate, every = cfg.decay_rate, cfg.decay_steps
            self.per_step = LambdaLR(optimizer, lambda s: rate ** (s / every))
        elif self.kind == "cosine":
            ratio = cfg.min_lr_ratio
            self.per_step = LambdaLR(optimizer, lambda s: cosine_factor(s, total, warmup, ratio))
        else:
            self.per_step = LambdaLR(optimizer, lambda s: 1.0)

    @property
    def lr(self) -> float:
        """Current learning rate of the first parameter group."""
        return float(self.optimizer.param_groups[0]["lr"])

    def step_batch(self) -> None:
        if self.per_step is not None:
            self.per_step.step()

    def step_epoch(self, metric: float) -> None:
        if self.plateau is not None:
            self.plateau.step(metric)

    def state_dict(self) -> dict:
        sched = self.plateau if self.plateau is not None else self.per_step
        state = sched.state_dict()
        state.pop("lr_lambdas", None)  # closures; rebuilt from the config
        return {"kind": self.kind, "state": state}

    def load_state_dict(self, state: dict) -> None:
        if state["kind"] != self.kind:
            raise ValueError(f"checkpoint has schedule {state['kind']!r}, config has {self.kind!r}")
        sched = self.plateau if self.plateau is not None else self.per_step
        inner = dict(state["state"])
        if self.per_step is not None:
            inner["lr_lambdas"] = [None] * len(self.optimizer.param_groups)
        sched.load_state_dict(inner)
