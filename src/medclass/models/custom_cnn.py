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

from typing import Sequence

import torch
from torch import Tensor, nn

from .resnet import ClassifierHead, ResNet

__all__ = ["CustomCNN", "ChainedModel", "conv_block"]


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


class CustomCNN(nn.Module):
    """A plain CNN: conv blocks (``widths``), global average pooling, head (``fc``).

    Input ``(N, in_channels, H, W)`` float with H, W >= ``2 ** len(widths)``; output logits
    ``(N, num_classes)``. ``head_hidden``, ``dropout``, ``head_kind``: see
    :class:`medclass.models.ClassifierHead`.

    Raises:
        ValueError: empty ``widths`` or ``convs_per_block`` < 1.
    """

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

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.avgpool(self.features(x)), 1))


class ChainedModel(nn.Module):
    """A ResNet cut after stage ``stage`` (``resnet``), feeding a custom CNN (``cnn``), then
    global average pooling and the head (``fc``). See the module docstring.

    Input ``(N, C, H, W)`` float; output logits ``(N, num_classes)``. The ResNet part's
    ``state_dict`` keys are the ResNet's own with the prefix ``resnet.``, so a ResNet checkpoint
    loads into it (:meth:`load_resnet_state_dict`).

    Raises:
        ValueError: ``stage`` outside 1..4.
    """

    def __init__(
        self,
        resnet: ResNet,
        stage: int,
        num_classes: int,
        widths: Sequence[int] = (256, 256),
        convs_per_block: int = 1,
        head_hidden: Sequence[int] = (),
        dropout: float = 0.0,
        head_kind: str = "dense",
    ) -> None:
        super().__init__()
        if stage not in (1, 2, 3, 4):
            raise ValueError(f"model.chain_stage must be 1..4, got {stage}")
        self.stage = stage
        for k in range(stage + 1, 5):  # drop the stages after the cut, the pooling and the head
            setattr(resnet, f"layer{k}", nn.Identity())
        resnet.avgpool, resnet.fc = nn.Identity(), nn.Identity()
        self.resnet = resnet
        channels = resnet.layer1[0].conv1.out_channels * (2 ** (stage - 1)) * type(resnet.layer1[0]).expansion
        cnn = CustomCNN(channels, num_classes, widths, convs_per_block, head_hidden, dropout, head_kind)
        self.cnn = cnn.features
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = cnn.fc

    def forward(self, x: Tensor) -> Tensor:
        x = self.resnet.forward_features(x)
        return self.fc(torch.flatten(self.avgpool(self.cnn(x)), 1))

    def load_resnet_state_dict(self, state: dict[str, Tensor]) -> int:
        """Load a ResNet ``state_dict`` (torchvision layout) into the part before the cut; keys of
        later stages and ``fc`` are ignored. Returns the number of tensors loaded.

        Raises:
            RuntimeError: a needed key is missing or has another shape (``load_state_dict``).
        """
        own = self.resnet.state_dict()
        subset = {k: v for k, v in state.items() if k in own}
        self.resnet.load_state_dict(subset, strict=True)
        return len(subset)

    def freeze_resnet(self) -> None:
        """Freeze the ResNet part: no gradients, batch norms in eval mode (call after ``train()``)."""
        for p in self.resnet.parameters():
            p.requires_grad_(False)
        for m in self.resnet.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
