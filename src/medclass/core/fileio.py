"""Atomic file writes that never follow a planted symbolic link.

Every file a command writes into a run folder goes through :func:`atomic_write`: the content is
written to a temporary file created beside the destination (``mkstemp``: a fresh name, mode 0600,
``O_EXCL``, so no existing file or link is opened), then ``os.replace`` renames it over the
destination. ``rename`` replaces a symbolic link itself, never the file it points to, so a link
planted at the destination (e.g. ``eval-test/metrics.json -> /etc/...``) is replaced by a regular
file and nothing outside the run folder is touched. A reader sees the old file or the whole new
one. A folder that is itself a symbolic link is refused (:func:`safe_dir`).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Callable, Union

__all__ = ["atomic_write", "atomic_write_text", "safe_dir", "sha256_of_file", "UnsafePathError"]


class UnsafePathError(OSError):
    """A destination folder is a symbolic link: medclass will not write through it. The message
    names the folder and what to do."""


def safe_dir(folder: Union[str, os.PathLike]) -> Path:
    """Create ``folder`` (and parents) and return it.

    Raises:
        UnsafePathError: ``folder`` is a symbolic link (writing into it would write wherever it
            points); remove the link or choose another folder.
    """
    folder = Path(folder)
    if folder.is_symlink():
        raise UnsafePathError(f"{folder} is a symbolic link; refusing to write through it (remove the link, or "
                              "choose another output folder)")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def atomic_write(path: Union[str, os.PathLike], write: Callable[[Path], None], mode: int = 0o644) -> Path:
    """Call ``write(tmp)`` on a new temporary file beside ``path`` (same suffix, so writers that
    choose the format by extension, such as matplotlib's ``savefig``, still work), then
    ``os.replace`` it onto ``path`` with permissions ``mode``. On an error the temporary file is
    removed and ``path`` is unchanged. Returns ``path``.

    Raises:
        UnsafePathError: the parent folder is a symbolic link.
        OSError: the folder cannot be written (e.g. a full disk).
    """
    path = Path(path)
    safe_dir(path.parent)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: Union[str, os.PathLike], text: str, encoding: str = "utf-8") -> Path:
    """:func:`atomic_write` of ``text``."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding=encoding))


def sha256_of_file(path: Union[str, os.PathLike]) -> str:
    """The SHA-256 of a file's bytes as 64 hex digits, read in 1 MiB blocks.

    Raises:
        OSError: the file cannot be read.
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
