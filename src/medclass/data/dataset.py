"""Decoding a split once: a uint8 tensor ``(N, C, size, size)`` and its labels.

With a cache folder, the decoded split is written once as a memory-mapped ``.npy`` file at the
training size and read back on later runs without decoding. The cache key is a hash of every
file's bytes (BLAKE2b) and of the preprocessing (channels, size, resize filter and rule, DICOM window,
medclass's cache format version), so a changed file or setting builds a new entry and a renamed
folder does not.
Peak memory does not grow with the original image sizes: each image is decoded and resized on
its own (a few threads at a time) and written straight into the preallocated array.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image

from ..core.fileio import atomic_write, atomic_write_text
from ..core.progress import Progress
from .dicom import validate_window
from .io import read_image
from .pixels import ImageReadError, to_model_input, validate_resize
from .sources import NPZ_SEP, Sample

__all__ = ["DecodedSplit", "load_sample", "decode_split", "default_cache_dir", "cache_dir_for", "file_digest", "cache_key",
           "CACHE_VERSION", "native_side", "greyscale_content", "GREYSCALE_TOLERANCE"]

#: Bump when decoding changes (resize filter, channel conversion): old cache entries are then unused.
CACHE_VERSION = 1


def default_cache_dir() -> Path:
    """``$MEDCLASS_CACHE_DIR``, else ``$XDG_CACHE_HOME/medclass/decoded``, else
    ``~/.cache/medclass/decoded``."""
    env = os.environ.get("MEDCLASS_CACHE_DIR")
    if env:
        return Path(env)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "medclass" / "decoded"


def cache_dir_for(data_cfg) -> Optional[Path]:
    """The decode cache folder of a :class:`medclass.core.config.DataConfig`: ``cache_dir``, else
    :func:`default_cache_dir`; None when ``cache`` is off."""
    if not getattr(data_cfg, "cache", True):
        return None
    return Path(data_cfg.cache_dir) if getattr(data_cfg, "cache_dir", None) else default_cache_dir()


@lru_cache(maxsize=4)
def _npz_images(path: str, prefix: str) -> np.ndarray:
    with np.load(path) as data:
        return np.asarray(data[f"{prefix}_images"])


def load_sample(path: str, channels: int, size: Optional[int], dicom_window: Optional[Sequence[float]] = None,
                resize: str = "squash") -> np.ndarray:
    """Read one image (a file, or ``"<file.npz>::<split>::<i>"``) as uint8 ``(size, size, C)``.

    ``dicom_window`` (``[center, width]`` in HU) windows DICOM files (see :func:`read_image`);
    ``resize`` (``"squash"`` or ``"pad"``) is the rule of :func:`~medclass.data.pixels.to_model_input`.

    Raises:
        ImageReadError: the file cannot be read (it names the file).
        ValueError: ``resize`` is not ``"squash"`` or ``"pad"``.
    """
    if NPZ_SEP in path:
        npz, prefix, i = path.split(NPZ_SEP)
        arr = _npz_images(npz, prefix)[int(i)]
        return to_model_input(Image.fromarray(arr), channels, size, resize)
    return read_image(path, channels, size, dicom_window, resize)


def _spread(samples: Sequence[Sample], n: int) -> list[Sample]:
    """Up to ``n`` of ``samples``, spread evenly over them (every ``len // n``-th, from the first)."""
    return list(samples)[:: max(1, len(samples) // max(1, n))][:n]


def native_side(samples: Sequence[Sample], channels: int, n: int = 32,
                dicom_window: Optional[Sequence[float]] = None) -> Optional[int]:
    """The images' own resolution: the median shorter side, in pixels, of up to ``n`` samples
    spread evenly over ``samples`` (decoded at their own size); ``None`` when none of them can be
    read. ``data.image_size: auto`` uses it not to upsample small images
    (:func:`medclass.engine.budget.choose_resolution`)."""
    picked = _spread(samples, n)
    sides = []
    for s in picked:
        try:
            arr = load_sample(s.path, channels, None, dicom_window)
        except (OSError, ValueError):
            continue
        sides.append(min(arr.shape[0], arr.shape[1]))
    return int(np.median(sides)) if sides else None


#: Mean absolute difference between an image's colour channels, in uint8 levels, under which
#: :func:`greyscale_content` counts it as grey: lossy JPEG's chroma noise on a grey image stays
#: well under it, a photograph's colour (dermoscopy, stained smears) is tens of levels.
GREYSCALE_TOLERANCE = 2.0


def greyscale_content(samples: Sequence[Sample], channels: int, n: int = 32,
                      dicom_window: Optional[Sequence[float]] = None) -> Optional[bool]:
    """Whether the images are grey whatever their file format says: True when at least 90 % of up
    to ``n`` samples spread evenly over ``samples`` (decoded at 64 x 64 px) have equal colour
    channels (mean absolute channel difference under :data:`GREYSCALE_TOLERANCE` levels), as CT,
    MRI, X-ray and ultrasound exported to RGB(A) PNG or JPEG are; False for colour content
    (dermoscopy, stained blood smears); None when none of them can be read. With ``channels`` 1
    the model sees grey images whatever the files hold: True without reading any.
    ``data.intensity: auto`` uses it (:func:`medclass.engine.intensity.resolve_intensity`)."""
    if channels == 1:
        return True
    picked = _spread(samples, n)
    grey = read = 0
    for s in picked:
        try:
            arr = load_sample(s.path, 3, 64, dicom_window).astype(np.int16)
        except (OSError, ValueError):
            continue
        read += 1
        diff = (np.abs(arr[..., 0] - arr[..., 1]).mean() + np.abs(arr[..., 1] - arr[..., 2]).mean()) / 2
        grey += bool(diff < GREYSCALE_TOLERANCE)
    if read == 0:
        return None
    return grey >= 0.9 * read


@lru_cache(maxsize=65536)
def _digest_cached(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_digest(path: str) -> str:
    """BLAKE2b-128 hex digest of a file's bytes (of the ``.npz`` plus the item for npz samples);
    ``"missing"`` for a file that cannot be opened (decoding then reports it). Memoised per
    process by ``(path, size, mtime)``."""
    item = ""
    if NPZ_SEP in path:
        path, prefix, i = path.split(NPZ_SEP)
        item = f"::{prefix}::{i}"
    try:
        st = os.stat(path)
        return _digest_cached(path, st.st_size, st.st_mtime_ns) + item
    except OSError:
        return "missing" + item


@dataclass
class DecodedSplit:
    """A split decoded once: ``images`` uint8 ``(N, C, H, W)`` (in memory, or memory-mapped from
    the cache file ``cache_path``), ``labels`` int64 ``(N,)``.

    ``samples`` are those kept (same order); ``skipped`` lists ``(path, reason)`` of unreadable
    files left out with ``skip_corrupt``. ``cache_hit`` says whether decoding was skipped.
    """

    images: torch.Tensor
    labels: torch.Tensor
    samples: list[Sample]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    cache_path: Optional[Path] = None
    cache_hit: bool = False

    def __len__(self) -> int:
        return len(self.samples)


def cache_key(samples: Sequence[Sample], channels: int, size: int,
              dicom_window: Optional[Sequence[float]] = None, resize: str = "squash") -> str:
    """Hex key of a decoded split: the file contents in order, channels, size, filter and resize
    rule, version, and the DICOM window when one is given (without one, and with ``resize``
    ``"squash"``, the key is that of earlier medclass versions, so existing entries stay valid).

    Raises:
        ValueError: ``resize`` is not ``"squash"`` or ``"pad"``.
    """
    h = hashlib.blake2b(digest_size=20)
    settings = {"version": CACHE_VERSION, "channels": channels, "size": size,
                "resize": f"pillow-bilinear-{validate_resize(resize)}"}
    if dicom_window is not None:
        settings["dicom_window"] = [float(v) for v in dicom_window]
    h.update(json.dumps(settings).encode())
    for s in samples:
        h.update(file_digest(s.path).encode())
        h.update(b"\n")
    return h.hexdigest()


#: What the error of an unreadable image in a split says to do (``data.skip_corrupt``).
SKIP_CORRUPT_ADVICE = ("replace or remove the file, or leave unreadable images out with data.skip_corrupt=true "
                       "(train --skip-corrupt, evaluate --skip-corrupt); the images left out are listed")


def _decode_into(out: np.ndarray, samples: Sequence[Sample], channels: int, size: int, skip_corrupt: bool,
                 desc: str, progress: bool, threads: int, dicom_window: Optional[Sequence[float]] = None,
                 resize: str = "squash") -> tuple[list[int], list[tuple[str, str]]]:
    """Decode ``samples`` into ``out`` rows ``0..k-1`` (kept ones, in order); returns kept sample
    indices and skipped ``(path, reason)``. Work is submitted in windows so that at most a few
    hundred resized images wait in memory."""

    def one(s: Sample):
        try:
            return load_sample(s.path, channels, size, dicom_window, resize)
        except ImageReadError as e:
            if not skip_corrupt:
                raise ImageReadError(e.path, e.reason, SKIP_CORRUPT_ADVICE) from e
            return e

    kept: list[int] = []
    skipped: list[tuple[str, str]] = []
    window = max(64, 16 * threads)
    # a bar on a terminal, a line every log interval in a log file (medclass.core.progress)
    bar = Progress(desc, len(samples), "images", enabled=progress)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for start in range(0, len(samples), window):
            for j, r in enumerate(pool.map(one, samples[start : start + window]), start):
                if isinstance(r, ImageReadError):
                    skipped.append((r.path, r.reason))
                else:
                    out[len(kept)] = r.transpose(2, 0, 1)
                    kept.append(j)
                bar.update(1)
    bar.close()
    return kept, skipped


def decode_split(
    samples: Sequence[Sample],
    channels: int,
    size: int,
    skip_corrupt: bool = False,
    desc: str = "decode",
    progress: bool = True,
    threads: int = 4,
    cache_dir: Optional[str | Path] = None,
    dicom_window: Optional[Sequence[float]] = None,
    resize: str = "squash",
) -> DecodedSplit:
    """Decode and resize every image of a split once (threads: Pillow releases the GIL).

    ``dicom_window`` (``[center, width]`` in HU, ``DataConfig.dicom_window``) windows the DICOM
    files of the split; None: each file's own window (see :func:`medclass.data.dicom.read_dicom`).
    ``resize`` (``DataConfig.resize``: ``"squash"`` or ``"pad"``) is the rule of
    :func:`medclass.data.pixels.to_model_input`; it is part of the cache key.

    With ``cache_dir``, an entry ``<key>.npy`` (uint8 ``(N, C, size, size)``) plus ``<key>.json``
    is reused when present and otherwise written there (atomically: a temporary file renamed
    into place, the JSON last), and the images are memory-mapped from it copy-on-write.

    Raises:
        ImageReadError: an unreadable file, unless ``skip_corrupt`` (then it is listed in
            ``skipped``, never dropped silently).
        OSError: the cache folder cannot be written (the message names it and the settings).
        ValueError: ``dicom_window`` is not ``[center, width]`` with width >= 1, or ``resize`` is
            not ``"squash"`` or ``"pad"``.
    """
    window = validate_window(dicom_window)
    validate_resize(resize)
    samples = list(samples)
    n = len(samples)
    if cache_dir is None:
        buf = np.empty((n, channels, size, size), dtype=np.uint8)
        kept, skipped = _decode_into(buf, samples, channels, size, skip_corrupt, desc, progress, threads, window,
                                     resize)
        return _result(torch.from_numpy(buf)[: len(kept)], samples, kept, skipped)

    cache_dir = Path(cache_dir)
    key = cache_key(samples, channels, size, window, resize)
    npy, meta_path = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"
    if meta_path.is_file() and npy.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            arr = np.load(npy, mmap_mode="c")
            if arr.shape[1:] == (channels, size, size) and meta.get("version") == CACHE_VERSION:
                skipped = [tuple(x) for x in meta["skipped"]]
                if skip_corrupt or not skipped:
                    images = torch.from_numpy(arr)[: len(meta["kept"])]
                    return _result(images, samples, meta["kept"], skipped, npy, hit=True)
        except (OSError, ValueError, KeyError):
            pass  # a damaged entry: decode again and replace it
    decoded: list = []  # (kept, skipped) once the temporary file is open; later errors are not the cache's

    def decode_to(tmp: Path) -> None:
        buf = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, channels, size, size))
        decoded.append(None)
        decoded[:] = _decode_into(buf, samples, channels, size, skip_corrupt, desc, progress, threads, window,
                                  resize)
        buf.flush()
        del buf

    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        # the cache folder may be a link the user made (MEDCLASS_CACHE_DIR, data.cache_dir): the files go
        # into the folder it names (atomic_write refuses to write through a linked folder, a rule for runs)
        real_dir = Path(os.path.realpath(cache_dir))
        atomic_write(real_dir / npy.name, decode_to)  # a temporary file beside it, renamed into place
    except OSError as e:
        if decoded:
            raise
        raise OSError(
            f"cannot write the decode cache in {cache_dir} ({e}); set data.cache_dir to a writable folder "
            "(or MEDCLASS_CACHE_DIR), or data.cache=false to decode into memory"
        ) from e
    kept, skipped = decoded
    meta = {"version": CACHE_VERSION, "channels": channels, "size": size, "resize": resize,
            "dicom_window": list(window) if window is not None else None, "n_samples": n, "kept": kept,
            "skipped": [list(s) for s in skipped], "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "first_file": samples[0].path if samples else None}
    atomic_write_text(real_dir / meta_path.name, json.dumps(meta))
    images = torch.from_numpy(np.load(npy, mmap_mode="c"))[: len(kept)]
    return _result(images, samples, kept, skipped, npy)


def _result(images: torch.Tensor, samples: list[Sample], kept: Sequence[int], skipped, path=None,
            hit: bool = False) -> DecodedSplit:
    kept_samples = [samples[i] for i in kept]
    labels = torch.tensor([s.label for s in kept_samples], dtype=torch.int64)
    return DecodedSplit(images, labels, kept_samples, list(skipped), path, hit)
