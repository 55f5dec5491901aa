"""Models: the from-scratch ResNet family and the helpers to build and regularise one."""

from __future__ import annotations

from torch import nn

from ..config import ModelConfig
from .custom_cnn import ChainedModel, CustomCNN, conv_block
from .ensemble import SoftVotingEnsemble, logits_to_probs
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
    "SoftVotingEnsemble",
    "logits_to_probs",
    "ChainedModel",
    "CustomCNN",
    "conv_block",
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


def build_model(cfg: ModelConfig, num_classes: int, in_channels: int) -> nn.Module:
    """Build the configured network with ``num_classes`` outputs (1 when ``cfg.single_logit``).

    Returns a :class:`ResNet`, :class:`CustomCNN` or :class:`ChainedModel`; every one has its
    classifier head as ``fc``.

    Raises:
        ValueError: unknown ``arch``, or ``single_logit`` with other than 2 classes.
    """
    if cfg.single_logit and num_classes != 2:
        raise ValueError(f"model.single_logit needs a binary task, this data has {num_classes} classes")
    outputs = 1 if cfg.single_logit else num_classes
    head = dict(head_hidden=tuple(cfg.head_hidden), dropout=cfg.dropout, head_kind=cfg.head_kind)
    if cfg.arch == "custom_cnn":
        return CustomCNN(in_channels, outputs, tuple(cfg.cnn_widths), cfg.cnn_convs_per_block, **head)
    if cfg.arch == "chained":
        resnet = ResNet(*RESNET_DEPTHS[50], in_channels=in_channels, stem=cfg.stem,
                        zero_init_residual=cfg.zero_init_residual)
        return ChainedModel(resnet, cfg.chain_stage, outputs, tuple(cfg.cnn_widths), cfg.cnn_convs_per_block, **head)
    depth = cfg.arch[6:]
    if not cfg.arch.startswith("resnet") or not depth.isdigit() or int(depth) not in RESNET_DEPTHS:
        raise ValueError(f"unknown model.arch {cfg.arch!r}; choose custom_cnn, chained or one of "
                         + ", ".join(f"resnet{d}" for d in RESNET_DEPTHS))
    block, layers = RESNET_DEPTHS[int(depth)]
    return ResNet(block, layers, num_classes=outputs, in_channels=in_channels, stem=cfg.stem,
                  zero_init_residual=cfg.zero_init_residual, **head)


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
