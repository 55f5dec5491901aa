"""Models: the registry of architectures (the from-scratch ResNet family, the custom CNN, the
chained model) and the helpers to build and regularise one.

Every architecture is a :class:`ClassifierModel` registered with :func:`register_model`; build one
by name with :func:`create_model`, or from a ``ModelConfig`` with :func:`build_model`.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from ..core.config import ModelConfig
from . import custom_cnn as _custom_cnn, efficientnet as _efficientnet, registry as _registry, resnet as _resnet
from . import keras_resnet as _keras_resnet  # registers the Keras .h5 reader with medclass.models.pretrained
from .pretrained import weight_decay_param_groups
from .base import ClassifierModel
from .custom_cnn import ChainedModel, CustomCNN, chained, conv_block, custom_cnn
from .efficientnet import (
    EfficientNetLite, efficientnet_lite0, efficientnet_lite1, efficientnet_lite2,
)
from .ensemble import SoftVotingEnsemble, logits_to_probs
from .keras_resnet import convert_keras_resnet50
from .registry import (
    ModelInfo, create_model, is_model, list_models, model_info, model_options, models_table, register_model,
)
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
    "ClassifierModel", "SoftVotingEnsemble", "logits_to_probs",
    *_resnet.__all__, *_efficientnet.__all__, *_custom_cnn.__all__, *_registry.__all__,
    "build_model", "weight_decay_param_groups", "count_parameters", *_keras_resnet.__all__,
]


def build_model(cfg: ModelConfig, num_classes: int, in_channels: int) -> ClassifierModel:
    """Build the configured network with ``num_classes`` outputs (1 when ``cfg.single_logit``):
    ``create_model(cfg.arch, outputs, in_channels, **options)``, where ``options`` are the
    ``ModelConfig`` fields the architecture's entrypoint accepts (:func:`model_options`; lists
    become tuples). A new architecture needs no edit here.

    Returns:
        A :class:`ClassifierModel` (float32, training mode).

    Raises:
        ValueError: unknown ``arch`` (the message lists the registered ones), or ``single_logit``
            with other than 2 classes.
    """
    if cfg.single_logit and num_classes != 2:
        raise ValueError(f"model.single_logit needs a binary task, this data has {num_classes} classes")
    outputs = 1 if cfg.single_logit else num_classes
    accepted = set(model_options(cfg.arch))
    options = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name in accepted}
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
    return create_model(cfg.arch, outputs, in_channels, **options)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())
