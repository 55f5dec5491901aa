"""Batched preprocessing and augmentation on the training device.

Images travel as uint8 ``(N, C, H, W)``; :class:`Preprocess` makes float32 in [0, 1] (optionally
mean/std normalised), :func:`build_augmentation` returns a kornia ``AugmentationSequential`` applied
to the [0, 1] batch before normalisation (kornia: Riba et al., "Kornia: an Open Source
Differentiable Computer Vision Library for PyTorch", WACV 2020).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

import torch
from torch import Tensor, nn

from .. import pipeline
from ..config import DataConfig

if TYPE_CHECKING:
    from ..spec import ModelSpec

__all__ = ["Preprocess", "build_augmentation"]


class Preprocess(nn.Module):
    """uint8 ``(N, C, H, W)`` -> float32 ``(N, C, H, W)``: scale to [0, 1], then ``(x - mean) / std``
    when ``mean``/``std`` are given (one value per channel, or one for all)."""

    def __init__(self, mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None) -> None:
        super().__init__()
        self.normalize = mean is not None and std is not None
        m = torch.tensor(list(mean) if mean is not None else [0.0], dtype=torch.float32)
        s = torch.tensor(list(std) if std is not None else [1.0], dtype=torch.float32)
        self.register_buffer("mean", m.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", s.view(1, -1, 1, 1), persistent=False)

    def to_unit(self, x: Tensor) -> Tensor:
        """uint8 ``(N, C, H, W)`` -> float32 in [0, 1] (:func:`medclass.pipeline.to_unit`)."""
        return pipeline.to_unit(x)

    def normalize_(self, x: Tensor) -> Tensor:
        """float ``(N, C, H, W)`` in [0, 1] -> ``(x - mean) / std`` (:func:`medclass.pipeline.normalize`);
        ``x`` unchanged when this preprocessing does not normalise."""
        return pipeline.normalize(x, self.mean, self.std) if self.normalize else x

    def forward(self, x: Tensor) -> Tensor:
        return self.normalize_(self.to_unit(x))

    @classmethod
    def from_spec(cls, spec: "ModelSpec") -> "Preprocess":
        """The preprocessing a :class:`medclass.spec.ModelSpec` prescribes (its mean/std, or none)."""
        return cls(spec.mean, spec.std)

    @classmethod
    def from_config(cls, cfg: DataConfig) -> "Preprocess":
        """``data.mean``/``data.std`` when ``data.normalize`` is on, else none. Only the config's own
        switch: the whole rule (ImageNet weights bring ImageNet normalisation) is
        :func:`medclass.spec.normalization_of`; use :meth:`from_spec` for a run's model."""
        return cls(cfg.mean, cfg.std) if cfg.normalize else cls()


def build_augmentation(cfg: DataConfig) -> Optional[nn.Module]:
    """The training augmentation of a config, or None when ``cfg.augment`` is off.

    Random resized crop (``crop_scale`` of the area, aspect 3/4..4/3), horizontal/vertical flips,
    rotation by up to ``rotation_degrees``, brightness/contrast jitter; each image of a batch
    draws its own parameters from the global torch RNG (seeded per epoch by the trainer).
    """
    if not cfg.augment:
        return None
    import kornia.augmentation as K

    ops: list[nn.Module] = []
    lo, hi = cfg.crop_scale
    if lo < 1.0:
        ops.append(K.RandomResizedCrop((cfg.image_size, cfg.image_size), scale=(lo, hi), p=1.0))
    if cfg.hflip:
        ops.append(K.RandomHorizontalFlip(p=0.5))
    if cfg.vflip:
        ops.append(K.RandomVerticalFlip(p=0.5))
    if cfg.rotation_degrees > 0:
        ops.append(K.RandomRotation(degrees=cfg.rotation_degrees, p=0.5))
    if cfg.brightness > 0 or cfg.contrast > 0:
        ops.append(K.ColorJitter(brightness=cfg.brightness, contrast=cfg.contrast, p=0.8))
    return K.AugmentationSequential(*ops) if ops else None
