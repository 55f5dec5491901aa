"""Decoding untrusted uploads (``POST /predict``) safely: PNG, JPEG and DICOM only.

Torch-free (numpy, Pillow, pydicom), like :mod:`medclass.data.io`, so the ONNX Runtime service
can use it without PyTorch.

The service (:mod:`medclass.serving.app`) cuts the request body off past the byte limit while it
streams in (so that a 5 GB body is never held in memory; :func:`read_limited` does the same for a
file-like stream), computes the memory a decode needs from the header (:func:`decode_cost`, to
admit it against its memory budget), then calls :func:`decode_upload` on the bytes, and maps
:class:`UploadError` to the HTTP response (``status_code``, and ``code`` + ``message`` as the JSON
body ``{"error", "detail"}``).
Every bad input ends as an :class:`UploadError`, never as another exception (a 500): the service
keeps serving. Only the caller's own mistakes (``channels`` not 1 or 3, a bad ``dicom_window`` or
``resize``) raise ``ValueError``.

What is checked, in order:

1. the file name (:func:`check_filename`): no path parts (``/``, ``\\``, a drive ``C:``, ``.``,
   ``..``), no control characters, at most ``max_filename_chars``; a missing name is ``"upload"``;
2. the size: empty -> 400 ``empty``; more than ``max_bytes`` -> 413 ``too_large``;
3. the format, from the bytes (the magic number; the file name's extension and the content type are
   not trusted, a PNG named ``.jpg`` is read as PNG): PNG (``\\x89PNG\\r\\n\\x1a\\n``), JPEG
   (``\\xff\\xd8\\xff``), DICOM Part 10 (``DICM`` at byte 128, after the preamble). Anything else is
   415, with what it looks like when that can be told (GIF, BMP, TIFF, WebP, JPEG 2000, HEIF, NIfTI,
   PDF, ZIP, HTML, JSON, text...). A DICOM data set without the Part 10 header (no 128-byte preamble
   and ``DICM`` prefix: a raw stream or old ACR-NEMA file) is refused too (415), with how to re-save it:
   without the header the transfer syntax is a guess;
4. the dimensions, read from the header BEFORE any pixel is decoded (the decompression-bomb guard):
   width x height > ``max_pixels`` -> 413 ``too_many_pixels``; a side > ``max_side`` -> 413
   ``side_too_large``; a side < ``min_side`` -> 422 ``too_small``. For DICOM, Rows x Columns (a
   pixel is a pixel whatever its samples; SamplesPerPixel must be 1 or 3) before ``pixel_array``;
5. the content: animated/multi-frame images (APNG, MPO, multi-frame DICOM) -> 422 ``multi_frame``;
   the whole file must be intact (PNG: every chunk's CRC and the final ``IEND``, via Pillow's
   ``verify``; a file cut short -> 400 ``truncated``, damaged -> 400 ``corrupt``);
6. the channels (the rule): accepted Pillow modes are ``1``, ``L``, ``P``, ``RGB``, 16/32-bit
   greyscale (``I;16``, ``I``, ``F``: rescaled min..max as in training), and images with alpha
   (``RGBA``, ``LA``, ``PA``, ``P``/``L``/``RGB`` with a ``tRNS`` transparency) only when every
   pixel is fully opaque: an opaque alpha carries nothing, while a transparent one leaves the
   colour under it undefined (a viewer shows it over white or a checkerboard; medclass composites it
   over black), so the model would not see what the user sees -> 422 ``transparency``. CMYK (Adobe
   JPEG) and other modes, and DICOM with SamplesPerPixel not 1 or 3 -> 422 ``unsupported_channels``.

The result is what :func:`medclass.data.io.read_image` gives for the same file (the same
:func:`~medclass.data.pixels.to_model_input`: channels, then the squash or pad rule to ``(size, size)``;
the same :func:`~medclass.data.dicom.read_dicom`), as the tests check on real images.

Pillow's global state is left alone: images are opened with the PNG/JPEG plugin directly and the
pixel count is checked against :class:`UploadLimits` before ``load()``, so Pillow's own
``MAX_IMAGE_PIXELS`` check (``DecompressionBombWarning``/``Error``) never decides (a
``warnings.catch_warnings`` would change process-wide filters, unsafely across the service's
threads); a ``DecompressionBombError`` raised anyway is 413. ``ImageFile.LOAD_TRUNCATED_IMAGES`` is
not changed; if some other code turned it on, truncated PNG/JPEG files are still refused by the
checks of step 5 (PNG ``IEND`` chunk, JPEG end-of-image marker).

Status codes and ``code`` strings:

====  =========================  ============================================================
400   ``empty``                  0 bytes
400   ``bad_filename``           path parts, control characters, too long
400   ``truncated``              the file ends early (PNG, JPEG, DICOM)
400   ``corrupt``                damaged data: CRC mismatch, broken stream or header, a DICOM
                                 element that cannot be parsed
413   ``too_large``              more than ``max_bytes``
413   ``too_many_pixels``        width x height > ``max_pixels`` (decompression bomb)
413   ``side_too_large``         width or height > ``max_side``
413   ``out_of_memory``          MemoryError while decoding
415   ``unsupported_format``     another image format (GIF, BMP, TIFF, WebP, ...), DICOM
                                 without the Part 10 header
415   ``not_an_image``           text, HTML, JSON, PDF, archives, unknown bytes
415   ``unsupported_compression`` DICOM pixel data compressed in a syntax no installed plugin decodes
422   ``too_small``              width or height < ``min_side``
422   ``multi_frame``            animated PNG, MPO JPEG, multi-frame DICOM
422   ``transparency``           alpha channel not fully opaque
422   ``unsupported_channels``   CMYK and other modes; DICOM SamplesPerPixel not 1 or 3
422   ``unsupported_photometric`` DICOM PhotometricInterpretation not read by medclass
422   ``no_pixel_data``          a DICOM file that is not an image (e.g. a structured report)
422   ``undecodable``            any other failure while decoding a PNG/JPEG
====  =========================  ============================================================
"""

from __future__ import annotations

import io
import json
import os
import re
import unicodedata
from dataclasses import dataclass, fields
from typing import IO, Mapping, Optional, Sequence

import numpy as np
from PIL import Image, ImageFile, JpegImagePlugin, PngImagePlugin

from medclass.data.dicom import DicomReadError, read_dicom, validate_window
from medclass.data.pixels import to_model_input, validate_resize

__all__ = [
    "DECODE_AMPLIFICATION",
    "ENV_VARS",
    "HeaderInfo",
    "decode_cost",
    "read_header",
    "UploadError",
    "UploadLimits",
    "check_filename",
    "decode_upload",
    "read_limited",
    "sniff_format",
]

MiB = 1024 * 1024

#: Environment variables read by :meth:`UploadLimits.from_env`, by field.
ENV_VARS = {
    "max_bytes": "MEDCLASS_MAX_UPLOAD_BYTES",
    "max_pixels": "MEDCLASS_MAX_UPLOAD_PIXELS",
    "max_side": "MEDCLASS_MAX_UPLOAD_SIDE",
    "min_side": "MEDCLASS_MIN_UPLOAD_SIDE",
    "max_filename_chars": "MEDCLASS_MAX_FILENAME_CHARS",
}


@dataclass(frozen=True)
class UploadLimits:
    """Limits on one upload.

    Attributes:
        max_bytes: size of the uploaded file in bytes (default 20 MiB = 20,971,520).
        max_pixels: width x height in pixels, checked from the header before decoding (default
            40,000,000 = 40 megapixels; a 16-bit greyscale image of that size decodes to 80 MB,
            its float64 rescale to 320 MB). The decompression-bomb guard: a few hundred KB of PNG
            can declare 20,000 x 20,000 pixels.
        max_side: the longer side in pixels (default 10,000).
        min_side: the shorter side in pixels (default 8): smaller is not a medical image.
        max_filename_chars: characters in the file name (default 255, most file systems' limit).
    """

    max_bytes: int = 20 * MiB
    max_pixels: int = 40_000_000
    max_side: int = 10_000
    min_side: int = 8
    max_filename_chars: int = 255

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"UploadLimits.{f.name} must be a positive integer, got {value!r}")
        if self.min_side > self.max_side:
            raise ValueError(f"UploadLimits.min_side ({self.min_side}) is above max_side ({self.max_side})")

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None, **overrides: int) -> "UploadLimits":
        """Limits from the environment (:data:`ENV_VARS`: ``MEDCLASS_MAX_UPLOAD_BYTES``,
        ``MEDCLASS_MAX_UPLOAD_PIXELS``, ``MEDCLASS_MAX_UPLOAD_SIDE``, ``MEDCLASS_MIN_UPLOAD_SIDE``,
        ``MEDCLASS_MAX_FILENAME_CHARS``; integers, ``_`` allowed as in ``20_000_000``), the defaults
        for those unset; ``overrides`` that are not None win (e.g. from command-line options).

        Raises:
            ValueError: a variable is not a positive integer (the message names it).
        """
        env = os.environ if environ is None else environ
        values: dict[str, int] = {}
        for field, var in ENV_VARS.items():
            raw = env.get(var)
            if raw is None or not raw.strip():
                continue
            try:
                values[field] = int(raw.strip())
            except ValueError:
                raise ValueError(f"{var} must be a positive integer, got {raw!r}") from None
            if values[field] < 1:
                raise ValueError(f"{var} must be a positive integer, got {raw!r}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


class UploadError(Exception):
    """An upload the service cannot use; the service answers ``status_code`` with
    :meth:`as_dict` as the JSON body.

    Attributes:
        status_code: HTTP 4xx (400, 413, 415 or 422; see the module's table).
        code: short machine-readable reason, e.g. ``"too_large"``, ``"not_an_image"``.
        message: a sentence naming the file, what is wrong and what to do.
        filename: the file name as checked (None when the name itself was refused).
    """

    def __init__(self, status_code: int, code: str, message: str, filename: Optional[str] = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.filename = filename

    def as_dict(self) -> dict:
        """``{"code": ..., "message": ...}`` for the JSON response."""
        return {"code": self.code, "message": self.message}

    def __repr__(self) -> str:
        return f"UploadError({self.status_code}, {self.code!r}, {self.message!r})"


# --- file names -------------------------------------------------------------------------------

_BIDI = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f")


def _shown(name: str, limit: int = 60) -> str:
    """A quoted, escaped, shortened form of a file name for messages."""
    short = name if len(name) <= limit else name[:limit] + "..."
    return repr(short)


def check_filename(name: Optional[str], limits: "UploadLimits | int | None" = None) -> str:
    """The upload's file name, checked: returned unchanged when safe; ``"upload"`` when missing
    (None or ``""``: a client need not send one). ``limits`` is an :class:`UploadLimits` (its
    ``max_filename_chars``) or that number of characters (default 255).

    The name is only used in messages and logs, never to open a file, but it must be a bare name:
    refused are names with path parts (``/``, ``\\``, a drive such as ``C:``, or that are ``.`` or
    ``..``), with control or bidirectional-override characters (NUL, newline, U+202E...), made only
    of spaces, or longer than ``max_chars`` characters.

    Raises:
        UploadError: 400 ``bad_filename``.
    """
    if limits is None:
        max_chars = UploadLimits().max_filename_chars
    elif isinstance(limits, UploadLimits):
        max_chars = limits.max_filename_chars
    else:
        max_chars = int(limits)
    if name is None or name == "":
        return "upload"
    if not isinstance(name, str):
        raise UploadError(400, "bad_filename", f"the upload's file name {name!r} is not text; send a plain file name")
    shown = _shown(name)
    if len(name) > max_chars:
        raise UploadError(
            400, "bad_filename", f"the upload's file name {shown} is {len(name)} characters long, above the "
            f"{max_chars} allowed; rename the file and upload it again"
        )
    if any(unicodedata.category(c) == "Cc" or c in _BIDI for c in name):
        raise UploadError(
            400, "bad_filename", f"the upload's file name {shown} contains control characters (such as NUL or a "
            "line break) or text-direction overrides; rename the file and upload it again"
        )
    if "/" in name or "\\" in name or re.match(r"^[A-Za-z]:", name) or name.strip() in (".", ".."):
        raise UploadError(
            400, "bad_filename", f"the upload's file name {shown} has path parts (a directory, drive, '.' or "
            "'..'); send the bare file name, such as 'scan.png'"
        )
    if not name.strip():
        raise UploadError(400, "bad_filename", f"the upload's file name {shown} is blank; send a file name")
    return name


# --- reading the body -------------------------------------------------------------------------


def read_limited(
    stream: IO[bytes],
    max_bytes: int,
    name: Optional[str] = None,
    chunk_size: int = MiB,
) -> bytes:
    """Read a binary stream (anything with ``.read(n)``, e.g. the ``.file`` of a Starlette
    ``UploadFile``) to its end in chunks, stopping with 413 ``too_large`` as soon as more than
    ``max_bytes`` have come: at most ``max_bytes`` + one chunk is ever held in memory. The service
    should read uploads with this, not with ``.read()``, and pass the result to
    :func:`decode_upload` (it also runs behind the web server's own request-size limit: a
    multipart parser may have spooled the body to disk before this runs).

    Raises:
        UploadError: 413 ``too_large``.
    """
    label = _shown(name) if name else "the upload"
    parts: list[bytes] = []
    total = 0
    while True:
        chunk = stream.read(min(chunk_size, max_bytes - total + 1))
        if not chunk:
            break
        total += len(chunk)
        if total > max_bytes:
            raise UploadError(
                413, "too_large", f"{label} is larger than the {_size(max_bytes)} allowed; send a smaller file "
                "(a single 2D image as PNG or JPEG, or a single-frame DICOM)", name
            )
        parts.append(bytes(chunk))
    return b"".join(parts)


def _size(n: int) -> str:
    if n >= MiB:
        return f"{n / MiB:.4g} MiB"
    if n >= 1024:
        return f"{n / 1024:.4g} KiB"
    return f"{n} bytes"


# --- formats ----------------------------------------------------------------------------------

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"


def sniff_format(data: bytes) -> Optional[str]:
    """``"PNG"``, ``"JPEG"`` or ``"DICOM"`` (Part 10: ``DICM`` at byte 128) from the first bytes,
    else None. The file name's extension plays no part."""
    head = bytes(data[:132])
    if head.startswith(PNG_MAGIC):
        return "PNG"
    if head.startswith(JPEG_MAGIC):
        return "JPEG"
    if len(head) == 132 and head[128:132] == b"DICM":
        return "DICOM"
    return None


# (magic at offset, description, is an image format)
_SIGNATURES: list[tuple[int, bytes, str, bool]] = [
    (0, b"GIF87a", "a GIF image", True),
    (0, b"GIF89a", "a GIF image", True),
    (0, b"II*\x00", "a TIFF image", True),
    (0, b"MM\x00*", "a TIFF image", True),
    (0, b"II+\x00", "a BigTIFF image", True),
    (0, b"MM\x00+", "a BigTIFF image", True),
    (0, b"\x00\x00\x00\x0cjP  \r\n\x87\n", "a JPEG 2000 image", True),
    (0, b"\xffO\xffQ", "a JPEG 2000 codestream", True),
    (0, b"8BPS", "a Photoshop (PSD) image", True),
    (0, b"\x00\x00\x01\x00", "an icon (ICO) image", True),
    (0, b"NRRD", "an NRRD volume", True),
    (0, b"%PDF-", "a PDF document", False),
    (0, b"PK\x03\x04", "a ZIP archive (or an Office document)", False),
    (0, b"PK\x05\x06", "an empty ZIP archive", False),
    (0, b"\x1f\x8b", "a gzip-compressed file (e.g. a .nii.gz volume or .tar.gz)", False),
    (0, b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive", False),
    (0, b"Rar!\x1a\x07", "a RAR archive", False),
    (0, b"\x89HDF\r\n\x1a\n", "an HDF5 file", False),
    (0, b"\x93NUMPY", "a NumPy array file (.npy)", False),
    (0, b"\x7fELF", "an executable (ELF)", False),
    (0, b"MZ", "a Windows executable", False),
]


def _describe(data: bytes) -> tuple[str, bool, str]:
    """What the bytes look like: (description, is an image in another format, code)."""
    head = bytes(data[:4096])
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "a WebP image", True, "unsupported_format"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"heic", b"heix", b"mif1", b"msf1", b"heim", b"heis", b"avif", b"avis"):
            return f"a HEIF/AVIF image ({brand.decode('ascii', 'replace')})", True, "unsupported_format"
        return "an MP4/QuickTime video", False, "not_an_image"
    if len(head) >= 348 and head[344:348] in (b"n+1\x00", b"ni1\x00"):
        return "a NIfTI volume (.nii)", True, "unsupported_format"
    if head[:2] in (b"\x02\x00", b"\x08\x00") and head[4:6].isalpha() and head[4:6].isupper():
        return (
            "a DICOM data set without the DICOM Part 10 header (no 128-byte preamble and 'DICM' prefix)",
            True, "unsupported_format",
        )
    for offset, magic, what, is_image in _SIGNATURES:
        if head[offset:offset + len(magic)] == magic:
            return what, is_image, "unsupported_format" if is_image else "not_an_image"
    try:  # another format Pillow knows (BMP, PPM, TGA, ...): identification only, nothing decoded
        with Image.open(io.BytesIO(bytes(data))) as img:
            fmt = img.format
        if fmt:
            return f"a {fmt} image", True, "unsupported_format"
    except Exception:
        pass
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
        if len(head) == 4096:  # a multi-byte character cut at the end
            try:
                text = head[:-3].decode("utf-8")
            except UnicodeDecodeError:
                pass
    if text is not None and all(c.isprintable() or c in "\t\r\n\f" for c in text.lstrip("\ufeff")):
        t = text.lstrip("\ufeff \t\r\n").lower()
        if t.startswith(("<!doctype html", "<html")):
            return "an HTML document", False, "not_an_image"
        if t.startswith("<svg") or (t.startswith("<?xml") and "<svg" in t):
            return "an SVG image", True, "unsupported_format"
        if t.startswith("<?xml"):
            return "an XML document", False, "not_an_image"
        if t.startswith(("{", "[")):
            try:
                json.loads(bytes(data).decode("utf-8"))
                return "JSON", False, "not_an_image"
            except (ValueError, UnicodeDecodeError):
                return "text (JSON-like)", False, "not_an_image"
        return "plain text", False, "not_an_image"
    return "", False, "not_an_image"


def _unsupported(data: bytes, name: str) -> UploadError:
    what, is_image, code = _describe(data)
    if is_image:
        if what.startswith("a DICOM data set"):
            return UploadError(
                415, code, f"{_shown(name)} is {what}; re-save it as a DICOM Part 10 file (e.g. dcmtk's "
                "'dcmconv +F', or pydicom's save_as(..., enforce_file_format=True)) and upload it again", name
            )
        return UploadError(
            415, code, f"{_shown(name)} is {what}; the service accepts PNG, JPEG or DICOM images only: convert it "
            "(e.g. save it as PNG) and upload it again", name
        )
    if what:
        return UploadError(
            415, code, f"{_shown(name)} is not an image: it is {what}; upload a PNG, JPEG or DICOM image", name
        )
    return UploadError(
        415, code, f"{_shown(name)} is not a PNG, JPEG or DICOM image (unrecognised content starting with "
        f"{bytes(data[:8])!r}); upload a PNG, JPEG or DICOM image", name
    )


# --- the memory a decode needs, from the header -------------------------------------------------

#: Peak memory of :func:`decode_upload` as a multiple of the decoded pixels' bytes (width x height
#: x bytes per sample x samples per pixel): Pillow's buffer, the array copy, the float rescale of
#: 16-bit greyscale and the resize. Measured: a 16-bit 6300 x 6300 PNG (79 MB of pixels) peaks near
#: 600 MB (x 7.5) while it decodes; 8-bit images need less, so 8 is an upper bound.
DECODE_AMPLIFICATION = 8


@dataclass(frozen=True)
class HeaderInfo:
    """What an image header declares, read without decoding a pixel.

    Attributes:
        format: ``"PNG"``, ``"JPEG"`` or ``"DICOM"``.
        width, height: pixels.
        samples: samples (channels) per pixel, e.g. 1 for greyscale, 3 for RGB, 4 for RGBA.
        bytes_per_sample: bytes of one decoded sample (1 for 8-bit, 2 for 16-bit, 4 for 32-bit).
    """

    format: str
    width: int
    height: int
    samples: int
    bytes_per_sample: int

    @property
    def pixel_bytes(self) -> int:
        """Bytes of the decoded pixels: width x height x samples x bytes per sample."""
        return self.width * self.height * self.samples * self.bytes_per_sample


def read_header(data: bytes) -> Optional[HeaderInfo]:
    """The dimensions and sample layout a PNG, JPEG or DICOM file declares, from its header only:
    Pillow's PNG/JPEG plugins parse the chunks/markers before the pixel data and ``load()`` is never
    called; pydicom reads the data set with ``stop_before_pixels``. None when the bytes are not one
    of these formats or the header cannot be parsed (:func:`decode_upload` then refuses the file
    with the precise reason, cheaply: nothing large is decoded).
    """
    fmt = sniff_format(data)
    try:
        if fmt in ("PNG", "JPEG"):
            from PIL import ImageMode

            fp = io.BytesIO(data)
            img = PngImagePlugin.PngImageFile(fp) if fmt == "PNG" else JpegImagePlugin.jpeg_factory(fp)
            width, height = img.size
            mode = ImageMode.getmode(img.mode)
            return HeaderInfo(fmt, int(width), int(height), len(mode.bands), max(1, np.dtype(mode.typestr).itemsize))
        if fmt == "DICOM":
            import pydicom

            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=False)
            bits = int(getattr(ds, "BitsAllocated", 8) or 8)
            frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
            return HeaderInfo(fmt, int(ds.Columns), int(ds.Rows) * max(1, frames),
                              int(getattr(ds, "SamplesPerPixel", 1) or 1), max(1, (bits + 7) // 8))
    except Exception:  # a damaged header: decode_upload says what is wrong
        return None
    return None


def decode_cost(data: bytes) -> int:
    """Bytes of memory decoding ``data`` may take at its peak, from the header
    (:func:`read_header`): ``pixel_bytes x`` :data:`DECODE_AMPLIFICATION`; 0 when the header cannot
    be read (such a file is refused before anything large is allocated). The service admits a
    decode only while the sum of the costs being decoded stays within its memory budget."""
    info = read_header(data)
    return 0 if info is None else info.pixel_bytes * DECODE_AMPLIFICATION


# --- decoding ---------------------------------------------------------------------------------

_ACCEPTED_MODES = {"1", "L", "P", "RGB", "RGBA", "LA", "PA", "I", "I;16", "I;16B", "I;16L", "F"}


def _check_dimensions(width: int, height: int, name: str, limits: UploadLimits) -> None:
    if width * height > limits.max_pixels:
        raise UploadError(
            413, "too_many_pixels", f"{_shown(name)} is {width} x {height} pixels ({width * height:,}), above the "
            f"{limits.max_pixels:,} pixels allowed; downscale it and upload it again", name
        )
    if max(width, height) > limits.max_side:
        raise UploadError(
            413, "side_too_large", f"{_shown(name)} is {width} x {height} pixels: a side longer than the "
            f"{limits.max_side:,} pixels allowed; downscale or crop it and upload it again", name
        )
    if min(width, height) < limits.min_side:
        raise UploadError(
            422, "too_small", f"{_shown(name)} is {width} x {height} pixels: a side shorter than the "
            f"{limits.min_side} pixels required; upload the full-size image", name
        )


def _damaged(fmt: str, name: str, e: BaseException) -> UploadError:
    detail = " ".join(str(e).split())[:300]
    if "truncat" in detail.lower():
        return UploadError(
            400, "truncated", f"{_shown(name)} is a truncated {fmt} file (it ends before the image data does: "
            f"{detail}); upload the complete file", name
        )
    return UploadError(
        400, "corrupt", f"{_shown(name)} is a damaged {fmt} file ({type(e).__name__}: {detail}); re-export the "
        "image and upload it again", name
    )


def _alpha_is_opaque(img: Image.Image) -> bool:
    if img.mode in ("RGBA", "LA", "PA"):
        alpha = img.getchannel("A")
    elif "transparency" in img.info:  # P, L or RGB with a tRNS chunk
        alpha = img.convert("RGBA").getchannel("A")
    else:
        return True
    return alpha.getextrema()[0] == 255


def _decode_pillow(data: bytes, fmt: str, name: str, channels: int, size: Optional[int],
                   limits: UploadLimits, resize: str) -> np.ndarray:
    def open_image() -> Image.Image:
        fp = io.BytesIO(data)
        # the plugin directly, not Image.open: no format guessing, and Pillow's global
        # MAX_IMAGE_PIXELS check does not run (ours does, just below, before load()).
        return PngImagePlugin.PngImageFile(fp) if fmt == "PNG" else JpegImagePlugin.jpeg_factory(fp)

    try:
        img = open_image()
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError) as e:
        raise _damaged(fmt, name, e) from e
    width, height = img.size
    _check_dimensions(width, height, name, limits)
    frames = getattr(img, "n_frames", 1)
    if frames > 1:
        kind = "an animated PNG" if fmt == "PNG" else "a multi-picture (MPO) JPEG"
        raise UploadError(
            422, "multi_frame", f"{_shown(name)} is {kind} with {frames} frames; medclass classifies single "
            "images: save the frame to classify as a still PNG or JPEG and upload that", name
        )
    if fmt == "PNG":
        try:
            img.verify()  # every chunk's CRC, up to IEND, without decoding pixels
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise _damaged(fmt, name, e) from e
        if b"IEND\xaeB`\x82" not in data:  # verify() checks it, unless LOAD_TRUNCATED_IMAGES is on
            raise _damaged(fmt, name, OSError("truncated PNG file: no IEND chunk"))
        img = open_image()
    elif ImageFile.LOAD_TRUNCATED_IMAGES and not data.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9"):
        # someone turned Pillow's LOAD_TRUNCATED_IMAGES on: Pillow would pad a cut JPEG with grey
        raise _damaged(fmt, name, OSError("image file is truncated: no end-of-image marker"))
    try:
        img.load()
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as e:
        raise _damaged(fmt, name, e) from e
    mode = img.mode
    if mode not in _ACCEPTED_MODES:
        hint = " (a CMYK JPEG, made for print)" if mode == "CMYK" else ""
        raise UploadError(
            422, "unsupported_channels", f"{_shown(name)} has Pillow mode {mode!r}{hint}, which medclass does not "
            "read; convert it to greyscale or RGB (e.g. save it as an RGB PNG) and upload it again", name
        )
    if not _alpha_is_opaque(img):
        raise UploadError(
            422, "transparency", f"{_shown(name)} has transparent pixels (mode {mode}, an alpha channel below "
            "255); the colour under them is undefined, so the model would not see what you see: flatten the "
            "image onto its background (e.g. save it as an RGB or greyscale PNG without alpha) and upload it "
            "again", name
        )
    return to_model_input(img, channels, size, resize)


# DicomReadError.kind -> (status, code)
_DICOM_KINDS = {
    "empty": (400, "empty"),
    "not_dicom": (400, "corrupt"),  # the DICM marker was there, yet pydicom refuses the header
    "corrupt": (400, "corrupt"),
    "truncated": (400, "truncated"),
    "bad_shape": (400, "corrupt"),
    "decode_failed": (400, "corrupt"),
    "no_pixel_data": (422, "no_pixel_data"),
    "multi_frame": (422, "multi_frame"),
    "unsupported_samples": (422, "unsupported_channels"),
    "unsupported_photometric": (422, "unsupported_photometric"),
    "no_decoder": (415, "unsupported_compression"),
}


def _decode_dicom(data: bytes, name: str, channels: int, size: Optional[int], window,
                  limits: UploadLimits, resize: str) -> np.ndarray:
    def check(ds) -> None:
        try:
            rows, cols = int(ds.Rows), int(ds.Columns)
        except (AttributeError, TypeError, ValueError):
            raise UploadError(
                400, "corrupt", f"{_shown(name)} is a damaged DICOM file: pixel data without valid Rows and "
                "Columns; re-export the image and upload it again", name
            ) from None
        _check_dimensions(cols, rows, name, limits)

    try:
        return read_dicom(data, channels, size, window, name=name, before_decode=check, resize=resize)
    except DicomReadError as e:
        status, code = _DICOM_KINDS.get(e.kind, (422, "undecodable"))
        reason = e.reason.rstrip(".")
        raise UploadError(status, code, f"{_shown(name)}: {reason}", name) from e
    except (UploadError, MemoryError):
        raise
    except Exception as e:  # pydicom parses elements lazily: a damaged value fails late (bad VR, bad UID)
        detail = " ".join(str(e).split())[:300]
        raise UploadError(
            400, "corrupt", f"{_shown(name)} is a damaged DICOM file ({type(e).__name__}: {detail}); re-export "
            "it and upload it again", name
        ) from e


def decode_upload(
    data: bytes,
    filename: Optional[str],
    channels: int,
    size: Optional[int],
    dicom_window: Optional[Sequence[float]] = None,
    limits: UploadLimits = UploadLimits(),
    resize: str = "squash",
) -> np.ndarray:
    """Decode one uploaded file (PNG, JPEG or DICOM) into a uint8 array ``(size, size, channels)``
    (``(H, W, channels)`` when ``size`` is None), equal to
    :func:`medclass.data.io.read_image` of the same file with the same arguments (``resize``
    ``"squash"`` or ``"pad"``, the model's rule: :func:`~medclass.data.pixels.to_model_input`).

    ``filename`` is the client's name for the file, used in messages only (checked by
    :func:`check_filename`; None is fine). ``dicom_window`` = ``(center, width)`` windows DICOM
    greyscale images as in :func:`~medclass.data.dicom.read_dicom`. See the module docstring for
    what is checked and the table of status codes.

    Raises:
        UploadError: the upload is unusable: ``status_code`` 400/413/415/422, ``code``, ``message``
            naming the file. Every failure while decoding is an UploadError (unexpected ones are
            400 ``corrupt`` for DICOM, 422 ``undecodable`` for PNG/JPEG; a MemoryError is 413
            ``out_of_memory``).
        ValueError: ``channels`` is not 1 or 3, ``size`` is not positive, ``dicom_window`` is not
            ``(center, width)`` with width >= 1, or ``resize`` is not ``"squash"`` or ``"pad"`` (the
            caller's mistakes, not the upload's).
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise ValueError(f"size must be a positive integer or None, got {size!r}")
    window = validate_window(dicom_window)
    validate_resize(resize)
    name = check_filename(filename, limits)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) == 0:
        raise UploadError(400, "empty", f"{_shown(name)} is empty (0 bytes); upload the image file itself", name)
    if len(data) > limits.max_bytes:
        raise UploadError(
            413, "too_large", f"{_shown(name)} is {_size(len(data))}, larger than the {_size(limits.max_bytes)} "
            "allowed; send a smaller file (a single 2D image as PNG or JPEG, or a single-frame DICOM)", name
        )
    fmt = sniff_format(data)
    if fmt is None:
        raise _unsupported(data, name)
    try:
        if fmt == "DICOM":
            return _decode_dicom(data, name, channels, size, window, limits, resize)
        return _decode_pillow(data, fmt, name, channels, size, limits, resize)
    except UploadError:
        raise
    except MemoryError:
        raise UploadError(
            413, "out_of_memory", f"{_shown(name)} needs more memory to decode than the service has; send a "
            "smaller image", name
        ) from None
    except Image.DecompressionBombError as e:
        raise UploadError(
            413, "too_many_pixels", f"{_shown(name)} declares too many pixels ({e}); downscale it and upload it "
            "again", name
        ) from e
    except Exception as e:  # never a 500 for a bad file
        detail = " ".join(str(e).split())[:300]
        raise UploadError(
            422, "undecodable", f"{_shown(name)} could not be decoded as {fmt} ({type(e).__name__}: {detail}); "
            "re-export it as PNG and upload it again", name
        ) from e
