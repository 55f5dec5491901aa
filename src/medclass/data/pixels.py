"""A decoded image as the model's input: channels, then the resize rule; and :class:`ImageReadError`.

:func:`to_model_input` is the one place where a decoded image becomes the model's input (channels,
then the resize rule); every reader (files and DICOM in :mod:`medclass.data.io` and
:mod:`medclass.data.dicom`, MedMNIST ``.npz`` items, uploads) ends in it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..core.config import RESIZE_RULES

__all__ = ["ImageReadError", "to_channels", "to_model_input", "validate_resize"]


class ImageReadError(OSError):
    """An image file is missing, empty, truncated or not an image. ``path`` names the file;
    ``advice`` (optional) says what to do and ends the message."""

    def __init__(self, path: str | Path, reason: str, advice: str = "") -> None:
        self.path = str(path)
        self.reason = reason
        self.advice = advice
        super().__init__(f"cannot read image {self.path}: {reason}" + (f"; {advice}" if advice else ""))


def to_channels(img: Image.Image, channels: int) -> Image.Image:
    """Convert any Pillow mode to ``"L"`` (channels=1) or ``"RGB"`` (channels=3).

    16- and 32-bit greyscale (``I;16``, ``I``, ``F``) are rescaled from their own min..max to
    0..255 (a per-image window); alpha is composited over black (transparent = background).
    """
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(arr.round().astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, rgba)
    target = "L" if channels == 1 else "RGB"
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    return img.convert(target) if img.mode != target else img


def validate_resize(resize: str) -> str:
    """``resize`` if it is a resize rule of :data:`RESIZE_RULES` (``"squash"`` or ``"pad"``).

    Raises:
        ValueError: any other value (the message lists the rules).
    """
    if not isinstance(resize, str) or resize not in RESIZE_RULES:
        raise ValueError(f"resize must be one of {' | '.join(RESIZE_RULES)}, got {resize!r}")
    return resize


def to_model_input(img: Image.Image, channels: int, size: int | None, resize: str = "squash") -> np.ndarray:
    """A decoded image as the model's uint8 input ``(H, W, C)``: ``(size, size, channels)``, or the
    image's own ``(height, width, channels)`` when ``size`` is None.

    Steps: :func:`to_channels` (``"L"`` or ``"RGB"``; 16-bit rescaled, alpha over black), then,
    when the image is not already ``size`` x ``size``, the ``resize`` rule, both with Pillow's
    bilinear filter (antialiased when shrinking):

    * ``"squash"``: straight to ``(size, size)``, changing the aspect ratio, as Keras'
      ``flow_from_directory`` does (medclass's behaviour before the rule existed).
    * ``"pad"``: aspect-preserving letterbox (as YOLO's ``letterbox``, or
      ``torchvision.transforms.Resize(max_size)`` plus a pad): the longer side becomes ``size``,
      the shorter ``max(1, round(short * size / long))`` pixels, and the image is centred on a
      black (0) square, the odd pixel of padding going to the bottom/right.

    Every path that feeds a model (training cache, evaluate, predict, uploads) calls this, so the
    same image gives the same array everywhere.

    Raises:
        ValueError: ``channels`` not 1 or 3, or ``resize`` not in :data:`RESIZE_RULES`.
    """
    validate_resize(resize)
    img = to_channels(img, channels)
    if size is not None and img.size != (size, size):
        if resize == "squash":
            img = img.resize((size, size), Image.Resampling.BILINEAR)
        else:
            w, h = img.size
            scale = size / max(w, h)
            inner = (max(1, round(w * scale)), max(1, round(h * scale)))
            if inner != img.size:
                img = img.resize(inner, Image.Resampling.BILINEAR)
            canvas = Image.new(img.mode, (size, size), 0)
            canvas.paste(img, ((size - inner[0]) // 2, (size - inner[1]) // 2))
            img = canvas
    arr = np.asarray(img, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr
