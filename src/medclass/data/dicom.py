"""Reading one single-frame DICOM image (pydicom) into a uint8 array of the model's channels.

Greyscale images (``MONOCHROME1``/``MONOCHROME2``) go through the standard's display pipeline up
to the VOI stage: the Modality LUT (``RescaleSlope``/``RescaleIntercept``, giving Hounsfield
units for CT; pydicom's ``apply_modality_lut``), then a linear window to 0..255:

* the ``window`` argument ``(center, width)`` in modality units (HU for CT), e.g. lung
  ``(-600, 1500)`` or mediastinum ``(40, 400)``;
* else the file's ``WindowCenter``/``WindowWidth`` (0028,1050/1051); when they hold several
  values (alternative views) the first is used;
* else the image's own minimum..maximum (a per-image window).

The window is the LINEAR function of DICOM PS3.3 C.11.2.1.2.1 (a ``VOILUTFunction`` of
``LINEAR_EXACT``/``SIGMOID`` and a VOI LUT Sequence are not applied: the window is always
linear). ``MONOCHROME1`` (minimum = white) is inverted after windowing, so that air is dark as
in ``MONOCHROME2``. Colour images (``RGB``, ``YBR_*`` converted to RGB by pydicom,
``PALETTE COLOR`` through its palette) are not windowed; more than 8 bits per sample are scaled
to 0..255.

Multi-frame files (``NumberOfFrames`` > 1: CT/MR volumes, cine) are refused: medclass
classifies single 2D images, so the slices must be extracted first.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from .io import ImageReadError, to_channels

__all__ = ["DICOM_EXTENSIONS", "read_dicom", "is_dicom_file", "window_to_uint8", "validate_window"]

#: File extensions read as DICOM (any case). Files with other names are read as DICOM too when
#: they carry the ``DICM`` marker at byte 128 (PS3.10 7.1), see :func:`is_dicom_file`.
DICOM_EXTENSIONS = frozenset({".dcm", ".dicom"})

# pip names of pydicom's decoding dependencies where they differ from the import name
_PIP_NAMES = {"gdcm": "python-gdcm"}


def is_dicom_file(path: str | Path) -> bool:
    """True for a ``.dcm``/``.dicom`` file name, or a file whose bytes 128..131 are ``b"DICM"``
    (the Part 10 preamble and prefix, DICOM PS3.10 7.1). Never raises; a missing file is False
    unless its name ends in a DICOM extension."""
    path = Path(path)
    if path.suffix.lower() in DICOM_EXTENSIONS:
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def validate_window(window: Optional[Sequence[float]]) -> Optional[tuple[float, float]]:
    """``(center, width)`` as floats, or None.

    Raises:
        ValueError: not two numbers, or a width below 1 (PS3.3 C.11.2.1.2 requires width >= 1).
    """
    if window is None:
        return None
    try:
        center, width = (float(v) for v in window)
    except (TypeError, ValueError) as e:
        raise ValueError(f"a DICOM window must be [center, width] (two numbers, in HU for CT), got {window!r}") from e
    if not width >= 1.0:
        raise ValueError(f"a DICOM window width must be >= 1 (DICOM PS3.3 C.11.2.1.2), got {window!r}")
    return center, width


def window_to_uint8(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """Map modality values (e.g. HU) to uint8 with the linear window of DICOM PS3.3
    C.11.2.1.2.1 (output range 0..255)::

        x <= c - 0.5 - (w - 1) / 2  ->  0
        x >  c - 0.5 + (w - 1) / 2  ->  255
        else                        ->  ((x - (c - 0.5)) / (w - 1) + 0.5) * 255

    rounded to the nearest integer. ``width`` must be >= 1 (width 1 is a threshold at c - 0.5).
    """
    x = np.asarray(values, dtype=np.float64)
    if width <= 1.0:
        return np.where(x > center - 0.5, 255, 0).astype(np.uint8)
    y = ((x - (center - 0.5)) / (width - 1.0) + 0.5) * 255.0
    return np.rint(np.clip(y, 0.0, 255.0)).astype(np.uint8)


def _first(value) -> float:
    """First value of a possibly multi-valued DS/IS element (alternative VOI views)."""
    if isinstance(value, (list, tuple)) or (hasattr(value, "__len__") and not isinstance(value, (str, bytes))):
        value = value[0]
    return float(value)


def _pip_hint(missing: Sequence[str]) -> str:
    """``pip install ...`` from pydicom's ``missing_dependencies`` strings (``"pylibjpeg - requires
    pylibjpeg>=2.0 and pylibjpeg-libjpeg>=2.1"``), preferring pylibjpeg (wheels on PyPI)."""
    options = []
    for m in missing:
        plugin, _, needs = m.partition(" - requires ")
        names = [re.split(r"[<>=!~ ]", n.strip(), maxsplit=1)[0] for n in needs.split(" and ") if n.strip()]
        names = [_PIP_NAMES.get(n, n) for n in names if n and n != "numpy"]
        if names:
            options.append((plugin.strip() != "pylibjpeg", "pip install " + " ".join(names)))
    return min(options)[1] if options else "install a pydicom decoding plugin (pylibjpeg, python-gdcm)"


def _to_8bit(arr: np.ndarray, bits: int) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    top = float(2 ** max(1, bits) - 1)
    return np.rint(np.clip(arr.astype(np.float64), 0, top) / top * 255.0).astype(np.uint8)


def read_dicom(
    path: str | Path,
    channels: int = 3,
    size: Optional[int] = None,
    window: Optional[Sequence[float]] = None,
) -> np.ndarray:
    """Read a single-frame DICOM file into a uint8 array ``(H, W, C)``, C = ``channels`` (1 or 3).

    ``window`` is ``(center, width)`` in modality units after the rescale (Hounsfield units for
    CT): it overrides the file's own window; it is ignored for colour images. Resizing to
    ``(size, size)`` squashes with Pillow's bilinear filter, as :func:`medclass.data.read_image`.

    Raises:
        ImageReadError: the file is missing or empty, is not DICOM, holds no pixel data, is
            multi-frame, has pixel data compressed in a transfer syntax no installed plugin
            decodes (the message names the syntax and the package to install), fails to decode,
            or has an unsupported ``PhotometricInterpretation``. The error names the file.
        ValueError: ``window`` is not ``(center, width)`` with width >= 1.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_color_lut, apply_modality_lut, get_decoder

    path = Path(path)
    win = validate_window(window)
    try:
        if path.stat().st_size == 0:
            raise ImageReadError(path, "the file is empty")
        ds = pydicom.dcmread(path)
    except ImageReadError:
        raise
    except FileNotFoundError as e:
        raise ImageReadError(path, "no such file") from e
    except InvalidDicomError as e:
        raise ImageReadError(
            path, "not a DICOM file (no 'DICM' marker after the 128-byte preamble); give a DICOM Part 10 file "
            "or convert the image to PNG"
        ) from e
    except Exception as e:  # pydicom raises many kinds on a damaged header
        raise ImageReadError(path, f"not a readable DICOM file ({type(e).__name__}: {e})") from e

    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        sop = ds.get("SOPClassUID")
        kind = f" ({sop.name})" if sop is not None and hasattr(sop, "name") else ""
        raise ImageReadError(path, f"the DICOM file{kind} holds no pixel data (not an image)")
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        frames = 1
    if frames > 1:
        raise ImageReadError(
            path, f"a multi-frame DICOM ({frames} frames); medclass reads single 2D images: extract the "
            "slices first (one single-frame file per slice, e.g. with pydicom or dcmtk) and use those"
        )
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts is not None and ts.is_compressed:
        try:
            decoder = get_decoder(ts)
        except NotImplementedError:
            raise ImageReadError(
                path, f"pixel data in transfer syntax {ts.name} ({ts}) has no pydicom decoder; "
                "decompress the file first (e.g. dcmtk's dcmdjpeg/dcmdrle or gdcmconv --raw)"
            ) from None
        if not decoder.is_available:
            missing = list(decoder.missing_dependencies)
            raise ImageReadError(
                path, f"pixel data compressed as {ts.name} ({ts}) cannot be decoded: no decoder for it is "
                f"installed; {_pip_hint(missing)} (pydicom options: {'; '.join(missing)}), or decompress the "
                "file first (e.g. gdcmconv --raw)"
            )
    try:
        arr = ds.pixel_array
    except Exception as e:
        syntax = f"{ts.name} ({ts})" if ts is not None else "unknown transfer syntax"
        detail = " ".join(str(e).split())
        hint = ""
        if ts is not None and ts.is_compressed:
            try:
                missing = list(get_decoder(ts).missing_dependencies)
            except NotImplementedError:
                missing = []
            if missing:
                hint = f"; the file may be damaged, or try another decoder: {_pip_hint(missing)}"
        raise ImageReadError(
            path, f"the pixel data ({syntax}) cannot be decoded ({type(e).__name__}: {detail}){hint}"
        ) from e

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)) or 8)
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        if arr.ndim != 2:
            raise ImageReadError(path, f"{photometric} pixel data has shape {arr.shape}; expected (rows, columns)")
        values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
        if win is None and "WindowCenter" in ds and "WindowWidth" in ds:
            try:
                win = validate_window((_first(ds.WindowCenter), _first(ds.WindowWidth)))
            except (ValueError, TypeError, IndexError):
                win = None  # an unusable window in the file: fall back to min..max
        if win is not None:
            grey = window_to_uint8(values, *win)
        else:
            lo, hi = float(values.min()), float(values.max())
            scaled = (values - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(values)
            grey = np.rint(scaled).astype(np.uint8)
        if photometric == "MONOCHROME1":
            grey = 255 - grey
        img = Image.fromarray(grey, mode="L")
    elif photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)
        img = Image.fromarray(_to_8bit(rgb, 8 if rgb.dtype == np.uint8 else 16), mode="RGB")
    elif photometric == "RGB" or photometric.startswith("YBR"):
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise ImageReadError(path, f"{photometric} pixel data has shape {arr.shape}; expected (rows, columns, 3)")
        img = Image.fromarray(np.ascontiguousarray(_to_8bit(arr, bits)), mode="RGB")
    else:
        raise ImageReadError(
            path, f"PhotometricInterpretation {photometric!r} is not supported (MONOCHROME1, MONOCHROME2, RGB, "
            "YBR_*, PALETTE COLOR are)"
        )
    img = to_channels(img, channels)
    if size is not None and img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    out = np.asarray(img, dtype=np.uint8)
    return out[:, :, None] if out.ndim == 2 else out
