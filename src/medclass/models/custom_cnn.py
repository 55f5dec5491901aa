"""The seeds' small "custom CNN" and the chained model (a truncated ResNet feeding the CNN).

Custom CNN (as in the Keras seed notebooks): ``depth`` blocks of
``[Conv2D 3x3 -> BatchNorm -> ReLU] * convs_per_block -> MaxPool 2x2``, with the widths given,
then global average pooling, optional dropout and dense layers, and the classifier.

Chained model, precisely: a ResNet (ResNet-50 by default, usually with pretrained weights) is
cut after stage ``chain_stage`` (1-4: ``layer1`` .. ``layer4``); its feature maps
``(N, C_k, H / s_k, W / s_k)`` (``C_k`` = 256, 512, 1024, 2048 and ``s_k`` = 4, 8, 16, 32 for the
ImageNet stem) are the *input image* of a custom CNN, whose first convolution takes ``C_k``
channels. The whole is one network trained end to end with one loss; with
``model.chain_freeze_resnet`` the ResNet part keeps its weights and batch-norm statistics and
only the CNN and the classifier train.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from .base import ClassifierModel
from .registry import register_model
from .resnet import ClassifierHead, ResNet, resnet50

__all__ = ["CustomCNN", "ChainedModel", "conv_block", "custom_cnn", "chained"]


def conv_block(in_channels: int, out_channels: int, convs: int = 1) -> nn.Sequential:
    """``[Conv2d 3x3 (no bias) -> BatchNorm2d -> ReLU] * convs -> MaxPool2d 2x2``: halves H and W."""
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [
            nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        ]
    layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class CustomCNN(ClassifierModel):
    """A plain CNN: conv blocks (``widths``), global average pooling, head (``fc``).

    Input ``(N, in_channels, H, W)`` float with H, W >= ``2 ** len(widths)``; output logits
    ``(N, num_classes)``. ``head_hidden``, ``dropout``, ``head_kind``: see
    :class:`medclass.models.ClassifierHead`.

    Raises:
        ValueError: empty ``widths`` or ``convs_per_block`` < 1.
    """

    head_name = "fc"

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        widths: Sequence[int] = (32, 64, 128, 256),
        convs_per_block: int = 1,
        head_hidden: Sequence[int] = (),
        dropout: float = 0.0,
        head_kind: str = "dense",
    ) -> None:
        super().__init__()
        if not widths or convs_per_block < 1:
            raise ValueError(f"custom CNN needs widths and convs_per_block >= 1, got {list(widths)}, {convs_per_block}")
        chans = [in_channels, *widths]
        self.features = nn.Sequential(*(conv_block(a, b, convs_per_block) for a, b in zip(chans, chans[1:])))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.num_features = widths[-1]
        self.fc = ClassifierHead(widths[-1], num_classes, head_hidden, dropout, head_kind)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: Tensor) -> Tensor:
        """The conv blocks: ``(N, C, H, W)`` -> ``(N, widths[-1], H / 2**len(widths), W / 2**len(widths))``."""
        return self.features(x)

    def feature_stages(self) -> tuple[str, ...]:
        """The conv blocks, ``("features.0", ..., "features.<n - 1>")``."""
        return tuple(f"features.{i}" for i in range(len(self.features)))

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        """Each conv block's map (``(N, widths[i], H / 2**(i+1), W / 2**(i+1))``); the last is
        :meth:`forward_features`'s."""
        out = []
        for block in self.features:
            x = block(x)
            out.append(x)
        return out

    def default_gradcam_layer(self) -> str:
        """The last conv block, ``"features.<len(features) - 1>"`` (it ends with its max-pool, so
        its map is the one pooling sees)."""
        return f"features.{len(self.features) - 1}"

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.avgpool(self.forward_features(x)), 1))


class ChainedModel(ClassifierModel):
    """A ResNet or an EfficientNet-Lite cut after stage ``stage`` (the "part": ``resnet`` or
    ``efficientnet``), feeding a custom CNN (``cnn``), then global average pooling and the head
    (``fc``). See the module docstring.

    Args:
        resnet: the network to cut (modified in place: later stages, pooling and head removed): a
            :class:`~medclass.models.resnet.ResNet` (kept as ``self.resnet``) or an
            :class:`~medclass.models.efficientnet.EfficientNetLite` (kept as ``self.efficientnet``; its
            stages 1..4 end at 1/4, 1/8, 1/16 and 1/32 of the input: ``blocks.1``, ``blocks.2``,
            ``blocks.4``, ``blocks.6``, with 24, 40, 112 and 320 channels for lite0).
        stage: 1..4, the last stage kept.
        num_classes: outputs of the head.
        widths: the custom CNN's block widths.
        chain_freeze_resnet: keep the ResNet part's weights and batch-norm statistics fixed for
            the whole run (:meth:`set_trainable` applies it).
        cnn_options: ``convs_per_block``, ``head_hidden``, ``dropout``, ``head_kind`` of
            :class:`CustomCNN`.

    Input ``(N, C, H, W)`` float; output logits ``(N, num_classes)``. The ResNet part's
    ``state_dict`` keys are the ResNet's own with the prefix ``resnet.``, so a ResNet checkpoint
    loads into it (:meth:`load_resnet_state_dict`).

    Raises:
        ValueError: ``stage`` outside 1..4.
    """

    head_name = "fc"

    def __init__(self, resnet: ResNet, stage: int, num_classes: int, widths: Sequence[int] = (256, 256), *,
                 chain_freeze_resnet: bool = False, **cnn_options: Any) -> None:
        super().__init__()
        if stage not in (1, 2, 3, 4):
            raise ValueError(f"model.chain_stage must be 1..4, got {stage}")
        self.stage = stage
        self.chain_freeze_resnet = bool(chain_freeze_resnet)
        self.part_name = "resnet" if isinstance(resnet, ResNet) else "efficientnet"
        channels = resnet.cut_after(stage)  # drops the stages after the cut, the pooling and the head
        self.add_module(self.part_name, resnet)
        cnn = CustomCNN(channels, num_classes, widths, **cnn_options)
        self.cnn = cnn.features
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = cnn.fc

    @property
    def part(self) -> nn.Module:
        """The network before the cut (``self.resnet`` or ``self.efficientnet``)."""
        return getattr(self, self.part_name)

    def forward_features(self, x: Tensor) -> Tensor:
        """Stages 1..``stage`` of the part, then the CNN's blocks: ``(N, C, H, W)`` -> ``(N, widths[-1], h, w)``."""
        return self.cnn(self.part.forward_features(x))

    def feature_stages(self) -> tuple[str, ...]:
        """The part's stages kept (``"resnet.layer1"`` .. ``"resnet.layer<stage>"``, or
        ``"efficientnet.blocks.1"`` ..), then the CNN's blocks (``"cnn.0"`` ..)."""
        return (tuple(f"{self.part_name}.{n}" for n in self.part.cut_stage_names(self.stage))
                + tuple(f"cnn.{i}" for i in range(len(self.cnn))))

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        """The maps of :meth:`feature_stages`; the last is :meth:`forward_features`'s."""
        out = self.part.forward_stages(x)[: self.stage]
        x = out[-1]
        for block in self.cnn:
            x = block(x)
            out.append(x)
        return out

    def default_gradcam_layer(self) -> str:
        """The custom CNN's last conv block, ``"cnn.<len(cnn) - 1>"``."""
        return f"cnn.{len(self.cnn) - 1}"

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.avgpool(self.forward_features(x)), 1))

    def load_resnet_state_dict(self, state: dict[str, Tensor]) -> int:
        """Load a ResNet ``state_dict`` (torchvision layout) into the part before the cut; keys of
        later stages and ``fc`` are ignored. Returns the number of tensors loaded.

        Raises:
            RuntimeError: a needed key is missing or has another shape (``load_state_dict``).
        """
        own = self.part.state_dict()
        subset = {k: v for k, v in state.items() if k in own}
        self.part.load_state_dict(subset, strict=True)
        return len(subset)

    def load_pretrained_weights(self, source: Any, num_classes: Optional[int] = None, reset_head: bool = False,
                                download: bool = True) -> dict[str, Any]:
        """Load a ResNet checkpoint (any source of :func:`medclass.models.pretrained.resolve_source`)
        into the ResNet part only (:meth:`load_resnet_state_dict`); the CNN and the head keep their
        initialisation, so ``num_classes`` and ``reset_head`` play no part.

        Returns:
            ``{"source": str, "file": str | None, "loaded_keys": int, "head_reinitialised": False,
            "part": "ResNet part"}``.

        Raises:
            medclass.models.pretrained.PretrainedError: the source cannot be found or read.
            RuntimeError: a needed key is missing or has another shape.
        """
        from .pretrained import resolve_source

        if self.part_name == "efficientnet":  # its ImageNet wheel, or a file in the packages' layout
            state, found = self.part.source_state_dict(source, download)
            n = self.load_resnet_state_dict(state)
            label = found["file"] or ("<state dict>" if isinstance(source, Mapping) else str(source))
            return {**found, "source": label, "loaded_keys": n, "head_reinitialised": False,
                    "part": "EfficientNet-Lite part"}
        state, file = resolve_source(source, download=download)
        n = self.load_resnet_state_dict(state)
        label = "<state dict>" if isinstance(source, Mapping) else str(source)
        return {"source": label, "file": str(file) if file is not None else None, "loaded_keys": n,
                "head_reinitialised": False, "part": "ResNet part"}

    def freeze_resnet(self) -> None:
        """Freeze the part (ResNet or EfficientNet-Lite): no gradients, batch norms in eval mode (call
        after ``train()``)."""
        for p in self.part.parameters():
            p.requires_grad_(False)
        for m in self.part.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()

    def set_trainable(self, backbone: bool) -> None:
        """As :meth:`ClassifierModel.set_trainable`, then, with ``chain_freeze_resnet``,
        :meth:`freeze_resnet` (the ResNet part stays frozen in every epoch)."""
        super().set_trainable(backbone)
        if self.chain_freeze_resnet:
            self.freeze_resnet()

    @property
    def has_frozen_parts(self) -> bool:
        """True with ``chain_freeze_resnet``."""
        return self.chain_freeze_resnet


@register_model(description="the seeds' plain CNN: conv blocks, pooling, head", input_sizes=(28, 256))
def custom_cnn(num_classes: int, in_channels: int = 3, cnn_widths: Sequence[int] = (32, 64, 128, 256),
               cnn_convs_per_block: int = 1, head_hidden: Sequence[int] = (), dropout: float = 0.0,
               head_kind: str = "dense") -> CustomCNN:
    """The custom CNN (:class:`CustomCNN`), its options named as in ``ModelConfig``."""
    return CustomCNN(in_channels, num_classes, tuple(cnn_widths), cnn_convs_per_block, tuple(head_hidden), dropout,
                     head_kind)


@register_model(description="ResNet-50 (or model.chain_base=efficientnet_lite0) cut after chain_stage, feeding a "
                             "custom CNN", input_sizes=(112, 512))
def chained(num_classes: int, in_channels: int = 3, chain_stage: int = 2, cnn_widths: Sequence[int] = (256, 256),
            cnn_convs_per_block: int = 1, chain_freeze_resnet: bool = False, stem: str = "imagenet",
            zero_init_residual: bool = False, head_hidden: Sequence[int] = (), dropout: float = 0.0,
            head_kind: str = "dense", chain_base: str = "resnet50") -> ChainedModel:
    """The chained model (:class:`ChainedModel`) on ResNet-50 or EfficientNet-Lite0 (``chain_base``),
    its options named as in ``ModelConfig``.

    Raises:
        ValueError: an unknown ``chain_base``.
    """
    if chain_base == "efficientnet_lite0":
        from .efficientnet import efficientnet_lite0

        lite = efficientnet_lite0(num_classes=1000, in_channels=in_channels)
        return ChainedModel(lite, chain_stage, num_classes, tuple(cnn_widths), chain_freeze_resnet=chain_freeze_resnet,
                            convs_per_block=cnn_convs_per_block, head_hidden=tuple(head_hidden), dropout=dropout,
                            head_kind=head_kind)
    if chain_base != "resnet50":
        raise ValueError(f"model.chain_base must be resnet50 or efficientnet_lite0, got {chain_base!r}")
    resnet = resnet50(in_channels=in_channels, stem=stem, zero_init_residual=zero_init_residual)
    return ChainedModel(resnet, chain_stage, num_classes, tuple(cnn_widths), chain_freeze_resnet=chain_freeze_resnet,
                        convs_per_block=cnn_convs_per_block, head_hidden=tuple(head_hidden), dropout=dropout,
                        head_kind=head_kind)
