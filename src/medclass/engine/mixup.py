"""Mixup and CutMix on the training device, with soft targets (``train.mixup_alpha``,
``train.cutmix_alpha``, ``train.mix_prob``).

References:
    Zhang, Cisse, Dauphin, Lopez-Paz, "mixup: Beyond Empirical Risk Minimization", ICLR 2018
    (arXiv:1710.09412): ``x = lam * x_i + (1 - lam) * x_j``, ``y = lam * y_i + (1 - lam) * y_j``,
    ``lam ~ Beta(alpha, alpha)``.
    Yun et al., "CutMix: Regularization Strategy to Train Strong Classifiers with Localizable
    Features", ICCV 2019 (arXiv:1905.04899): a box of area ``(1 - lam)`` of the image is pasted
    from the partner image, and ``lam`` is corrected to the box's clipped area.
    timm's ``timm/data/mixup.py`` (``Mixup``, mode ``batch``), whose semantics this follows: one
    ``lam`` per batch; the partner of image ``i`` is image ``N - 1 - i`` (the batch flipped); a batch
    is mixed with probability ``mix_prob``, and when both alphas are > 0 CutMix is chosen with
    probability 0.5 (``switch_prob``), else mixup; the box is centred uniformly in the image, of
    side ``int(H * sqrt(1 - lam))`` by ``int(W * sqrt(1 - lam))``, clipped to the image; the targets
    are one-hot with label smoothing (``on = 1 - s + s/K``, ``off = s/K``) then mixed.

The draws use the global torch CPU generator (reseeded every epoch by the trainer), so resumed
runs repeat them. Training accuracy against mixed targets counts a prediction as right when it is
the dominant target's class (``lam >= 0.5``: the image's own label, else its partner's); see
:func:`dominant_labels`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

__all__ = ["Mixup", "MixResult", "build_mixup", "soft_targets", "cutmix_box", "dominant_labels"]

SWITCH_PROB = 0.5  # timm's default switch_prob: CutMix or mixup when both are on


def soft_targets(labels: Tensor, num_outputs: int, lam: float = 1.0, smoothing: float = 0.0) -> Tensor:
    """Mixed, label-smoothed targets of a batch whose partner of image ``i`` is ``N - 1 - i``.

    Args:
        labels: int64 ``(N,)`` class indices.
        num_outputs: ``K`` >= 2 for softmax targets, or 1 for a single logit (binary task).
        lam: weight of each image's own label, in [0, 1].
        smoothing: label smoothing ``s`` in [0, 1).
    Returns:
        float32 on ``labels``' device: ``(N, K)`` rows summing to 1 (``on = 1 - s + s/K``,
        ``off = s/K``, as timm's ``mixup_target``), or ``(N,)`` probabilities of class 1 in [0, 1]
        for a single logit (smoothed as ``t * (1 - s) + s / 2``, as the trainer's BCE loss).
    """
    if num_outputs == 1:
        y = labels.float()
        t = lam * y + (1.0 - lam) * y.flip(0)
        return t * (1.0 - smoothing) + 0.5 * smoothing if smoothing else t
    off = smoothing / num_outputs
    on = 1.0 - smoothing + off
    y1 = torch.full((len(labels), num_outputs), off, device=labels.device).scatter_(1, labels.view(-1, 1), on)
    return y1 * lam + y1.flip(0) * (1.0 - lam)


def cutmix_box(height: int, width: int, lam: float) -> tuple[tuple[int, int, int, int], float]:
    """CutMix's box for ``lam`` (timm's ``rand_bbox`` and ``cutmix_bbox_and_lam`` with
    ``correct_lam``): sides ``int(H * sqrt(1 - lam))``, ``int(W * sqrt(1 - lam))``, centre drawn
    uniformly from the image (global torch generator), clipped to the image.

    Returns:
        ``((y0, y1, x0, x1), lam)``: the box rows ``y0:y1`` and columns ``x0:x1`` (pixels), and
        ``lam`` corrected to ``1 - box area / (H * W)``.
    """
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy = int(torch.randint(0, height, (1,)).item())
    cx = int(torch.randint(0, width, (1,)).item())
    y0, y1 = min(max(cy - cut_h // 2, 0), height), min(max(cy + cut_h // 2, 0), height)
    x0, x1 = min(max(cx - cut_w // 2, 0), width), min(max(cx + cut_w // 2, 0), width)
    return (y0, y1, x0, x1), 1.0 - (y1 - y0) * (x1 - x0) / float(height * width)


@dataclass
class MixResult:
    """One mixed batch: ``images`` float ``(N, C, H, W)``, ``targets`` soft (see
    :func:`soft_targets`), ``lam`` (after the CutMix correction; 1.0 when the batch was not
    mixed), ``kind`` ``"mixup"``, ``"cutmix"`` or ``"none"``."""

    images: Tensor
    targets: Tensor
    lam: float
    kind: str


class Mixup:
    """Mixup / CutMix of whole batches, as timm's ``Mixup(mode="batch")``.

    Args:
        mixup_alpha: Beta parameter of mixup's ``lam`` (``train.mixup_alpha``); 0: off.
        cutmix_alpha: Beta parameter of CutMix's ``lam`` (``train.cutmix_alpha``); 0: off.
        mix_prob: probability that a batch is mixed (``train.mix_prob``).
        num_outputs: the model's outputs: ``K`` classes, or 1 for a single logit.
        label_smoothing: ``train.label_smoothing``, applied to the targets here (the loss then
            takes the soft targets as they are).

    Raises:
        ValueError: an alpha < 0, both 0, or ``mix_prob`` outside [0, 1], naming the key.
    """

    def __init__(self, mixup_alpha: float, cutmix_alpha: float, mix_prob: float = 1.0, num_outputs: int = 2,
                 label_smoothing: float = 0.0) -> None:
        for key, v in (("train.mixup_alpha", mixup_alpha), ("train.cutmix_alpha", cutmix_alpha)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"{key} must be a number >= 0 (0: off; 0.2 to 1.0 are usual), got {v!r}")
        if mixup_alpha <= 0 and cutmix_alpha <= 0:
            raise ValueError("train.mixup_alpha or train.cutmix_alpha must be > 0 to mix")
        if isinstance(mix_prob, bool) or not isinstance(mix_prob, (int, float)) or not 0.0 <= mix_prob <= 1.0:
            raise ValueError(f"train.mix_prob must be in [0, 1], got {mix_prob!r}")
        self.mixup_alpha, self.cutmix_alpha = float(mixup_alpha), float(cutmix_alpha)
        self.mix_prob = float(mix_prob)
        self.num_outputs = int(num_outputs)
        self.label_smoothing = float(label_smoothing)

    def _beta(self, alpha: float) -> float:
        a = torch.tensor(float(alpha))
        return float(torch.distributions.Beta(a, a).sample())

    def draw(self) -> tuple[float, str]:
        """``(lam, kind)`` of the next batch from the global torch generator: ``(1.0, "none")``
        with probability ``1 - mix_prob``, else ``lam ~ Beta(alpha, alpha)`` of mixup or CutMix."""
        if float(torch.rand(())) >= self.mix_prob:
            return 1.0, "none"
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            kind = "cutmix" if float(torch.rand(())) < SWITCH_PROB else "mixup"
        else:
            kind = "cutmix" if self.cutmix_alpha > 0 else "mixup"
        return self._beta(self.cutmix_alpha if kind == "cutmix" else self.mixup_alpha), kind

    def __call__(self, images: Tensor, labels: Tensor) -> MixResult:
        """Mix a batch.

        Args:
            images: float ``(N, C, H, W)`` (any scale: mixing commutes with per-channel
                normalisation); not changed (a mixed copy is returned).
            labels: int64 ``(N,)`` class indices on the same device.
        Returns:
            A :class:`MixResult`; targets float32 ``(N, K)`` (rows sum to 1) or ``(N,)`` in [0, 1].
        """
        lam, kind = self.draw()
        if kind == "cutmix":
            (y0, y1, x0, x1), lam = cutmix_box(images.shape[-2], images.shape[-1], lam)
            images = images.clone()
            images[:, :, y0:y1, x0:x1] = images.flip(0)[:, :, y0:y1, x0:x1]
        elif kind == "mixup":
            images = images * lam + images.flip(0) * (1.0 - lam)
        return MixResult(images, soft_targets(labels, self.num_outputs, lam, self.label_smoothing), lam, kind)


def build_mixup(mixup_alpha: float, cutmix_alpha: float, mix_prob: float, num_outputs: int,
                label_smoothing: float) -> Optional[Mixup]:
    """A :class:`Mixup` when ``mixup_alpha`` or ``cutmix_alpha`` is > 0, else None (off).

    Raises:
        ValueError: see :class:`Mixup`.
    """
    for key, v in (("train.mixup_alpha", mixup_alpha), ("train.cutmix_alpha", cutmix_alpha)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ValueError(f"{key} must be a number >= 0 (0: off), got {v!r}")
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return None
    return Mixup(mixup_alpha, cutmix_alpha, mix_prob, num_outputs, label_smoothing)


def dominant_labels(labels: Tensor, lam: float) -> Tensor:
    """The class of each image's larger share of its mixed target: ``labels`` ``(N,)`` when
    ``lam >= 0.5``, else the partners' (``labels.flip(0)``). Training accuracy is counted against these."""
    return labels if lam >= 0.5 else labels.flip(0)
