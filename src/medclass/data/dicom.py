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
classifies single 2D images, so the slices must be extracted first. So are ``SamplesPerPixel``
other than 1 or 3.

:func:`read_dicom` reads a path, the bytes of a file, or a binary file-like object (an HTTP
upload: :mod:`medclass.serving.uploads`); its errors are :class:`DicomReadError`, an
:class:`~medclass.data.pixels.ImageReadError` that also carries a machine-readable ``kind``.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import IO, TYPE_CHECKING, Callable, Optional, Sequence, Union

import numpy as np
from PIL import Image

from .pixels import ImageReadError, to_model_input, validate_resize

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = [
    "DICOM_EXTENSIONS",
    "DicomReadError",
    "DicomSource",
    "read_dicom",
    "is_dicom_file",
    "window_to_uint8",
    "validate_window",
]

#: What :func:`read_dicom` reads: a path, the file's bytes, or a binary file-like object.
DicomSource = Union[str, Path, bytes, bytearray, memoryview, IO[bytes]]


class DicomReadError(ImageReadError):
    """An :class:`~medclass.data.pixels.ImageReadError` from :func:`read_dicom`, with ``kind``, a short
    machine-readable reason (the message is unchanged):

    ``"missing"`` no such file; ``"empty"`` 0 bytes; ``"not_dicom"`` no ``DICM`` marker at byte 128;
    ``"corrupt"`` a damaged header; ``"truncated"`` the file ends early (less pixel data than
    Rows x Columns x samples x bits, or image attributes without the pixel data that should follow);
    ``"no_pixel_data"`` not an image (e.g. a structured report); ``"multi_frame"``;
    ``"unsupported_samples"`` SamplesPerPixel not 1 or 3; ``"no_decoder"`` compressed pixel data
    that no installed plugin decodes; ``"decode_failed"`` the pixel data cannot be decoded;
    ``"unsupported_photometric"``; ``"bad_shape"`` pixel data of an unexpected shape.
    """

    def __init__(self, path: str | Path, reason: str, kind: str) -> None:
        super().__init__(path, reason)
        self.kind = kind

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


def dicom_patient_id(path: str | Path) -> Optional[str]:
    """The ``PatientID`` (0010,0020) of a DICOM file, stripped; None when it is empty or the
    header cannot be read. Reads the header only (pydicom ``stop_before_pixels``); never raises."""
    try:
        import pydicom

        ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["PatientID"])
        value = str(ds.get("PatientID", "") or "").strip()
        return value or None
    except Exception:  # a damaged header: the image's own read reports it
        return None


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


def _open_dataset(source: DicomSource, label: str) -> "Dataset":
    """``pydicom.dcmread`` of a path, bytes or binary file-like, errors as :class:`DicomReadError`."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        if isinstance(source, (str, Path)):
            if Path(source).stat().st_size == 0:
                raise DicomReadError(label, "the file is empty", "empty")
            fp: object = source
        elif isinstance(source, (bytes, bytearray, memoryview)):
            if len(source) == 0:
                raise DicomReadError(label, "the file is empty", "empty")
            fp = io.BytesIO(bytes(source))
        else:
            start = source.tell()
            if not source.read(1):
                raise DicomReadError(label, "the file is empty", "empty")
            source.seek(start)
            fp = source
        return pydicom.dcmread(fp)
    except DicomReadError:
        raise
    except FileNotFoundError as e:
        raise DicomReadError(label, "no such file", "missing") from e
    except InvalidDicomError as e:
        raise DicomReadError(
            label, "not a DICOM file (no 'DICM' marker after the 128-byte preamble); give a DICOM Part 10 file "
            "or convert the image to PNG", "not_dicom"
        ) from e
    except MemoryError:
        raise
    except Exception as e:  # pydicom raises many kinds on a damaged header
        raise DicomReadError(label, f"not a readable DICOM file ({type(e).__name__}: {e})", "corrupt") from e


def _cut_element(ds: "Dataset") -> bool:
    """True when an element still raw (not yet parsed) holds fewer bytes than its length says:
    pydicom stops quietly where a file is cut."""
    from pydicom.dataelem import RawDataElement

    for tag in ds.keys():
        raw = ds.get_item(tag)
        if isinstance(raw, RawDataElement) and raw.value is not None and raw.length != 0xFFFFFFFF:
            if len(raw.value) < raw.length:
                return True
    return False


def _native_pixel_bytes(ds: "Dataset", frames: int) -> Optional[int]:
    """Bytes of uncompressed ``PixelData`` that Rows x Columns x samples x bits call for, or None
    when unknown (missing or odd attributes)."""
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        bits = int(ds.BitsAllocated)
    except (AttributeError, TypeError, ValueError):
        return None
    n = rows * cols * samples * frames
    return (n + 7) // 8 if bits == 1 else n * (bits // 8)


def read_dicom(
    path: DicomSource,
    channels: int = 3,
    size: Optional[int] = None,
    window: Optional[Sequence[float]] = None,
    *,
    name: Optional[str] = None,
    before_decode: Optional[Callable[["Dataset"], None]] = None,
    resize: str = "squash",
) -> np.ndarray:
    """Read a single-frame DICOM file into a uint8 array ``(H, W, C)``, C = ``channels`` (1 or 3).

    ``path`` is a path, or the file's bytes, or a binary file-like object (read from its current
    position). ``name`` names the file in errors (default: the path, the file-like's ``name``, or
    ``"<DICOM bytes>"``).

    ``window`` is ``(center, width)`` in modality units after the rescale (Hounsfield units for
    CT): it overrides the file's own window; it is ignored for colour images. The windowed image
    becomes ``(size, size)`` (if ``size`` is given) by :func:`medclass.data.pixels.to_model_input` with
    the ``resize`` rule (``"squash"`` or ``"pad"``), as in :func:`medclass.data.read_image`.

    ``before_decode``, if given, is called with the pydicom dataset once the header has passed the
    checks for pixel data, frames and SamplesPerPixel, before any pixel data is decoded (``ds.pixel_array``), e.g. to refuse huge
    ``Rows`` x ``Columns`` (a decompression bomb in compressed pixel data); what it raises
    propagates.

    Raises:
        DicomReadError: (an :class:`ImageReadError`) the file is missing or empty, is not DICOM,
            holds no pixel data, is multi-frame, has SamplesPerPixel other than 1 or 3, is
            truncated, has pixel data compressed in a transfer syntax no installed plugin decodes
            (the message names the syntax and the package to install), fails to decode, or has an
            unsupported ``PhotometricInterpretation``. The error names the file; ``kind`` says which.
        ValueError: ``window`` is not ``(center, width)`` with width >= 1, or ``resize`` is not
            ``"squash"`` or ``"pad"``.
    """
    from pydicom.pixels import apply_color_lut, apply_modality_lut, get_decoder

    validate_resize(resize)
    if name is not None:
        label = name
    elif isinstance(path, (str, Path)):
        label = str(Path(path))
    elif isinstance(path, (bytes, bytearray, memoryview)):
        label = "<DICOM bytes>"
    else:
        label = str(getattr(path, "name", None) or "<DICOM stream>")
    win = validate_window(window)
    ds = _open_dataset(path, label)
    path = label  # the errors below name the file

    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        sop = ds.get("SOPClassUID")
        kind = f" ({sop.name})" if sop is not None and getattr(sop, "name", "") else ""
        image_sop = sop is not None and "Image Storage" in str(getattr(sop, "name", ""))
        if len(ds) == 0 or ("Rows" in ds and "Columns" in ds) or image_sop or _cut_element(ds):
            # an image's attributes (or an image SOP class), then the file ended before the pixels
            raise DicomReadError(
                path, f"the DICOM file{kind} holds no pixel data although it should be an image: it is "
                "truncated (or its pixel data was removed); upload the complete file", "truncated"
            )
        raise DicomReadError(path, f"the DICOM file{kind} holds no pixel data (not an image)", "no_pixel_data")
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        frames = 1
    if frames > 1:
        raise DicomReadError(
            path, f"a multi-frame DICOM ({frames} frames); medclass reads single 2D images: extract the "
            "slices first (one single-frame file per slice, e.g. with pydicom or dcmtk) and use those",
            "multi_frame",
        )
    samples = ds.get("SamplesPerPixel", 1)
    try:
        samples = int(samples if samples is not None else 1)
    except (TypeError, ValueError):
        samples = -1
    if samples not in (1, 3):
        raise DicomReadError(
            path, f"SamplesPerPixel is {ds.get('SamplesPerPixel')!r}; medclass reads greyscale (1) or colour (3) "
            "DICOM images: convert the image to MONOCHROME2 or RGB first (e.g. with dcmtk or pydicom)",
            "unsupported_samples",
        )
    if before_decode is not None:
        before_decode(ds)
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts is not None and ts.is_compressed:
        try:
            decoder = get_decoder(ts)
        except NotImplementedError:
            raise DicomReadError(
                path, f"pixel data in transfer syntax {ts.name} ({ts}) has no pydicom decoder; "
                "decompress the file first (e.g. dcmtk's dcmdjpeg/dcmdrle or gdcmconv --raw)", "no_decoder"
            ) from None
        if not decoder.is_available:
            missing = list(decoder.missing_dependencies)
            raise DicomReadError(
                path, f"pixel data compressed as {ts.name} ({ts}) cannot be decoded: no decoder for it is "
                f"installed; {_pip_hint(missing)} (pydicom options: {'; '.join(missing)}), or decompress the "
                "file first (e.g. gdcmconv --raw)", "no_decoder"
            )
    elif "PixelData" in ds:
        expected_bytes = _native_pixel_bytes(ds, frames)
        actual = len(ds.PixelData or b"")
        if expected_bytes is not None and actual < expected_bytes:
            raise DicomReadError(
                path, f"the pixel data is truncated ({actual} of the {expected_bytes} bytes that Rows x Columns "
                "x SamplesPerPixel x BitsAllocated call for); upload the complete file", "truncated"
            )
    try:
        arr = ds.pixel_array
    except MemoryError:
        raise
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
        raise DicomReadError(
            path, f"the pixel data ({syntax}) cannot be decoded ({type(e).__name__}: {detail}){hint}", "decode_failed"
        ) from e

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)) or 8)
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        if arr.ndim != 2:
            raise DicomReadError(
                path, f"{photometric} pixel data has shape {arr.shape}; expected (rows, columns)", "bad_shape"
            )
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
            raise DicomReadError(
                path, f"{photometric} pixel data has shape {arr.shape}; expected (rows, columns, 3)", "bad_shape"
            )
        img = Image.fromarray(np.ascontiguousarray(_to_8bit(arr, bits)), mode="RGB")
    else:
        raise DicomReadError(
            path, f"PhotometricInterpretation {photometric!r} is not supported (MONOCHROME1, MONOCHROME2, RGB, "
            "YBR_*, PALETTE COLOR are)", "unsupported_photometric"
        )
    return to_model_input(img, channels, size, resize)
