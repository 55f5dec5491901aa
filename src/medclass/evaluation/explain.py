"""Grad-CAM explanations: heat maps, overlays, per-image figures, and picking examples to explain.

Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
Localization", ICCV 2017, arXiv:1610.02391): the feature maps ``A_k`` of a convolutional layer are
weighted by the spatial mean of the gradient of the explained class score with respect to them,
``L = ReLU(sum_k mean(dy_c / dA_k) * A_k)``, upsampled to the input size. The hooks, the channel
weights and the ReLU are MONAI's :class:`monai.visualize.GradCAM` (MONAI Consortium, "MONAI:
An open-source framework for deep learning in healthcare", arXiv:2211.02701); this module adds
what MONAI leaves to the caller:

* one explained class per image (MONAI's ``class_idx`` is one int for the whole batch, and with
  ``None`` it indexes ``logits[:, argmax]``, an ``(N, N)`` block, so images of a batch with
  different predictions mix their gradients); here the model is wrapped so that its output is
  the ``(N, 1)`` score of each image's own class;
* single-logit binary models (output ``(N, 1)``): the wrapper turns the logit ``z`` into the
  logits ``[-z, z]``, so class 1 is explained by ``z`` and class 0 by ``-z``, which matches
  ``[1 - sigmoid(z), sigmoid(z)]`` (:func:`medclass.models.logits_to_probs`);
* a [0, 1] scale with 1 = most important (MONAI's default post-processing maps max to 0);
* leaving the model as it was found, apart from eval mode: MONAI registers hooks it never
  removes, switches the target layer's ``inplace`` off and clears parameter gradients; all of
  that is undone here, and parameters are frozen during the pass (only the input requires a
  gradient, so frozen models work and no weight gradient is computed).
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from ..models import logits_to_probs  # noqa: E402

from ..core.fileio import atomic_write, safe_dir

__all__ = ["default_target_layer", "gradcam", "overlay", "save_explanations", "select_examples"]

ClassIndex = Union[None, int, Sequence[int], np.ndarray, Tensor]


def default_target_layer(model: nn.Module) -> str:
    """The layer Grad-CAM explains by default: the model's own
    :meth:`~medclass.models.ClassifierModel.default_gradcam_layer`, the last convolutional stage
    before pooling.

    :class:`~medclass.models.ResNet`: ``"layer4"`` (its last stage, 1/32 of the input size with
    the ImageNet stem, 1/8 with the small stem). :class:`~medclass.models.ChainedModel`: its
    custom CNN's last conv block, ``"cnn.<len(cnn) - 1>"``. :class:`~medclass.models.CustomCNN`:
    ``"features.<len(features) - 1>"``. A conv block ends with its 2x2 max-pool, so the map is the
    one global average pooling sees.

    Raises:
        ValueError: a model that names no such layer, e.g. an ensemble or a plain ``nn.Module``
            (give ``target_layer`` explicitly).
    """
    layer = getattr(model, "default_gradcam_layer", None)
    if callable(layer):
        try:
            return layer()
        except NotImplementedError:
            pass
    raise ValueError(
        f"no default Grad-CAM layer for {type(model).__name__}; give target_layer, one of the "
        "names of model.named_modules()"
    )


class _ClassScore(nn.Module):
    """``model`` followed by the selection of each image's explained class: ``(N, 1)`` scores.

    A single-logit output ``z`` ``(N, 1)`` becomes the logits ``[-z, z]`` first. ``class_idx``
    ``(N,)`` int64, or None for each image's predicted class (argmax). After a forward pass,
    ``logits`` holds the model's own output (detached) and ``used`` the classes explained.
    """

    def __init__(self, model: nn.Module, class_idx: Optional[Tensor]) -> None:
        super().__init__()
        self.model = model
        self.class_idx = class_idx
        self.logits: Optional[Tensor] = None
        self.used: Optional[Tensor] = None

    def forward(self, x: Tensor) -> Tensor:
        raw = self.model(x)
        if raw.ndim != 2:
            raise ValueError(f"Grad-CAM needs logits (N, K) from the model, got shape {tuple(raw.shape)}")
        logits = torch.cat([-raw, raw], dim=1) if raw.shape[1] == 1 else raw
        k = logits.shape[1]
        if self.class_idx is None:
            idx = logits.detach().argmax(1)
        else:
            idx = self.class_idx.to(logits.device)
            if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= k):
                raise ValueError(f"class_idx must be in 0..{k - 1} for this model, got {idx.tolist()}")
        self.logits, self.used = raw.detach(), idx
        return logits.gather(1, idx[:, None])


def _as_class_index(class_idx: ClassIndex, n: int) -> Optional[Tensor]:
    """``None`` stays None; an int is repeated ``n`` times; a sequence must have ``n`` entries.

    Raises:
        ValueError: a sequence of another length, or not integers.
    """
    if class_idx is None:
        return None
    if isinstance(class_idx, (int, np.integer)):
        return torch.full((n,), int(class_idx), dtype=torch.long)
    t = torch.as_tensor(np.asarray(class_idx.cpu() if isinstance(class_idx, Tensor) else class_idx))
    if t.ndim != 1 or len(t) != n or t.is_floating_point() or t.dtype == torch.bool:
        raise ValueError(f"class_idx must be None, an int, or {n} ints (one per image), got {class_idx!r}")
    return t.long()


@contextmanager
def _restored(model: nn.Module) -> Iterator[None]:
    """Undo, on exit, what a Grad-CAM pass changes in ``model`` (besides eval mode).

    Saved and restored: every parameter's ``requires_grad`` and ``.grad``, every module's
    ``inplace`` flag (all switched off during the pass: a full backward hook cannot follow an
    in-place op on its output), and the forward/backward hooks registered meanwhile (removed).
    Parameters are frozen during the pass.
    """
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    modules = list(model.modules())
    inplace = {m: m.inplace for m in modules if isinstance(getattr(m, "inplace", None), bool)}
    hook_dicts = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_backward_hooks")
    hooks = {m: {d: set(getattr(m, d, {})) for d in hook_dicts} for m in modules}
    full = {m: getattr(m, "_is_full_backward_hook", None) for m in modules}
    try:
        for p in params:
            p.requires_grad_(False)
        for m in inplace:
            m.inplace = False
        yield
    finally:
        for p, flag, grad in zip(params, flags, grads):
            p.requires_grad_(flag)
            p.grad = grad
        for m, flag in inplace.items():
            m.inplace = flag
        for m in modules:
            for d, before in hooks[m].items():
                table = getattr(m, d, None)
                for key in [k for k in (table or {}) if k not in before]:
                    del table[key]
            m._is_full_backward_hook = full[m]


def _gradcam(
    model: nn.Module, x: Tensor, class_idx: ClassIndex, target_layer: Optional[str]
) -> tuple[Tensor, Tensor, Tensor]:
    """Grad-CAM and the forward pass it made: ``(heat (N, H, W) float32 CPU, logits (N, K)
    float32 CPU, explained classes (N,) int64 CPU)``; see :func:`gradcam`."""
    from monai.visualize import GradCAM
    from monai.visualize.visualizer import default_upsampler

    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"x must be a float batch (N, C, H, W), got {tuple(x.shape)} {x.dtype}")
    layer = default_target_layer(model) if target_layer is None else target_layer
    names = [name for name, _ in model.named_modules() if name]
    if layer not in names:
        raise ValueError(f"unknown target_layer {layer!r}; valid choices: {', '.join(names)}")
    model.eval()
    wrapped = _ClassScore(model, _as_class_index(class_idx, len(x))).eval()
    with _restored(model), torch.inference_mode(False), torch.enable_grad():
        cam = GradCAM(nn_module=wrapped, target_layers=f"model.{layer}")
        inp = x.detach().clone().requires_grad_(True)
        try:
            acti_map = cam.compute_map(inp, class_idx=0)  # column 0 of the wrapper's (N, 1) output
        except (KeyError, IndexError) as e:
            raise ValueError(f"target_layer {layer!r} is not used by the model's forward pass") from e
        if acti_map.ndim != 4:
            raise ValueError(
                f"target_layer {layer!r} outputs no 2-D feature map (N, C, h, w); Grad-CAM map of shape "
                f"{tuple(acti_map.shape)}: choose a convolutional layer or stage"
            )
        heat = default_upsampler(x.shape[2:])(acti_map.detach())[:, 0].float()
    lo = heat.amin(dim=(1, 2), keepdim=True)
    span = heat.amax(dim=(1, 2), keepdim=True) - lo
    heat = torch.where(span > 1e-12, (heat - lo) / span.clamp_min(1e-12), torch.zeros_like(heat))
    return heat.cpu(), wrapped.logits.float().cpu(), wrapped.used.cpu()


def gradcam(
    model: nn.Module,
    x: Tensor,
    class_idx: ClassIndex = None,
    target_layer: Optional[str] = None,
) -> Tensor:
    """Grad-CAM heat maps (Selvaraju et al. 2017, via :class:`monai.visualize.GradCAM`).

    Args:
        model: a classifier returning logits ``(N, K)``, or a single logit ``(N, 1)`` (binary:
            class 1 is explained by the logit, class 0 by its negation). Left in eval mode;
            ``requires_grad``, ``.grad``, hooks and ``inplace`` flags are as before.
        x: preprocessed input ``(N, C, H, W)`` float, on the model's device.
        class_idx: the class explained: None (each image's predicted class), one int for all
            images, or one int per image.
        target_layer: a name from ``model.named_modules()`` whose output is a feature map
            ``(N, C', h, w)``, e.g. ``"layer3"`` or ``"layer4.2.conv3"``; None:
            :func:`default_target_layer` (``"layer4"`` for a ResNet, the last conv block of a
            custom CNN or chained model).

    Returns:
        ``(N, H, W)`` float32 on the CPU, each map scaled to [0, 1] (1 = most important; an
        all-zero map where no location has positive evidence), bilinearly upsampled to the
        input size.

    Raises:
        ValueError: ``x`` not a float 4-D batch; unknown ``target_layer`` (the message lists the
            valid names), one unused by the forward pass, or one with no 2-D output; no default
            layer for this kind of model; ``class_idx`` of the wrong length or out of range.
    """
    return _gradcam(model, x, class_idx, target_layer)[0]


def _to_hwc(image: np.ndarray) -> np.ndarray:
    """uint8 ``(H, W)``, ``(H, W, C)`` or ``(C, H, W)`` with C in {1, 3} -> ``(H, W, 3)`` uint8.

    Raises:
        ValueError: not uint8, or another shape.
    """
    img = np.asarray(image.cpu() if isinstance(image, Tensor) else image)
    if img.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {img.dtype}")
    if img.ndim == 3 and img.shape[-1] not in (1, 3) and img.shape[0] in (1, 3):
        img = img.transpose(1, 2, 0)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[-1] not in (1, 3):
        raise ValueError(f"image must be (H, W), (H, W, C) or (C, H, W) with C = 1 or 3, got {img.shape}")
    return np.repeat(img, 3, axis=2) if img.shape[-1] == 1 else img


def overlay(image: np.ndarray, heatmap: Union[np.ndarray, Tensor], alpha: float = 0.4, cmap: str = "jet") -> np.ndarray:
    """Blend a heat map, coloured with a matplotlib colormap, over an image.

    Args:
        image: uint8 ``(H, W, C)``, ``(C, H, W)`` (C = 1 or 3) or ``(H, W)``; greyscale is
            expanded to RGB.
        heatmap: ``(H, W)`` float in [0, 1] (values outside are clipped), e.g. from :func:`gradcam`.
        alpha: weight of the coloured heat map, in [0, 1].
        cmap: a matplotlib colormap name ("jet", "inferno", ...).

    Returns:
        ``(H, W, 3)`` uint8: ``(1 - alpha) * image + alpha * cmap(heatmap)``.

    Raises:
        ValueError: a bad image (see above), a heat map of another size, or alpha outside [0, 1].
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    rgb = _to_hwc(image)
    heat = np.asarray(heatmap.detach().cpu() if isinstance(heatmap, Tensor) else heatmap, dtype=np.float32)
    if heat.shape != rgb.shape[:2]:
        raise ValueError(f"heatmap shape {heat.shape} differs from the image's {rgb.shape[:2]}")
    coloured = matplotlib.colormaps[cmap](np.clip(heat, 0.0, 1.0))[..., :3] * 255.0
    out = (1.0 - alpha) * rgb.astype(np.float32) + alpha * coloured
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _safe_stem(name: str) -> str:
    stem = Path(str(name)).stem or "image"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem)


def save_explanations(
    model: nn.Module,
    images: Union[Tensor, np.ndarray],
    preprocess: nn.Module,
    device: torch.device,
    out_dir: Union[str, Path],
    names: Sequence[str],
    class_names: Sequence[str],
    target_layer: Optional[str] = None,
    class_idx: ClassIndex = None,
    labels: Optional[Sequence[int]] = None,
    batch_size: int = 16,
    alpha: float = 0.4,
    cmap: str = "jet",
) -> list[Path]:
    """Write one Grad-CAM figure per image: the input and the heat-map overlay side by side,
    titled with the predicted class and its probability, the true class (``labels``) when
    given, and the explained class when it is not the predicted one. Matplotlib Agg, PNG.

    Args:
        model: as for :func:`gradcam`, on ``device``.
        images: uint8 ``(N, C, H, W)`` (C = 1 or 3), as read; ``preprocess`` makes the input.
        preprocess: e.g. :class:`medclass.data.Preprocess` (``LoadedRun.preprocess``), on ``device``.
        out_dir: created if missing; files are ``<stem of name>_gradcam.png``.
        names: one per image (file names or ids).
        class_names: the model's classes (2 for a single-logit model).
        target_layer, class_idx: see :func:`gradcam`.
        labels: true class indices ``(N,)``, optional.
        batch_size: images per Grad-CAM pass.

    Returns:
        The PNG paths, in the order of ``images``.

    Raises:
        ValueError: images not uint8 ``(N, C, H, W)``; ``names``/``labels``/``class_idx`` of
            another length; two names giving the same file; a model with another number of
            classes than ``class_names``; and the errors of :func:`gradcam`.
    """
    imgs = torch.as_tensor(images)
    if imgs.dtype != torch.uint8 or imgs.ndim != 4:
        raise ValueError(f"images must be uint8 (N, C, H, W), got {tuple(imgs.shape)} {imgs.dtype}")
    n = len(imgs)
    if len(names) != n or (labels is not None and len(labels) != n):
        raise ValueError(f"{n} images need {n} names (got {len(names)}) and labels (got "
                         f"{None if labels is None else len(labels)})")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    targets = _as_class_index(class_idx, n)
    out = Path(out_dir)
    paths = [out / f"{_safe_stem(name)}_gradcam.png" for name in names]
    if len(set(paths)) != n:
        raise ValueError("names give duplicate file names; make their stems unique")
    safe_dir(out)
    for start in range(0, n, batch_size):
        batch = imgs[start : start + batch_size]
        x = preprocess(batch.to(device))
        chosen = None if targets is None else targets[start : start + len(batch)]
        heat, logits, used = _gradcam(model, x, chosen, target_layer)
        probs = logits_to_probs(logits)
        if probs.shape[1] != len(class_names):
            raise ValueError(f"the model has {probs.shape[1]} classes, class_names has {len(class_names)}")
        for j in range(len(batch)):
            i = start + j
            pred = int(probs[j].argmax())
            title = f"predicted: {class_names[pred]} (p = {float(probs[j, pred]):.3f})"
            if labels is not None:
                title += f"   true: {class_names[int(labels[i])]}"
            if int(used[j]) != pred:
                title += f"   explained: {class_names[int(used[j])]}"
            rgb = _to_hwc(batch[j].numpy())
            fig, axes = plt.subplots(1, 2, figsize=(8, 4.4))
            axes[0].imshow(rgb, vmin=0, vmax=255)
            axes[0].set_title("input")
            axes[1].imshow(overlay(rgb, heat[j].numpy(), alpha=alpha, cmap=cmap))
            axes[1].set_title(f"Grad-CAM: {class_names[int(used[j])]}")
            for ax in axes:
                ax.axis("off")
            fig.suptitle(title, fontsize=10)
            fig.tight_layout()
            atomic_write(paths[i], lambda tmp: fig.savefig(tmp, dpi=100))
            plt.close(fig)
    return paths


def select_examples(
    probs: np.ndarray,
    labels: np.ndarray,
    n: int,
    class_names: Optional[Sequence[str]] = None,
) -> dict[str, dict[str, np.ndarray]]:
    """Images worth explaining: per true class, the most confident right and wrong predictions.

    Args:
        probs: ``(N, K)`` class probabilities (``(N, 1)`` is read as ``P(class 1)`` of a binary task).
        labels: ``(N,)`` true class indices in ``0..K-1``.
        n: how many of each kind per class (fewer when there are fewer).
        class_names: the keys of the result; default ``"0"``, ``"1"``, ...

    Returns:
        ``{class_name: {"right": idx, "wrong": idx}}`` for every class ``0..K-1`` in order; ``idx``
        are int64 indices into ``probs`` of images of that true class, predicted right (argmax ==
        label) or wrong, sorted by the probability of the predicted class, highest first (ties:
        lower index first).

    Raises:
        ValueError: shapes that do not match, labels out of range, ``n`` < 0, or a
            ``class_names`` of another length than K.
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels)
    if p.ndim == 2 and p.shape[1] == 1:
        p = np.concatenate([1.0 - p, p], axis=1)
    if p.ndim != 2 or p.shape[1] < 2 or y.shape != (len(p),):
        raise ValueError(f"probs must be (N, K) and labels (N,), got {p.shape} and {y.shape}")
    k = p.shape[1]
    if len(y) and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= k):
        raise ValueError(f"labels must be integers in 0..{k - 1}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    keys = [str(c) for c in range(k)] if class_names is None else list(class_names)
    if len(keys) != k:
        raise ValueError(f"{len(keys)} class names for {k} classes")
    pred = p.argmax(axis=1)
    conf = p[np.arange(len(p)), pred]
    order = np.lexsort((np.arange(len(p)), -conf))  # by confidence, descending; then by index
    result: dict[str, dict[str, np.ndarray]] = {}
    for c, key in enumerate(keys):
        mine = order[y[order] == c]
        right = mine[pred[mine] == c][:n]
        wrong = mine[pred[mine] != c][:n]
        result[key] = {"right": right.astype(np.int64), "wrong": wrong.astype(np.int64)}
    return result
