"""Helpers shared by the test files: where the real data sets are, tiny data sets and run
configurations, and writers for PNG bytes and DICOM files.

Test files import from here (``from helpers import ...``; pytest puts ``tests/`` on ``sys.path``
because the folder has no ``__init__.py``), never from one another. Fixtures built on these live in
``tests/conftest.py``: ``shared_data``, ``chest_ct`` and ``chromium``.

The real data sets are read from ``../shared/data`` next to the repository, or from the folder named
by the environment variable ``MEDCLASS_SHARED_DATA``. They are read-only: no helper writes there.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

__all__ = [
    "CHEST_CLASSES",
    "CHEST_CT",
    "INTERCEPT",
    "SHARED_DATA",
    "bomb_png",
    "chunk",
    "encoded",
    "make_folder_dataset",
    "need",
    "served",
    "png_bytes",
    "shared_set",
    "stored_from_png",
    "tiny_config",
    "write_dicom",
]


# --------------------------------------------------------------------------- real data


def _shared_data() -> Path:
    env = os.environ.get("MEDCLASS_SHARED_DATA")
    if env:
        return Path(env).expanduser().resolve()
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


SHARED_DATA: Path = _shared_data()
"""The folder holding the real data sets (``chest-ct``, ``brain-tumor-mri-yn``, ...): ``../shared/data``
beside the repository, or ``$MEDCLASS_SHARED_DATA``. It may not exist; tests skip then (see :func:`need`)."""

CHEST_CT: Path = SHARED_DATA / "chest-ct"
"""The chest CT set: ``train/``, ``valid/``, ``test/``, each with one folder per class."""

CHEST_CLASSES = ["adenocarcinoma", "large.cell.carcinoma", "normal", "squamous.cell.carcinoma"]
"""The four chest-ct classes as medclass names them (sorted), after matching the long folder names."""


def need(path: str | Path) -> Path:
    """Return ``path`` when it exists; otherwise skip the calling test, naming the missing path.

    Args:
        path: a file or folder, usually under :data:`SHARED_DATA`.
    Returns:
        ``Path(path)``.
    Raises:
        pytest.skip.Exception: the path does not exist (a skip, not a failure).
    """
    path = Path(path)
    if not path.exists():
        pytest.skip(f"real data not available: {path} (put the data sets in ../shared/data "
                    "or point MEDCLASS_SHARED_DATA at them)")
    return path


def shared_set(name: str) -> Path:
    """``SHARED_DATA / name`` (e.g. ``"chest-ct"``, ``"ham10000-subset/HAM10000_metadata.csv"``),
    skipping the calling test when it is missing (see :func:`need`)."""
    return need(SHARED_DATA / name)


# --------------------------------------------------------------------------- tiny data and runs


def make_folder_dataset(
    root: Path,
    per_class: int = 12,
    size: int = 20,
    *,
    splits: dict[str, int] | None = None,
    seed: int = 0,
    levels: tuple[int, int] = (50, 190),
    noise: float = 20,
    stripe: int | None = None,
    name: str = "{cls}_{i}.png",
) -> Path:
    """Two classes, ``dark`` and ``bright``, that differ in brightness and a white stripe:
    learnable in a few steps. Images are RGB uint8 PNGs of ``size`` x ``size`` pixels,
    ``N(level, noise)`` clipped to 0..255; ``bright`` images get a 2-pixel white vertical stripe at
    column ``stripe`` (default ``size // 2``). The files are the same bytes for the same arguments.

    Args:
        root: the folder to create (must not exist yet for the class folders).
        per_class: images per class (without ``splits``).
        size: side in pixels.
        splits: ``None``: ``root/<class>/``; else ``{split: images per class}`` in this order, e.g.
            ``{"train": 14, "valid": 6, "test": 6}``: ``root/<split>/<class>/``.
        seed: seed of the NumPy generator; images are drawn split by split, class by class.
        levels: mean grey value of (``dark``, ``bright``).
        noise: standard deviation of the pixel noise.
        stripe: first column of the stripe.
        name: file name pattern with ``{split}``, ``{cls}`` and ``{i}``.
    Returns:
        ``root``.
    """
    rng = np.random.default_rng(seed)
    start = size // 2 if stripe is None else stripe
    for split, n in (splits or {None: per_class}).items():
        for cls, base in (("dark", levels[0]), ("bright", levels[1])):
            d = root / cls if split is None else root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                arr = np.clip(rng.normal(base, noise, (size, size, 3)), 0, 255).astype(np.uint8)
                if cls == "bright":
                    arr[:, start : start + 2] = 255
                Image.fromarray(arr).save(d / name.format(split=split, cls=cls, i=i))
    return root


def tiny_config(source, *, image_size: int = 16, **train):
    """A :class:`medclass.core.config.RunConfig` for a seconds-long CPU run: small-stem ResNet-18,
    ``image_size`` pixels, 25 % validation and 25 % test split, batch 4, 3 epochs, no progress bar.

    Args:
        source: the data source (folder, CSV, ...).
        image_size: the training side in pixels.
        **train: overrides of ``cfg.train`` fields (``epochs=1``, ``batch_size=8``, ...).
    """
    from medclass.core.config import RunConfig

    cfg = RunConfig()
    cfg.data.source = str(source)
    cfg.data.image_size = image_size
    cfg.data.val_fraction = 0.25
    cfg.data.test_fraction = 0.25
    cfg.model.arch = "resnet18"
    cfg.model.stem = "small"
    cfg.train.batch_size = 4
    cfg.train.epochs = 3
    cfg.train.progress = False
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


# --------------------------------------------------------------------------- image bytes


def encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    """``img`` saved by Pillow in format ``fmt`` (``"PNG"``, ``"JPEG"``, ...) with options ``kw``."""
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png_bytes(img: Image.Image, **kw) -> bytes:
    """``img`` as PNG bytes (Pillow save options ``kw``, e.g. ``save_all=True``)."""
    return encoded(img, "PNG", **kw)


def chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk: length, 4-byte type ``kind``, ``payload`` and its CRC-32."""
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def bomb_png(width: int, height: int) -> bytes:
    """A real 1-bit greyscale PNG of width x height zeros, compressed row by row (no big buffer):
    20 000 x 20 000 is about 50 KB."""
    z = zlib.compressobj(9)
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    parts = [z.compress(row) for _ in range(height)] + [z.flush()]
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


# --------------------------------------------------------------------------- DICOM

INTERCEPT = -1024.0
"""RescaleIntercept of the greyscale DICOM files :func:`write_dicom` writes (slope 1, HU)."""


def stored_from_png(path: str | Path, size: int | None = None) -> np.ndarray:
    """Real CT PNG -> int16 stored values 0..2040 (x8 of the greyscale value), ``(size, size)``
    after a bilinear resize when ``size`` is given, else the PNG's ``(H, W)``."""
    img = Image.open(path).convert("L")
    if size:
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img).astype(np.int16) * 8


def write_dicom(path, pixels=None, *, photometric="MONOCHROME2", window=None, frames=1, samples=None,
                syntax=None, encapsulated=None, sop=None) -> Path:
    """Write a minimal DICOM Part 10 file (explicit VR little endian unless ``syntax`` says otherwise).

    Args:
        path: the file to write.
        pixels: ``None``: no image at all (e.g. a structured report). Greyscale: int16 stored values
            ``(rows, cols)`` or ``(frames, rows, cols)``, written with RescaleSlope 1 and
            RescaleIntercept :data:`INTERCEPT` (HU). Colour (``photometric="RGB"`` or ``samples``
            given): uint8 ``(rows, cols, samples)``, interleaved.
        photometric: PhotometricInterpretation (``MONOCHROME2``, ``MONOCHROME1``, ``RGB``, ``ARGB``...).
        window: ``(center, width)`` for WindowCenter/WindowWidth; each may be a list (several views).
        frames: NumberOfFrames when above 1.
        samples: SamplesPerPixel of a colour-like image (3 for ``RGB`` when not given).
        syntax: TransferSyntaxUID (default ExplicitVRLittleEndian).
        encapsulated: a list of frame bytes stored encapsulated instead of ``pixels``' bytes.
        sop: SOP class UID (default CT Image Storage; Modality is ``CT`` for it, else ``OT``).
    Returns:
        ``Path(path)``.
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    sop = CTImageStorage if sop is None else sop
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian if syntax is None else syntax
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT" if sop == CTImageStorage else "OT"
    ds.PatientID = "medclass-test"
    if pixels is not None:
        if samples is None and photometric == "RGB":
            samples = 3
        if samples is not None:  # colour-like: pixels (rows, cols, samples) uint8
            rows, cols = pixels.shape[-3:-1]
            ds.SamplesPerPixel, ds.PlanarConfiguration = samples, 0
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
            data, vr = pixels.astype(np.uint8).tobytes(), "OB"
        else:
            rows, cols = pixels.shape[-2:]
            ds.SamplesPerPixel = 1
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
            ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1, INTERCEPT, "HU"
            data, vr = pixels.astype("<i2").tobytes(), "OW"
        ds.Rows, ds.Columns = int(rows), int(cols)
        ds.PhotometricInterpretation = photometric
        if window is not None:
            ds.WindowCenter, ds.WindowWidth = window
        if frames > 1:
            ds.NumberOfFrames = frames
        if encapsulated is not None:
            ds.PixelData = encapsulate(encapsulated)
            ds["PixelData"].VR = "OB"
            ds["PixelData"].is_undefined_length = True
        else:
            ds.PixelData = data
            ds["PixelData"].VR = vr
    ds.save_as(path, enforce_file_format=True)
    return Path(path)


# --------------------------------------------------------------------------- a live service


@contextlib.contextmanager
def served(run_dir: Path, log: Path):
    """``python -m medclass serve RUN`` on a free loopback port, yielding its base URL once
    ``/health`` answers 200 (at most 90 s); stopped with SIGINT (then killed) afterwards. Its output
    goes to ``log``.

    Raises:
        AssertionError: the server exited, or gave no ``/health`` within 90 s (the log is in the message).
    """
    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "medclass", "serve", str(run_dir), "--host", "127.0.0.1",
                                 "--port", str(port)], stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            assert proc.poll() is None, f"the server exited: {log.read_text()}"
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline, f"no /health after 90 s: {log.read_text()}"
            time.sleep(0.2)
        yield base
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


# --------------------------------------------------------------------------- a fake classifier


class FakeClassifier:
    """Probabilities from the mean grey value (deterministic per image); counts forward passes."""

    can_explain = False

    def __init__(self, run: str = "fake", classes=("a", "b", "c"), delay: float = 0.0) -> None:
        from medclass.core.spec import ModelSpec

        self.spec = ModelSpec(class_names=list(classes), channels=1, image_size=16, run=run)
        self.calls: list[int] = []
        self.delay = delay

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        self.calls.append(len(images))
        if self.delay:
            time.sleep(self.delay)
        m = images.reshape(len(images), -1).mean(axis=1, dtype=np.float64) / 255.0
        z = np.stack([m, 1 - m, 0.5 * np.ones_like(m)], axis=1) * 4
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
