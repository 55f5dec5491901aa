"""The ResNet family, written from scratch.

References:
    He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016
    (arXiv:1512.03385): the stem, the [3, 4, 6, 3] stages of ResNet-50, the basic and the
    bottleneck block, projection shortcuts.
    "ResNet v1.5" (NVIDIA Deep Learning Examples, torchvision): the stride of a down-sampling
    bottleneck sits in its 3x3 convolution, not its first 1x1.
    Goyal et al., "Accurate, Large Minibatch SGD" (arXiv:1706.02677): zero-initialised scale
    (gamma) of the last batch norm of each residual branch.
    Huang, Sun, Liu, Sedra, Weinberger, "Deep Networks with Stochastic Depth", ECCV 2016
    (arXiv:1603.09382): each residual branch dropped per sample in training (:class:`DropPath`,
    ``drop_path_rate``), with timm's ``DropPath`` and its ResNet's linear rate over the blocks.

The module names (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer1.0.downsample.0``, ``fc``, ...)
follow torchvision's ``models/resnet.py`` exactly, so a torchvision ImageNet ``state_dict`` loads
into :func:`resnet50` without renaming. In Keras terms (the seed notebooks), the first block of
each stage is the "convolutional block" (it has a projection shortcut, ``downsample``) and the
others are "identity blocks".
"""

from __future__ import annotations

from typing import Optional, Sequence, Type, Union

import torch
from torch import Tensor, nn

from .base import ClassifierModel
from .registry import register_model

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "DropPath",
    "ClassifierHead",
    "ResNet",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "RESNET_DEPTHS",
]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias (a batch norm follows)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution with no bias (a batch norm follows)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


def projection_shortcut(in_planes: int, out_planes: int, stride: int) -> Optional[nn.Sequential]:
    """The shortcut of a "convolutional block": 1x1 conv (with the block's stride) + batch norm;
    None (identity shortcut) when the block keeps both the shape and the resolution."""
    if stride == 1 and in_planes == out_planes:
        return None
    return nn.Sequential(conv1x1(in_planes, out_planes, stride), nn.BatchNorm2d(out_planes))


class DropPath(nn.Module):
    """Stochastic depth of a residual branch (Huang et al. 2016; timm's ``DropPath``): in training
    each sample's branch output is zeroed with probability ``p`` and the kept ones are scaled by
    ``1 / (1 - p)``, so the expectation is unchanged; at eval (and with ``p`` 0) the identity.
    No parameters or buffers (a model's ``state_dict`` keys do not change). The draws use the
    global torch generator of the input's device.

    Input and output: float ``(N, ...)``, same shape and dtype.
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"model.drop_path_rate must be in [0, 1), got a block rate of {p}")
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p:.3f}"


class _ResidualBlock(nn.Module):
    """What the two blocks share: ``relu(drop_path(branch(x)) + shortcut(x))``, the shortcut being
    the identity or ``downsample`` (a projection), ``drop_path`` stochastic depth (the identity at
    rate 0 and at eval). Subclasses build ``conv1``, ``bn1``, ... (the torchvision names), ``relu``
    and ``downsample``, and define :meth:`branch` and ``last_bn_name``."""

    expansion = 1
    last_bn_name = "bn2"
    downsample: Optional[nn.Sequential]
    relu: nn.ReLU
    drop_path: nn.Module

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        """The residual branch's last batch norm (zero-initialised with ``zero_init_residual``)."""
        return getattr(self, self.last_bn_name)

    def branch(self, x: Tensor) -> Tensor:
        """The residual branch, without the final ReLU."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.drop_path(self.branch(x))
        out += identity  # in place, as torchvision: one activation-sized allocation fewer
        return self.relu(out)


class BasicBlock(_ResidualBlock):
    """Two 3x3 convolutions with a skip connection (ResNet-18/34).

    Input ``(N, in_planes, H, W)`` float; output ``(N, planes, H/stride, W/stride)``.
    """

    expansion = 1
    last_bn_name = "bn2"

    def __init__(self, in_planes: int, planes: int, stride: int = 1, drop_path: float = 0.0) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = projection_shortcut(in_planes, planes * self.expansion, stride)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def branch(self, x: Tensor) -> Tensor:
        return self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))


class Bottleneck(_ResidualBlock):
    """The bottleneck block: 1x1 (reduce), 3x3 (stride here, v1.5), 1x1 (expand x4).

    With a projection shortcut (``downsample``) it is Keras' "convolutional block", without one
    an "identity block". Input ``(N, in_planes, H, W)`` float; output
    ``(N, 4 * planes, H/stride, W/stride)``.
    """

    expansion = 4
    last_bn_name = "bn3"

    def __init__(self, in_planes: int, planes: int, stride: int = 1, drop_path: float = 0.0) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = conv1x1(in_planes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, out_planes)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = projection_shortcut(in_planes, out_planes, stride)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def branch(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))


Block = Union[Type[BasicBlock], Type[Bottleneck]]


class ClassifierHead(nn.Module):
    """What follows global average pooling: optional dense layers, then the classifier.

    ``kind="dense"``: ``[Linear -> ReLU -> Dropout] * len(hidden)``, then (with ``dropout`` > 0
    and no hidden layer) Dropout, then ``Linear(num_outputs)``.
    ``kind="bn"``: ``BatchNorm1d -> Dropout? -> Linear(num_outputs)`` (the seeds' "GAP + BN + Dense").

    Input ``(N, in_features)`` float; output logits ``(N, num_outputs)``.
    """

    def __init__(
        self,
        in_features: int,
        num_outputs: int,
        hidden: Sequence[int] = (),
        dropout: float = 0.0,
        kind: str = "dense",
    ) -> None:
        super().__init__()
        if kind not in ("dense", "bn"):
            raise ValueError(f"head kind must be 'dense' or 'bn', got {kind!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        layers: list[nn.Module] = []
        width = in_features
        if kind == "bn":
            layers.append(nn.BatchNorm1d(width))
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        if dropout > 0 and not hidden:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(width, num_outputs))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class ResNet(ClassifierModel):
    """A residual network: stem, four stages, global average pooling, classifier.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: number of blocks per stage, e.g. ``[3, 4, 6, 3]`` for ResNet-50.
        num_classes: outputs of the classifier (1 for a single-logit binary model).
        in_channels: image channels (3 for RGB, 1 for greyscale).
        stem: ``"imagenet"``: 7x7/2 conv, BN, ReLU, 3x3/2 max-pool (He et al. 2016), for 112 px
            and up; ``"small"``: 3x3/1 conv, BN, ReLU, no max-pool, for 28 to 64 px images (keeps
            4x more resolution; used by MedMNIST-style and CIFAR-style ResNets).
        zero_init_residual: start each residual branch's last BN scale at zero (Goyal et al. 2017),
            so every block starts as the identity.
        drop_path_rate: stochastic depth (Huang et al. 2016, :class:`DropPath`): block ``i`` of the
            ``B`` residual blocks (0-based, over all stages) drops its branch with probability
            ``drop_path_rate * i / (B - 1)``, as timm's ResNet; 0 (the default) leaves it out.
        head_hidden, dropout, head_kind: see :class:`ClassifierHead`. With the defaults
            (no hidden layer, no dropout, "dense") ``fc`` is a plain ``nn.Linear`` and the
            ``state_dict`` matches torchvision's.

    Input ``(N, in_channels, H, W)`` float32 (or bf16 under autocast); output logits
    ``(N, num_classes)``. Spatial size is divided by 32 (``imagenet`` stem) or 8 (``small``)
    before pooling.
    """

    head_name = "fc"

    def __init__(
        self,
        block: Block,
        layers: Sequence[int],
        num_classes: int = 1000,
        in_channels: int = 3,
        stem: str = "imagenet",
        zero_init_residual: bool = False,
        head_hidden: Sequence[int] = (),
        dropout: float = 0.0,
        head_kind: str = "dense",
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"ResNet needs 4 stage depths, got {list(layers)}")
        if stem not in ("imagenet", "small"):
            raise ValueError(f"stem must be 'imagenet' or 'small', got {stem!r}")
        if isinstance(drop_path_rate, bool) or not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"model.drop_path_rate must be in [0, 1), got {drop_path_rate!r}")
        self.stem_kind = stem
        self.in_planes = 64
        total = sum(layers)
        self._block_rates = [drop_path_rate * i / max(1, total - 1) for i in range(total)]
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:
            self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        del self._block_rates  # consumed by _make_layer
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.num_features = 512 * block.expansion
        if not head_hidden and dropout == 0.0 and head_kind == "dense":
            self.fc: nn.Module = nn.Linear(self.num_features, num_classes)
        else:
            self.fc = ClassifierHead(self.num_features, num_classes, head_hidden, dropout, head_kind)
        self._init_weights(zero_init_residual)

    def _make_layer(self, block: Block, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        """One stage: a convolutional block (projection shortcut) then ``blocks - 1`` identity blocks."""
        rates, self._block_rates = self._block_rates[:blocks], self._block_rates[blocks:]
        stage = [block(self.in_planes, planes, stride, drop_path=rates[0])]
        self.in_planes = planes * block.expansion
        stage += [block(self.in_planes, planes, drop_path=rates[i]) for i in range(1, blocks)]
        return nn.Sequential(*stage)

    def _init_weights(self, zero_init_residual: bool) -> None:
        # Kaiming-normal fan-out for convolutions, BN at (1, 0): as torchvision.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, _ResidualBlock):
                    nn.init.zeros_(m.last_bn.weight)

    def forward_features(self, x: Tensor) -> Tensor:
        """Stem and the four stages: ``(N, C, H, W)`` -> ``(N, num_features, H', W')``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def feature_stages(self) -> tuple[str, ...]:
        """``("layer1", "layer2", "layer3", "layer4")``: the four residual stages (the
        out-of-distribution detector's feature ensemble, Lee et al. 2018)."""
        return ("layer1", "layer2", "layer3", "layer4")

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        """The four stages' maps for ``(N, C, H, W)``: ``(N, 64 e, H/s, W/s)`` .. ``(N, 512 e, H/8s,
        W/8s)`` (``e`` the block expansion, ``s`` 4 with the ImageNet stem, 1 with the small one);
        the last is :meth:`forward_features`'s."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out = []
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)
            out.append(x)
        return out

    def default_gradcam_layer(self) -> str:
        """``"layer4"``: the last stage (1/32 of the input size with the ImageNet stem, 1/8 with
        the small stem)."""
        return "layer4"

    def cut_after(self, stage: int) -> int:
        """Keep stages 1..``stage`` (1-4) and nothing after (later stages, pooling and head become
        identities; :class:`medclass.models.ChainedModel`); returns the channels of the cut's map."""
        for k in range(stage + 1, 5):
            setattr(self, f"layer{k}", nn.Identity())
        self.avgpool, self.fc = nn.Identity(), nn.Identity()
        return self.layer1[0].conv1.out_channels * (2 ** (stage - 1)) * type(self.layer1[0]).expansion

    def cut_stage_names(self, stage: int) -> tuple[str, ...]:
        """The stages kept by :meth:`cut_after`: ``("layer1", .., "layer<stage>")``."""
        return tuple(f"layer{k}" for k in range(1, stage + 1))

    def forward(self, x: Tensor) -> Tensor:
        x = self.forward_features(x)
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


RESNET_DEPTHS: dict[int, tuple[Block, tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


def _resnet(depth: int, **kwargs) -> ResNet:
    block, layers = RESNET_DEPTHS[depth]
    return ResNet(block, layers, **kwargs)


def resnet18(**kwargs) -> ResNet:
    """ResNet-18: basic blocks [2, 2, 2, 2]; 11,689,512 parameters with 1000 classes."""
    return _resnet(18, **kwargs)


def resnet34(**kwargs) -> ResNet:
    """ResNet-34: basic blocks [3, 4, 6, 3]; 21,797,672 parameters with 1000 classes."""
    return _resnet(34, **kwargs)


def resnet50(**kwargs) -> ResNet:
    """ResNet-50 (v1.5): bottleneck blocks [3, 4, 6, 3]; 25,557,032 parameters with 1000 classes."""
    return _resnet(50, **kwargs)


def resnet101(**kwargs) -> ResNet:
    """ResNet-101: bottleneck blocks [3, 4, 23, 3]; 44,549,160 parameters with 1000 classes."""
    return _resnet(101, **kwargs)


def resnet152(**kwargs) -> ResNet:
    """ResNet-152: bottleneck blocks [3, 8, 36, 3]; 60,192,808 parameters with 1000 classes."""
    return _resnet(152, **kwargs)


# Registered as model.arch names (the same as ``@register_model(...)`` on each): the ImageNet
# stem suits 112 px and up, model.stem=small 28 to 64 px.
for _entry, (_depth, (_block, _layers)) in zip((resnet18, resnet34, resnet50, resnet101, resnet152),
                                               RESNET_DEPTHS.items()):
    _kind = "basic" if _block is BasicBlock else "bottleneck"
    register_model(_entry, description=f"ResNet-{_depth}, {_kind} blocks {list(_layers)}; model.stem=small: 28-64 px",
                   input_sizes=(112, 512), accepts=ResNet)
del _entry, _depth, _block, _layers, _kind
