"""The numbers around the network, in one place: uint8 image -> network input, logits ->
calibrated probabilities -> decision.

Every stage that feeds a network or reads its output calls these functions: training and
evaluation (:class:`medclass.data.Preprocess`), ensembles (:mod:`medclass.models.ensemble`),
prediction and the web service (:class:`medclass.core.spec.ModelSpec`), and the exported ONNX and
TorchScript graphs (:mod:`medclass.serving.export` traces them). So a model sees the same input
and its outputs mean the same thing on every path.

Each function takes numpy arrays or torch tensors and returns the same kind. This module never
imports PyTorch itself: a torch tensor is recognised by its type's module, and only tensor methods
(and ``torch`` reached through ``type(x)``'s module) are used, so the ONNX Runtime backend imports
it in a process without PyTorch. The torch branches use only traceable tensor operations (no
data-dependent Python control flow), so ``torch.jit.trace`` and ``torch.onnx.export`` record them.

Layouts: images are ``(N, C, H, W)`` inside this module (the network's layout); files decode to
``(N, H, W, C)`` (:func:`hwc_to_nchw` turns one into the other).
"""

from __future__ import annotations

import sys
from typing import Any, Optional, Sequence, Union

import numpy as np

from .config import INTENSITY_RULES  # fixed | per_image (data.intensity); config imports no torch

__all__ = ["is_torch", "hwc_to_nchw", "nchw_to_hwc", "to_unit", "normalize", "normalize_intensity", "check_intensity", "INTENSITY_EPS",
           "INTENSITY_RULES", "preprocess", "probabilities", "decide"]

Array = Any  # a numpy array or a torch tensor


def is_torch(x: Any) -> bool:
    """Whether ``x`` is a torch tensor (checked without importing torch)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _torch():
    return sys.modules["torch"]  # only called for torch tensors, so torch is imported


def hwc_to_nchw(images: np.ndarray) -> np.ndarray:
    """Decoded images uint8 ``(N, H, W, C)`` -> a new C-contiguous array ``(N, C, H, W)`` of the same
    dtype (always a copy, so read-only input gives a writable result that ``torch.from_numpy`` takes).

    Raises:
        ValueError: ``images`` is not 4-dimensional.
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be (N, H, W, C), got shape {images.shape}")
    return np.array(images.transpose(0, 3, 1, 2), order="C", copy=True)


def nchw_to_hwc(images: Array) -> Array:
    """``(N, C, H, W)`` -> ``(N, H, W, C)`` (numpy: a C-contiguous copy; torch: a permuted view)."""
    if is_torch(images):
        return images.permute(0, 2, 3, 1)
    return np.array(np.asarray(images).transpose(0, 2, 3, 1), order="C", copy=True)


def to_unit(x: Array) -> Array:
    """uint8 pixels -> float32 in [0, 1] (divided by 255); other dtypes are only cast to float32.

    A new tensor/array is returned for uint8 input; float32 torch input is returned as is.
    """
    if is_torch(x):
        torch = _torch()
        return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
    x = np.asarray(x)
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255.0)
    return x.astype(np.float32, copy=False)


def _channel_stats(values: Union[Sequence[float], Array], like: Array) -> Array:
    """Per-channel mean or std as ``(1, C, 1, 1)`` (``C`` = 1 applies to every channel), float32,
    on ``like``'s device; a tensor already shaped for broadcasting is used as it is."""
    if is_torch(like):
        torch = _torch()
        if isinstance(values, torch.Tensor):
            return values if values.dim() == 4 else values.to(like.device, torch.float32).view(1, -1, 1, 1)
        return torch.tensor([float(v) for v in values], dtype=torch.float32, device=like.device).view(1, -1, 1, 1)
    return np.asarray(values, dtype=np.float32).reshape(1, -1, 1, 1)


#: Floor of the per-image standard deviation in [0, 1] units (:func:`normalize_intensity`): an
#: image flatter than this (a blank one: std 0) is divided by it instead, so it gives finite
#: values (zeros for a blank image), never NaN or huge ones from noise in a near-constant image.
INTENSITY_EPS = 1e-3


def check_intensity(intensity: str, fixed_stats: bool) -> None:
    """Check an ``intensity`` rule (:data:`INTENSITY_RULES`) and that ``per_image`` comes without a
    fixed mean/std (``fixed_stats``), which it replaces.

    Raises:
        ValueError: an unknown rule, or ``per_image`` with a mean/std.
    """
    if intensity not in INTENSITY_RULES:
        raise ValueError(f"intensity must be one of {' | '.join(INTENSITY_RULES)}, got {intensity!r}")
    if intensity == "per_image" and fixed_stats:
        raise ValueError("per_image intensity standardisation replaces a fixed mean/std; give mean=std=None")


def normalize_intensity(x: Array, eps: float = INTENSITY_EPS) -> Array:
    """Per-image, per-channel standardisation: each channel of each image of float ``(N, C, H, W)``
    minus its own mean, divided by its own standard deviation over ``H x W`` (population std, floored
    at ``eps``), so every channel has mean 0 and standard deviation 1 whatever the image's
    brightness and contrast (an image and ``a * image + b``, ``a > 0``, give the same result while
    no pixel saturates). ``data.intensity: per_image`` applies it to the [0, 1] image after
    augmentation and resizing (:func:`normalize`).

    The z-score intensity normalisation of medical imaging toolkits: MONAI's
    ``monai.transforms.NormalizeIntensity`` with ``subtrahend``/``divisor`` None and
    ``channel_wise=True`` (each channel by its own statistics), and nnU-Net's z-score normalisation
    of non-CT images (Isensee, Jaeger, Kohl, Petersen, Maier-Hein, "nnU-Net: a self-configuring
    method for deep learning-based biomedical image segmentation", Nature Methods 18, 2021).
    MONAI leaves a constant channel unscaled (divisor 1); here the std is floored at ``eps``
    (:data:`INTENSITY_EPS`, [0, 1] units), so a blank image gives zeros as well and a
    near-constant one is not blown up.

    numpy input: the statistics in float64, the result float32. torch input: float32 on its
    device, traceable (no data-dependent control flow), so exported graphs compute it in-graph.
    """
    if is_torch(x):
        x = x.float()
        centred = x - x.mean(dim=(2, 3), keepdim=True)
        std = (centred * centred).mean(dim=(2, 3), keepdim=True).sqrt().clamp_min(eps)
        return centred / std
    x64 = np.asarray(x, dtype=np.float64)
    centred = x64 - x64.mean(axis=(2, 3), keepdims=True)
    std = np.maximum(np.sqrt((centred * centred).mean(axis=(2, 3), keepdims=True)), eps)
    return (centred / std).astype(np.float32)


def normalize(x: Array, mean: Optional[Union[Sequence[float], Array]],
              std: Optional[Union[Sequence[float], Array]], intensity: str = "fixed") -> Array:
    """The network's input from float ``x`` ``(N, C, H, W)`` in [0, 1], by the ``intensity`` rule
    (:data:`INTENSITY_RULES`, ``data.intensity``):

    - ``"fixed"``: ``(x - mean) / std`` per channel; ``x`` itself when ``mean`` or ``std`` is None
      (a model that takes [0, 1] input). ``mean``/``std``: one value per channel or one for all
      (sequences, or tensors already shaped ``(1, C, 1, 1)`` as :class:`medclass.data.Preprocess`
      keeps them).
    - ``"per_image"``: :func:`normalize_intensity` (each image and channel by its own mean and
      standard deviation); ``mean``/``std`` must be None (it replaces them).

    Raises:
        ValueError: an unknown ``intensity``, or ``per_image`` with a mean/std.
    """
    check_intensity(intensity, mean is not None or std is not None)
    if intensity == "per_image":
        return normalize_intensity(x)
    if mean is None or std is None:
        return x
    return (x - _channel_stats(mean, x)) / _channel_stats(std, x)


def preprocess(images: Array, mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
               intensity: str = "fixed") -> Array:
    """uint8 ``(N, C, H, W)`` -> the network's float32 input: :func:`to_unit`, then :func:`normalize`
    (fixed ``mean``/``std``, or ``intensity="per_image"``)."""
    return normalize(to_unit(images), mean, std, intensity)


def probabilities(logits: Array, temperature: float = 1.0) -> Array:
    """float32 class probabilities ``(N, K)`` from logits ``(N, K)`` (softmax) or ``(N, 1)``
    (one logit of a binary task: ``[1 - sigmoid, sigmoid]``), after dividing the logits by
    ``temperature`` (temperature scaling; 1.0: the model's own probabilities).

    numpy input is computed in float64 and returned as float32; torch input in float32 on its device.

    Raises:
        ValueError: logits that are not 2-dimensional.
    """
    if is_torch(logits):
        torch = _torch()
        if logits.dim() != 2:
            raise ValueError(f"logits must be (N, K), got shape {tuple(logits.shape)}")
        z = logits.float()
        if not (isinstance(temperature, (int, float)) and temperature == 1.0):
            z = z / temperature
        if z.shape[1] == 1:
            p = torch.sigmoid(z)
            return torch.cat([1.0 - p, p], dim=1)
        return torch.softmax(z, dim=1)
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    if z.ndim != 2:
        raise ValueError(f"logits must be (N, K), got shape {z.shape}")
    if z.shape[1] == 1:
        p = 1.0 / (1.0 + np.exp(-z))
        return np.concatenate([1.0 - p, p], axis=1).astype(np.float32)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def decide(probs: Array, threshold: Optional[float] = None,
           logit_adjustment: Optional[Sequence[float]] = None) -> Array:
    """Predicted class indices ``(N,)`` int64 from probabilities ``(N, K)`` (numpy or torch).

    - A binary task with an operating ``threshold``: class 1 when its probability is >= ``threshold``.
    - Otherwise, with ``logit_adjustment`` (``K`` additive offsets, :attr:`medclass.core.spec.ModelSpec.
      logit_adjustment`): the arg-max of ``log(probs) + logit_adjustment``, post-hoc logit
      adjustment (Menon et al., "Long-tail learning via logit adjustment", ICLR 2021,
      arXiv:2007.07314; the offsets are ``-tau * log(prior)``).
    - Otherwise the arg-max.

    Ties go to the lowest index.

    Raises:
        ValueError: ``logit_adjustment`` does not have ``K`` values.
    """
    k = probs.shape[1]
    if threshold is not None and k == 2:
        return (probs[:, 1] >= threshold).long() if is_torch(probs) else (np.asarray(probs)[:, 1] >= threshold).astype(np.int64)
    if logit_adjustment is not None:
        if len(logit_adjustment) != k:
            raise ValueError(f"logit_adjustment has {len(logit_adjustment)} values for {k} classes")
        if is_torch(probs):
            b = _torch().as_tensor(list(logit_adjustment), dtype=probs.dtype, device=probs.device)
            return (probs.clamp_min(1e-12).log() + b).argmax(dim=1)
        z = np.log(np.maximum(np.asarray(probs, dtype=np.float64), 1e-12)) + np.asarray(logit_adjustment, dtype=np.float64)
        return z.argmax(axis=1).astype(np.int64)
    if is_torch(probs):
        return probs.argmax(dim=1)
    return np.asarray(probs).argmax(axis=1).astype(np.int64)
