"""Batched preprocessing and augmentation on the training device.

Images travel as uint8 ``(N, C, H, W)``; :class:`Preprocess` makes float32 in [0, 1] (optionally
mean/std normalised, or standardised per image), :func:`build_augmentation` returns a kornia ``AugmentationSequential`` applied
to the [0, 1] batch before normalisation (kornia: Riba et al., "Kornia: an Open Source
Differentiable Computer Vision Library for PyTorch", WACV 2020), with RandAugment / TrivialAugment
and random erasing after it when configured. :func:`progressive_size` and :func:`resize_batch`
are progressive resizing (``train.progressive_resize``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core import pipeline
from ..core.config import DataConfig

if TYPE_CHECKING:
    from ..core.spec import ModelSpec

__all__ = ["Preprocess", "build_augmentation", "AUTO_AUGMENT", "progressive_size", "resize_batch"]

#: ``data.auto_augment`` values: none, RandAugment (Cubuk et al. 2020) or TrivialAugment (Muller & Hutter 2021).
AUTO_AUGMENT = ("none", "randaugment", "trivialaugment")


class Preprocess(nn.Module):
    """uint8 ``(N, C, H, W)`` -> float32 ``(N, C, H, W)``: scale to [0, 1], then
    :func:`medclass.core.pipeline.normalize`: ``(x - mean) / std`` when ``mean``/``std`` are given (one
    value per channel, or one for all), or with ``intensity="per_image"`` each image and channel
    by its own mean and standard deviation (:func:`medclass.core.pipeline.normalize_intensity`; no
    mean/std then).

    Raises:
        ValueError: an ``intensity`` not in :data:`medclass.core.pipeline.INTENSITY_RULES`, or
            ``per_image`` with a mean/std.
    """

    def __init__(self, mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                 intensity: str = "fixed") -> None:
        super().__init__()
        self.normalize = mean is not None and std is not None
        pipeline.check_intensity(intensity, self.normalize)
        self.intensity = intensity
        m = torch.tensor(list(mean) if mean is not None else [0.0], dtype=torch.float32)
        s = torch.tensor(list(std) if std is not None else [1.0], dtype=torch.float32)
        self.register_buffer("mean", m.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", s.view(1, -1, 1, 1), persistent=False)

    def to_unit(self, x: Tensor) -> Tensor:
        """uint8 ``(N, C, H, W)`` -> float32 in [0, 1] (:func:`medclass.core.pipeline.to_unit`)."""
        return pipeline.to_unit(x)

    def normalize_(self, x: Tensor) -> Tensor:
        """float ``(N, C, H, W)`` in [0, 1] -> the network's input (:func:`medclass.core.pipeline.normalize`):
        ``(x - mean) / std``, per-image standardisation, or ``x`` unchanged when this preprocessing
        does neither. Training calls it after augmentation (and mixing and resizing)."""
        fixed = (self.mean, self.std) if self.normalize else (None, None)
        return pipeline.normalize(x, *fixed, self.intensity)

    def forward(self, x: Tensor) -> Tensor:
        return self.normalize_(self.to_unit(x))

    @classmethod
    def from_spec(cls, spec: "ModelSpec") -> "Preprocess":
        """The preprocessing a :class:`medclass.core.spec.ModelSpec` prescribes (its mean/std or none, and
        its intensity rule)."""
        return cls(spec.mean, spec.std, spec.intensity)

    @classmethod
    def from_config(cls, cfg: DataConfig) -> "Preprocess":
        """``data.mean``/``data.std`` when ``data.normalize`` is on, else none; per-image with
        ``data.intensity: per_image`` (which replaces them). Only the config's own switches: the
        whole rule (ImageNet weights bring ImageNet normalisation) is
        :func:`medclass.core.spec.normalization_of`; use :meth:`from_spec` for a run's model."""
        if cfg.intensity == "per_image":
            return cls(intensity="per_image")
        return cls(cfg.mean, cfg.std) if cfg.normalize else cls()


def build_augmentation(cfg: DataConfig) -> Optional[nn.Module]:
    """The training augmentation of a config, or None when ``cfg.augment`` is off.

    Random resized crop (``crop_scale`` of the area, aspect 3/4..4/3), horizontal/vertical flips,
    rotation by up to ``rotation_degrees``, brightness/contrast jitter; then, when configured,
    ``auto_augment`` (RandAugment with ``randaugment_n`` operations at magnitude ``randaugment_m``
    of 30, or TrivialAugment; kornia's default policies) and random erasing with probability
    ``random_erasing`` (see :class:`_AutoAndErase`). Each image of a batch draws its own parameters
    from the global torch RNG (seeded per epoch by the trainer, so a resumed run repeats them).
    Input and output: float ``(N, C, H, W)`` in [0, 1], C 1 or 3, same shape.

    Raises:
        ValueError: a bad ``data.auto_augment``, ``data.randaugment_n``/``_m`` or
            ``data.random_erasing``, naming the key.
    """
    if not cfg.augment:
        return None
    import kornia.augmentation as K

    base = _base_augmentation(cfg, K)
    auto, erasing = _auto_augment(cfg), _random_erasing(cfg, K)
    if auto is None and erasing is None:
        return base  # exactly the augmentation of before these keys
    return _AutoAndErase(base, auto, erasing)


def _auto_augment(cfg: DataConfig) -> Optional[nn.Module]:
    """kornia's RandAugment (Cubuk, Zoph, Shlens, Le, "RandAugment: Practical automated data
    augmentation with a reduced search space", CVPR Workshops 2020, arXiv:1909.13719) or
    TrivialAugment (Muller, Hutter, "TrivialAugment: Tuning-free Yet State-of-the-Art Data
    Augmentation", ICCV 2021, arXiv:2103.10158) from ``kornia.augmentation.auto``; None for "none"."""
    kind = cfg.auto_augment
    if kind not in AUTO_AUGMENT:
        raise ValueError(f"data.auto_augment must be one of {' | '.join(AUTO_AUGMENT)}, got {kind!r}")
    if kind == "none":
        return None
    from kornia.augmentation.auto import RandAugment, TrivialAugment

    if kind == "trivialaugment":
        return TrivialAugment()
    n, m = cfg.randaugment_n, cfg.randaugment_m
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"data.randaugment_n (operations per image) must be an integer >= 1, got {n!r}")
    if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0 < m < 30:
        raise ValueError(f"data.randaugment_m (magnitude) must be in (0, 30) exclusive, got {m!r}")
    return RandAugment(n=n, m=m)


def _random_erasing(cfg: DataConfig, K) -> Optional[nn.Module]:
    """kornia's ``RandomErasing`` (Zhong, Zheng, Kang, Li, Yang, "Random Erasing Data
    Augmentation", AAAI 2020, arXiv:1708.04896) with probability ``random_erasing`` per image and
    the paper's and kornia's defaults: area 2-33 % of the image, aspect 0.3-3.3, filled with 0
    (black, before normalisation); None at probability 0."""
    p = cfg.random_erasing
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise ValueError(f"data.random_erasing (a probability per image) must be in [0, 1], got {p!r}")
    return K.RandomErasing(p=float(p)) if p > 0 else None


class _AutoAndErase(nn.Module):
    """``base`` augmentation (or None), then ``auto`` (RandAugment / TrivialAugment), then
    ``erasing``, on float ``(N, C, H, W)`` in [0, 1]. kornia's auto-augment policies include colour
    operations that need 3 channels, so a greyscale batch goes through them as 3 equal channels and
    comes back as their mean (every policy operation keeps equal channels equal)."""

    def __init__(self, base: Optional[nn.Module], auto: Optional[nn.Module], erasing: Optional[nn.Module]) -> None:
        super().__init__()
        self.base, self.auto, self.erasing = base, auto, erasing

    def forward(self, x: Tensor) -> Tensor:
        if self.base is not None:
            x = self.base(x)
        if self.auto is not None:
            if x.shape[1] == 1:
                x = self.auto(x.expand(-1, 3, -1, -1).contiguous()).mean(1, keepdim=True)
            else:
                x = self.auto(x)
        if self.erasing is not None:
            x = self.erasing(x)
        return x


def _base_augmentation(cfg: DataConfig, K) -> Optional[nn.Module]:
    """The crop / flips / rotation / jitter part of :func:`build_augmentation` (a kornia
    ``AugmentationSequential``, or None when every one of them is off)."""
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


def progressive_size(epoch: int, epochs: int, full_size: int, start_fraction: Optional[float]) -> int:
    """The training image side of ``epoch`` under progressive resizing (``train.progressive_resize``).

    Small images early, the full size at the end: fast.ai's progressive resizing (Howard, "Training
    Imagenet in 3 hours for $25", fast.ai 2018), and Touvron, Vedaldi, Douze, Jegou, "Fixing the
    train-test resolution discrepancy" (FixRes, NeurIPS 2019, arXiv:1906.06423) for why the last
    epochs, and validation, are at the test size. The side grows linearly from
    ``start_fraction * full_size`` at epoch 1 to ``full_size``, reached for the last quarter of the
    epochs (``max(1, round(epochs / 4))`` epochs); before that it is rounded to a multiple of 8 (of
    4 when ``full_size`` < 64), at least that multiple and at most ``full_size``.

    Args:
        epoch: the epoch, 1-based.
        epochs: the run's number of epochs (>= 1).
        full_size: the configured image side in pixels (``data.image_size``).
        start_fraction: the side of epoch 1 as a fraction of ``full_size``, in (0, 1]; None: off.
    Returns:
        The side in pixels (int).
    Raises:
        ValueError: ``start_fraction`` not in (0, 1], naming ``train.progressive_resize``.
    """
    if start_fraction is None:
        return full_size
    if isinstance(start_fraction, bool) or not isinstance(start_fraction, (int, float)) or not 0 < start_fraction <= 1:
        raise ValueError(f"train.progressive_resize (the starting fraction of the image size) must be in (0, 1], "
                         f"e.g. 0.5, or null (off); got {start_fraction!r}")
    full_epochs = max(1, round(epochs / 4))
    first_full = epochs - full_epochs + 1  # the first epoch at the full size
    if epoch >= first_full or first_full <= 1:
        return full_size
    frac = start_fraction + (1.0 - start_fraction) * (epoch - 1) / (first_full - 1)
    multiple = 8 if full_size >= 64 else 4
    side = int(math.floor(frac * full_size / multiple + 0.5)) * multiple
    return max(multiple, min(full_size, side))


def resize_batch(x: Tensor, size: int) -> Tensor:
    """float ``(N, C, H, W)`` -> ``(N, C, size, size)`` by bilinear interpolation with antialiasing
    (``F.interpolate(..., antialias=True)``, like Pillow's resize when shrinking); ``x`` itself when it
    is that size already."""
    if x.shape[-2] == size and x.shape[-1] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
