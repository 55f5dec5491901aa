"""The learning-rate range test (``medclass lr-find``).

Smith, "Cyclical Learning Rates for Training Neural Networks", WACV 2017 (arXiv:1506.01186),
section 3.3: train a throwaway model for a few steps while the learning rate grows from very
small to very large, and read a good learning rate off the curve of loss against LR. The
procedure and its suggestions follow fastai's ``Learner.lr_find`` (``fastai.callback.schedule``):

* the LR grows exponentially from ``start_lr`` (1e-7) to ``end_lr`` (10) over ``num_iter`` (100)
  optimisation steps, ``lr_i = start_lr * (end_lr / start_lr) ** (i / (num_iter - 1))``;
* the loss is smoothed by an exponential moving average with ``beta`` 0.98, bias-corrected
  (``avg_i = beta * avg_{i-1} + (1 - beta) * loss_i``, ``smoothed_i = avg_i / (1 - beta ** (i + 1))``);
* the sweep stops when the smoothed loss exceeds ``stop_div`` (4) times the best smoothed loss
  so far, or when a loss is not finite;
* suggestions are computed on the smoothed curve without its first ``num_iter // 10`` and last 5
  points (fastai's trimming): ``steep``, the LR where the smoothed loss falls fastest against
  ``log(lr)``; ``valley``, fastai's longest-valley rule (the LR a little past the middle of the
  longest decreasing stretch); ``minimum``, a tenth of the LR at the smallest smoothed loss.
  The suggested one is ``valley`` (fastai's default since 2.5: ``steep`` is noisy on easy
  problems) unless another is asked for.

The model, data decode, preprocessing, augmentation, loss and optimizer are those of
``medclass train`` (the pieces of :mod:`medclass.engine.trainer`), and so is the step: augment,
mix (mixup / CutMix when configured), forward under autocast, backward, clip the gradients (when
configured), optimizer step. Left out: progressive resizing (the sweep runs at the full size) and
the EMA of the weights (it does not change the training step). Nothing is restored or kept: the
model is thrown away.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np

from ..core.fileio import atomic_write, atomic_write_text

__all__ = [
    "LRFindResult", "SUGGESTIONS", "exponential_lrs", "smooth_losses", "range_test", "suggest_steep",
    "suggest_valley", "suggest_minimum", "suggest_lrs", "plot_lr_find", "write_lr_find", "lr_find",
    "default_out_dir",
]

#: Names of the suggestion rules, in the order they are reported.
SUGGESTIONS = ("steep", "valley", "minimum")

DEFAULT_START_LR = 1e-7
DEFAULT_END_LR = 10.0
DEFAULT_NUM_ITER = 100
DEFAULT_BETA = 0.98
DEFAULT_STOP_DIV = 4.0
SKIP_END = 5  # fastai drops the last 5 points (the divergence) before suggesting


@dataclass
class LRFindResult:
    """What a range test measured and suggests.

    ``lrs``, ``losses`` (raw training loss of each step, nats) and ``smoothed`` (bias-corrected
    EMA) have one entry per step taken; ``stopped`` is ``"completed"``, ``"diverged"`` or
    ``"non-finite"``; ``suggestions`` maps each rule of :data:`SUGGESTIONS` to an LR (or None when
    too few points were left to apply it); ``suggested_lr`` is ``suggestions[suggested_by]``.
    """

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    stopped: str
    suggestions: dict[str, Optional[float]]
    suggested_by: str
    suggested_lr: Optional[float]
    start_lr: float
    end_lr: float
    num_iter: int
    beta: float
    stop_div: float
    seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)  # data, model and batch the sweep ran with

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- the sweep


def exponential_lrs(start_lr: float, end_lr: float, num_iter: int) -> np.ndarray:
    """``num_iter`` learning rates growing geometrically from ``start_lr`` to ``end_lr`` (both
    included), float64 ``(num_iter,)``.

    Raises:
        ValueError: ``start_lr`` <= 0, ``end_lr`` <= ``start_lr`` or ``num_iter`` < 2.
    """
    if not (start_lr > 0 and end_lr > start_lr):
        raise ValueError(f"lr-find needs 0 < start_lr < end_lr, got start_lr {start_lr} and end_lr {end_lr}")
    if num_iter < 2:
        raise ValueError(f"lr-find needs num_iter >= 2, got {num_iter}")
    return start_lr * (end_lr / start_lr) ** (np.arange(num_iter) / (num_iter - 1))


def smooth_losses(losses: Sequence[float], beta: float = DEFAULT_BETA) -> np.ndarray:
    """Bias-corrected exponential moving average of ``losses`` (float64 ``(n,)``), as fastai's
    ``AvgSmoothLoss``: ``avg_i = beta * avg_{i-1} + (1 - beta) * loss_i`` and
    ``smoothed_i = avg_i / (1 - beta ** (i + 1))``; the first value is the first loss.

    Raises:
        ValueError: ``beta`` outside [0, 1).
    """
    if not 0 <= beta < 1:
        raise ValueError(f"lr-find beta must be in [0, 1), got {beta}")
    out, avg = np.empty(len(losses)), 0.0
    for i, loss in enumerate(losses):
        avg = beta * avg + (1 - beta) * float(loss)
        out[i] = avg / (1 - beta ** (i + 1))
    return out


def range_test(
    step: Callable[[float], float],
    start_lr: float = DEFAULT_START_LR,
    end_lr: float = DEFAULT_END_LR,
    num_iter: int = DEFAULT_NUM_ITER,
    beta: float = DEFAULT_BETA,
    stop_div: float = DEFAULT_STOP_DIV,
    progress: bool = False,
) -> tuple[list[float], list[float], list[float], str]:
    """Run the sweep: for each LR of :func:`exponential_lrs` call ``step(lr)`` (one optimisation
    step at that LR, returning the batch's loss), smooth the losses (:func:`smooth_losses`'s EMA)
    and stop early when the smoothed loss passes ``stop_div`` times the best so far (fastai's
    divergence rule) or a loss is NaN/inf (that step is not recorded).

    Returns:
        ``(lrs, losses, smoothed, stopped)``: the LRs stepped at, their raw losses, the smoothed
        losses (lists of floats of one length) and why it ended: ``"completed"``, ``"diverged"``
        or ``"non-finite"``.

    Raises:
        ValueError: bad ``start_lr``/``end_lr``/``num_iter``/``beta``, or ``stop_div`` <= 1.
    """
    schedule = exponential_lrs(start_lr, end_lr, num_iter)
    if not 0 <= beta < 1:
        raise ValueError(f"lr-find beta must be in [0, 1), got {beta}")
    if not stop_div > 1:
        raise ValueError(f"lr-find stop_div must be > 1, got {stop_div}")
    from tqdm.auto import tqdm

    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    avg, best, stopped = 0.0, math.inf, "completed"
    bar = tqdm(schedule, desc="lr-find", disable=not progress, leave=False)
    for i, lr in enumerate(bar):
        loss = float(step(float(lr)))
        if not math.isfinite(loss):
            stopped = "non-finite"
            break
        avg = beta * avg + (1 - beta) * loss
        smooth = avg / (1 - beta ** (i + 1))
        lrs.append(float(lr))
        losses.append(loss)
        smoothed.append(smooth)
        bar.set_postfix(lr=f"{lr:.1e}", loss=f"{smooth:.4f}")
        best = min(best, smooth)
        if smooth > stop_div * best:
            stopped = "diverged"
            break
    bar.close()
    return lrs, losses, smoothed, stopped


# --------------------------------------------------------------------------- suggestions


def _trimmed(lrs: Sequence[float], smoothed: Sequence[float], num_iter: int) -> tuple[np.ndarray, np.ndarray]:
    """fastai's window for suggestions: without the first ``num_iter // 10`` and the last
    :data:`SKIP_END` points."""
    start, n = num_iter // 10, len(lrs)
    end = max(start, n - SKIP_END)
    return np.asarray(lrs[start:end], dtype=np.float64), np.asarray(smoothed[start:end], dtype=np.float64)


def suggest_steep(lrs: Sequence[float], smoothed: Sequence[float]) -> Optional[float]:
    """The LR at which the smoothed loss falls fastest against ``log(lr)`` (fastai's ``steep``):
    ``lrs[argmin_i (s[i+1] - s[i]) / (log lr[i+1] - log lr[i])]``. None with fewer than 2 points
    or when the loss never falls."""
    lr, s = np.asarray(lrs, dtype=np.float64), np.asarray(smoothed, dtype=np.float64)
    if len(lr) < 2:
        return None
    slopes = np.diff(s) / np.diff(np.log(lr))
    i = int(np.argmin(slopes))
    return float(lr[i]) if slopes[i] < 0 else None


def suggest_valley(lrs: Sequence[float], smoothed: Sequence[float]) -> Optional[float]:
    """fastai's ``valley`` rule: the longest stretch over which the smoothed loss keeps falling
    (a longest decreasing subsequence, O(n^2)), and the LR at ``start + len / 3 + len / 6`` of it,
    "a little past the middle" of the valley. None with fewer than 2 points."""
    s = np.asarray(smoothed, dtype=np.float64)
    n = len(s)
    if n < 2:
        return None
    lds = [1] * n
    max_start = max_end = 0
    for i in range(1, n):
        for j in range(i):
            if s[i] < s[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    idx = max_start + int(sections) + int(sections / 2)
    return float(lrs[idx])


def suggest_minimum(lrs: Sequence[float], smoothed: Sequence[float]) -> Optional[float]:
    """A tenth of the LR at the smallest smoothed loss (fastai's ``minimum``; Smith's advice to
    stay an order of magnitude below where the loss is lowest). None without points."""
    if len(lrs) == 0:
        return None
    return float(lrs[int(np.argmin(np.asarray(smoothed, dtype=np.float64)))]) / 10


def suggest_lrs(lrs: Sequence[float], smoothed: Sequence[float], num_iter: int) -> dict[str, Optional[float]]:
    """Every rule of :data:`SUGGESTIONS` applied to the trimmed curve (see :func:`_trimmed`)."""
    lr, s = _trimmed(lrs, smoothed, num_iter)
    return {"steep": suggest_steep(lr, s), "valley": suggest_valley(lr, s), "minimum": suggest_minimum(lr, s)}


# --------------------------------------------------------------------------- files


def plot_lr_find(result: LRFindResult, path: Path) -> Path:
    """``lr_find.png``: raw and smoothed loss against LR (log x axis, matplotlib Agg), the
    suggested LR marked with a point and a vertical line, the other suggestions as dotted lines.
    Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(result.lrs, result.losses, color="0.75", lw=1, label="loss")
    ax.plot(result.lrs, result.smoothed, color="C0", lw=2, label=f"smoothed (EMA, beta {result.beta})")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    if result.smoothed:  # keep the divergence from squashing the interesting part
        lo = min(result.smoothed)
        hi = max(result.smoothed[: max(1, len(result.smoothed) - SKIP_END)])
        pad = 0.1 * max(hi - lo, 1e-3)
        ax.set_ylim(lo - pad, hi + 3 * pad)
    colours = {"steep": "C1", "valley": "C2", "minimum": "C4"}  # the suggested one: red (C3)
    for name in SUGGESTIONS:
        lr = result.suggestions.get(name)
        if lr is None or name == result.suggested_by:
            continue
        label = "minimum / 10" if name == "minimum" else name
        ax.axvline(lr, color=colours[name], ls=":", lw=1.2, label=f"{label}: {lr:.1e}")
    if result.suggested_lr is not None:
        lr = result.suggested_lr
        loss = float(np.interp(np.log(lr), np.log(result.lrs), result.smoothed)) if result.lrs else 0.0
        ax.axvline(lr, color="C3", ls="--", lw=1)
        ax.plot([lr], [loss], "o", color="C3", label=f"suggested ({result.suggested_by}): {lr:.1e}")
    ax.set_title(f"LR range test ({len(result.lrs)} steps, {result.stopped})")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        return atomic_write(Path(path), lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    finally:
        plt.close(fig)


def write_lr_find(result: LRFindResult, out_dir: Path) -> tuple[Path, Path]:
    """Write ``lr_find.json`` (every field of the result) and ``lr_find.png`` into ``out_dir``
    (created), each atomically. Returns their paths.

    Raises:
        OSError: the folder or a file cannot be written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result.to_dict(), indent=1)
    json_path = atomic_write_text(out_dir / "lr_find.json", text)
    png_path = plot_lr_find(result, out_dir / "lr_find.png")
    return json_path, png_path


def default_out_dir(cfg, runs_dir: Path = Path("runs"), now: Optional[float] = None) -> Path:
    """``runs/lr-find-<stem>-<YYYYmmdd-HHMMSS>``: ``stem`` is the file name (without suffix) of
    ``data.manifest`` or ``data.source`` (``breastmnist`` for the bundled data)."""
    source = cfg.data.manifest or cfg.data.source
    stem = Path(source).resolve().stem if source else "breastmnist"
    return Path(runs_dir) / f"lr-find-{stem}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}"


# --------------------------------------------------------------------------- on real data


def _cycle(loader) -> Iterator:
    """The loader's batches forever (a new shuffle every pass)."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("lr-find: the training loader yields no batch (train.batch_size larger than the data?)")


def lr_find(
    cfg,
    out_dir: Optional[Path] = None,
    start_lr: float = DEFAULT_START_LR,
    end_lr: float = DEFAULT_END_LR,
    num_iter: int = DEFAULT_NUM_ITER,
    beta: float = DEFAULT_BETA,
    stop_div: float = DEFAULT_STOP_DIV,
    suggest_by: str = "valley",
    log: Callable[[str], None] = print,
) -> LRFindResult:
    """The range test on ``cfg``'s training split with ``cfg``'s model, loss, optimizer,
    preprocessing and augmentation, as ``medclass train`` builds them; writes ``lr_find.json`` and
    ``lr_find.png`` to ``out_dir`` when given (see :func:`write_lr_find`).

    Each step takes the next training batch (uint8 ``(B, C, H, W)``, shuffled, cycling over the
    split), scales it to [0, 1], augments it on the device, mixes it (``train.mixup_alpha`` /
    ``train.cutmix_alpha``), normalises it, and makes one optimizer step (gradients clipped to
    ``train.clip_grad_norm`` when set) with every parameter group's LR set to
    ``lr * group_lr / train.lr`` (so ``model.backbone_lr_mult`` keeps its ratio). ``cfg`` is not changed; no run folder, no
    checkpoint. The learning rate of the config plays no part beyond those ratios.

    Args:
        cfg: a :class:`medclass.core.config.RunConfig`.
        out_dir: where to write the two files; None: write nothing.
        start_lr, end_lr, num_iter, beta, stop_div: the sweep (see :func:`range_test`).
        suggest_by: the rule of :data:`SUGGESTIONS` whose LR is ``suggested_lr``.
        log: where progress lines go.

    Raises:
        ValueError: a bad sweep setting, ``suggest_by`` or ``data.image_size`` (neither pixels nor ``auto``,
            which is :data:`medclass.core.config.DEFAULT_IMAGE_SIZE` here).
        RunError: no readable training image.
        medclass.data.DataError, medclass.data.ImageReadError: bad data.
    """
    import torch

    from ..core.config import fixed_image_size, resolve_auto_model
    from ..data import Preprocess, build_augmentation, build_index
    from ..core.runs import RunError
    from ..core.spec import spec_from_config
    from .distributed import DistContext
    from .inference import channels_last_wanted, select_device
    from .intensity import resolve_intensity
    from .fit import (
        Fit, decode_samples, make_loader, make_loss, make_optimizer, make_recipe, set_epoch_trainable, setup_model,
        train_step,
    )

    if suggest_by not in SUGGESTIONS:
        raise ValueError(f"lr-find: suggest_by must be one of {', '.join(SUGGESTIONS)}, got {suggest_by!r}")
    exponential_lrs(start_lr, end_lr, num_iter)  # check the sweep before decoding anything
    t0 = time.time()
    cfg = copy.deepcopy(cfg)
    tc = cfg.train
    tc.time_budget = None  # the sweep has no budget: image size auto is DEFAULT_IMAGE_SIZE
    resolve_auto_model(cfg)
    fixed_image_size(cfg)
    size = cfg.data.image_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"lr-find needs data.image_size in pixels or 'auto', got {size!r}")
    ctx = DistContext()
    torch.manual_seed(tc.seed)
    device = select_device(tc.device)
    index = build_index(cfg.data)  # dedupe would change valid/test only: the sweep uses train
    train_split = decode_samples(cfg, index.splits["train"], "train", ctx)
    if len(train_split) == 0:
        raise RunError("lr-find: no training images")
    resolve_intensity(cfg, index.splits["train"], log)
    spec = spec_from_config(cfg, index.class_names, "lr-find")
    preprocess = Preprocess.from_spec(spec).to(device)
    amp_dtype = torch.bfloat16 if device.type == "cuda" else None
    channels_last = channels_last_wanted(device, cfg.data.image_size)
    model, net, _loaded = setup_model(cfg, index, False, ctx, device, channels_last, log)
    _ema, mixup = make_recipe(cfg, model, index.num_classes)  # mixup as in training; no EMA: nothing validates
    fit = Fit(model=model, net=net, criterion=make_loss(cfg, train_split.labels, index.num_classes).to(device),
              optimizer=make_optimizer(cfg, model), schedule=None, preprocess=preprocess,
              augment=build_augmentation(cfg.data), device=device, amp_dtype=amp_dtype, channels_last=channels_last,
              mixup=mixup)
    ratios = [g["lr"] / tc.lr for g in fit.optimizer.param_groups]
    generator = torch.Generator()
    generator.manual_seed(tc.seed)
    batches = _cycle(make_loader(cfg, train_split, generator, ctx, device))
    set_epoch_trainable(fit, cfg, 1)  # as in the first epoch of training
    log(f"lr-find: {cfg.model.arch} on {device}; {len(train_split)} training images at {cfg.data.image_size} px, "
        f"batch {tc.batch_size}; LR {start_lr:.0e} to {end_lr:.0e} over at most {num_iter} steps")

    def step(lr: float) -> float:  # the training step itself (medclass.engine.fit.train_step)
        for g, r in zip(fit.optimizer.param_groups, ratios):
            g["lr"] = lr * r
        images, labels = next(batches)
        return train_step(fit, images, labels, clip_grad_norm=tc.clip_grad_norm).loss.item()  # the sweep needs each loss

    lrs, losses, smoothed, stopped = range_test(step, start_lr, end_lr, num_iter, beta, stop_div, tc.progress)
    suggestions = suggest_lrs(lrs, smoothed, num_iter)
    result = LRFindResult(
        lrs=lrs, losses=losses, smoothed=smoothed, stopped=stopped, suggestions=suggestions, suggested_by=suggest_by,
        suggested_lr=suggestions[suggest_by], start_lr=start_lr, end_lr=end_lr, num_iter=num_iter, beta=beta,
        stop_div=stop_div, seconds=time.time() - t0,
        settings={"source": cfg.data.manifest or cfg.data.source, "arch": cfg.model.arch, "stem": cfg.model.stem,
                  "image_size": cfg.data.image_size, "channels": cfg.data.channels, "batch_size": tc.batch_size,
                  "optimizer": tc.optimizer, "weight_decay": tc.weight_decay, "pretrained": cfg.model.pretrained,
                  "mixup_alpha": tc.mixup_alpha, "cutmix_alpha": tc.cutmix_alpha, "clip_grad_norm": tc.clip_grad_norm,
                  "device": str(device), "train_images": len(train_split), "class_names": index.class_names},
    )
    if out_dir is not None:
        write_lr_find(result, out_dir)
    return result
