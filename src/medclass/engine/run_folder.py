"""The run folder before and around training: the pre-checks and the write failures.

The layout itself (which file lives where) and the naming and resume rules
(:func:`medclass.core.runs.new_run_dir`, :func:`medclass.core.runs.resume_run_dir`, torch-free, so
the CLI checks them before importing PyTorch) are :mod:`medclass.core.runs`. This module holds the
checks ``medclass train`` makes around a run folder, so that :func:`medclass.engine.train` reads as a
training loop:

- before any work: the folder is created and probed for writes (:func:`prepare_run_dir`),
  temporary files of a killed save are removed (:func:`remove_stale_temp_files`) and the free disk
  space is compared with what the checkpoints and the decode cache will take
  (:func:`check_disk_space`, :func:`checkpoint_bytes_needed`);
- during training: a file that cannot be written becomes a :class:`RunError` that names the file
  and the intact checkpoint ``--resume`` continues from (:func:`write_failed`).

Every failure is a :class:`medclass.core.runs.RunError` whose message says what to do.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import torch

from ..core.config import RunConfig
from ..data import cache_dir_for
from ..models import build_model
from ..core.runs import RunError, RunFiles
from .checkpoint import temp_name_pattern

__all__ = [
    "DISK_MARGIN_BYTES", "prepare_run_dir", "remove_stale_temp_files",
    "checkpoint_bytes_needed", "check_disk_space", "write_failed",
]

MiB = 2**20
#: Free space kept on top of the checkpoint estimate (history, metrics, TensorBoard, curves).
DISK_MARGIN_BYTES = 16 * MiB


# --------------------------------------------------------------------------- checks before any work


def prepare_run_dir(files: RunFiles, resume: bool) -> None:
    """Create the run folder and check it is writable before any work.

    Raises:
        RunError: the folder holds a run and ``resume`` is off; ``resume`` without ``last.pt``;
            the folder cannot be written (the message says which).
    """
    if resume and not files.last.is_file():
        raise RunError(f"cannot resume: no {files.last}; start the run without --resume")
    if not resume and files.last.exists():
        raise RunError(f"{files.root} already holds a run; pass --resume to continue it or choose another --name")
    try:
        (files.root / "checkpoints").mkdir(parents=True, exist_ok=True)
        probe = files.root / ".write_test"
        probe.write_bytes(b"0" * 4096)
        probe.unlink()
    except OSError as e:
        raise RunError(f"run folder {files.root} is not writable: {e}") from e


def remove_stale_temp_files(files: RunFiles) -> list[Path]:
    """Delete what a killed process can leave half written in the run folder: checkpoint temporary
    files (``checkpoints/.last.pt.*.tmp``), ``metrics.tmp`` and the write probe. The real files
    are replaced atomically, so they are whole; these are never read. Returns the removed paths."""
    stale = [*files.root.glob(".write_test"), files.metrics_csv.with_suffix(".tmp")]
    for ck in (files.best, files.last):
        stale += ck.parent.glob(temp_name_pattern(ck))
    removed = []
    for p in stale:
        if p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def checkpoint_bytes_needed(cfg: RunConfig, num_classes: int, channels: int) -> int:
    """Disk space in bytes the run's checkpoints take at their peak, estimated before any data is
    decoded.

    The model is built on the ``meta`` device (no memory, no random draws) to count its state:
    ``best.pt`` holds the weights and buffers (``S`` bytes), ``last.pt`` also the optimizer state
    (Adam/AdamW keep two moments per parameter, SGD one momentum buffer; with ``train.ema`` the
    EMA's ``S`` more), and while ``last.pt`` is
    replaced its old and new copy coexist: ``S + 2 * (S + k * P)``, plus 10 % and
    :data:`DISK_MARGIN_BYTES`.
    """
    try:
        with torch.device("meta"):
            model = build_model(cfg.model, num_classes, channels)
    except Exception:  # a model that cannot be built on meta: build it for real, RNG untouched
        with torch.random.fork_rng(devices=[]):
            model = build_model(cfg.model, num_classes, channels)
    state = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    moments = 1 if cfg.train.optimizer == "sgd" else 2
    last = state + moments * params + (state if cfg.train.ema else 0)  # train.ema: last.pt holds the EMA too
    return int(1.1 * (state + 2 * last)) + DISK_MARGIN_BYTES


def _existing_dir(path: Path) -> Path:
    """``path`` or its nearest existing parent (``shutil.disk_usage`` needs an existing path)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_cache_writable(cache_dir: Path, token: int) -> None:
    """Create the decode cache folder and probe it with a one-byte file.

    Raises:
        RunError: the folder cannot be created or written; the message says what to set instead.
    """
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        probe = cache_dir / f".write_test.{token}"
        probe.write_bytes(b"0")
        probe.unlink()
    except OSError as e:
        raise RunError(
            f"cannot write the decode cache in {cache_dir} ({e}); set data.cache_dir to a writable folder "
            "(or MEDCLASS_CACHE_DIR), or data.cache=false to decode into memory"
        ) from e


def check_disk_space(cfg: RunConfig, files: RunFiles, index, resume: bool) -> None:
    """Fail before decoding or training when the disks cannot hold what the run will write: the
    checkpoints in the run folder (see :func:`checkpoint_bytes_needed`; on resume less the
    checkpoints already there, which are replaced) and the decode-cache entries of the train and
    validation splits of ``index`` (a :class:`medclass.data.DatasetIndex`) not cached yet
    (``N x C x H x W`` bytes each). The decode cache folder must also be writable. Needs on one
    file system are added up.

    Raises:
        RunError: a folder is not writable or has too little free space; the message names the
            folder, the free and needed MiB and what to do.
    """
    from ..data.dataset import cache_key

    ch, size = cfg.data.channels, cfg.data.image_size
    needed = checkpoint_bytes_needed(cfg, index.num_classes, ch)
    if resume:
        needed -= sum(p.stat().st_size for p in (files.best, files.last) if p.is_file())
    wants: list[tuple[Path, int, str]] = [(files.last.parent, max(needed, DISK_MARGIN_BYTES), "the checkpoints")]

    cache_dir = cache_dir_for(cfg.data)
    if cache_dir is not None:
        cache_dir = Path(cache_dir)
        _check_cache_writable(cache_dir, id(files))
        cache_bytes = 0
        for split in ("train", "valid"):
            samples = index.splits.get(split) or []
            if samples and not (cache_dir / f"{cache_key(samples, ch, size, cfg.data.dicom_window)}.npy").is_file():
                cache_bytes += len(samples) * ch * size * size + 64 * 1024
        if cache_bytes:
            wants.append((cache_dir, cache_bytes, "the decode cache"))

    by_device: dict[int, list[tuple[Path, int, str]]] = {}
    for folder, n, what in wants:
        by_device.setdefault(_existing_dir(folder).stat().st_dev, []).append((folder, n, what))
    for group in by_device.values():
        folder = group[0][0]
        free = shutil.disk_usage(_existing_dir(folder)).free
        total = sum(n for _, n, _ in group)
        if free < total:
            what = " and ".join(
                w if len(group) == 1 else f"{w} ({n / MiB:.0f} MiB{'' if f == folder else f' in {f}'})"
                for f, n, w in group
            )
            advice = ("free some space or choose a run folder on another disk (--runs-dir)"
                      if group[0][2] == "the checkpoints" else "free some space or set data.cache_dir")
            raise RunError(
                f"not enough free disk space in {folder}: {free / MiB:.0f} MiB free, "
                f"about {total / MiB:.0f} MiB needed for {what}; {advice}"
            )


# --------------------------------------------------------------------------- failures during training


def write_failed(e: OSError, path: Path, files: RunFiles, saved_epoch: int) -> RunError:
    """The error for a checkpoint or log file ``path`` that could not be written during training
    (``e``, e.g. ``errno.ENOSPC``): which file, why, the free MiB, and that the previous checkpoint
    (``last.pt`` of ``saved_epoch``; 0: none yet) is intact (atomic replace) and how to continue."""
    reason = "no space left on device" if e.errno in (errno.ENOSPC, errno.EDQUOT) else (e.strerror or str(e))
    try:
        free = f" ({shutil.disk_usage(_existing_dir(path.parent)).free / MiB:.0f} MiB free)"
    except OSError:
        free = ""
    if saved_epoch > 0:
        then = (f"the previous checkpoint {files.last} (epoch {saved_epoch}) is intact: free some space and "
                f"continue from it with --resume (medclass train --name {files.root.name} "
                f"--runs-dir {files.root.parent} --resume)")
    else:
        then = "no checkpoint was written yet: free some space and start the run again"
    return RunError(f"cannot write {path}: {reason}{free}; {then}")
