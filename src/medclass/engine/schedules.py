"""Learning-rate schedules: constant, exponential decay, reduce-on-plateau, cosine with warm-up.

The cosine schedule can be re-planned while it runs (:meth:`LRSchedule.set_total_steps`): a
time-budgeted run (:mod:`medclass.engine.budget`) shortens or lengthens it after an epoch so that
the learning rate still reaches its minimum at the last step actually run.
"""

from __future__ import annotations

import math
from typing import Optional

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau

from ..core.config import TrainConfig

__all__ = ["LRSchedule", "SCHEDULES", "monitor_mode", "cosine_factor", "cosine_progress"]

SCHEDULES = ("constant", "exponential", "plateau", "cosine")


def monitor_mode(monitor: str) -> str:
    """``"min"`` for loss-like metrics (name contains ``loss``), ``"max"`` otherwise."""
    return "min" if "loss" in monitor else "max"


def cosine_progress(step: int, total: int, warmup: int, anchor: Optional[tuple[int, float]] = None) -> float:
    """Fraction ``0..1`` of the cosine part done at ``step`` (after the ``warmup`` steps, 0 during
    them), reaching 1 at ``total``. ``anchor = (step_a, progress_a)``: the schedule was re-planned
    at ``step_a``, where it had done ``progress_a``; from there progress grows linearly to 1 at
    ``total``, so the learning rate stays continuous and ends at its minimum at the new ``total``."""
    if anchor is None:
        return min(1.0, max(0, step - warmup) / max(1, total - warmup))
    a_step, a_progress = anchor
    if step <= a_step:  # not reached after a re-plan; the straight line back to warmup
        return max(0.0, a_progress * (step - warmup) / max(1, a_step - warmup))
    return min(1.0, a_progress + (1.0 - a_progress) * (step - a_step) / max(1, total - a_step))


def cosine_factor(step: int, total: int, warmup: int, min_ratio: float,
                  anchor: Optional[tuple[int, float]] = None) -> float:
    """Multiplier of the peak LR at ``step``: linear warm-up over ``warmup`` steps, then half a
    cosine from 1 down to ``min_ratio`` at ``total`` (Loshchilov & Hutter, SGDR, arXiv:1608.03983;
    warm-up as Goyal et al., arXiv:1706.02677). ``anchor``: see :func:`cosine_progress` (a
    schedule re-planned while running)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = cosine_progress(step, total, warmup, anchor)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class LRSchedule:
    """One object for every schedule, stepped by the training loop after each batch and epoch.

    - ``exponential``: ``lr = lr0 * decay_rate ** (step / decay_steps)``, continuous, per batch
      (Keras ``ExponentialDecay(staircase=False)``; the seeds use 1e-4, 40 steps, 0.96).
    - ``plateau``: multiply by ``plateau_factor`` after ``plateau_patience`` epochs without
      improvement of ``monitor`` (PyTorch ``ReduceLROnPlateau``), per epoch.
    - ``cosine``: warm-up for ``warmup_epochs`` then cosine to ``min_lr_ratio * lr``, per batch,
      over ``epochs * steps_per_epoch`` steps; :meth:`set_total_steps` re-plans the length while
      it runs (a time budget), keeping the LR continuous.
    - ``constant``.

    ``warmup_steps`` and ``total_steps`` (and the re-plan anchor) are part of :meth:`state_dict`,
    so a resumed run continues the schedule it had, re-planned or not.

    Raises:
        ValueError: an unknown schedule name.
    """

    def __init__(self, cfg: TrainConfig, optimizer: Optimizer, steps_per_epoch: int) -> None:
        if cfg.schedule not in SCHEDULES:
            raise ValueError(f"unknown train.schedule {cfg.schedule!r}; choose one of {SCHEDULES}")
        self.kind = cfg.schedule
        self.optimizer = optimizer
        self.total_steps = cfg.epochs * steps_per_epoch
        self.warmup_steps = int(round(cfg.warmup_epochs * steps_per_epoch))
        self.anchor: Optional[tuple[int, float]] = None  # (step, cosine progress) of the last re-plan
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
            self.per_step = LambdaLR(
                optimizer, lambda s: cosine_factor(s, self.total_steps, self.warmup_steps, ratio, self.anchor)
            )
        else:
            self.per_step = LambdaLR(optimizer, lambda s: 1.0)

    @property
    def lr(self) -> float:
        """Current learning rate of the first parameter group."""
        return float(self.optimizer.param_groups[0]["lr"])

    @property
    def steps_done(self) -> int:
        """Optimisation steps taken so far (batches; 0 for ``plateau``, stepped per epoch)."""
        return int(self.per_step.last_epoch) if self.per_step is not None else 0

    def set_total_steps(self, total: int) -> None:
        """Re-plan the schedule to end after ``total`` optimisation steps in all (a time budget
        that shortens or lengthens the run). Only the cosine schedule depends on its length: from
        the current step, its progress grows linearly to 1 at ``total`` (see
        :func:`cosine_progress`), so the learning rate continues from its current value and reaches
        ``min_lr_ratio * lr`` at the last step. The same ``total`` again changes nothing (a
        resumed run whose plan holds stays exact). Other schedules only record ``total``.

        Raises:
            ValueError: ``total`` is below 1.
        """
        total = int(total)
        if total < 1:
            raise ValueError(f"total steps must be at least 1, got {total}")
        if total == self.total_steps:
            return
        if self.kind == "cosine":
            now = self.steps_done
            if now > self.warmup_steps:  # the cosine has started: continue from where it is
                self.anchor = (now, cosine_progress(now, self.total_steps, self.warmup_steps, self.anchor))
            else:  # still warming up: the cosine starts after the warm-up as before, just longer or shorter
                self.anchor = None
        self.total_steps = total

    def replan(self, total: int) -> None:
        """Re-plan the schedule as if it had been planned for ``total`` optimisation steps from the
        start (``medclass train --resume --epochs N``): the cosine's position is ``step / total``
        again (no anchor), so from the next step on the learning rate is the one a run planned for
        ``total`` steps has at this step. For a run that had reached its minimum and is given more
        epochs that means the rate rises again (a warm restart, as SGDR); a run shortened
        reaches its minimum at the new end. The optimizer's learning rates are set at once.
        Other schedules only record ``total``.

        Raises:
            ValueError: ``total`` is below 1.
        """
        total = int(total)
        if total < 1:
            raise ValueError(f"total steps must be at least 1, got {total}")
        self.total_steps, self.anchor = total, None
        if self.per_step is not None:
            factors = [f(self.per_step.last_epoch) for f in self.per_step.lr_lambdas]
            for group, base, factor in zip(self.optimizer.param_groups, self.per_step.base_lrs, factors):
                group["lr"] = base * factor

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
        return {"kind": self.kind, "state": state, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "anchor": None if self.anchor is None else list(self.anchor)}

    def load_state_dict(self, state: dict) -> None:
        if state["kind"] != self.kind:
            raise ValueError(f"checkpoint has schedule {state['kind']!r}, config has {self.kind!r}")
        sched = self.plateau if self.plateau is not None else self.per_step
        inner = dict(state["state"])
        if self.per_step is not None:
            inner["lr_lambdas"] = [None] * len(self.optimizer.param_groups)
        sched.load_state_dict(inner)
        if "total_steps" in state:  # checkpoints from before re-planning keep the config's lengths
            self.total_steps = int(state["total_steps"])
            self.warmup_steps = int(state["warmup_steps"])
            a = state.get("anchor")
            self.anchor = None if a is None else (int(a[0]), float(a[1]))
