"""Checkpoints written atomically and read without unpickling code."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["save_checkpoint", "load_checkpoint", "CheckpointError"]


class CheckpointError(OSError):
    """A checkpoint is missing or cannot be read; the message names the file."""


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` with ``torch.save`` to a temporary file beside ``path``, fsync it, then
    ``os.replace`` it into place: a reader sees the old or the new file, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``torch.load(weights_only=True)``: tensors and plain containers only,
    so a tampered file cannot run code.

    Raises:
        CheckpointError: the file is missing or not a readable checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for a bad or unsafe file
        raise CheckpointError(f"cannot load checkpoint {path}: {e}") from e
