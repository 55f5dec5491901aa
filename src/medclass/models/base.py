"""What every medclass classifier exposes, so that pretrained loading, freezing, per-group learning
rates, Grad-CAM and the training loop need no ``isinstance`` or module-name checks.

A classifier is a feature extractor (:meth:`ClassifierModel.forward_features`, image ->
feature map), global pooling, and a classifier head, the child module named by the class
attribute :attr:`ClassifierModel.head_name`. Everything outside the head is "the backbone".
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Sequence, Union

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
    #: Name of the first convolution (the stem's), whose RGB filters pretrained loading adapts to
    #: greyscale input (:func:`medclass.models.pretrained.adapt_input_conv`).
    input_conv_name: str = "conv1"

    def forward_features(self, x: Tensor) -> Tensor:
        """The feature extractor: images ``(N, C, H, W)`` float -> feature map ``(N, F, h, w)``
        (what global pooling and the head see)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement forward_features")

    def feature_stages(self) -> tuple[str, ...]:
        """Names of the stages :meth:`forward_stages` returns, in order (names as in
        ``named_modules()``); the last one's map is :meth:`forward_features`'s. The default is the
        one stage ``"forward_features"``; the ResNets give ``layer1`` .. ``layer4``, the custom CNN
        its conv blocks. The out-of-distribution detector (:mod:`medclass.core.ood`) pools each of them
        (Lee et al. 2018's feature ensemble)."""
        return ("forward_features",)

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        """The feature maps of :meth:`feature_stages`, one per name, each ``(N, C_l, h_l, w_l)``,
        for images ``(N, C, H, W)`` float; the last is :meth:`forward_features`'s map (what
        pooling and the head see). Default: ``[forward_features(x)]``."""
        return [self.forward_features(x)]

    def forward_with_features(self, x: Tensor, layers: Sequence[str]) -> tuple[Tensor, list[Tensor]]:
        """Logits and the globally pooled features of the stages ``layers``, in one pass.

        Traceable (``torch.jit.trace``, ONNX export): no data-dependent control flow; the names
        are resolved before the pass. A stage's name gives the mean of its map over ``h, w``
        (global average pooling, as Lee et al. 2018 pool); the name with ``":std"`` appended
        gives the standard deviation over ``h, w`` (population, ``sqrt(mean((m - mean)^2))``):
        how much the map varies across the image, which average pooling loses (a blank image
        has none). ``"penultimate"`` names the head's input: the pooled map of the last stage.

        Args:
            x: images ``(N, C, H, W)`` float, preprocessed as the model takes them.
            layers: names from :meth:`feature_stages` (each maybe with ``":std"``), or ``"penultimate"``.
        Returns:
            logits ``(N, K)`` (the head of the pooled last map, as ``forward``) and one float32
            ``(N, C_l)`` per name of ``layers``.
        Raises:
            ValueError: a name that is not one of :meth:`feature_stages` (the message lists them).
        """
        index = self.stage_indices(layers)
        maps = self.forward_stages(x)
        pooled = [m.mean(dim=(2, 3)) if m.dim() == 4 else m.flatten(1) for m in maps]
        logits = self.get_classifier()(pooled[-1])
        feats = []
        for name, i in zip(layers, index):
            if name.endswith(":std"):
                m = maps[i].float()
                feats.append((m - pooled[i].float()[:, :, None, None]).square().mean(dim=(2, 3)).sqrt())
            else:
                feats.append(pooled[i].float())
        return logits, feats

    def stage_indices(self, layers: Sequence[str]) -> list[int]:
        """Positions in :meth:`feature_stages` of the names ``layers`` (``"penultimate"``: the last;
        ``"<stage>:std"``: the stage's).

        Raises:
            ValueError: an unknown name.
        """
        names = list(self.feature_stages())
        bare = [n[: -len(":std")] if n.endswith(":std") else n for n in layers]
        unknown = [n for n, b in zip(layers, bare) if n != "penultimate" and b not in names]
        if unknown:
            raise ValueError(f"{type(self).__name__} has no feature stage {', '.join(map(repr, unknown))}; its stages "
                             f"are {', '.join(names)} (each also with ':std'; and 'penultimate')")
        return [len(names) - 1 if n == "penultimate" else names.index(b) for n, b in zip(layers, bare)]

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
