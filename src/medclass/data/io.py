"""Reading one image from disk (Pillow, or pydicom for DICOM) into a uint8 array of the model's channels.

Every reader ends in :func:`medclass.data.pixels.to_model_input`, the one place where a decoded image
becomes the model's input (channels, then the resize rule).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from .pixels import ImageReadError, to_model_input, validate_resize

__all__ = ["IMAGE_EXTENSIONS", "SYSTEM_FOLDERS", "expand_image_paths", "find_images", "is_ignored_name", "is_image_file",
           "read_image"]

#: Extensions that medclass picks up in folders (matched case-insensitively): those read by Pillow,
#: and ``.dcm``/``.dicom`` read by pydicom (:mod:`medclass.data.dicom`).
IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".ppm", ".pgm", ".dcm", ".dicom"}
)


#: Folders that operating systems and NAS boxes write beside images, never images of the data set:
#: macOS zip archives' ``__MACOSX`` (AppleDouble ``._*`` files), Synology's ``@eaDir`` (thumbnails
#: named like JPEGs), Windows' recycle bin and volume information. They are skipped, as are names
#: starting with ``.`` (``.DS_Store``, ``.ipynb_checkpoints``, ``.thumbnails``).
SYSTEM_FOLDERS = frozenset({"__MACOSX", "@eaDir", "$RECYCLE.BIN", "System Volume Information"})


def is_ignored_name(name: str) -> bool:
    """True for a file or folder name medclass never reads as data: hidden (a leading ``.``) or one
    of :data:`SYSTEM_FOLDERS`."""
    return name.startswith(".") or name in SYSTEM_FOLDERS


def is_image_file(path: Path) -> bool:
    """True for a visible file whose extension (any case) is in :data:`IMAGE_EXTENSIONS`, and for
    DICOM files named as scanners and PACS exports name them: no extension (``IM000001``) or a UID
    (``1.2.840.113619.2.55.3.2831164355``, whose "extension" is digits) with the DICOM Part 10
    marker (:func:`medclass.data.dicom.is_dicom_file`; ``DICOMDIR``, an index, is not an image)."""
    if not path.is_file() or is_ignored_name(path.name):
        return False
    suffix = path.suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        return True
    if (not suffix or suffix[1:].isdigit()) and path.name.upper() != "DICOMDIR":
        from .dicom import is_dicom_file

        return is_dicom_file(path)
    return False


def find_images(folder: Path) -> list[Path]:
    """The image files (:func:`is_image_file`) under ``folder`` at any depth, sorted, leaving out
    those inside hidden or system folders (:func:`is_ignored_name`: a Synology ``@eaDir`` holds
    thumbnails that look like JPEGs, a ``.thumbnails`` folder copies of the images). Symbolic links
    to folders are followed (data sets assembled from links), each real folder once."""
    found: list[Path] = []
    seen: set[str] = set()
    for top, dirs, files in os.walk(folder, followlinks=True):  # symlinked sub-folders too (rglob skips them)
        real = os.path.realpath(top)
        if real in seen:  # a link back up the tree: walked once
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not is_ignored_name(d))
        found += [p for p in (Path(top) / f for f in files) if is_image_file(p)]
    return sorted(found)


def expand_image_paths(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given (even when missing, so the caller can report them), and the image files
    found under given folders (:func:`find_images`)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += find_images(p)
        else:
            out.append(p)
    return out


def read_image(
    path: str | Path,
    channels: int = 3,
    size: int | None = None,
    dicom_window: Sequence[float] | None = None,
    resize: str = "squash",
) -> np.ndarray:
    """Read an image file into a uint8 array ``(H, W, C)``, resized to ``(size, size)`` if given.

    The decoded image goes through :func:`to_model_input`: ``resize`` ``"squash"`` (default)
    squashes to a square with Pillow's bilinear filter (antialiased when shrinking), as Keras'
    ``flow_from_directory`` does; ``"pad"`` keeps the aspect ratio and pads with black. DICOM
    files (a ``.dcm``/``.dicom`` name, or any file with the ``DICM`` marker at byte 128) are read by :func:`medclass.data.dicom.read_dicom`, windowed
    with ``dicom_window`` = ``(center, width)`` in HU if given, else with the file's own window;
    ``dicom_window`` does nothing for other images.

    Raises:
        ImageReadError: the file is missing, empty, truncated, or not an image Pillow (or pydicom)
            can decode.
        ValueError: ``dicom_window`` is not ``(center, width)`` with width >= 1, or ``resize`` is
            not in :data:`RESIZE_RULES`.
    """
    from .dicom import DICOM_EXTENSIONS, is_dicom_file, read_dicom

    validate_resize(resize)
    path = Path(path)
    if path.suffix.lower() in DICOM_EXTENSIONS:
        return read_dicom(path, channels, size, dicom_window, resize=resize)
    try:
        if path.stat().st_size == 0:
            raise ImageReadError(path, "the file is empty")
        with Image.open(path) as img:
            img.load()
            return to_model_input(img, channels, size, resize)
    except ImageReadError:
        raise
    except FileNotFoundError as e:
        raise ImageReadError(path, "no such file") from e
    except UnidentifiedImageError as e:
        if is_dicom_file(path):  # DICOM without a .dcm name (scanners often write IM000001)
            return read_dicom(path, channels, size, dicom_window, resize=resize)
        raise ImageReadError(path, f"not a readable image ({type(e).__name__}: {e})") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(path, f"not a readable image ({type(e).__name__}: {e})") from e
