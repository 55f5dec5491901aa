"""What every medclass classifier exposes, so that pretrained loading, freezing, per-group learning
rates, Grad-CAM and the training loop need no ``isinstance`` or module-name checks.

A classifier is a feature extractor (:meth:`ClassifierModel.forward_features`, image ->
feature map), global pooling, and a classifier head, the child module named by the class
attribute :attr:`ClassifierModel.head_name`. Everything outside the head is "the backbone".
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Union

from torch import Tensor, nn

__all__ = ["ClassifierModel"]


class ClassifierModel(nn.Module):
    """Base class of the medclass architectures (an ``nn.Module`` with a few more methods).

    Subclasses set :attr:`head_name` (the attribute holding the classifier head) and implement
    :meth:`forward_features`, :meth:`default_gradcam_layer` and ``forward``. The defaults of
    :meth:`load_pretrained_weights`, :meth:`set_trainable` and :attr:`has_frozen_parts` treat
    every parameter outside the head as the backbone; a model with another contract (e.g.
    :class:`medclass.models.ChainedModel`) overrides them.
    """

    #: Name of the child module holding the classifier head (its keys start with ``head_name + "."``).
    head_name: str = "fc"

    def forward_features(self, x: Tensor) -> Tensor:
        """The feature extractor: images ``(N, C, H, W)`` float -> feature map ``(N, F, h, w)``
        (what global pooling and the head see)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement forward_features")

    def get_classifier(self) -> nn.Module:
        """The classifier head, ``getattr(self, self.head_name)``: pooled features ``(N, F)`` ->
        logits ``(N, num_outputs)``."""
        return getattr(self, self.head_name)

    def default_gradcam_layer(self) -> str:
        """Name (as in ``named_modules()``) of the layer Grad-CAM explains by default: the last
        convolutional stage before pooling."""
        raise NotImplementedError(f"{type(self).__name__} does not implement default_gradcam_layer")

    def load_pretrained_weights(
        self,
        source: Union[str, os.PathLike, Mapping[str, Tensor]],
        num_classes: Optional[int] = None,
        reset_head: bool = False,
        download: bool = True,
    ) -> dict[str, Any]:
        """Load pretrained weights into this model, all or nothing: by default
        :func:`medclass.models.pretrained.load_pretrained` (its rules on the head, its errors).

        Returns:
            ``{"source": str, "file": str | None, "loaded_keys": int, "head_reinitialised": bool}``;
            a model loading only part of itself adds ``"part": str`` (e.g. ``"ResNet part"``).

        Raises:
            medclass.models.pretrained.PretrainedError: the source cannot be read or does not fit.
            ValueError: ``num_classes`` does not match the head.
        """
        from .pretrained import load_pretrained

        return load_pretrained(self, source, num_classes, download=download, reset_head=reset_head)

    def set_trainable(self, backbone: bool) -> None:
        """Apply the freezing of one training epoch; call it after ``model.train()``.

        ``backbone=False``: only the head trains, the backbone's batch norms keep their running
        statistics (:func:`medclass.models.pretrained.freeze_backbone`); ``backbone=True``: every
        parameter trains (:func:`medclass.models.pretrained.unfreeze_all`). Subclasses add parts
        that stay frozen for the whole run.
        """
        from .pretrained import freeze_backbone, unfreeze_all

        if backbone:
            unfreeze_all(self)
        else:
            freeze_backbone(self)

    @property
    def has_frozen_parts(self) -> bool:
        """True when some parameters stay frozen whatever :meth:`set_trainable` is given (DDP then
        needs ``find_unused_parameters``)."""
        return False
