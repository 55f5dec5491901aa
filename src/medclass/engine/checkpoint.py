"""Checkpoints written atomically and read without unpickling code."""

from __future__ import annotations

import errno
import os
import pickle
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["save_checkpoint", "load_checkpoint", "CheckpointError", "temp_name_pattern"]


class CheckpointError(OSError):
    """A checkpoint is missing or cannot be read; the message names the file."""


def temp_name_pattern(path: Path) -> str:
    """Glob pattern of the temporary files :func:`save_checkpoint` writes beside ``path``
    (``.last.pt.<random>.tmp``); a process killed while saving leaves one behind."""
    return f".{Path(path).name}.*.tmp"


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` with ``torch.save`` to a temporary file beside ``path``, fsync it, then
    ``os.replace`` it into place and fsync the folder: a reader sees the old or the new file,
    never half of one, also after a crash or power loss. On an error the temporary file is removed
    and the old file is intact; only a process killed mid-write leaves its temporary file (the
    trainer removes those).

    Raises:
        OSError: the file could not be written; a full disk is ``errno.ENOSPC``. ``torch.save``'s
            zip writer reports a failed write as ``RuntimeError: [enforce fail at
            inline_container.cc] unexpected pos`` (the ``OSError`` of the write is only its
            context): that is turned back into the ``OSError`` (:func:`_as_os_error`), so callers
            see one kind of error for a full disk.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except RuntimeError as e:
        Path(tmp).unlink(missing_ok=True)
        raise _as_os_error(e, path) from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _as_os_error(e: RuntimeError, path: Path) -> OSError:
    """The ``OSError`` behind a ``RuntimeError`` of ``torch.save`` writing ``path``: the write's own
    ``OSError`` when it is in the exception's context chain; else, for the zip writer's
    ``unexpected pos`` (a short write), ENOSPC when the disk has under 1 MiB free and EIO otherwise."""
    seen: set[int] = set()
    cause: BaseException | None = e
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno is not None:
            return OSError(cause.errno, cause.strerror or os.strerror(cause.errno), str(path))
        cause = cause.__cause__ or cause.__context__
    try:
        full = shutil.disk_usage(path.parent).free < 2**20
    except OSError:
        full = False
    code = errno.ENOSPC if full else errno.EIO
    return OSError(code, f"{os.strerror(code)} (torch.save: {' '.join(str(e).split())[:200]})", str(path))


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX); a no-op where folders cannot be opened."""
    try:
        dfd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``torch.load(weights_only=True)``: tensors and plain containers only,
    so a tampered file cannot run code.

    Raises:
        CheckpointError: the file is missing, not a readable checkpoint, or holds objects the
            weights-only unpickler refuses (a file altered to run code); the message names the file
            and what to do, and never suggests ``weights_only=False``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:  # the weights-only unpickler refused a global: not ours, or altered
        found = re.search(r"(?:GLOBAL|Unsupported global:?)\s+([\w.]+)", str(e))
        what = f" ({found.group(1)})" if found else ""
        raise CheckpointError(
            f"refusing to load checkpoint {path}: it holds Python objects other than tensors and plain "
            f"containers{what}, which could run code when loaded. medclass never writes such objects, so the "
            "file was not written by medclass or was altered: restore the run's checkpoint from a trusted copy, "
            "or train the run again") from None
    except Exception as e:  # torch raises several types for a damaged file
        first = " ".join(str(e).strip().splitlines()[0].split())[:200] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot load checkpoint {path}: it is damaged or not a PyTorch checkpoint "
                              f"({first}); restore it from a copy, or train the run again") from None
