"""An exponential moving average (EMA) of the model's weights, evaluated and checkpointed in place
of the raw weights (``train.ema``).

Reference: timm's ``ModelEmaV3`` (``timm/utils/model_ema.py``, Ross Wightman): a copy of the model
whose floating-point ``state_dict`` entries (parameters *and* buffers such as batch-norm running
statistics) follow ``ema = decay * ema + (1 - decay) * model`` after every optimizer step, while
integer buffers (``num_batches_tracked``) are copied. With warm-up (timm's ``use_warmup``, the form
of @crowsonkb's EMA warm-up, ``warmup_gamma=1``, ``warmup_power=2/3``) the decay of update ``t``
(1-based) is ``min(decay, 1 - (1 + (t - 1)) ** (-2/3))`` with 0 at ``t = 1``: the first update copies
the model, and early averages are not dominated by the random initial weights (it reaches 0.99 after
about 1,000 updates, 0.999 after about 31,600). Without warm-up the decay is ``decay`` from the
second update on (the first still copies, as ModelEmaV3's ``step`` counting does).

The averaging idea: Polyak & Juditsky, "Acceleration of stochastic approximation by averaging",
SIAM J. Control Optim. 1992; as an exponential average in TensorFlow's ``ExponentialMovingAverage``.

In DDP every rank keeps its own EMA (the weights are the same on every rank after each step; the
trainer gives every rank rank 0's buffers before validation).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

__all__ = ["ModelEma", "ema_decay_at"]

WARMUP_GAMMA = 1.0  # timm ModelEmaV3 defaults
WARMUP_POWER = 2.0 / 3.0


def ema_decay_at(update: int, decay: float, warmup: bool = True) -> float:
    """The decay used by the ``update``-th EMA update (1-based), as timm's ``ModelEmaV3.get_decay``
    with ``update_after_step=0``: 0 for the first update (a copy), then ``decay``, or with
    ``warmup`` ``min(decay, 1 - (1 + (update - 1) / gamma) ** -power)`` (gamma 1, power 2/3).

    Args:
        update: the number of this update, 1 for the first (int >= 1).
        decay: the target decay in (0, 1), e.g. 0.999.
        warmup: use the warm-up ramp.
    Returns:
        The decay, a float in [0, decay].
    """
    step = max(0, update - 1)
    if step <= 0:
        return 0.0
    if not warmup:
        return decay
    return max(min(1.0 - (1.0 + step / WARMUP_GAMMA) ** -WARMUP_POWER, decay), 0.0)


class ModelEma:
    """An EMA copy of ``model`` (``module``, kept in eval mode with no gradients) on the model's device.

    Args:
        model: the model being trained (not a DDP or compiled wrapper: its ``state_dict`` keys are
            the ones saved). The copy is made now, so create the EMA after moving the model to its
            device and memory format and loading pretrained weights.
        decay: target decay in (0, 1) (``train.ema_decay``).
        warmup: ramp the decay up (``train.ema_warmup``, see :func:`ema_decay_at`).

    Raises:
        ValueError: ``decay`` not in (0, 1), naming ``train.ema_decay``.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True) -> None:
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 < decay < 1.0:
            raise ValueError(f"train.ema_decay must be in (0, 1), e.g. 0.999, got {decay!r}")
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.updates = 0  # EMA updates done (optimizer steps seen)

    @property
    def current_decay(self) -> float:
        """The decay the next :meth:`update` will use."""
        return ema_decay_at(self.updates + 1, self.decay, self.warmup)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model`` (call after every optimizer step): floating-point
        entries of the ``state_dict`` ``ema.lerp_(model, 1 - decay)``, the others copied."""
        decay = self.current_decay
        self.updates += 1
        ema_float, model_float = [], []
        for e, m in zip(self.module.state_dict().values(), model.state_dict().values()):
            if e.is_floating_point():
                ema_float.append(e)
                model_float.append(m.detach())
            else:
                e.copy_(m)
        if ema_float:
            torch._foreach_lerp_(ema_float, model_float, 1.0 - decay)

    @torch.no_grad()
    def set(self, model: nn.Module) -> None:
        """Make the average equal to ``model``'s weights and buffers (the update count is kept)."""
        for e, m in zip(self.module.state_dict().values(), model.state_dict().values()):
            e.copy_(m)

    def state_dict(self) -> dict[str, Any]:
        """``{"module": the averaged state_dict, "updates": int, "decay": float, "warmup": bool}``
        (the tensors are the live ones; copy them to keep a snapshot)."""
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay,
                "warmup": self.warmup}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`: the averaged weights and the update count (the decay and
        warm-up stay those of the config)."""
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
