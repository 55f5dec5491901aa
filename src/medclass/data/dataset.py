"""Decoding a split once into memory: a uint8 tensor ``(N, C, size, size)`` and its labels."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .io import ImageReadError, read_image, to_channels
from .sources import NPZ_SEP, Sample

__all__ = ["DecodedSplit", "load_sample", "decode_split"]


@lru_cache(maxsize=4)
def _npz_images(path: str, prefix: str) -> np.ndarray:
    with np.load(path) as data:
        return np.asarray(data[f"{prefix}_images"])


def load_sample(path: str, channels: int, size: int) -> np.ndarray:
    """Read one image (a file, or ``"<file.npz>::<split>::<i>"``) as uint8 ``(size, size, C)``.

    Raises:
        ImageReadError: the file cannot be read (it names the file).
    """
    if NPZ_SEP in path:
        npz, prefix, i = path.split(NPZ_SEP)
        arr = _npz_images(npz, prefix)[int(i)]
        img = to_channels(Image.fromarray(arr), channels)
        if img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.BILINEAR)
        out = np.asarray(img, dtype=np.uint8)
        return out[:, :, None] if out.ndim == 2 else out
    return read_image(path, channels, size)


@dataclass
class DecodedSplit:
    """A split decoded once: ``images`` uint8 ``(N, C, H, W)``, ``labels`` int64 ``(N,)``.

    ``samples`` are those kept (same order); ``skipped`` lists ``(path, reason)`` of unreadable
    files left out with ``skip_corrupt``.
    """

    images: torch.Tensor
    labels: torch.Tensor
    samples: list[Sample]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)


def decode_split(
    samples: Sequence[Sample],
    channels: int,
    size: int,
    skip_corrupt: bool = False,
    desc: str = "decode",
    progress: bool = True,
    threads: int = 4,
) -> DecodedSplit:
    """Decode and resize every image of a split once (threads: Pillow releases the GIL).

    Raises:
        ImageReadError: an unreadable file, unless ``skip_corrupt`` (then it is listed in
            ``skipped``, never dropped silently).
    """

    def one(s: Sample):
        try:
            return load_sample(s.path, channels, size)
        except ImageReadError as e:
            if not skip_corrupt:
                raise
            return e

    with ThreadPoolExecutor(max_workers=threads) as pool:
        results = list(
            tqdm(pool.map(one, samples), total=len(samples), desc=desc, disable=not progress, leave=False)
        )
    kept = [(s, r) for s, r in zip(samples, results) if not isinstance(r, ImageReadError)]
    skipped = [(r.path, r.reason) for r in results if isinstance(r, ImageReadError)]
    if kept:
        arr = np.stack([r for _, r in kept]).transpose(0, 3, 1, 2)
        images = torch.from_numpy(np.ascontiguousarray(arr))
    else:
        images = torch.empty((0, channels, size, size), dtype=torch.uint8)
    labels = torch.tensor([s.label for s, _ in kept], dtype=torch.int64)
    return DecodedSplit(images, labels, [s for s, _ in kept], skipped)
