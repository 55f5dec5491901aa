"""The training loop, readable top to bottom.

``train(cfg, run_dir)`` does, in order: fix the seed and device; index, split and decode the
data; build model, loss, optimizer and LR schedule; optionally resume from ``last.pt``; then for
each epoch train over shuffled batches (augmentation batched on the device), validate, step the
schedule, log (``metrics.csv``, TensorBoard, ``curves.png``; MLflow when on, :mod:`medclass.engine.tracking`),
write ``best.pt``/``last.pt`` atomically and check early stopping. It returns the history and where things were written.

The loop itself stays in :func:`train`; its pieces are small functions above it
(:func:`train_one_epoch`, :func:`validate`, :func:`save_epoch`, :func:`write_summary`, ...). The
run folder's naming, resume rules and pre-checks are in :mod:`medclass.engine.run_folder`.

Faults: checkpoints are replaced atomically, so a killed process (``SIGKILL`` included) leaves the
previous ``last.pt`` whole; the run folder's writability and free disk space are checked before
any work, and a full disk during training is reported with the file and the resume point.

Resuming is exact at epoch boundaries: every epoch reseeds the global torch RNG and the
sampler's generator from ``(seed, epoch)``, so a resumed run makes the same draws as one that
was never interrupted.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import shutil
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..core.config import (
    DEFAULT_IMAGE_SIZE, ConfigError, RunConfig, check_budget_config, check_recipe, fixed_image_size, parse_duration,
    resolve_auto_model,
)
from .tracking import check_tracking, open_tracker
from ..core.fileio import atomic_write, atomic_write_text
from ..core.runs import RunError, RunFiles
from ..data import (
    DataError, DecodedSplit, Preprocess, build_augmentation, build_index, cache_dir_for, native_side,
    small_validation_note, write_manifest,
)
from ..data.transforms import progressive_size
from ..models import count_parameters
from ..core.positive_class import choose_positive_class
from ..core.progress import BAR_REFRESH_STEPS, TrainProgress, is_terminal
from ..core.spec import read_spec, recorded_config, spec_from_config, write_spec
from .checkpoint import load_checkpoint, save_checkpoint
from .distributed import (
    DistContext, all_gather_rows, all_reduce_sum, barrier, init_distributed,
)
from .early_stopping import EarlyStopping
from .fit import (
    Fit, balanced_accuracy, decode_samples, make_loader, make_loss, make_optimizer, make_recipe,
    predicted_class, pretrained_record, set_epoch_trainable, setup_model, train_step,
)
from .inference import channels_last_wanted, predict_logits, select_device
from .run_folder import check_disk_space, prepare_run_dir, remove_stale_temp_files, write_failed
from .intensity import resolve_intensity
from .budget import (
    MAX_WARMUP_FRACTION, Budget, RunClock, auto_candidates, choose_resolution, estimate_save_seconds,
    format_duration, measure_affordable_speeds, measure_throughput, plan_message, preserved_state,
)
from .schedules import LRSchedule

__all__ = ["train", "TrainResult", "train_one_epoch", "validate", "save_epoch", "write_summary"]

METRIC_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "val_balanced_accuracy", "lr", "seconds")


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


def _linear_probe_epoch(fit: "Fit", cfg: RunConfig, train_split: DecodedSplit, val_split: DecodedSplit,
                        num_classes: int, log) -> dict[str, float]:
    """``model.finetune: linear_probe``: the frozen backbone's pooled features of both splits, a
    logistic regression per ``C`` (:func:`medclass.engine.linear_probe.fit_linear_probe`, ``C`` chosen
    on validation by ``train.monitor``) copied into the model's head; then the ordinary validation
    pass. Returns the epoch's row (``loss``/``accuracy`` on the training features; ``lr`` is the chosen ``C``).

    Raises:
        ConfigError: a head that is not a single linear layer, or a split with one class.
    """
    from .linear_probe import fit_linear_probe, pooled_features, set_linear_head

    batch = 2 * cfg.train.batch_size
    log(f"linear probe: pooled features of {len(train_split)} training and {len(val_split)} validation images")
    train_x = pooled_features(fit.model, train_split.images, fit.preprocess, fit.device, batch)
    val_x = pooled_features(fit.model, val_split.images, fit.preprocess, fit.device, batch)
    train_y, val_y = train_split.labels.numpy(), val_split.labels.numpy()
    monitor = cfg.train.monitor if cfg.train.monitor.startswith("val_") else "val_accuracy"
    try:
        probe = fit_linear_probe(train_x, train_y, val_x, val_y, num_classes, monitor, log)
        set_linear_head(fit.model, probe)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    log(f"linear probe: C {probe.c:g} chosen on the validation split ({monitor})")
    logits = torch.from_numpy(train_x @ probe.weight.T + probe.bias)
    if logits.shape[1] != (1 if cfg.model.single_logit else num_classes):  # single logit: as the head computes
        logits = logits[:, 1:] - logits[:, :1]
    loss = float(fit.criterion(logits.to(fit.device), train_split.labels.to(fit.device)).item())
    acc = float((predicted_class(logits) == train_split.labels).float().mean())
    val_shard = torch.arange(len(val_split))
    val_loss, val_acc, val_bal = validate(fit, val_split.images, val_shard, val_split.labels, DistContext(),
                                          batch)
    return {"epoch": 1, "loss": loss, "accuracy": acc, "val_loss": val_loss, "val_accuracy": val_acc,
            "val_balanced_accuracy": val_bal, "lr": probe.c, "seconds": 0.0}


def write_metrics_csv(history: list[dict[str, float]], path: Path) -> None:
    """Write the history as ``metrics.csv`` (the columns of :data:`METRIC_COLUMNS`) atomically
    (:func:`medclass.core.fileio.atomic_write`)."""
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
            w.writeheader()
            for row in history:
                w.writerow({k: row.get(k, "") for k in METRIC_COLUMNS})  # rows of older runs lack a column

    atomic_write(path, write)


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


# --------------------------------------------------------------------------- the loop


def _decode_splits(cfg: RunConfig, index, ctx: DistContext, log) -> tuple[DecodedSplit, DecodedSplit]:
    """The train and validation splits of ``index`` decoded (uint8 ``(N, C, H, W)`` images, int64
    labels ``(N,)``), through the decode cache when it is on. With the cache on, the test split is
    decoded into it too, before any epoch: an unreadable test image stops the run now rather than the
    evaluation after training, and that evaluation reads the cache instead of decoding again.

    Raises:
        RunError: no readable image left in one of them.
        ImageReadError: an unreadable image in any split (unless ``data.skip_corrupt``).
    """
    train_split = decode_samples(cfg, index.splits["train"], "train", ctx)
    val_split = decode_samples(cfg, index.splits["valid"], "valid", ctx)
    if len(train_split) == 0 or len(val_split) == 0:
        raise RunError(f"no training or validation images left (train {len(train_split)}, valid {len(val_split)})")
    if index.splits.get("test") and cache_dir_for(cfg.data) is not None:
        decode_samples(cfg, index.splits["test"], "test", ctx)  # kept in the cache only, for the evaluation
    if train_split.cache_path is not None:
        log(f"decoded images: {'cached' if train_split.cache_hit else 'cache written'} in {train_split.cache_path.parent}")
    return train_split, val_split


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
            atomic_write_text(files.dedupe, json.dumps(removed, indent=1))
            print(f"dedupe: left out {by_split['valid']} valid and {by_split['test']} test images that duplicate "
                  f"an earlier split (listed in {files.dedupe})")
        return deduped
    if main:
        print(f"warning: {by_split['valid']} valid and {by_split['test']} test images duplicate (exactly or nearly) "
              "an image of an earlier split: held-out figures will be optimistic; run `medclass audit` to see them, "
              "or pass --dedupe (data.dedupe=true) to leave them out")
    return index


def _record_run(cfg: RunConfig, index, spec, files: RunFiles, resume: bool) -> None:
    """Rank 0 writes what a new run is, before its first epoch: ``manifest.csv`` (the split),
    ``config.yaml``, ``classes.json`` and ``model_spec.json``. A resumed run keeps its files; one
    from before ``model_spec.json`` gets one."""
    if not resume:
        write_manifest(index, files.manifest)
        recorded_config(cfg, spec).save(files.config)  # with the normalisation trained with (ImageNet's...)
        atomic_write_text(files.classes, json.dumps(index.class_names, indent=1))
        write_spec(spec, files.root)  # before the first epoch: every later stage reads it
    elif not files.spec.is_file():  # a run from before model_spec.json: give it one
        write_spec(spec, files.root)


def _restore(path: Path, fit: Fit, tracker: EarlyStopping) -> tuple[list[dict[str, float]], int]:
    """Load ``last.pt`` into the model, optimizer, LR schedule, early-stopping tracker and (with
    ``train.ema``) the EMA of the weights; returns the history so far and the epoch the checkpoint holds.

    Raises:
        medclass.engine.CheckpointError: ``path`` is missing or cannot be read.
    """
    state = load_checkpoint(path, map_location=fit.device)
    fit.model.load_state_dict(state["model"])
    fit.optimizer.load_state_dict(state["optimizer"])
    fit.schedule.load_state_dict(state["schedule"])
    tracker.load_state_dict(state["tracker"])
    if fit.ema is not None:
        if "ema" in state:
            fit.ema.load_state_dict(state["ema"])
        else:  # a checkpoint written without train.ema: the average starts from the weights restored
            fit.ema.set(fit.model)
    return list(state["history"]), int(state["epoch"])


def train_one_epoch(fit: Fit, cfg: RunConfig, epoch: int, loader: DataLoader, generator: torch.Generator,
                    steps: int, ctx: DistContext, progress: bool, desc: Optional[str] = None,
                    report: Optional[TrainProgress] = None,
                    on_step: Optional[Callable[[int], None]] = None) -> tuple[float, float]:
    """One epoch of ``steps`` optimisation steps (:func:`medclass.engine.fit.train_step`) over
    ``loader``'s batches: reseed the global RNG (augmentation, dropout; differs per rank) and the
    sampler's ``generator`` (same on every rank) from ``(train.seed, epoch)``, set which parts train
    (:func:`~medclass.engine.fit.set_epoch_trainable`), then per batch one step and the per-batch LR
    schedule step. ``desc``: the progress bar's description (default ``epoch E/N``; :func:`train` adds
    the run's ETA). ``report``: told of the steps (:class:`medclass.core.progress.TrainProgress`): it
    adds images/s and the run's ETA to the bar, or prints a line every ``train.log_interval`` seconds in
    a log. ``on_step``: called on every rank with the number of steps taken after each optimisation step
    (and its LR schedule step): a time budget re-plans there (:func:`_replan_during_epoch`).

    The loss and accuracy are summed on the device and read back only when ``report`` is due
    (:meth:`~medclass.core.progress.TrainProgress.due`) and at the end of the epoch, not every step.
    With ``train.progressive_resize`` the batch is resized to the epoch's side
    (:func:`medclass.data.transforms.progressive_size`).

    Returns the mean training loss and accuracy of the epoch over all ranks.

    Raises:
        FloatingPointError: a loss that is not finite (names the epoch and the step it was read at).
    """
    tc = cfg.train
    torch.manual_seed(tc.seed * 100_003 + epoch + 7_919 * ctx.rank)
    generator.manual_seed(tc.seed * 100_003 + epoch)
    set_epoch_trainable(fit, cfg, epoch)
    side = (progressive_size(epoch, tc.epochs, cfg.data.image_size, tc.progressive_resize)
            if tc.progressive_resize is not None else None)
    sum_loss = torch.zeros((), device=fit.device)  # summed on the device: read back when reported
    n_correct = torch.zeros((), dtype=torch.long, device=fit.device)
    n_seen = 0
    bar = tqdm(loader, total=steps, desc=desc or f"epoch {epoch}/{tc.epochs}", disable=not progress, leave=False)
    for step, (images, labels) in enumerate(bar):
        if step >= steps:
            break
        out = train_step(fit, images, labels, clip_grad_norm=tc.clip_grad_norm, side=side)
        fit.schedule.step_batch()
        if on_step is not None:
            on_step(step + 1)
        sum_loss += out.loss * len(labels)
        n_correct += (predicted_class(out.logits) == out.counted).sum()
        n_seen += len(labels)
        due = report.due(step + 1) if report is not None else progress and (step + 1) % BAR_REFRESH_STEPS == 0
        if step + 1 == steps or due:
            mean_loss = sum_loss.item() / n_seen  # the one read of the loss per logging interval
            if not math.isfinite(mean_loss):
                raise FloatingPointError(f"loss is {mean_loss} at epoch {epoch} (read at step {step}); lower train.lr")
            accuracy = n_correct.item() / n_seen
            extra = report.step(step + 1, n_seen, mean_loss, accuracy) if report is not None else None
            if progress:
                bar.set_postfix(loss=f"{mean_loss:.4f}", acc=f"{accuracy:.3f}", lr=f"{fit.schedule.lr:.2e}",
                                **(extra or {}))
    bar.close()
    total_loss, total_correct, total_seen = all_reduce_sum([sum_loss.item(), n_correct.item(), n_seen], ctx, fit.device)
    if not math.isfinite(total_loss):
        raise FloatingPointError(f"loss is {total_loss / max(1, total_seen)} at epoch {epoch}; lower train.lr")
    return total_loss / max(1, total_seen), total_correct / max(1, total_seen)


def _broadcast_buffers(model: nn.Module, ctx: DistContext) -> None:
    """Give every rank rank 0's batch-norm running statistics (DDP syncs them only before a
    training forward), so that validation shards are scored by the same model."""
    if ctx.enabled:
        for b in model.buffers():
            torch.distributed.broadcast(b, src=0)


def validate(fit: Fit, images: Tensor, shard: Tensor, labels: Tensor, ctx: DistContext,
             batch_size: int) -> tuple[float, float, float]:
    """Loss, accuracy and balanced accuracy of ``fit.model`` (of its EMA ``fit.ema`` with
    ``train.ema``) on the validation split, at the full image size: each rank scores its ``shard``
    (row indices ``(n,)`` of the split; ``images`` uint8 ``(n, C, H, W)`` are those rows), the
    logits are gathered on every rank in the split's order and scored against ``labels`` ``(N,)``.
    Returns ``(val_loss, val_accuracy, val_balanced_accuracy)``."""
    _broadcast_buffers(fit.model, ctx)
    scored = fit.model
    if fit.ema is not None:
        _broadcast_buffers(fit.ema.module, ctx)  # each rank averaged its own batch-norm statistics
        scored = fit.ema.module
    local_logits = predict_logits(scored, images, fit.preprocess, fit.device, batch_size, fit.amp_dtype)
    logits = all_gather_rows(local_logits.to(fit.device), shard, len(labels), ctx).cpu()
    val_loss = fit.criterion(logits.to(fit.device), labels.to(fit.device)).item()
    predicted = predicted_class(logits)
    return val_loss, (predicted == labels).float().mean().item(), balanced_accuracy(predicted, labels)


def save_epoch(files: RunFiles, fit: Fit, tracker: EarlyStopping, history: list[dict[str, float]],
               improved: bool, cfg: RunConfig, class_names: list[str], saved_epoch: int) -> int:
    """Write the epoch just ended (the last row of ``history``): ``best.pt`` when the monitored
    metric ``improved``, then ``last.pt`` (the resume point: model, optimizer, schedule, tracker,
    history), then ``metrics.csv``; each replaced atomically. Returns the epoch ``last.pt`` holds.
    With ``train.ema`` ``best.pt``'s ``model`` is the EMA's weights (the ones validated, so
    evaluate, export and serve use them unchanged; ``"weights": "ema"``), and ``last.pt`` holds the
    raw weights under ``model`` and the EMA's state under ``ema``.

    Raises:
        RunError: a file could not be written (a full disk); the message names it and the intact
            checkpoint of ``saved_epoch`` that ``--resume`` continues from.
    """
    row, monitor = history[-1], cfg.train.monitor
    epoch = row["epoch"]
    writing = files.best
    try:
        if improved:
            best = {"model": (fit.model if fit.ema is None else fit.ema.module).state_dict(), "epoch": epoch,
                    "monitor": monitor, "value": row[monitor], "class_names": class_names, "config": cfg.to_dict()}
            if fit.ema is not None:
                best["weights"] = "ema"
            save_checkpoint(best, files.best)
        writing = files.last
        save_checkpoint(_last_state(fit, tracker, history, cfg, class_names), files.last)
        saved_epoch = epoch
        writing = files.metrics_csv
        write_metrics_csv(history, files.metrics_csv)
    except OSError as e:  # a full disk: say which file, and that --resume continues
        raise write_failed(e, writing, files, saved_epoch) from e
    return saved_epoch


def _last_state(fit: Fit, tracker: EarlyStopping, history: list[dict[str, float]], cfg: RunConfig,
                class_names: list[str]) -> dict[str, Any]:
    """What ``last.pt`` holds after the last row of ``history``: model, optimizer, LR schedule,
    early-stopping tracker, history, epoch, class names, config (and the EMA's state)."""
    last = {"model": fit.model.state_dict(), "optimizer": fit.optimizer.state_dict(),
            "schedule": fit.schedule.state_dict(), "tracker": tracker.state_dict(), "history": history,
            "epoch": history[-1]["epoch"], "class_names": class_names, "config": cfg.to_dict()}
    if fit.ema is not None:
        last["ema"] = fit.ema.state_dict()
    return last


@contextmanager
def _tensorboard(files: Optional[RunFiles]) -> Iterator[Any]:
    """A TensorBoard ``SummaryWriter`` on ``RUN/tensorboard``, closed on leaving the block; ``None``
    without ``files`` (DDP ranks other than 0) or without the tensorboard package."""
    writer = None
    if files is not None:
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(files.tensorboard))
        except ImportError:  # tensorboard is a dependency; tolerate its absence in trimmed installs
            pass
    try:
        yield writer
    finally:
        if writer is not None:
            writer.close()


def _log_scalars(writer, row: dict[str, float]) -> None:
    """The epoch's row (``loss``, ``accuracy``, ``val_loss``, ``val_accuracy``,
    ``val_balanced_accuracy``, ``lr``) to TensorBoard."""
    if writer is not None:
        for k in ("loss", "accuracy", "val_loss", "val_accuracy", "val_balanced_accuracy", "lr"):
            writer.add_scalar(k, row[k], row["epoch"])
        writer.flush()


def write_summary(files: RunFiles, history: list[dict[str, float]], tracker: EarlyStopping, stopped_early: bool,
                  seconds: float, splits: tuple[DecodedSplit, DecodedSplit], device: torch.device,
                  ctx: DistContext, cfg: RunConfig, budget: Optional[dict[str, Any]] = None,
                  intensity_reason: str = "") -> None:
    """After the last epoch (rank 0): ``curves.png`` and ``train_summary.json`` (best epoch,
    epochs run, training seconds across resumes, wall seconds of this invocation, image counts,
    device, world size, global batch, the skipped unreadable files, the intensity rule used and,
    when ``data.intensity: auto`` chose it in this invocation, why (``intensity_reason``); with a
    time budget its plan and actual time, :meth:`medclass.engine.budget.Budget.summary`, under
    ``budget``)."""
    if history:
        plot_curves(history, files.curves)
    skipped = splits[0].skipped + splits[1].skipped
    summary: dict[str, Any] = {
        "best_epoch": tracker.best_epoch, "monitor": cfg.train.monitor, "best_value": tracker.best,
        "epochs_run": len(history), "stopped_early": stopped_early,
        "train_seconds": sum(r["seconds"] for r in history),  # all epochs, across resumes
        "wall_seconds_this_invocation": seconds,
        "train_images": len(splits[0]), "valid_images": len(splits[1]), "device": str(device),
        "world_size": ctx.world_size, "global_batch": cfg.train.batch_size,
        "skipped_files": [{"path": p, "reason": r} for p, r in skipped],
        "intensity": cfg.data.intensity,
    }
    if intensity_reason:
        summary["intensity_reason"] = intensity_reason
    if budget is not None:
        summary["budget"] = budget
    resumes = _read_resumes(files)
    if resumes:
        summary["planned_epochs"] = cfg.train.epochs
        summary["epochs_replanned"] = resumes
    _write_json_atomic(files.summary, summary)
    if skipped:
        print(f"skipped {len(skipped)} unreadable files (listed in {files.summary})")


def _read_resumes(files: RunFiles) -> list[dict[str, Any]]:
    """The changes of plan made when the run was resumed (``RUN/resumes.json``), oldest first."""
    path = files.resumes
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return record if isinstance(record, list) else []


def _record_resume_settings(cfg: RunConfig, files: RunFiles, log) -> list[str]:
    """A resumed run given another ``train.epochs`` or ``train.time_budget`` than its ``config.yaml``
    holds: write the new values there (atomically; only with ``log``, rank 0), so that the folder
    says what the run now is and a later ``--resume`` keeps them; say what changed. Returns the
    keys changed (``"epochs"``, ``"time_budget"``)."""
    saved = RunConfig.load(files.config)
    changes, keys = [], []
    for key in ("epochs", "time_budget"):
        old, new = getattr(saved.train, key), getattr(cfg.train, key)
        if old != new and not (key == "epochs" and cfg.train.time_budget is not None):
            setattr(saved.train, key, new)
            changes.append(f"train.{key} {old} -> {new}")
            keys.append(key)
    if changes and log is not None:
        saved.save(files.config)  # atomic (RunConfig.save)
        log(f"resume: {', '.join(changes)} (recorded in {files.config})")
    return keys


def _replan_resumed(fit: "Fit", tracker: EarlyStopping, tc, saved_epoch: int, steps_per_epoch: int,
                    files: RunFiles, main: bool, log) -> None:
    """A resumed run without a time budget whose ``tc.epochs`` differs from the plan its restored
    LR schedule holds: re-plan the schedule for the new total (:meth:`LRSchedule.replan`) and
    append the change to ``RUN/resumes.json``.

    Raises:
        RunError: fewer epochs than the run has already trained.
    """
    planned = max(1, round(fit.schedule.total_steps / steps_per_epoch))
    if tc.epochs == planned:
        return
    if tc.epochs < saved_epoch:
        raise RunError(f"--epochs {tc.epochs}: the run has already trained {saved_epoch} epochs "
                       f"({files.last}); give --epochs {saved_epoch} or more")
    fit.schedule.replan(tc.epochs * steps_per_epoch)
    log(f"resume: {planned} -> {tc.epochs} epochs after epoch {saved_epoch}; the {fit.schedule.kind} LR schedule "
        f"re-planned for {tc.epochs} epochs (LR now {fit.schedule.lr:.2e})")
    if tracker.should_stop:
        log(f"early stopping ended this run at epoch {saved_epoch}: no more epochs run "
            "(turn train.early_stopping off in config.yaml to continue it)")
    if main:
        record = _read_resumes(files) + [{"after_epoch": saved_epoch, "from_epochs": planned, "to_epochs": tc.epochs,
                                          "lr": fit.schedule.lr, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}]
        _write_json_atomic(files.resumes, record)


def _quiet(*args, **kwargs) -> None:
    """The ``log`` of DDP ranks other than 0: they print nothing."""


# --------------------------------------------------------------------------- the time budget (engine/budget.py)


def _agree(value: int, ctx: DistContext, device: torch.device) -> int:
    """Rank 0's ``value`` on every rank (plans are timed per rank; all ranks must run the same epochs)."""
    if not ctx.enabled:
        return value
    return int(round(all_reduce_sum([float(value) if ctx.is_main else 0.0], ctx, device)[0]))


def _choose_image_size(cfg: RunConfig, index, budget: Budget, device: torch.device, ctx: DistContext, log) -> None:
    """``data.image_size: auto``: measure the candidates' training speed on a sample of the real
    training images and set ``cfg.data.image_size`` (an int) and ``cfg.model.stem`` to the choice
    of :func:`medclass.engine.budget.choose_resolution`; the choice and its reason go to
    ``budget.resolution``."""
    samples = index.splits["train"]
    per_rank = max(1, cfg.train.batch_size // ctx.world_size)
    native = native_side(samples, cfg.data.channels, dicom_window=cfg.data.dicom_window)
    candidates, min_epochs = auto_candidates(native, pretrained=bool(cfg.model.pretrained))
    n_val = len(index.splits.get("valid") or [])
    log(f"image size auto: measuring the training speed of {len(candidates)} size/stem candidates on the real images")
    speeds = measure_affordable_speeds(cfg, samples, index.num_classes, device, budget.available(), candidates,
                                       n_val_images=n_val, min_epochs=min_epochs, batch_size=per_rank,
                                       speed_scale=ctx.world_size)
    choice = choose_resolution(budget.available(), len(samples), speeds, n_val_images=n_val, min_epochs=min_epochs,
                               candidates=candidates)
    order = [(r["image_size"], r["stem"]) for r in choice.candidates]
    picked = order[_agree(order.index((choice.image_size, choice.stem)), ctx, device)]
    cfg.data.image_size, cfg.model.stem = picked
    budget.resolution = {"image_size": picked[0], "stem": picked[1], "reason": choice.reason,
                         "native_side": native, "candidates": choice.candidates}
    log(f"image size auto: {choice.reason}")


def _plan_budget(budget: Budget, cfg: RunConfig, fit: "Fit", loader: DataLoader, generator: torch.Generator,
                 steps_per_epoch: int, val_images: Tensor, ctx: DistContext, log) -> None:
    """A new budget run: measure the throughput on the real data (the weights, optimizer, schedule
    and random generators are put back afterwards), plan the epochs, size the LR schedule to them
    (``cfg.train.epochs`` becomes the plan) and print the plan.

    Raises:
        RunError: not one epoch fits in the budget.
    """
    tc = cfg.train
    log("time budget: measuring the training and validation speed on the real images to plan the epochs")
    state = [getattr(fit, f.name) for f in fields(fit) if f.name != "net"]
    with preserved_state(state, generator):
        tp = measure_throughput(
            lambda n: train_one_epoch(fit, cfg, 1, loader, generator, n, ctx, False),
            lambda x: predict_logits(fit.model, x, fit.preprocess, fit.device, 2 * tc.batch_size, fit.amp_dtype),
            val_images, steps_per_epoch=steps_per_epoch, batch_size=tc.batch_size, val_batch_size=2 * tc.batch_size,
            save_seconds=estimate_save_seconds(fit.model, tc.optimizer), device=fit.device,
        )
    epochs = _agree(budget.plan(tp), ctx, fit.device)
    budget.set_plan(epochs, tp.epoch_seconds)
    if epochs < 1:
        raise budget.too_small(tp)
    log(plan_message(cfg, budget, tp, tc.epochs))
    tc.epochs = epochs
    tc.warmup_epochs = min(tc.warmup_epochs, MAX_WARMUP_FRACTION * epochs)
    fit.schedule = LRSchedule(tc, fit.optimizer, steps_per_epoch)  # sized to the plan


def _replan(budget: Budget, fit: "Fit", tc, done: int, steps_per_epoch: int, ctx: DistContext, log,
            on_resized: Optional[Callable[[], None]] = None) -> bool:
    """Re-plan a budget run after ``done`` epochs from the last epoch's wall time: ``tc.epochs``
    becomes the new total and the LR schedule is re-sized to end at it. Returns False when not
    one more epoch fits: the run stops, its plan (``budget.planned_epochs``, ``tc.epochs``) is
    ``done`` and the schedule's total steps ``done * steps_per_epoch``; when the schedule had to be
    re-sized for that (a stop the plan did not foresee: ``budget.stop_reason``, which the log
    prints), ``on_resized`` is called (the trainer rewrites ``last.pt`` with it). A plan whose last
    epoch has run (``done >= tc.epochs``) is not lengthened: its LR schedule has reached its end, and
    another epoch would only run at the schedule's floor (``--resume --time-budget`` re-plans a
    finished run before the loop, not here)."""
    if done >= tc.epochs:
        return False
    before = budget.planned_epochs
    planned = _agree(budget.replan(done), ctx, fit.device)
    budget.planned_epochs = planned
    if planned <= done:  # the plan is done, or (stop_reason) not one more planned epoch fits
        budget.planned_epochs = tc.epochs = done
        if budget.stop_reason:
            log(budget.stop_reason + f"; the LR schedule ends here, at {fit.schedule.lr:.2e}")
        if fit.schedule.total_steps != done * steps_per_epoch:
            fit.schedule.set_total_steps(done * steps_per_epoch)
            if on_resized is not None:
                on_resized()
        return False
    fit.schedule.set_total_steps(planned * steps_per_epoch)
    # said only when it decides the last epoch or moves the plan by > 10 % since the last line said
    # (medclass.engine.budget.replan_note); budget.json and train_summary.json list every re-plan
    line = budget.replan_log_line(before, planned, done)
    if line:
        log(line)
    tc.epochs = planned
    return True


def _replan_during_epoch(budget: Budget, fit: "Fit", tc, epoch: int, seconds: float, steps_done: int,
                         steps_per_epoch: int, ctx: DistContext, log) -> None:
    """While epoch ``epoch`` of a budget run is not the planned last one: after ``steps_done`` of its
    optimisation steps, ``seconds`` after it began, ask :meth:`Budget.replan_during_epoch` whether
    one more epoch will fit after it; when not, it becomes the last (``tc.epochs``) and the LR
    schedule is re-sized to end with it, so the cosine reaches its minimum at the last step run.
    The same on every rank (rank 0's answer)."""
    if tc.epochs <= epoch or not 0 < steps_done < steps_per_epoch:
        return
    planned = _agree(budget.replan_during_epoch(epoch, seconds, steps_done, steps_per_epoch), ctx, fit.device)
    if planned >= tc.epochs:
        return
    before, budget.planned_epochs, tc.epochs = tc.epochs, planned, planned
    fit.schedule.set_total_steps(planned * steps_per_epoch)
    line = budget.replan_log_line(before, planned, epoch - 1, during_epoch=epoch)
    if line:
        log(line)


def train(cfg: RunConfig, run_dir: Path, resume: bool = False) -> TrainResult:
    """Train the configured model on the configured data, writing everything to ``run_dir``.

    ``cfg`` is not changed: the run works on a copy (whose ``data.manifest`` is the run's
    ``manifest.csv`` on resume, ``None`` in the saved ``config.yaml`` of a new run).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) this is DistributedDataParallel training: every rank
    runs this function on its shard of each global batch, metrics are reduced across ranks and
    only rank 0 writes files (see :mod:`medclass.engine.distributed`).

    Before any image is decoded, the run folder is checked (:func:`prepare_run_dir`), temporary
    files of a killed save are removed (:func:`remove_stale_temp_files`) and the free disk space is
    compared with what the checkpoints and decode cache need (:func:`check_disk_space`). A process
    killed at any point (even ``SIGKILL`` mid-save) leaves whole checkpoints, and ``resume=True``
    continues from ``last.pt`` with the same metrics as an uninterrupted run.

    With ``train.time_budget`` the whole call is planned to end within the budget
    (:mod:`medclass.engine.budget`): throughput measured before the first epoch, the epochs
    (``train.epochs`` is ignored) and the LR schedule sized to it, re-planned after every epoch;
    ``data.image_size: auto`` chooses the size and stem first. The plan and the time taken go to
    ``train_summary.json`` (``budget``).

    Raises:
        RunError: see :func:`prepare_run_dir` and :func:`check_disk_space`; also a checkpoint or
            ``metrics.csv`` that cannot be written during training (a full disk), naming the
            file and the intact checkpoint ``--resume`` continues from; a time budget that
            cannot fit one epoch.
        ConfigError: a bad ``train.time_budget`` or ``data.image_size``.
        medclass.engine.tracking.TrackingError: MLflow tracking on (``train.mlflow``, ``$MEDCLASS_MLFLOW``)
            without mlflow installed, or its store cannot be opened; raised before any work.
        medclass.data.DataError, medclass.data.ImageReadError: bad data (names the file).

    Status markers (read by ``medclass runs``, :mod:`medclass.cli.runs_table`): ``RUN/running.json``
    (this process) while it trains; on a failure after the folder was set up, ``RUN/failed.json``
    (the error), except that a new run folder that failed on bad data
    (:class:`~medclass.data.DataError`, :class:`~medclass.data.ImageReadError`) before its first
    checkpoint is removed, so no empty run is left behind. ``KeyboardInterrupt`` leaves the
    folder as it is (``interrupted``, continued with ``resume=True``).

    Resuming with another ``cfg.train.epochs`` (``medclass train --resume --epochs N``) gives the
    run a new total: more or fewer epochs (not fewer than it has run), the LR schedule re-planned
    as if planned for the new total (:meth:`medclass.engine.LRSchedule.replan`), the change
    recorded in ``RUN/resumes.json``, ``config.yaml`` and ``train_summary.json``
    (``epochs_replanned``). A time-budgeted run resumed with another ``cfg.train.time_budget`` has
    that total budget (time spent before counts), its plan re-made after the next epoch.
    """
    files = RunFiles(Path(run_dir))
    created = not files.root.exists()
    started: list[bool] = []  # set once the run folder is checked and marked running (rank 0)
    try:
        result = _train(cfg, files, resume, started)
    except BaseException as e:
        if started:
            _record_failure(files, e, created)
        raise
    finally:
        if started:
            _unmark_running(files)
    if started:
        (files.failed).unlink(missing_ok=True)  # a resumed run that finished is no longer failed
    return result


def _mark_running(files: RunFiles) -> None:
    """``RUN/running.json``: this process' pid, host and start time (``medclass runs`` shows ``running``)."""
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    _write_json_atomic(files.running, record)


def _unmark_running(files: RunFiles) -> None:
    path = files.running
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


def _write_json_atomic(path: Path, record: Any) -> None:
    """``record`` as JSON at ``path``, atomically (:func:`medclass.core.fileio.atomic_write_text`)."""
    atomic_write_text(path, json.dumps(record, indent=1))


def _record_failure(files: RunFiles, error: BaseException, created: bool) -> None:
    """After ``train`` failed with ``error``: nothing for ``KeyboardInterrupt`` (an interrupted run);
    a new folder (``created``) without a checkpoint that failed on bad data is removed; otherwise
    ``RUN/failed.json`` records the error (``medclass runs``: ``failed``). Never raises."""
    from ..data.pixels import ImageReadError
    from ..data.sources import DataError

    if isinstance(error, KeyboardInterrupt) or not files.root.is_dir():
        return
    try:
        if created and isinstance(error, (DataError, ImageReadError)) and not files.last.exists():
            shutil.rmtree(files.root)
            print(f"removed the run folder {files.root}: the data could not be used, no epoch was trained")
            return
        epoch = None
        if files.metrics_csv.is_file():
            epoch = max(0, len(files.metrics_csv.read_text().splitlines()) - 1)
        _write_json_atomic(files.failed, {
            "error": type(error).__name__, "message": str(error), "epochs_done": epoch,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "continue": "fix the cause, then `medclass train --name NAME --runs-dir DIR --resume` continues from "
                        "the last checkpoint (or start again without --resume when there is none)"})
    except OSError:
        pass


@dataclass
class _Session:
    """What every stage of one :func:`train` call shares: the run's settings, its folder, where it runs."""

    cfg: RunConfig
    files: RunFiles
    resume: bool
    t_start: float  # time.time() when the call began: the budget's clock reads the same
    ctx: DistContext
    device: torch.device
    budget: Optional[Budget]  # train.time_budget (None without, or for a linear probe)
    budget_changed: bool  # --resume with another --time-budget
    probe: bool  # model.finetune linear_probe: features once, a logistic regression, no epochs to plan

    @property
    def main(self) -> bool:
        return self.ctx.is_main

    def log(self, *args, **kwargs) -> None:  # rank 0 speaks
        if self.main:
            print(*args, **kwargs)


def _start_session(cfg: RunConfig, files: RunFiles, resume: bool, started: list[bool], t_start: float) -> _Session:
    """Check the config, join the DDP group, set up and mark the run folder (rank 0), seed, pick the device.

    Raises:
        ConfigError, TrackingError, RunError: a bad config, MLflow on but missing, an unusable folder.
    """
    check_budget_config(cfg)
    check_recipe(cfg)
    tc = cfg.train
    probe = cfg.model.finetune == "linear_probe"
    budget = (Budget(parse_duration(tc.time_budget), start=t_start, clock=time.time)
              if tc.time_budget is not None and not probe else None)
    ctx = init_distributed(tc.device)
    budget_changed = False
    if resume and files.config.is_file():  # every rank reads it before rank 0 records the new values there
        budget_changed = "time_budget" in _record_resume_settings(cfg, files, None)
    if ctx.is_main:
        check_tracking(cfg)  # MLflow on but not installed: the error before any work (TrackingError)
        prepare_run_dir(files, resume)
        _mark_running(files)
        started.append(True)
        if resume:  # another --epochs / --time-budget than config.yaml: recorded there
            _record_resume_settings(cfg, files, print)
    barrier(ctx)
    torch.manual_seed(tc.seed)
    device = ctx.device if ctx.enabled else select_device(tc.device)
    return _Session(cfg, files, resume, t_start, ctx, device, budget, budget_changed, probe)


def _index_and_settle(s: _Session):
    """Index and split the data (the saved manifest when resuming), then settle what the config left open:
    the positive class of a binary task, ``model.arch: auto``, the image size and the intensity rule.
    Returns ``(index, intensity_reason)``.

    Raises:
        DataError: fewer than 2 classes. ConfigError: a positive class that does not fit the task.
    """
    cfg, log = s.cfg, s.log
    if s.resume:
        cfg.data.manifest = str(s.files.manifest)
    index = build_index(cfg.data)
    for note in index.notes if not s.resume else ():  # e.g. masks inside class folders
        log(f"warning: {note}")
    if index.num_classes < 2:
        raise DataError(f"{cfg.data.source or 'the data'}: found only the class {index.class_names}; a classifier needs "
                        "at least 2 classes (one folder per class, or 2 labels in the CSV)")
    if index.num_classes == 2 and not s.resume:  # the class sensitivity etc. are about, recorded in the run
        try:
            positive, reason = choose_positive_class(index.class_names, cfg.data.positive_class)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        cfg.data.positive_class = index.class_names[positive]
        log(reason)
    elif cfg.data.positive_class is not None and not s.resume:
        raise ConfigError(f"data.positive_class ({cfg.data.positive_class!r}) is for binary tasks; this data has "
                          f"{index.num_classes} classes")
    model_reason = resolve_auto_model(cfg)  # arch auto: pretrained EfficientNet-Lite0 (or ResNet-18 from scratch)
    if model_reason and not s.resume:
        log(model_reason)
    if s.probe:
        cfg.train.epochs = 1
        if cfg.data.image_size == "auto":
            cfg.data.image_size = DEFAULT_IMAGE_SIZE
        if cfg.train.time_budget is not None:
            log("linear probe: the features are computed once and a logistic regression fitted; the time budget "
                "is not needed")
    fixed_image_size(cfg)  # auto without a budget: DEFAULT_IMAGE_SIZE
    intensity_reason = resolve_intensity(cfg, index.splits["train"], log)  # auto: greyscale -> per_image
    if cfg.data.image_size == "auto":  # with a budget (a resumed run's config.yaml holds the size chosen)
        _choose_image_size(cfg, index, s.budget, s.device, s.ctx, log)
    return index, intensity_reason


def _record_contract(s: _Session, index):
    """The run contract (:mod:`medclass.core.spec`; ImageNet weights bring ImageNet normalisation there,
    the config itself is not changed), the disk checks, the leakage check (``data.dedupe``), and what
    rank 0 writes before the first epoch. Returns ``(index, spec)``: the index without left-out duplicates."""
    cfg, files = s.cfg, s.files
    spec = read_spec(files.root) if s.resume else spec_from_config(cfg, index.class_names, files.root.resolve().name)
    if s.main:
        removed = remove_stale_temp_files(files)
        if removed:
            s.log(f"removed {len(removed)} temporary files left by an interrupted save: "
                  f"{', '.join(p.name for p in removed)}")
        check_disk_space(cfg, files, index, s.resume)
    if not s.resume:
        index = _check_leakage(cfg, index, files, s.main)
        cfg.data.manifest = None  # the manifest is part of the run; the config keeps the source
    if s.main:
        _record_run(cfg, index, spec, files, s.resume)
        note = small_validation_note(index)
        if note and not s.resume:
            s.log(f"warning: {note}")
    return index, spec


def _build_fit(s: _Session, index, spec, train_split: DecodedSplit) -> tuple[Fit, DataLoader, torch.Generator, int]:
    """Model (pretrained weights recorded in the spec), loss, optimizer, loader, LR schedule, EMA and mixup.
    Returns ``(fit, loader, generator, steps_per_epoch)``; ``generator`` is the sampler's, reseeded every epoch."""
    cfg, tc, device = s.cfg, s.cfg.train, s.device
    channels_last = channels_last_wanted(device, cfg.data.image_size)
    model, net, loaded = setup_model(cfg, index, s.resume, s.ctx, device, channels_last, s.log)
    if loaded is not None and s.main:  # where the weights came from, in the run contract
        spec.extra["pretrained"] = pretrained_record(loaded)
        write_spec(spec, s.files.root)
    optimizer = make_optimizer(cfg, model)
    generator = torch.Generator()
    loader = make_loader(cfg, train_split, generator, s.ctx, device)
    steps_per_epoch = len(loader) if tc.max_steps_per_epoch is None else min(len(loader), tc.max_steps_per_epoch)
    ema, mixup = make_recipe(cfg, model, index.num_classes)
    fit = Fit(model=model, net=net, criterion=make_loss(cfg, train_split.labels, index.num_classes).to(device),
              optimizer=optimizer, schedule=LRSchedule(tc, optimizer, steps_per_epoch),
              preprocess=Preprocess.from_spec(spec).to(device), augment=build_augmentation(cfg.data), device=device,
              amp_dtype=torch.bfloat16 if device.type == "cuda" else None, channels_last=channels_last,
              ema=ema, mixup=mixup)
    return fit, loader, generator, steps_per_epoch


def _resumed_budget(s: _Session, fit: Fit, history: list[dict[str, float]], saved_epoch: int,
                    steps_per_epoch: int) -> Budget:
    """A resumed budget run: the plan its restored schedule holds, the time earlier invocations spent, and
    (``--resume --time-budget``) the epochs and schedule re-planned for the new total."""
    tc = s.cfg.train
    tc.epochs = max(saved_epoch, round(fit.schedule.total_steps / steps_per_epoch))
    budget = Budget.resume_from(s.files.root, s.budget.seconds, s.t_start, history, tc.epochs, clock=time.time)
    s.log(f"time budget {format_duration(budget.seconds)}: {format_duration(budget.elapsed())} spent before this "
          f"resume; plan {tc.epochs} epochs")
    if s.budget_changed:
        before = tc.epochs
        planned = _agree(budget.replan(saved_epoch), s.ctx, s.device)
        if planned > saved_epoch:
            budget.planned_epochs = tc.epochs = planned
            fit.schedule.replan(planned * steps_per_epoch)
        s.log(f"time budget changed: plan {before} -> {max(planned, saved_epoch)} epochs; the LR schedule re-planned "
              f"for {max(planned, saved_epoch)} epochs (LR now {fit.schedule.lr:.2e})")
    return budget


def _end_epoch(s: _Session, fit: Fit, tracker: EarlyStopping, history: list[dict[str, float]], row: dict,
               saved_epoch: int, class_names: list[str], writer, mlflow_run) -> int:
    """Record an epoch's row: the schedule's epoch step, early stopping, then on rank 0 ``best.pt``,
    ``last.pt`` (the resume point), ``metrics.csv``, TensorBoard and MLflow. Returns the epoch ``last.pt``
    now holds."""
    history.append(row)
    monitored = row[s.cfg.train.monitor]
    if fit.schedule is not None and not s.probe:
        fit.schedule.step_epoch(monitored)
    improved = tracker.update(monitored, row["epoch"])
    if s.main:
        saved_epoch = save_epoch(s.files, fit, tracker, history, improved, s.cfg, class_names, saved_epoch)
        _log_scalars(writer, row)
        mlflow_run.log_epoch(row)
    return saved_epoch


def _train(cfg: RunConfig, files: RunFiles, resume: bool, started: list[bool]) -> TrainResult:
    """The body of :func:`train`; appends to ``started`` once the run folder is set up and marked running."""
    s = _start_session(copy.deepcopy(cfg), files, resume, started, time.time())  # the caller's config stays
    cfg, tc, ctx, log = s.cfg, s.cfg.train, s.ctx, s.log
    index, intensity_reason = _index_and_settle(s)
    index, spec = _record_contract(s, index)
    train_split, val_split = _decode_splits(cfg, index, ctx, log)
    fit, loader, generator, steps_per_epoch = _build_fit(s, index, spec, train_split)
    tracker = EarlyStopping(tc.monitor, tc.patience if tc.early_stopping else None, tc.min_delta)
    history, saved_epoch = _restore(files.last, fit, tracker) if resume else ([], 0)  # saved: what last.pt holds
    if resume and s.budget is None:  # --epochs on resume: a new total, the schedule re-planned for it
        _replan_resumed(fit, tracker, tc, saved_epoch, steps_per_epoch, files, s.main, log)
    val_shard = torch.arange(ctx.rank, len(val_split), ctx.world_size)
    val_images = val_split.images[val_shard] if ctx.enabled else val_split.images
    log(f"medclass: {cfg.model.arch} ({count_parameters(fit.model):,} parameters) on {s.device}"
        + (f" x {ctx.world_size} processes (DDP, global batch {tc.batch_size})" if ctx.enabled else "")
        + f"; {index.num_classes} classes; train {len(train_split)}, valid {len(val_split)} images"
        f" at {cfg.data.image_size} px")
    budget = s.budget
    if budget is not None and not resume:  # measure, plan the epochs, size the schedule to them
        _plan_budget(budget, cfg, fit, loader, generator, steps_per_epoch, val_images, ctx, log)
    elif budget is not None:
        budget = _resumed_budget(s, fit, history, saved_epoch, steps_per_epoch)
    clock = RunClock(cfg, s.t_start, steps_per_epoch, len(val_split), tqdm.write if s.main else _quiet,
                     warn=budget is None)
    bar = tc.progress and s.main and is_terminal()  # a bar on a terminal; else a line every train.log_interval s
    report = TrainProgress(steps_per_epoch, tc.batch_size, s.t_start, bar=bar, interval=tc.log_interval,
                           enabled=tc.progress and s.main)
    say = tqdm.write if s.main else _quiet  # inside an epoch: below the progress bar

    def rewrite_last() -> None:  # a budget stop re-sized the schedule: last.pt and budget.json record it
        if s.main and history and saved_epoch == history[-1]["epoch"]:
            try:
                save_checkpoint(_last_state(fit, tracker, history, cfg, index.class_names), files.last)
                budget.save(files.root, saved_epoch)
            except OSError as e:
                raise write_failed(e, files.last, files, saved_epoch) from e

    # ---- the epochs: train, validate, step the schedule, checkpoint and log, stop early
    stopped_early, epoch = tracker.should_stop, saved_epoch
    with _tensorboard(files if s.main else None) as writer, \
            open_tracker(cfg, files if s.main else None, resume) as mlflow_run:
        if s.probe and epoch == 0:  # model.finetune linear_probe: one "epoch" that fits the head
            t0, fit.ema = time.time(), None  # the head is fitted, not trained: no average of weights to keep
            row = _linear_probe_epoch(fit, cfg, train_split, val_split, index.num_classes, log)
            row["seconds"], epoch = time.time() - t0, 1
            saved_epoch = _end_epoch(s, fit, tracker, history, row, saved_epoch, index.class_names, writer, mlflow_run)
            log(f"linear probe: val_acc {row['val_accuracy']:.4f}  val_balanced_acc {row['val_balanced_accuracy']:.4f}"
                f"  ({row['seconds']:.1f}s)")
        while not stopped_early:
            # a budget run re-plans its epochs from the last one's wall time (tc.epochs is the plan)
            if budget is not None and epoch > 0 and not _replan(budget, fit, tc, epoch, steps_per_epoch, ctx, log,
                                                                on_resized=rewrite_last):
                break
            if epoch >= tc.epochs:
                break
            epoch, t0 = epoch + 1, time.time()
            eta = clock.eta(tc.epochs - epoch + 1)
            desc = f"epoch {epoch}/{tc.epochs}" + (f" (run ETA {format_duration(eta)})" if eta is not None else "")
            report.start_epoch(epoch, tc.epochs, clock.walls)
            # with a budget, an epoch slower than planned may have to be the last: asked after each step
            on_step = None if budget is None else (lambda n: _replan_during_epoch(
                budget, fit, tc, epoch, time.time() - t0, n, steps_per_epoch, ctx, say))
            loss, acc = train_one_epoch(fit, cfg, epoch, clock.timed(loader, tc.epochs - epoch + 1), generator,
                                        steps_per_epoch, ctx, bar, desc=desc, report=report, on_step=on_step)
            train_seconds = time.time() - t0
            val_loss, val_acc, val_bal = validate(fit, val_images, val_shard, val_split.labels, ctx, 2 * tc.batch_size)
            row = {"epoch": epoch, "loss": loss, "accuracy": acc, "val_loss": val_loss, "val_accuracy": val_acc,
                   "val_balanced_accuracy": val_bal, "lr": fit.schedule.lr, "seconds": time.time() - t0}
            saved_epoch = _end_epoch(s, fit, tracker, history, row, saved_epoch, index.class_names, writer, mlflow_run)
            clock.epoch_done(time.time() - t0, tc.epochs - epoch)  # wall time, checkpoints included
            if budget is not None:
                budget.note_epoch(clock.walls[-1], tail_seconds=clock.walls[-1] - train_seconds)
                if s.main:
                    try:
                        budget.save(files.root, epoch)
                    except OSError as e:
                        raise write_failed(e, files.budget, files, saved_epoch) from e
            eta = clock.eta(tc.epochs - epoch)
            log(f"epoch {epoch:3d}/{tc.epochs}  loss {loss:.4f}  acc {acc:.4f}  val_loss {val_loss:.4f}  "
                f"val_acc {val_acc:.4f}  lr {row['lr']:.2e}  {row['seconds']:.1f}s"
                + (f"  ETA {format_duration(eta)}" if eta and epoch < tc.epochs else "")
                + ("  *" if tracker.best_epoch == epoch else ""), flush=True)
            stopped_early = tracker.should_stop
            if stopped_early:
                log(f"early stopping: no improvement of {tc.monitor} for {tc.patience} epochs")
    return _finish(s, history, tracker, stopped_early, (train_split, val_split), budget, intensity_reason, mlflow_run)


def _finish(s: _Session, history: list[dict[str, float]], tracker: EarlyStopping, stopped_early: bool,
            splits: tuple[DecodedSplit, DecodedSplit], budget: Optional[Budget], intensity_reason,
            mlflow_run) -> TrainResult:
    """``train_summary.json`` and MLflow's end of training (rank 0), the DDP group left; the result."""
    seconds = time.time() - s.t_start
    if s.main:
        write_summary(s.files, history, tracker, stopped_early, seconds, splits, s.device, s.ctx, s.cfg,
                      budget=None if budget is None else budget.summary(budget.elapsed()),
                      intensity_reason=intensity_reason)
        mlflow_run.end_training()  # curves, metrics.csv, summary and config as artifacts; FINISHED
    if s.ctx.enabled:
        barrier(s.ctx)
        torch.distributed.destroy_process_group()
    skipped = splits[0].skipped + splits[1].skipped
    return TrainResult(s.files, history, tracker.best_epoch, tracker.best, stopped_early, seconds, skipped, s.main)
