"""The training loop, readable top to bottom.

``train(cfg, run_dir)`` does, in order: fix the seed and device; index, split and decode the
data; build model, loss, optimizer and LR schedule; optionally resume from ``last.pt``; then for
each epoch train over shuffled batches (augmentation batched on the device), validate, step the
schedule, log (``metrics.csv``, TensorBoard, ``curves.png``), write ``best.pt``/``last.pt``
atomically and check early stopping. It returns the history and where things were written.

Faults: checkpoints are replaced atomically, so a killed process (``SIGKILL`` included) leaves the
previous ``last.pt`` whole; the run folder's writability and free disk space are checked before
any work, and a full disk during training is reported with the file and the resume point.

Resuming is exact at epoch boundaries: every epoch reseeds the global torch RNG and the
sampler's generator from ``(seed, epoch)``, so a resumed run makes the same draws as one that
was never interrupted.
"""

from __future__ import annotations

import csv
import errno
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from ..config import RunConfig
from ..runs import RunError, RunFiles
from ..data import (
    DecodedSplit, Preprocess, build_augmentation, build_index, cache_dir_for, decode_split, write_manifest,
)
from ..models import ChainedModel, build_model, count_parameters, weight_decay_param_groups
from ..models.pretrained import (
    IMAGENET_ALIASES,
    IMAGENET_CHECKPOINTS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    freeze_backbone,
    load_pretrained,
    resolve_source as resolve_pretrained_source,
    param_groups_with_lrs,
    unfreeze_all,
)
from .checkpoint import load_checkpoint, save_checkpoint, temp_name_pattern
from .distributed import (
    DistContext, ShardedSampler, all_gather_rows, all_reduce_sum, barrier, convert_sync_batchnorm, init_distributed,
)
from .early_stopping import EarlyStopping
from .inference import channels_last_wanted, predict_logits, select_device
from .schedules import LRSchedule

__all__ = ["train", "TrainResult", "RunFiles", "RunError"]

METRIC_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds")


@dataclass
class TrainResult:
    """What ``train`` returns: per-epoch ``history`` rows (the columns of ``metrics.csv``), the
    best epoch of the monitored metric, and the run's files."""

    files: RunFiles
    history: list[dict[str, float]]
    best_epoch: int
    best_value: float
    stopped_early: bool
    seconds: float
    skipped: list[tuple[str, str]] = field(default_factory=list)
    is_main: bool = True  # False on DDP ranks other than 0, which write nothing


# --------------------------------------------------------------------------- pieces of the loop


def make_loss(cfg: RunConfig, train_labels: Tensor, num_classes: int) -> nn.Module:
    """Softmax cross-entropy (optionally label-smoothed), or BCE-with-logits for a single logit.
    With ``data.class_balance=loss``, classes are weighted by ``N / (K * count)`` (scikit-learn's
    "balanced" heuristic; for BCE as ``pos_weight = negatives / positives``)."""
    counts = torch.bincount(train_labels, minlength=num_classes).float().clamp(min=1)
    balanced = cfg.data.class_balance == "loss"
    if cfg.model.single_logit:
        pos_weight = (counts[0] / counts[1]).reshape(1) if balanced else None
        return _BCEOneLogit(pos_weight, cfg.train.label_smoothing)
    weight = counts.sum() / (num_classes * counts) if balanced else None
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.train.label_smoothing)


class _BCEOneLogit(nn.Module):
    """BCE with logits for logits ``(N, 1)`` and integer targets ``(N,)`` in {0, 1}."""

    def __init__(self, pos_weight: Optional[Tensor], smoothing: float) -> None:
        super().__init__()
        self.register_buffer("pos_weight", pos_weight, persistent=False)
        self.smoothing = smoothing

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        t = target.float().unsqueeze(1)
        if self.smoothing:
            t = t * (1 - self.smoothing) + 0.5 * self.smoothing
        return F.binary_cross_entropy_with_logits(logits.float(), t, pos_weight=self.pos_weight)


def predicted_class(logits: Tensor) -> Tensor:
    """Class index ``(N,)`` from logits ``(N, K)`` or a single logit ``(N, 1)`` (threshold 0)."""
    return (logits[:, 0] > 0).long() if logits.shape[1] == 1 else logits.argmax(1)


FINETUNE_STRATEGIES = ("full", "feature_extraction", "two_phase")


def backbone_frozen(cfg: RunConfig, epoch: int) -> bool:
    """Whether the backbone trains in ``epoch`` (1-based): never with ``feature_extraction``,
    not in the first ``head_epochs`` with ``two_phase``, always with ``full``."""
    f = cfg.model.finetune
    if f not in FINETUNE_STRATEGIES:
        raise ValueError(f"unknown model.finetune {f!r}; choose one of {FINETUNE_STRATEGIES}")
    return f == "feature_extraction" or (f == "two_phase" and epoch <= cfg.model.head_epochs)


def make_optimizer(cfg: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD (Nesterov momentum) over decay / no-decay parameter groups; with
    ``model.backbone_lr_mult`` != 1 the backbone groups get ``lr * backbone_lr_mult``.
    Built over all parameters: a frozen backbone has no gradients, which the optimizers skip."""
    t = cfg.train
    if cfg.model.backbone_lr_mult != 1.0:
        groups = param_groups_with_lrs(model, t.lr, cfg.model.backbone_lr_mult, weight_decay=t.weight_decay)
    else:
        groups = weight_decay_param_groups(model, t.weight_decay)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=t.lr)
    if t.optimizer == "adam":  # L2 added to the gradient, as Keras' kernel_regularizer
        return torch.optim.Adam(groups, lr=t.lr)
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, nesterov=True)
    raise ValueError(f"unknown train.optimizer {t.optimizer!r}; choose adam, adamw or sgd")


def make_loader(
    cfg: RunConfig,
    split: DecodedSplit,
    generator: torch.Generator,
    ctx: DistContext = DistContext(),
    device: torch.device = torch.device("cpu"),
) -> DataLoader:
    """Shuffled batches of ``(uint8 images, labels)`` for this rank: ``train.batch_size`` is the
    global batch, each of ``world_size`` ranks loads ``batch_size / world_size`` (see
    :class:`ShardedSampler`); weighted sampling with ``data.class_balance=sampler`` (each class
    drawn equally often on average). ``train.num_workers`` -1 means 4 worker processes on CUDA
    (pinned memory) and 0 on CPU, where the model needs every core.

    Raises:
        ValueError: the global batch is not divisible by the number of ranks.
    """
    bs, world = cfg.train.batch_size, ctx.world_size
    if bs % world:
        raise ValueError(f"train.batch_size {bs} (the global batch) must be divisible by the {world} processes")
    ds = TensorDataset(split.images, split.labels)
    weights = None
    if cfg.data.class_balance == "sampler":
        counts = torch.bincount(split.labels).double()
        weights = (1.0 / counts)[split.labels]
    sampler = ShardedSampler(len(ds), generator, ctx.rank, world, weights)
    drop_last = len(ds) > bs  # a batch of 1 breaks batch norm
    workers = cfg.train.num_workers
    if workers < 0:
        workers = 4 if device.type == "cuda" else 0
    return DataLoader(
        ds, batch_size=bs // world, sampler=sampler, drop_last=drop_last,
        num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0,
    )


def write_metrics_csv(history: list[dict[str, float]], path: Path) -> None:
    """Write the history as ``metrics.csv`` (the columns of :data:`METRIC_COLUMNS`) through a
    temporary file and ``os.replace``; on an error the temporary file is removed."""
    tmp = path.with_suffix(".tmp")
    try:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
            w.writeheader()
            for row in history:
                w.writerow({k: row[k] for k in METRIC_COLUMNS})
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def plot_curves(history: list[dict[str, float]], path: Path) -> None:
    """Training and validation loss and accuracy per epoch (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("loss", "accuracy")):
        ax.plot(epochs, [r[key] for r in history], marker="o", label=f"train {key}")
        ax.plot(epochs, [r[f"val_{key}"] for r in history], marker="o", label=f"validation {key}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


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


MiB = 2**20
#: Free space kept on top of the checkpoint estimate (history, metrics, TensorBoard, curves).
DISK_MARGIN_BYTES = 16 * MiB


def checkpoint_bytes_needed(cfg: RunConfig, num_classes: int, channels: int) -> int:
    """Disk space the run's checkpoints take at their peak, estimated before any data is decoded.

    The model is built on the ``meta`` device (no memory, no random draws) to count its state:
    ``best.pt`` holds the weights and buffers (``S`` bytes), ``last.pt`` also the optimizer state
    (Adam/AdamW keep two moments per parameter, SGD one momentum buffer), and while ``last.pt`` is
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
    last = state + moments * params
    return int(1.1 * (state + 2 * last)) + DISK_MARGIN_BYTES


def _existing_dir(path: Path) -> Path:
    """``path`` or its nearest existing parent (``shutil.disk_usage`` needs an existing path)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk_space(cfg: RunConfig, files: RunFiles, index, resume: bool) -> None:
    """Fail before decoding or training when the disks cannot hold what the run will write: the
    checkpoints in the run folder (see :func:`checkpoint_bytes_needed`; on resume less the
    checkpoints already there, which are replaced) and the decode-cache entries of the train and
    validation splits not cached yet (``N x C x H x W`` bytes each). The decode cache folder must
    also be writable. Needs on one file system are added up.

    Raises:
        RunError: a folder is not writable or has too little free space; the message names the
            folder, the free and needed MiB and what to do.
    """
    from ..data.dataset import cache_key

    ch, size = cfg.data.channels, cfg.data.image_size
    ck_dir = files.last.parent
    needed = checkpoint_bytes_needed(cfg, index.num_classes, ch)
    if resume:
        needed -= sum(p.stat().st_size for p in (files.best, files.last) if p.is_file())
    wants: list[tuple[Path, int, str]] = [(ck_dir, max(needed, DISK_MARGIN_BYTES), "the checkpoints")]

    cache_dir = cache_dir_for(cfg.data)
    if cache_dir is not None:
        cache_dir = Path(cache_dir)
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            probe = cache_dir / f".write_test.{id(files)}"
            probe.write_bytes(b"0")
            probe.unlink()
        except OSError as e:
            raise RunError(
                f"cannot write the decode cache in {cache_dir} ({e}); set data.cache_dir to a writable folder "
                "(or MEDCLASS_CACHE_DIR), or data.cache=false to decode into memory"
            ) from e
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


def _write_failed(e: OSError, path: Path, files: RunFiles, saved_epoch: int) -> RunError:
    """The error for a checkpoint or log file that could not be written during training: which
    file, why, and that the previous checkpoint is intact (atomic replace) and how to continue."""
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


# --------------------------------------------------------------------------- the loop


def _decode(cfg: RunConfig, samples, split: str, ctx: DistContext) -> DecodedSplit:
    """Decode a split through the cache; in DDP rank 0 builds the cache entry while the others wait,
    then they map the same file."""
    cache_dir = cache_dir_for(cfg.data)
    args = (samples, cfg.data.channels, cfg.data.image_size, cfg.data.skip_corrupt, f"decode {split}")
    if cache_dir is None or not ctx.enabled:
        return decode_split(*args, progress=cfg.train.progress and ctx.is_main, cache_dir=cache_dir, dicom_window=cfg.data.dicom_window)
    out = decode_split(*args, progress=cfg.train.progress, cache_dir=cache_dir, dicom_window=cfg.data.dicom_window) if ctx.is_main else None
    barrier(ctx)
    return out if out is not None else decode_split(*args, progress=False, cache_dir=cache_dir, dicom_window=cfg.data.dicom_window)


def _check_leakage(cfg: RunConfig, index, files: RunFiles, main: bool):
    """Held-out images that duplicate an earlier split (exact, or near by perceptual hash): with
    ``data.dedupe`` they leave the index (listed in ``RUN/dedupe.json``), otherwise a warning."""
    from ..data.audit import dedupe

    if not (index.splits.get("valid") or index.splits.get("test")):
        return index
    deduped, removed = dedupe(index, near=True)
    if not removed:
        return index
    by_split = {s: sum(r["split"] == s for r in removed) for s in ("valid", "test")}
    if cfg.data.dedupe:
        if main:
            files.dedupe.write_text(json.dumps(removed, indent=1))
            print(f"dedupe: left out {by_split['valid']} valid and {by_split['test']} test images that duplicate "
                  f"an earlier split (listed in {files.dedupe})")
        return deduped
    if main:
        print(f"warning: {by_split['valid']} valid and {by_split['test']} test images duplicate (exactly or nearly) "
              "an image of an earlier split: held-out figures will be optimistic; run `medclass audit` to see them, "
              "or pass --dedupe (data.dedupe=true) to leave them out")
    return index


def _broadcast_buffers(model: nn.Module, ctx: DistContext) -> None:
    """Give every rank rank 0's batch-norm running statistics (DDP syncs them only before a
    training forward), so that validation shards are scored by the same model."""
    if ctx.enabled:
        for b in model.buffers():
            torch.distributed.broadcast(b, src=0)


def train(cfg: RunConfig, run_dir: Path, resume: bool = False) -> TrainResult:
    """Train the configured model on the configured data, writing everything to ``run_dir``.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) this is DistributedDataParallel training: every rank
    runs this function on its shard of each global batch, metrics are reduced across ranks and
    only rank 0 writes files (see :mod:`medclass.engine.distributed`).

    Before any image is decoded, the run folder is checked (:func:`prepare_run_dir`), temporary
    files of a killed save are removed (:func:`remove_stale_temp_files`) and the free disk space is
    compared with what the checkpoints and decode cache need (:func:`check_disk_space`). A process
    killed at any point (even ``SIGKILL`` mid-save) leaves whole checkpoints, and ``resume=True``
    continues from ``last.pt`` with the same metrics as an uninterrupted run.

    Raises:
        RunError: see :func:`prepare_run_dir` and :func:`check_disk_space`; also a checkpoint or
            ``metrics.csv`` that cannot be written during training (a full disk), naming the
            file and the intact checkpoint ``--resume`` continues from.
        medclass.data.DataError, medclass.data.ImageReadError: bad data (names the file).
    """
    t_start = time.time()
    files = RunFiles(Path(run_dir))
    tc = cfg.train
    ctx = init_distributed(tc.device)
    main = ctx.is_main
    log = print if main else (lambda *a, **k: None)
    if main:
        prepare_run_dir(files, resume)
    barrier(ctx)
    torch.manual_seed(tc.seed)
    device = ctx.device if ctx.enabled else select_device(tc.device)
    amp_dtype = torch.bfloat16 if device.type == "cuda" else None

    # ---- data: index and split (the saved manifest when resuming), decode once (cached)
    if resume:
        cfg.data.manifest = str(files.manifest)
    pretrained = cfg.model.pretrained
    if pretrained and pretrained.lower() in {*IMAGENET_CHECKPOINTS, *IMAGENET_ALIASES} and not cfg.data.normalize:
        # ImageNet weights expect ImageNet normalisation (torchvision's constants)
        cfg.data.normalize, cfg.data.mean, cfg.data.std = True, list(IMAGENET_MEAN), list(IMAGENET_STD)
    index = build_index(cfg.data)
    if main:
        removed = remove_stale_temp_files(files)
        if removed:
            log(f"removed {len(removed)} temporary files left by an interrupted save: {', '.join(p.name for p in removed)}")
        check_disk_space(cfg, files, index, resume)
    if not resume:
        index = _check_leakage(cfg, index, files, main)
        cfg.data.manifest = None  # the manifest is part of the run; the config keeps the source
        if main:
            write_manifest(index, files.manifest)
            cfg.save(files.config)
            files.classes.write_text(json.dumps(index.class_names, indent=1))
    size, ch = cfg.data.image_size, cfg.data.channels
    train_split = _decode(cfg, index.splits["train"], "train", ctx)
    val_split = _decode(cfg, index.splits["valid"], "valid", ctx)
    skipped = train_split.skipped + val_split.skipped
    if len(train_split) == 0 or len(val_split) == 0:
        raise RunError(f"no training or validation images left (train {len(train_split)}, valid {len(val_split)})")
    if train_split.cache_path is not None:
        log(f"decoded images: {'cached' if train_split.cache_hit else 'cache written'} in {train_split.cache_path.parent}")
    preprocess = Preprocess.from_config(cfg.data).to(device)
    augment = build_augmentation(cfg.data)

    # ---- model, loss, optimizer, schedule
    model = build_model(cfg.model, index.num_classes, ch)
    if pretrained and not resume:  # a resumed run takes its weights from last.pt
        if isinstance(model, ChainedModel):
            n = model.load_resnet_state_dict(resolve_pretrained_source(pretrained, download=True)[0])
            log(f"pretrained: {n} tensors of the ResNet part from {pretrained}")
        else:
            source_classes = Path(pretrained) / "classes.json"
            other_task = source_classes.is_file() and json.loads(source_classes.read_text()) != index.class_names
            # a run of another task: its classifier means other classes, even with the same count
            report = load_pretrained(model, pretrained, index.num_classes, reset_head=other_task)
            log(f"pretrained: {report['loaded_keys']} tensors from {report['source']}"
                + ("; classifier head re-initialised" if report["head_reinitialised"] else ""))
    if ctx.enabled and tc.sync_bn:
        model = convert_sync_batchnorm(model, device)
    model = model.to(device)
    channels_last = channels_last_wanted(device, size)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    net: nn.Module = torch.compile(model) if tc.compile else model  # what runs forward
    if ctx.enabled:
        freezing = cfg.model.finetune != "full" or (isinstance(model, ChainedModel) and cfg.model.chain_freeze_resnet)
        net = DistributedDataParallel(
            net, device_ids=[device] if device.type == "cuda" else None, find_unused_parameters=freezing
        )
    criterion = make_loss(cfg, train_split.labels, index.num_classes).to(device)
    optimizer = make_optimizer(cfg, model)
    generator = torch.Generator()
    loader = make_loader(cfg, train_split, generator, ctx, device)
    steps_per_epoch = len(loader) if tc.max_steps_per_epoch is None else min(len(loader), tc.max_steps_per_epoch)
    schedule = LRSchedule(tc, optimizer, steps_per_epoch)
    tracker = EarlyStopping(tc.monitor, tc.patience if tc.early_stopping else None, tc.min_delta)
    history: list[dict[str, float]] = []
    start_epoch = 1
    saved_epoch = 0  # the epoch last.pt holds
    val_shard = torch.arange(ctx.rank, len(val_split), ctx.world_size)
    val_images = val_split.images[val_shard] if ctx.enabled else val_split.images

    # ---- resume
    if resume:
        state = load_checkpoint(files.last, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        tracker.load_state_dict(state["tracker"])
        history = list(state["history"])
        start_epoch = int(state["epoch"]) + 1
        saved_epoch = start_epoch - 1
        del state

    writer = None
    if main:
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(files.tensorboard))
        except ImportError:  # tensorboard is a dependency; tolerate its absence in trimmed installs
            pass
    log(
        f"medclass: {cfg.model.arch} ({count_parameters(model):,} parameters) on {device}"
        + (f" x {ctx.world_size} processes (DDP, global batch {tc.batch_size})" if ctx.enabled else "")
        + f"; {index.num_classes} classes; train {len(train_split)}, valid {len(val_split)} images at {size} px"
    )
    stopped_early = tracker.should_stop
    for epoch in range(start_epoch, tc.epochs + 1):
        if stopped_early:
            break
        t0 = time.time()
        # -- train one epoch (the sampler's seed is the same on every rank, augmentation's is not)
        torch.manual_seed(tc.seed * 100_003 + epoch + 7_919 * ctx.rank)
        generator.manual_seed(tc.seed * 100_003 + epoch)
        model.train()
        if backbone_frozen(cfg, epoch):  # feature extraction: backbone weights and BN statistics fixed
            freeze_backbone(model)
        else:
            unfreeze_all(model)
        if isinstance(model, ChainedModel) and cfg.model.chain_freeze_resnet:
            model.freeze_resnet()
        sum_loss, n_correct, n_seen = 0.0, 0, 0
        bar = tqdm(loader, total=steps_per_epoch, desc=f"epoch {epoch}/{tc.epochs}",
                   disable=not (tc.progress and main), leave=False)
        for step, (images, labels) in enumerate(bar):
            if step >= steps_per_epoch:
                break
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            x = preprocess.to_unit(images)
            if augment is not None:
                x = augment(x)
            x = preprocess.normalize_(x)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                logits = net(x)
                loss = criterion(logits.float(), labels)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch} step {step}; lower train.lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # DDP averages the gradients over ranks here
            optimizer.step()
            schedule.step_batch()
            sum_loss += loss.item() * len(labels)
            n_correct += (predicted_class(logits.detach()) == labels).sum().item()
            n_seen += len(labels)
            bar.set_postfix(loss=f"{sum_loss / n_seen:.4f}", acc=f"{n_correct / n_seen:.3f}", lr=f"{schedule.lr:.2e}")
        bar.close()
        sum_loss, n_correct, n_seen = all_reduce_sum([sum_loss, n_correct, n_seen], ctx, device)

        # -- validate: each rank scores its shard, the logits are gathered on every rank
        _broadcast_buffers(model, ctx)
        local_logits = predict_logits(model, val_images, preprocess, device, 2 * tc.batch_size, amp_dtype)
        val_logits = all_gather_rows(local_logits.to(device), val_shard, len(val_split), ctx).cpu()
        val_loss = criterion(val_logits.to(device), val_split.labels.to(device)).item()
        val_acc = (predicted_class(val_logits) == val_split.labels).float().mean().item()
        row = {
            "epoch": epoch,
            "loss": sum_loss / max(1, n_seen),
            "accuracy": n_correct / max(1, n_seen),
            "val_loss": val_loss,
            "val_accuracy": val_acc,
            "lr": schedule.lr,
            "seconds": time.time() - t0,
        }
        history.append(row)
        schedule.step_epoch(row[tc.monitor])

        # -- checkpoint (best first, then last: last.pt is the resume point) and log; rank 0 only
        improved = tracker.update(row[tc.monitor], epoch)
        if main:
            writing = files.best
            try:
                if improved:
                    save_checkpoint(
                        {"model": model.state_dict(), "epoch": epoch, "monitor": tc.monitor, "value": row[tc.monitor],
                         "class_names": index.class_names, "config": cfg.to_dict()},
                        files.best,
                    )
                writing = files.last
                save_checkpoint(
                    {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "schedule": schedule.state_dict(), "tracker": tracker.state_dict(), "history": history,
                     "epoch": epoch, "class_names": index.class_names, "config": cfg.to_dict()},
                    files.last,
                )
                saved_epoch = epoch
                writing = files.metrics_csv
                write_metrics_csv(history, files.metrics_csv)
            except OSError as e:  # a full disk: say which file, and that --resume continues
                if writer is not None:
                    writer.close()
                raise _write_failed(e, writing, files, saved_epoch) from e
            if writer is not None:
                for k in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
                    writer.add_scalar(k, row[k], epoch)
                writer.flush()
        log(
            f"epoch {epoch:3d}/{tc.epochs}  loss {row['loss']:.4f}  acc {row['accuracy']:.4f}  "
            f"val_loss {val_loss:.4f}  val_acc {val_acc:.4f}  lr {row['lr']:.2e}  {row['seconds']:.1f}s"
            + ("  *" if tracker.best_epoch == epoch else ""),
            flush=True,
        )
        stopped_early = tracker.should_stop
        if stopped_early:
            log(f"early stopping: no improvement of {tc.monitor} for {tc.patience} epochs")

    seconds = time.time() - t_start
    if main:
        if writer is not None:
            writer.close()
        if history:
            plot_curves(history, files.curves)
        summary: dict[str, Any] = {
            "best_epoch": tracker.best_epoch, "monitor": tc.monitor, "best_value": tracker.best,
            "epochs_run": len(history), "stopped_early": stopped_early,
            "train_seconds": sum(r["seconds"] for r in history),  # all epochs, across resumes
            "wall_seconds_this_invocation": seconds,
            "train_images": len(train_split), "valid_images": len(val_split), "device": str(device),
            "world_size": ctx.world_size, "global_batch": tc.batch_size,
            "skipped_files": [{"path": p, "reason": r} for p, r in skipped],
        }
        files.summary.write_text(json.dumps(summary, indent=1))
        if skipped:
            print(f"skipped {len(skipped)} unreadable files (listed in {files.summary})")
    if ctx.enabled:
        barrier(ctx)
        torch.distributed.destroy_process_group()
    return TrainResult(files, history, tracker.best_epoch, tracker.best, stopped_early, seconds, skipped, main)
