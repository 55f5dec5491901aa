"""Reading one image from disk (Pillow, or pydicom for DICOM) into a uint8 array of the model's channels."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = ["IMAGE_EXTENSIONS", "ImageReadError", "expand_image_paths", "is_image_file", "read_image", "to_channels"]

#: Extensions that medclass picks up in folders (matched case-insensitively): those read by Pillow,
#: and ``.dcm``/``.dicom`` read by pydicom (:mod:`medclass.data.dicom`).
IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".ppm", ".pgm", ".dcm", ".dicom"}
)


class ImageReadError(OSError):
    """An image file is missing, empty, truncated or not an image. ``path`` names the file."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")


def is_image_file(path: Path) -> bool:
    """True for a visible file whose extension (any case) is in :data:`IMAGE_EXTENSIONS`."""
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def expand_image_paths(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given (even when missing, so the caller can report them), and the image files
    (:func:`is_image_file`) found recursively, sorted, under given folders."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(q for q in p.rglob("*") if is_image_file(q))
        else:
            out.append(p)
    return out


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


def read_image(
    path: str | Path,
    channels: int = 3,
    size: int | None = None,
    dicom_window: Sequence[float] | None = None,
) -> np.ndarray:
    """Read an image file into a uint8 array ``(H, W, C)``, resized to ``(size, size)`` if given.

    Resizing squashes to a square with Pillow's bilinear filter (antialiased when shrinking), as
    Keras' ``flow_from_directory`` does. DICOM files (a ``.dcm``/``.dicom`` name, or any file with
    the ``DICM`` marker at byte 128) are read by :func:`medclass.data.dicom.read_dicom`, windowed
    with ``dicom_window`` = ``(center, width)`` in HU if given, else with the file's own window;
    ``dicom_window`` does nothing for other images.

    Raises:
        ImageReadError: the file is missing, empty, truncated, or not an image Pillow (or pydicom)
            can decode.
        ValueError: ``dicom_window`` is not ``(center, width)`` with width >= 1.
    """
    from .dicom import DICOM_EXTENSIONS, is_dicom_file, read_dicom

    path = Path(path)
    if path.suffix.lower() in DICOM_EXTENSIONS:
        return read_dicom(path, channels, size, dicom_window)
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
    except UnidentifiedImageError as e:
        if is_dicom_file(path):  # DICOM without a .dcm name (scanners often write IM000001)
            return read_dicom(path, channels, size, dicom_window)
        raise ImageReadError(path, f"not a readable image ({type(e).__name__}: {e})") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(path, f"not a readable image ({type(e).__name__}: {e})") from e
    return arr[:, :, None] if arr.ndim == 2 else arr
