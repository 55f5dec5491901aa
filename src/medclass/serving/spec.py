"""What a served or exported classifier needs from an image, and how its outputs become a decision.

:class:`ModelSpec` is torch-free on purpose: the ONNX Runtime backend (``predict --backend onnx``)
and the web service read it without importing PyTorch. It is stored inside exported models (ONNX
``metadata_props``, TorchScript ``_extra_files``) and built from a run folder by
:func:`medclass.serving.predictor.spec_from_run`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import numpy as np

__all__ = ["ModelSpec", "SPEC_VERSION", "probabilities_from_logits"]

#: Version of the stored :class:`ModelSpec` layout; readers refuse a newer major version.
SPEC_VERSION = 1


@dataclass
class ModelSpec:
    """The contract between an image file and a classifier's output.

    Attributes:
        class_names: output classes, in logit order (``K`` names).
        channels: 1 (greyscale, Pillow mode ``"L"``) or 3 (RGB) channels the model takes.
        image_size: square input side in pixels; images are squashed to it with Pillow's bilinear
            filter (antialiased when shrinking), as in training.
        mean, std: per-channel normalisation applied after scaling uint8 to [0, 1]; ``None`` when
            the model takes [0, 1] input.
        dicom_window: ``[center, width]`` in modality units (HU for CT) for DICOM input, or
            ``None`` (the file's own window, else its min..max).
        temperature: logits are divided by it before softmax/sigmoid (temperature scaling, Guo et
            al. 2017, fitted on validation by ``medclass evaluate``); 1.0 when uncalibrated.
        threshold: binary tasks only: predict ``class_names[1]`` when its probability is >= this
            operating threshold (chosen on validation); ``None`` means the arg-max.
        single_logit: the network emits one logit ``(N, 1)`` (sigmoid) instead of ``(N, K)``.
        run: name of the run folder the model came from; ``checkpoint_epoch``: its epoch.
    """

    class_names: list[str]
    channels: int
    image_size: int
    mean: Optional[list[float]] = None
    std: Optional[list[float]] = None
    dicom_window: Optional[list[float]] = None
    temperature: float = 1.0
    threshold: Optional[float] = None
    single_logit: bool = False
    run: str = ""
    checkpoint_epoch: int = -1
    version: int = SPEC_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"ModelSpec.channels must be 1 or 3, got {self.channels}")
        if not isinstance(self.image_size, int) or self.image_size < 1:
            raise ValueError(f"ModelSpec.image_size must be a positive integer (pixels), got {self.image_size!r}")
        if len(self.class_names) < 2:
            raise ValueError(f"ModelSpec.class_names needs at least 2 classes, got {self.class_names!r}")
        if not self.temperature > 0:
            raise ValueError(f"ModelSpec.temperature must be > 0, got {self.temperature}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelSpec":
        """Parse a stored spec.

        Raises:
            ValueError: not JSON, a field is missing or invalid, or the spec was written by a newer
                medclass (``version`` > :data:`SPEC_VERSION`).
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"the stored model spec is not JSON: {e}") from e
        if not isinstance(data, dict):
            raise ValueError("the stored model spec is not a JSON object")
        if int(data.get("version", 1)) > SPEC_VERSION:
            raise ValueError(f"the model spec has version {data['version']}; this medclass reads up to "
                             f"{SPEC_VERSION}: upgrade medclass")
        known = set(cls.__dataclass_fields__)
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as e:
            raise ValueError(f"the stored model spec is incomplete: {e}") from e

    def check_images(self, images: np.ndarray) -> np.ndarray:
        """``images`` as a numpy array after checking it is uint8 ``(N, image_size, image_size,
        channels)``, what :func:`medclass.data.io.read_image` returns, stacked.

        Raises:
            ValueError: another dtype or shape.
        """
        images = np.asarray(images)
        s, c = self.image_size, self.channels
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (s, s, c):
            raise ValueError(f"images must be uint8 (N, {s}, {s}, {c}) for this model, got {images.dtype} {images.shape}")
        return images

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities: see :func:`probabilities_from_logits`."""
        return probabilities_from_logits(logits, self.temperature)

    def decide(self, probs: np.ndarray) -> np.ndarray:
        """Predicted class indices ``(N,)`` int64 from probabilities ``(N, K)``: the operating
        threshold on ``P(class_names[1])`` for a binary task that has one, else the arg-max."""
        probs = np.asarray(probs)
        if self.threshold is not None and probs.shape[1] == 2:
            return (probs[:, 1] >= self.threshold).astype(np.int64)
        return probs.argmax(axis=1).astype(np.int64)


def probabilities_from_logits(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """float32 ``(N, K)`` probabilities from logits ``(N, K)`` (softmax) or ``(N, 1)`` (binary:
    ``[1 - sigmoid, sigmoid]``), after dividing by ``temperature``. The numpy twin of
    :func:`medclass.models.logits_to_probs`, for backends that do not import PyTorch."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    if z.ndim != 2:
        raise ValueError(f"logits must be (N, K), got shape {z.shape}")
    if z.shape[1] == 1:
        p = 1.0 / (1.0 + np.exp(-z))
        return np.concatenate([1.0 - p, p], axis=1).astype(np.float32)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
