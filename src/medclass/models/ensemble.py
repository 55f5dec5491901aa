"""Soft voting over several trained models."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from ..core import pipeline

__all__ = ["SoftVotingEnsemble", "logits_to_probs"]


def logits_to_probs(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Class probabilities ``(N, K)`` float32 from logits ``(N, K)`` (softmax) or a single logit
    ``(N, 1)`` (binary: ``[1 - sigmoid, sigmoid]``), logits divided by ``temperature`` first:
    :func:`medclass.core.pipeline.probabilities`, the one conversion used everywhere."""
    return pipeline.probabilities(logits, temperature)


class SoftVotingEnsemble(nn.Module):
    """Weighted average of the members' class probabilities (soft voting).

    Each member is ``nn.Sequential(normalise, model)`` taking the batch scaled to [0, 1], so
    members with different normalisation can vote together. Input ``(N, C, H, W)`` float in
    [0, 1]; output ``log(sum_i w_i p_i)`` ``(N, K)``, so that a softmax of the output gives the
    averaged probabilities back (the output acts as logits everywhere else in medclass).

    Raises:
        ValueError: no members, a weight count that differs from the member count, negative
            weights, or weights summing to 0.
    """

    def __init__(self, members: Sequence[nn.Module], weights: Sequence[float]) -> None:
        super().__init__()
        if not members or len(members) != len(weights):
            raise ValueError(f"{len(members)} members and {len(weights)} weights: give one weight per member")
        w = torch.tensor([float(x) for x in weights])
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"ensemble weights must be >= 0 and not all 0, got {list(weights)}")
        self.members = nn.ModuleList(members)
        self.register_buffer("weights", w / w.sum())

    def forward(self, x: Tensor) -> Tensor:
        probs = sum(w * logits_to_probs(m(x)) for w, m in zip(self.weights, self.members))
        return torch.log(probs.clamp_min(1e-12))
