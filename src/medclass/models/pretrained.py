"""Pretrained weights for the from-scratch ResNet: ImageNet checkpoints, weight files, Keras
conversion, and the freezing / learning-rate helpers of fine-tuning.

Sources:
    torchvision model zoo (``torchvision.models.ResNet50_Weights``): ``IMAGENET1K_V1``
    (``resnet50-0676ba61.pth``, the original recipe, reported top-1 76.130 %) and ``IMAGENET1K_V2``
    (``resnet50-11ad3fa6.pth``, the improved "new training recipe", reported top-1 80.858 %).
    Both are plain ``state_dict`` files whose keys and shapes equal those of :func:`resnet50`
    (ResNet v1.5), so they load without renaming. They expect RGB input in [0, 1] normalised
    with :data:`IMAGENET_MEAN` / :data:`IMAGENET_STD`.
    Keras Applications (``keras.applications.ResNet50``,
    ``resnet50_weights_tf_dim_ordering_tf_kernels.h5`` and ``..._notop.h5``): converted by
    :func:`medclass.models.keras_resnet.convert_keras_resnet50`, which documents the differences between the two models.
    He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016
    (arXiv:1512.03385): the architecture both follow.

The download cache is torch.hub's: ``Path(torch.hub.get_dir()) / "checkpoints"``, that is
``$TORCH_HOME/hub/checkpoints`` (``~/.cache/torch/hub/checkpoints`` by default), with torch.hub's
integrity rule: the hex digits after the last ``-`` of the file name (``0676ba61`` in
``resnet50-0676ba61.pth``) must be the start of the file's SHA-256.

Nothing here is imported by ``medclass.models``; import this module explicitly.
"""

from __future__ import annotations

import http.client
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union
from urllib.error import URLError

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..core.fileio import sha256_of_file
from ..core.runs import RunFiles

__all__ = [
    "resolve_source",
    "PretrainedError",
    "HubCheckpoint",
    "IMAGENET_CHECKPOINTS",
    "IMAGENET_ALIASES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "KERAS_CAFFE_MEAN_BGR",
    "KERAS_BN_EPSILON",
    "KERAS_LEGACY_BN_EPSILON",
    "hub_checkpoint_dir",
    "hash_prefix_of",
    "cached_checkpoint_path",
    "imagenet_checkpoint_path",
    "load_state_dict_file",
    "register_weights_reader",
    "weight_decay_param_groups",
    "load_pretrained",
    "freeze_backbone",
    "set_backbone_bn_eval",
    "unfreeze_all",
    "param_groups_with_lrs",
    "adapt_input_conv",
]

# ImageNet's per-channel mean/std live with the run contract (torch-free), which applies them.
from ..core.spec import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
#: Keras' "caffe" preprocessing (``keras.applications.resnet50.preprocess_input``): RGB -> BGR,
#: then subtract this per-channel mean (BGR order, 0-255 pixel scale), no scaling.
KERAS_CAFFE_MEAN_BGR: tuple[float, float, float] = (103.939, 116.779, 123.68)
#: Batch-norm epsilon of Keras' ``ResNet50`` (``keras.applications.resnet`` / ``resnet_common``).
KERAS_BN_EPSILON = 1.001e-5
#: Batch-norm epsilon of the legacy Keras ``resnet50.py`` (layer names ``res2a_branch2a``):
#: Keras' default, 1e-3.
KERAS_LEGACY_BN_EPSILON = 1e-3
#: PyTorch's ``nn.BatchNorm2d`` default epsilon, the one our model uses.
TORCH_BN_EPSILON = 1e-5


class PretrainedError(RuntimeError):
    """Pretrained weights cannot be found, fetched, read or fitted to the model.
    The message names the file (and, where it helps, the folder and URL) or the keys at fault."""


# -- checkpoints in the torch hub cache ---------------------------------------------------------


@dataclass(frozen=True)
class HubCheckpoint:
    """One downloadable checkpoint: ``filename`` (carrying torch.hub's SHA-256 prefix) at ``url``;
    ``weights`` names it in torchvision's terms."""

    name: str
    weights: str
    filename: str
    url: str


#: The ImageNet checkpoints of ResNet-50 (torchvision model zoo), by name.
IMAGENET_CHECKPOINTS: dict[str, HubCheckpoint] = {
    "imagenet-v1": HubCheckpoint(
        "imagenet-v1",
        "torchvision ResNet50_Weights.IMAGENET1K_V1",
        "resnet50-0676ba61.pth",
        "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    ),
    "imagenet-v2": HubCheckpoint(
        "imagenet-v2",
        "torchvision ResNet50_Weights.IMAGENET1K_V2",
        "resnet50-11ad3fa6.pth",
        "https://download.pytorch.org/models/resnet50-11ad3fa6.pth",
    ),
}
#: Other names of entries of :data:`IMAGENET_CHECKPOINTS`.
IMAGENET_ALIASES: dict[str, str] = {"imagenet": "imagenet-v1"}

#: torch.hub's rule (``torch.hub.HASH_REGEX``): the hash prefix is the hex run after a ``-``
#: and before a ``.`` in the file name.
HASH_REGEX = re.compile(r"-([a-f0-9]*)\.")


def hub_checkpoint_dir() -> Path:
    """torch.hub's checkpoint cache, ``Path(torch.hub.get_dir()) / "checkpoints"``; honours
    ``torch.hub.set_dir`` and ``$TORCH_HOME`` (default ``~/.cache/torch/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def hash_prefix_of(filename: str) -> Optional[str]:
    """The SHA-256 prefix a torch.hub file name promises (``"0676ba61"`` for
    ``resnet50-0676ba61.pth``), or None when the name carries none."""
    m = HASH_REGEX.search(filename)
    return m.group(1) if m else None



def _fetch_instructions(filename: str, url: str, folder: Path) -> str:
    return (
        f"On a machine with internet access download {url} and copy it, keeping the file name "
        f"{filename}, into the folder {folder} (torch.hub's cache, $TORCH_HOME/hub/checkpoints; "
        f"set TORCH_HOME to use another folder), or pass the downloaded file's path as the "
        f"pretrained source."
    )


def cached_checkpoint_path(
    filename: str,
    url: str,
    download: bool = True,
    progress: bool = True,
    cache_dir: Optional[Union[str, os.PathLike]] = None,
) -> Path:
    """The local path of ``filename`` in the cache, downloading it from ``url`` when absent.

    A cached file is verified as torch.hub verifies a download (``check_hash``): when the name
    carries a hash prefix (:func:`hash_prefix_of`), the file's SHA-256 must start with it. A
    download goes through ``torch.hub.download_url_to_file(url, dst, hash_prefix=...)``, which
    writes to a temporary file and moves it into place only when complete and verified.

    Args:
        filename: file name in the cache, e.g. ``"resnet50-0676ba61.pth"``.
        url: where to download it from.
        download: when False a missing file is an error instead of a download.
        progress: show torch.hub's download progress bar.
        cache_dir: the cache folder; default :func:`hub_checkpoint_dir`.

    Returns:
        The path of the verified file.

    Raises:
        PretrainedError: the cached file fails the hash check (the message names the file, the
            expected prefix and the actual digest); or the file is missing and ``download`` is
            False, or the download fails (offline, HTTP error, hash mismatch) -- the message then
            says which file name to put in which folder and the URL to fetch it from.
    """
    folder = Path(cache_dir) if cache_dir is not None else hub_checkpoint_dir()
    path = folder / filename
    prefix = hash_prefix_of(filename)
    if path.is_file():
        if prefix:
            digest = sha256_of_file(path)
            if not digest.startswith(prefix):
                raise PretrainedError(
                    f"{path} fails its hash check: its name says the SHA-256 starts with "
                    f"{prefix!r}, the file's SHA-256 is {digest}. The file is incomplete, corrupt or "
                    f"a different checkpoint; delete it and download {url} again."
                )
        return path
    how = _fetch_instructions(filename, url, folder)
    if not download:
        raise PretrainedError(f"{filename} is not in {folder} and downloading is off. {how}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PretrainedError(f"cannot create the cache folder {folder} for {filename}: {e}. {how}") from e
    try:
        torch.hub.download_url_to_file(url, str(path), hash_prefix=prefix, progress=progress)
    except (URLError, OSError, http.client.HTTPException) as e:  # URLError/HTTPError are OSErrors
        raise PretrainedError(
            f"cannot download {filename} from {url} ({type(e).__name__}: {e}); this machine may "
            f"be offline. {how}"
        ) from e
    except RuntimeError as e:  # torch.hub: 'invalid hash value (expected ..., got ...)'
        raise PretrainedError(
            f"the download of {filename} from {url} failed its SHA-256 check ({e}); nothing was "
            f"saved. {how}"
        ) from e
    if not path.is_file():
        raise PretrainedError(f"the download of {filename} left no file at {path}. {how}")
    return path


def _imagenet_entry(name: str) -> HubCheckpoint:
    key = name.strip().lower()
    key = IMAGENET_ALIASES.get(key, key)
    if key not in IMAGENET_CHECKPOINTS:
        known = sorted(set(IMAGENET_CHECKPOINTS) | set(IMAGENET_ALIASES))
        raise PretrainedError(f"unknown pretrained checkpoint {name!r}; known: {', '.join(known)}")
    return IMAGENET_CHECKPOINTS[key]


def imagenet_checkpoint_path(name: str = "imagenet", download: bool = True, progress: bool = True) -> Path:
    """Path of the ImageNet ResNet-50 checkpoint ``name`` (``imagenet`` = ``imagenet-v1``,
    ``imagenet-v2``) in the torch hub cache, verified, downloaded first when absent.
    See :func:`cached_checkpoint_path` for the checks.

    Raises:
        PretrainedError: unknown name; hash mismatch; missing and not downloadable (the message
            gives the file name, the folder and the URL).
    """
    entry = _imagenet_entry(name)
    return cached_checkpoint_path(entry.filename, entry.url, download=download, progress=progress)


# -- reading weight files ------------------------------------------------------------------------

#: Readers of other weight-file formats, by lower-case suffix (:func:`register_weights_reader`); Keras'
#: ``.h5`` / ``.hdf5`` ResNet-50 files are registered by :mod:`medclass.models.keras_resnet`.
_WEIGHTS_READERS: dict[str, Callable[[Path], dict[str, Tensor]]] = {}


def register_weights_reader(suffixes: Sequence[str], reader: Callable[[Path], dict[str, Tensor]]) -> None:
    """Teach :func:`load_state_dict_file` another weight-file format: ``reader(path)`` returns a
    state dict (``{name: Tensor}``) in medclass's names, or raises :class:`PretrainedError`.
    ``suffixes``: file endings with the dot (``".h5"``), matched case-insensitively."""
    for s in suffixes:
        _WEIGHTS_READERS[s.lower()] = reader


def _strip_wrapper_prefix(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Drop a prefix every key shares from a wrapper: ``module.`` (DataParallel, DDP) or
    ``_orig_mod.`` (``torch.compile``)."""
    changed = True
    while changed and sd:
        changed = False
        for prefix in ("module.", "_orig_mod."):
            if all(k.startswith(prefix) for k in sd):
                sd = {k[len(prefix):]: v for k, v in sd.items()}
                changed = True
    return sd


def _as_state_dict(obj: Any, path: Path) -> dict[str, Tensor]:
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise PretrainedError(
            f"{path} holds no state dict: expected a mapping of parameter names to tensors, or a "
            f"dict with a 'model' or 'state_dict' entry, got {type(obj).__name__}"
        )
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise PretrainedError(
            f"{path} is not a state dict: {len(bad)} entries are not tensors, e.g. {', '.join(bad[:10])}"
        )
    return _strip_wrapper_prefix(dict(obj))


def load_state_dict_file(path: Union[str, os.PathLike]) -> dict[str, Tensor]:
    """Read a state dict (parameter name -> tensor, on the CPU) from a weights file.

    - ``.pth`` / ``.pt``: ``torch.load(weights_only=True)`` (tensors and plain containers only; a
      file that needs arbitrary unpickling is refused). A raw state dict, or a dict with a
      ``"model"`` entry (medclass checkpoints) or a ``"state_dict"`` entry.
    - ``.safetensors``: ``safetensors.torch.load_file``.
    - ``.h5`` / ``.hdf5``: a Keras ResNet-50 weights file, through :func:`medclass.models.keras_resnet.convert_keras_resnet50`.

    A ``module.`` / ``_orig_mod.`` prefix shared by every key is removed. Tensors keep the
    file's dtype (``load_state_dict`` casts them to the model's).

    Raises:
        PretrainedError: the file is missing, has another suffix, cannot be read, or holds no
            state dict; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise PretrainedError(f"no weights file at {path}")
    suffix = path.suffix.lower()
    if suffix in (".pth", ".pt"):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises several types for a bad or unsafe file
            raise PretrainedError(f"cannot read {path} with torch.load(weights_only=True): {e}") from e
        return _as_state_dict(obj, path)
    if suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as e:  # pragma: no cover - a declared dependency
            raise PretrainedError(f"reading {path} needs the safetensors package (pip install safetensors)") from e
        try:
            obj = load_file(str(path), device="cpu")
        except Exception as e:
            raise PretrainedError(f"cannot read {path} as safetensors: {e}") from e
        return _as_state_dict(obj, path)
    if suffix in _WEIGHTS_READERS:
        return _WEIGHTS_READERS[suffix](path)
    raise PretrainedError(
        f"{path}: unsupported weights file type {suffix or '(no suffix)'!r}; "
        "use .pth, .pt, .safetensors or a Keras .h5"
    )


# -- loading into a model -----------------------------------------------------------------------


def _listing(title: str, items: list[str]) -> str:
    head = ", ".join(items[:10]) + (", ..." if len(items) > 10 else "")
    return f"{title} ({len(items)}): {head or '-'}"


def _head_name(model: nn.Module) -> str:
    """The name of the model's classifier head: ``model.head_name`` of a
    :class:`~medclass.models.base.ClassifierModel` (``"fc"`` for a plain module)."""
    return getattr(model, "head_name", "fc")


def _head(model: nn.Module) -> Optional[nn.Module]:
    """The model's classifier head (``get_classifier()``; a plain module's ``fc``), or None."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else getattr(model, _head_name(model), None)
    return head if isinstance(head, nn.Module) else None


def _is_head_key(name: str, head: str) -> bool:
    """``name`` (a parameter, buffer or module name) belongs to the head called ``head``."""
    return name == head or name.startswith(head + ".")


def _head_outputs(model: nn.Module) -> Optional[int]:
    head = _head(model)
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)] if head is not None else []
    return linears[-1].out_features if linears else None


def _reset_head(model: nn.Module) -> None:
    """Re-initialise the classifier head as the constructor does (``nn.Linear``'s and
    ``nn.BatchNorm1d``'s own ``reset_parameters``)."""
    head = _head(model)
    if head is None:
        return
    for m in head.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()


def _mismatch_hints(mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]) -> str:
    hints = []
    if "conv1.weight" in mismatched:
        (src, dst) = mismatched["conv1.weight"]
        if len(src) == 4 and len(dst) == 4 and src[1] != dst[1]:
            hints.append(f"the weights take {src[1]}-channel images, the model {dst[1]} (set data.channels={src[1]})")
        if len(src) == 4 and len(dst) == 4 and src[2:] != dst[2:]:
            hints.append(f"the weights have a {src[2]}x{src[3]} stem conv, the model {dst[2]}x{dst[3]} "
                         f"(model.stem=imagenet has 7x7)")
    return (" Hint: " + "; ".join(hints) + ".") if hints else ""


def resolve_source(source: Any, download: bool) -> tuple[dict[str, Tensor], Optional[Path]]:
    """The state dict named by ``source`` (a mapping, an ImageNet checkpoint name, a weights file
    or a medclass run folder) and the file it came from (None for a mapping).

    Raises:
        PretrainedError: unknown name, missing or unreadable file, offline without the cached file.
    """
    if isinstance(source, Mapping):
        return _strip_wrapper_prefix(dict(source)), None
    if isinstance(source, str):
        key = source.strip().lower()
        if key in IMAGENET_CHECKPOINTS or key in IMAGENET_ALIASES:
            path = imagenet_checkpoint_path(key, download=download)
            return load_state_dict_file(path), path
    path = Path(source)
    if path.is_dir():
        best = RunFiles(path).best
        if not best.is_file():
            raise PretrainedError(f"{path} is a folder but not a medclass run: no {best}")
        return load_state_dict_file(best), best
    if path.is_file():
        return load_state_dict_file(path), path
    known = ", ".join(sorted(set(IMAGENET_CHECKPOINTS) | set(IMAGENET_ALIASES)))
    raise PretrainedError(
        f"pretrained source {str(source)!r} is neither a known checkpoint ({known}) nor an existing "
        "weights file (.pth, .pt, .safetensors, .h5) nor a medclass run folder"
    )


def load_pretrained(
    model: nn.Module,
    source: Union[str, os.PathLike, Mapping[str, Tensor]],
    num_classes: Optional[int] = None,
    download: bool = True,
    reset_head: bool = False,
) -> dict[str, Any]:
    """Load pretrained weights into ``model`` (a :class:`ResNet`), all or nothing.

    ``source``:

    - ``"imagenet"`` / ``"imagenet-v1"`` / ``"imagenet-v2"``: torchvision's ResNet-50 checkpoints
      (:data:`IMAGENET_CHECKPOINTS`, via :func:`imagenet_checkpoint_path`). A name wins over a
      file or folder of the same name.
    - a weights file (``.pth``, ``.pt``, ``.safetensors``, Keras ``.h5``; :func:`load_state_dict_file`);
    - a medclass run folder: its ``checkpoints/best.pt`` (the ``"model"`` entry);
    - a state dict (mapping of names to tensors).

    The classifier head (keys starting with ``model.head_name + "."``, ``fc.`` for the ResNets)
    is taken from the source only when its keys
    and shapes equal the model's and ``reset_head`` is False; otherwise (another class count, a
    notop file, a different head kind) the model's head is re-initialised as the constructor
    does. Every other key must match in name and shape: ``num_batches_tracked`` counters may be
    absent (torchvision's v1 file has none; the model's are kept). Tensors are cast to the
    model's dtype and device by ``load_state_dict``.

    Args:
        model: the network, e.g. ``build_model(cfg.model, num_classes, in_channels)``.
        source: see above.
        num_classes: the task's class count, checked against the head's outputs when given
            (a single-logit head, 1 output, counts as 2 classes).
        download: allow downloading an ImageNet checkpoint missing from the cache.
        reset_head: re-initialise the head even when the source's fits.

    Returns:
        ``{"source": str, "file": str | None, "loaded_keys": int (tensors copied from the source),
        "head_reinitialised": bool}``.

    Raises:
        PretrainedError: the source cannot be found, fetched or read; or keys outside the head are
            missing, unexpected or of another shape -- the message lists the first 10 of each with
            their counts, and the model is left unchanged.
        ValueError: ``num_classes`` does not match the model's head.
    """
    outputs = _head_outputs(model)
    if num_classes is not None and outputs is not None and outputs != num_classes and not (outputs == 1 and num_classes == 2):
        raise ValueError(f"the model's head has {outputs} outputs, the task {num_classes} classes")
    src, file = resolve_source(source, download)
    head = _head_name(model)
    label = str(file) if file is not None else ("<state dict>" if isinstance(source, Mapping) else str(source))

    target = model.state_dict()
    src, input_conv = _adapt_input_channels(model, src, target)
    missing, unexpected, mismatched = [], [], {}
    for k, v in target.items():
        if _is_head_key(k, head) or k.endswith("num_batches_tracked"):
            continue
        if k not in src:
            missing.append(k)
        elif tuple(src[k].shape) != tuple(v.shape):
            mismatched[k] = (tuple(src[k].shape), tuple(v.shape))
    for k in src:
        if not _is_head_key(k, head) and k not in target:
            unexpected.append(k)
    if missing or unexpected or mismatched:
        shapes = [f"{k}: source {s} vs model {d}" for k, (s, d) in mismatched.items()]
        raise PretrainedError(
            f"the weights of {label} do not fit this {type(model).__name__}: "
            + _listing("missing keys", missing) + "; "
            + _listing("unexpected keys", unexpected) + "; "
            + _listing("shape mismatches", shapes) + "."
            + _mismatch_hints(mismatched)
        )

    head_target = {k: tuple(v.shape) for k, v in target.items() if _is_head_key(k, head)}
    head_src = {k: tuple(v.shape) for k, v in src.items() if _is_head_key(k, head)}
    # A head's BatchNorm1d counter may be absent from the source, as in the backbone.
    head_src_cmp = {k: s for k, s in head_src.items() if not k.endswith("num_batches_tracked")}
    head_target_cmp = {k: s for k, s in head_target.items() if not k.endswith("num_batches_tracked")}
    take_head = not reset_head and bool(head_target_cmp) and head_src_cmp == head_target_cmp
    if not take_head:
        _reset_head(model)
        target = model.state_dict()

    merged: dict[str, Tensor] = {}
    loaded = 0
    for k, v in target.items():
        if _is_head_key(k, head) and not take_head:
            merged[k] = v
        elif k in src:
            merged[k] = src[k]
            loaded += 1
        else:  # a num_batches_tracked counter the source lacks
            merged[k] = v
    model.load_state_dict(merged, strict=True)
    report = {"source": label, "file": str(file) if file is not None else None,
              "loaded_keys": loaded, "head_reinitialised": not take_head}
    if input_conv:
        report["input_conv"] = input_conv
    return report


def adapt_input_conv(in_channels: int, weight: Tensor) -> Tensor:
    """The first convolution's RGB filters ``(O, 3, k, k)`` made to take ``in_channels`` channels,
    as timm's ``adapt_input_conv`` does: summed over RGB for 1 channel (a grey image ``g`` then gives
    what the RGB image ``(g, g, g)`` gave, up to the per-channel normalisation), else repeated and
    scaled by ``3 / in_channels``. Returns a new float tensor ``(O, in_channels, k, k)``.

    Raises:
        ValueError: ``weight`` is not a 4-D 3-channel filter bank, or ``in_channels`` < 1.
    """
    if weight.dim() != 4 or weight.shape[1] != 3 or in_channels < 1:
        raise ValueError(f"adapt_input_conv needs (O, 3, k, k) filters and in_channels >= 1, got "
                         f"{tuple(weight.shape)} and {in_channels}")
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeat = -(-in_channels // 3)
    return weight.repeat(1, repeat, 1, 1)[:, :in_channels] * (3.0 / in_channels)


def _adapt_input_channels(model: nn.Module, src: dict[str, Tensor],
                          target: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], Optional[str]]:
    """``src`` with its input convolution (``model.input_conv_name``) adapted by
    :func:`adapt_input_conv` when the weights take RGB and the model another channel count;
    and how (``None`` when nothing changed)."""
    key = f"{getattr(model, 'input_conv_name', 'conv1')}.weight"
    if key not in src or key not in target:
        return src, None
    have, want = src[key], target[key]
    if have.dim() != 4 or want.dim() != 4 or have.shape[1] != 3 or want.shape[1] == 3 or have.shape[0] != want.shape[0]:
        return src, None
    src = dict(src)
    src[key] = adapt_input_conv(int(want.shape[1]), have)
    how = "summed over RGB" if want.shape[1] == 1 else f"repeated to {want.shape[1]} channels"
    return src, f"{key}: the RGB filters {how} (timm adapt_input_conv)"


# -- fine-tuning helpers ------------------------------------------------------------------------


def freeze_backbone(model: nn.Module, freeze_bn_stats: bool = True) -> None:
    """Linear probing / head-first fine-tuning: every parameter except the head's
    (``model.head_name``, ``fc`` for the built-in models) gets
    ``requires_grad=False``.

    With ``freeze_bn_stats`` the backbone's batch norms are also put in eval mode
    (:func:`set_backbone_bn_eval`), so they normalise with the pretrained running statistics and
    do not update them. ``model.train()`` puts them back in training mode: the training loop must
    call :func:`set_backbone_bn_eval` after every ``model.train()`` while the backbone is frozen.
    Build the optimizer after freezing (frozen parameters are left out of its groups).
    """
    head = _head_name(model)
    for name, p in model.named_parameters():
        if not _is_head_key(name, head):
            p.requires_grad_(False)
    if freeze_bn_stats:
        set_backbone_bn_eval(model)


def set_backbone_bn_eval(model: nn.Module) -> int:
    """Put every batch norm outside the head (``model.head_name``) in eval mode: it then normalises with its
    running statistics and leaves them unchanged. Call it after ``model.train()``. The head's
    layers (e.g. a ``BatchNorm1d`` head, dropout) keep the model's mode.

    Returns:
        The number of batch-norm layers set to eval mode.
    """
    n, head = 0, _head_name(model)
    for name, m in model.named_modules():
        if isinstance(m, _BatchNorm) and not _is_head_key(name, head):
            m.eval()
            n += 1
    return n


def unfreeze_all(model: nn.Module) -> None:
    """Make every parameter trainable again and put every layer back in the model's own mode
    (undoing :func:`set_backbone_bn_eval`). Rebuild the optimizer (or ``add_param_group``) so the
    backbone's parameters are in it."""
    for p in model.parameters():
        p.requires_grad_(True)
    model.train(model.training)


def weight_decay_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split parameters for L2 regularisation as weight decay on conv and linear weights only.

    Batch-norm scales/shifts and all biases (1-D tensors) get no decay, as in the timm and
    "Bag of Tricks" (He et al. 2019, arXiv:1812.01187) recipes.
    Returns two optimizer parameter groups: ``[{"params": decay, "weight_decay": wd},
    {"params": no_decay, "weight_decay": 0.0}]``.
    """
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            if isinstance(module, (nn.Conv2d, nn.Linear)) and name == "weight":
                decay.append(p)
            else:
                no_decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def param_groups_with_lrs(
    model: nn.Module,
    base_lr: float,
    backbone_lr_mult: float,
    *,
    weight_decay: float,
) -> list[dict[str, Any]]:
    """Optimizer parameter groups for discriminative fine-tuning: the head (``model.head_name``) at
    ``base_lr``, the rest at ``base_lr * backbone_lr_mult``; within each, weight decay only on
    conv and linear weights (the split of :func:`medclass.models.weight_decay_param_groups`,
    applied to the head and to the backbone's modules).

    Only trainable parameters are included (freeze first, then build the optimizer); empty
    groups are dropped. The head's groups come first, so ``optimizer.param_groups[0]["lr"]`` is the
    base LR. Per-group schedules (``LambdaLR``, ``ReduceLROnPlateau``) scale every group by the
    same factor, so the ratio is kept. Each group has a ``"name"`` entry
    (``head/decay``, ``head/no_decay``, ``backbone/decay``, ``backbone/no_decay``).

    Returns:
        ``[{"params": [...], "lr": float, "weight_decay": float, "name": str}, ...]``.

    Raises:
        ValueError: ``base_lr <= 0``, ``backbone_lr_mult < 0``, or the model has no head
            or parameters outside its children.
    """
    if base_lr <= 0:
        raise ValueError(f"base_lr must be positive, got {base_lr}")
    if backbone_lr_mult < 0:
        raise ValueError(f"backbone_lr_mult must be >= 0, got {backbone_lr_mult}")
    head_name, head = _head_name(model), _head(model)
    if head is None:
        raise ValueError(f"{type(model).__name__} has no {head_name!r} head")
    if any(p.requires_grad for p in model.parameters(recurse=False)):
        raise ValueError(f"{type(model).__name__} has parameters outside its child modules")
    backbone = nn.ModuleList([m for name, m in model.named_children() if name != head_name])
    groups: list[dict[str, Any]] = []
    for part, module, lr in (("head", head, base_lr), ("backbone", backbone, base_lr * backbone_lr_mult)):
        decay, no_decay = weight_decay_param_groups(module, weight_decay)
        for kind, group in (("decay", decay), ("no_decay", no_decay)):
            if group["params"]:
                groups.append({**group, "lr": lr, "name": f"{part}/{kind}"})
    return groups
