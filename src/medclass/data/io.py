"""Reading one image from disk (Pillow) into a uint8 array of the model's channels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = ["IMAGE_EXTENSIONS", "ImageReadError", "is_image_file", "read_image", "to_channels"]

#: Extensions read by Pillow that medclass picks up in folders (matched case-insensitively).
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".ppm", ".pgm"})


class ImageReadError(OSError):
    """An image file is missing, empty, truncated or not an image. ``path`` names the file."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")


def is_image_file(path: Path) -> bool:
    """True for a visible file whose extension (any case) is in :data:`IMAGE_EXTENSIONS`."""
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


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


def read_image(path: str | Path, channels: int = 3, size: int | None = None) -> np.ndarray:
    """Read an image file into a uint8 array ``(H, W, C)``, resized to ``(size, size)`` if given.

    Resizing squashes to a square with Pillow's bilinear filter (antialiased when shrinking), as
    Keras' ``flow_from_directory`` does.

    Raises:
        ImageReadError: the file is missing, empty, truncated, or not an image Pillow can decode.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageReadError(path, "the file is empty")
        with Image.open(path) as img:
            img.load()
            img = to_channels(img, channels)
            if size is not None and img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except ImageReadError:
        raise
    except FileNotFoundError as e:
        raise ImageReadError(path, "no such file") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(path, f"not a readable image ({type(e).__name__}: {e})") from e
    return arr[:, :, None] if arr.ndim == 2 else arr
