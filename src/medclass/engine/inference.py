"""Device choice and batched inference shared by training, evaluation and prediction."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from ..models import logits_to_probs

if TYPE_CHECKING:
    import numpy as np

__all__ = ["select_device", "logits_to_probs", "predict_logits", "logits_and_features", "logits_and_layer_features",
           "model_feature_layers", "ood_scores", "TTA_VIEWS", "channels_last_wanted"]


def select_device(name: str = "auto") -> torch.device:
    """``"auto"``: CUDA if available, else Apple MPS, else CPU; otherwise the named device.

    Raises:
        RuntimeError: the named device is not available here.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is available; use auto or cpu")
    return dev


def channels_last_wanted(device: torch.device, image_size: int) -> bool:
    """Whether to run convolutions in channels_last (NHWC) memory format: always on CUDA (tensor
    cores), and on the CPU from 64 px, where oneDNN's NHWC kernels trained a ResNet-50 faster on
    2 cores (+6 % at 64 px, +43 % at 224 px; benchmarks/results/model_throughput.json); below
    64 px the gain shrinks and it stays off."""
    return device.type == "cuda" or (device.type == "cpu" and image_size >= 64)


#: Test-time augmentation views: the image itself plus flips (dims of ``(N, C, H, W)``).
TTA_VIEWS = {"hflip": (3,), "vflip": (2,), "hvflip": (2, 3)}


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: Tensor,
    preprocess: nn.Module,
    device: torch.device,
    batch_size: int = 64,
    amp_dtype: Optional[torch.dtype] = None,
    tta: Sequence[str] = (),
    on_batch: Optional[Callable[[int], None]] = None,
) -> Tensor:
    """Logits ``(N, K)`` float32 on the CPU for uint8 images ``(N, C, H, W)``, in batches.

    ``on_batch(n)`` is called after each batch with its number of images (progress:
    :meth:`medclass.core.progress.Progress.update`).

    ``amp_dtype`` (e.g. ``torch.bfloat16`` on CUDA) enables autocast. ``tta`` names extra views
    from :data:`TTA_VIEWS` (e.g. ``("hflip",)``): the logits of the original and of each view are
    averaged (test-time augmentation by flips, as in Krizhevsky et al. 2012's multi-view testing).

    Raises:
        ValueError: an unknown TTA view.
    """
    unknown = [v for v in tta if v not in TTA_VIEWS]
    if unknown:
        raise ValueError(f"unknown test-time augmentation {unknown}; choose from {sorted(TTA_VIEWS)}")
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = preprocess(images[i : i + batch_size].to(device, non_blocking=True))
        if channels_last_wanted(device, x.shape[-1]):
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            z = model(x).float()
            for view in tta:
                z = z + model(torch.flip(x, TTA_VIEWS[view])).float()
        out.append((z / (1 + len(tta))).cpu())
        if on_batch is not None:
            on_batch(len(x))
    if not out:
        return torch.empty((0, 0))
    return torch.cat(out)


def logits_and_features(
    model: nn.Module,
    images: Tensor,
    preprocess: nn.Module,
    device: torch.device,
    batch_size: int = 64,
) -> tuple[Tensor, Tensor]:
    """Logits ``(N, K)`` and penultimate features ``(N, F)`` (the classifier head's input: pooled
    features of :meth:`medclass.models.ClassifierModel.get_classifier`), float32 on the CPU, for
    uint8 images ``(N, C, H, W)``, in batches; one forward pass (a pre-hook on the head).

    Raises:
        TypeError: ``model`` has no ``get_classifier`` (not a :class:`ClassifierModel`).
    """
    if not hasattr(model, "get_classifier"):
        raise TypeError(f"{type(model).__name__} has no classifier head to take features from")
    seen: list[Tensor] = []
    handle = model.get_classifier().register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().float()))
    try:
        logits = predict_logits(model, images, preprocess, device, batch_size)
    finally:
        handle.remove()
    feats = torch.cat([t.flatten(1).cpu() for t in seen]) if seen else torch.empty((0, 0))
    return logits, feats


def model_feature_layers(model: nn.Module, which: str = "stages") -> tuple[str, ...]:
    """The feature names an OOD detector of ``model`` reads (one of
    :data:`medclass.core.ood.OOD_LAYER_CHOICES`): ``"stages"``: the average-pooled map of every stage
    of :meth:`medclass.models.ClassifierModel.feature_stages` (Lee et al. 2018's feature
    ensemble); ``"stages+std"``: those, then each stage's spatial standard deviation
    (``"<stage>:std"``); ``"penultimate"``: the head's input only. A model without
    ``feature_stages`` falls back to the penultimate features.

    Raises:
        ValueError: another ``which``.
    """
    if which not in ("stages", "stages+std", "penultimate"):
        raise ValueError(f"OOD layers must be 'stages', 'stages+std' or 'penultimate', got {which!r}")
    if which == "penultimate" or not hasattr(model, "feature_stages"):
        return ("penultimate",)
    stages = tuple(model.feature_stages())
    return stages + (tuple(f"{n}:std" for n in stages) if which == "stages+std" else ())


@torch.no_grad()
def logits_and_layer_features(
    model: nn.Module,
    images: Tensor,
    preprocess: nn.Module,
    device: torch.device,
    layers: Sequence[str],
    batch_size: int = 64,
) -> tuple[Tensor, list[Tensor]]:
    """Logits ``(N, K)`` and the global-average-pooled features of ``layers`` (``L`` tensors
    ``(N, F_l)``), float32 on the CPU, for uint8 images ``(N, C, H, W)``, in batches, eval mode,
    one forward pass per batch (:meth:`medclass.models.ClassifierModel.forward_with_features`,
    the function the exported graphs trace). A model without it (not a
    :class:`~medclass.models.ClassifierModel`) gives ``("penultimate",)`` through
    :func:`logits_and_features`.

    Raises:
        TypeError: other layers of a model without ``forward_with_features``.
        ValueError: a layer the model does not have.
    """
    layers = tuple(layers)
    if not hasattr(model, "forward_with_features"):
        if layers != ("penultimate",):
            raise TypeError(f"{type(model).__name__} has no feature stages; only the penultimate features are read")
        logits, feats = logits_and_features(model, images, preprocess, device, batch_size)
        return logits, [feats]
    model.stage_indices(layers)  # unknown names fail before any pass
    model.eval()
    zs: list[Tensor] = []
    fs: list[list[Tensor]] = [[] for _ in layers]
    for i in range(0, len(images), batch_size):
        x = preprocess(images[i : i + batch_size].to(device, non_blocking=True))
        if channels_last_wanted(device, x.shape[-1]):
            x = x.contiguous(memory_format=torch.channels_last)
        z, feats = model.forward_with_features(x, layers)
        zs.append(z.float().cpu())
        for out, f in zip(fs, feats):
            out.append(f.float().cpu())
    if not zs:
        return torch.empty((0, 0)), [torch.empty((0, 0)) for _ in layers]
    return torch.cat(zs), [torch.cat(f) for f in fs]


def ood_scores(detector, model: nn.Module, images: Tensor, preprocess: nn.Module, device: torch.device,
               batch_size: int = 64) -> tuple[Tensor, "np.ndarray"]:
    """Logits ``(N, K)`` float32 and ``detector``'s scores float64 ``(N,)``
    (:meth:`medclass.core.ood.OODDetector.score` of the features of its layers) of uint8 images
    ``(N, C, H, W)``, in one pass per batch: what ``predict``, ``evaluate``, the service and the
    export check all call.

    Raises:
        ValueError: the detector's layers or feature sizes do not fit the model (refit it).
    """
    layers = detector.layers if detector.needs_features else ("penultimate",)
    logits, feats = logits_and_layer_features(model, images, preprocess, device, layers, batch_size)
    return logits, detector.score(logits.numpy(), [f.numpy() for f in feats])
