"""Models: the from-scratch ResNet family and the helpers to build and regularise one."""

from __future__ import annotations

from torch import nn

from ..config import ModelConfig
from .resnet import (
    RESNET_DEPTHS,
    BasicBlock,
    Bottleneck,
    ClassifierHead,
    ResNet,
    resnet18,
    resnet34,
    resnet50,
    resnet101,
    resnet152,
)

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "ClassifierHead",
    "ResNet",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "build_model",
    "weight_decay_param_groups",
    "count_parameters",
]


def build_model(cfg: ModelConfig, num_classes: int, in_channels: int) -> ResNet:
    """Build the configured network with ``num_classes`` outputs (1 when ``cfg.single_logit``).

    Raises:
        ValueError: unknown ``arch``, or ``single_logit`` with other than 2 classes.
    """
    if not cfg.arch.startswith("resnet") or not cfg.arch[6:].isdigit() or int(cfg.arch[6:]) not in RESNET_DEPTHS:
        raise ValueError(f"unknown model.arch {cfg.arch!r}; choose one of "
                         + ", ".join(f"resnet{d}" for d in RESNET_DEPTHS))
    if cfg.single_logit and num_classes != 2:
        raise ValueError(f"model.single_logit needs a binary task, this data has {num_classes} classes")
    block, layers = RESNET_DEPTHS[int(cfg.arch[6:])]
    return ResNet(
        block,
        layers,
        num_classes=1 if cfg.single_logit else num_classes,
        in_channels=in_channels,
        stem=cfg.stem,
        zero_init_residual=cfg.zero_init_residual,
        head_hidden=tuple(cfg.head_hidden),
        dropout=cfg.dropout,
        head_kind=cfg.head_kind,
    )


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


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())
