"""A time budget for training: measure, plan the epochs, re-plan as the run goes.

``medclass train DATA --time-budget 15m`` (``train.time_budget``) asks for a run whose whole
``train()`` call (decoding, setup, every epoch with its validation and checkpoints, the final
summary) ends within the budget. :func:`medclass.engine.train` does, with the pieces of this module:

1. Before the first epoch, measure on the real data at the chosen settings
   (:func:`measure_throughput`): a warm-up step that is not counted, then a few timed optimisation
   steps, and the validation pass's images/s; the model, optimizer, schedule and random generators
   are put back as they were afterwards (:func:`preserved_state`), so the measurement changes
   neither the weights nor the run's random draws. Checkpoint writing per epoch is estimated from
   the model's size (:func:`estimate_save_seconds`).
2. Plan (:meth:`Budget.plan`): the number of epochs ``E`` whose ``E x (train epoch + validation +
   checkpoints)`` fits in the budget less the time already spent and the closing costs
   (:data:`END_SECONDS`). ``train.epochs`` is ignored (the log says so); the LR schedule (warm-up,
   cosine) is sized to ``E`` (warm-up at most :data:`MAX_WARMUP_FRACTION` of it).
3. After every epoch, re-plan (:meth:`Budget.replan`) from the measured wall time of the last
   epoch: the total becomes the epochs done plus those that still fit, shorter when the machine
   slowed down, longer when it sped up, never more than fits; the cosine schedule is re-planned
   with it (:meth:`medclass.engine.schedules.LRSchedule.set_total_steps`), so it still ends at its
   minimum at the last epoch actually run. The plan looks one epoch ahead: the next epoch is
   planned as the last unless another fits after it with :data:`EXTEND_MARGIN` to spare, so the
   schedule ends on it. While an epoch runs, after each optimisation step but its last, the same
   question is asked again from the pace so far (:meth:`Budget.replan_during_epoch`): an epoch
   that runs slower than planned becomes the last one while it runs, and the cosine reaches its
   minimum at its end. Every re-plan is recorded (``replans`` in ``budget.json``); the log says
   one only when it decides the last epoch or moves the plan by more than
   :data:`REPLAN_NOTE_FRACTION` from the plan it said last (:func:`replan_note`).
4. When not one more epoch fits, the run stops and says so; the plan and the LR schedule are then
   made to end at the epochs run (``planned_epochs`` = epochs run; the schedule's total steps =
   epochs run x steps per epoch, rewritten into ``last.pt``). Only a stop that neither look-ahead
   foresaw (an epoch's validation and checkpoints far slower than before) leaves the learning
   rate above its minimum; ``stop_reason`` records it.

A resumed budget run counts the time its earlier invocations spent (``RUN/budget.json``, written
after every epoch: seconds spent, plan, re-plans); time between a kill and the restart is not
counted. A resume whose plan still holds continues exactly as the uninterrupted run would.

``data.image_size: auto`` (``--image-size auto``, with a budget) chooses the resolution and
the ResNet stem before decoding (:func:`choose_resolution`): the training speed of each candidate
of :data:`RESOLUTION_CANDIDATES` not larger than the images (:func:`auto_candidates`) is measured
on a sample of the real images (:func:`measure_candidate_speeds`), and the most preferred
candidate that still affords :data:`MIN_EPOCHS_FOR_SIZE` epochs is taken. It is the default
(``data.image_size: auto``); without a budget ``auto`` is 224 px.

Without a budget nothing extra is run: the first steps of the first epoch are timed as they
happen (:class:`TimedLoader`) and, when the whole run would pass :data:`LONG_RUN_SECONDS`, the
estimate is printed with the options that shorten it (:func:`long_run_message`).
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..core.config import RunConfig, parse_duration
from ..core.fileio import atomic_write_text
from ..core.runs import RunError, RunFiles

__all__ = [
    "parse_duration", "Throughput", "Budget", "ResolutionChoice", "TimedLoader",
    "RESOLUTION_CANDIDATES", "PRETRAINED_CANDIDATES", "PRETRAINED_MIN_SIDE", "MIN_EPOCHS_PRETRAINED", "THUMBNAIL_STEMS", "MIN_EPOCHS_FOR_SIZE", "MIN_EPOCHS_FOR_THUMBNAIL_STEM", "auto_candidates", "END_SECONDS", "LONG_RUN_SECONDS", "MAX_PLANNED_EPOCHS",
    "MAX_WARMUP_FRACTION", "VALIDATION_SPEEDUP", "epochs_that_fit", "choose_resolution", "measure_candidate_speeds", "measure_affordable_speeds",
    "measure_throughput", "preserved_state", "estimate_save_seconds", "format_duration", "long_run_message",
    "plan_message", "RunClock", "REPLAN_NOTE_FRACTION", "replan_note",
]

#: The candidates of ``data.image_size: auto`` as ``(image_size, model.stem)``, most compute per
#: image first: :func:`choose_resolution` takes the first one that affords :data:`MIN_EPOCHS_FOR_SIZE`
#: epochs in the budget, among those not larger than the images themselves (:func:`auto_candidates`).
#: The rule, from the validation-split ablation in ``results/ablation/*-size.json`` (README,
#: "Choosing the default recipe"): at a fixed budget, more pixels win until the epochs run short.
RESOLUTION_CANDIDATES: tuple[tuple[int, str], ...] = (
    (224, "imagenet"), (160, "imagenet"), (128, "imagenet"), (96, "imagenet"), (64, "imagenet"),
)

#: Fewest planned epochs for which ``auto`` accepts a size (``results/ablation/*-size.json``, 5-minute
#: budgets): brain-tumor-mri-yn scored best at 96 px (132 epochs) against 128 px (81) and 64 px
#: (220); chest-ct at 64 px (67 epochs) against 96 px (37) and 128 px. The threshold lies between
#: 81 and 132 epochs on this evidence (38 and 72 validation images: one image is 1.4-2.6 points).
MIN_EPOCHS_FOR_SIZE = 100

#: Images smaller than every candidate (MedMNIST's 28 px): their own size, with these stems in this
#: order. The small stem keeps 16x the positions (BreastMNIST, 5 min: validation AUROC 0.939 with 32
#: epochs against 0.849 with the ImageNet stem at 28 px (141 epochs) and 0.874 upsampled to 64 px (78)).
THUMBNAIL_STEMS: tuple[str, ...] = ("small", "imagenet")

#: Fewest planned epochs for which ``auto`` takes the small stem on such images (the 32 above).
MIN_EPOCHS_FOR_THUMBNAIL_STEM = 30

#: Seconds kept at the end of a budget for what follows the last epoch (``curves.png``,
#: ``train_summary.json``).
END_SECONDS = 1.5

#: Without a budget: a run estimated to take longer than this prints the estimate and the
#: options that shorten it.
LONG_RUN_SECONDS = 3600.0

#: Upper bound of a planned number of epochs (a tiny data set and a long budget).
MAX_PLANNED_EPOCHS = 1000

#: With a budget, the warm-up lasts at most this fraction of the planned epochs.
MAX_WARMUP_FRACTION = 0.2

#: Inference is about this many times faster per image than a training step (forward only, no
#: backward): used to cost a candidate's validation pass in :func:`choose_resolution`.
VALIDATION_SPEEDUP = 3.0

#: A re-plan lengthens the run only when the extra epochs fit with this factor of safety on the
#: epoch time (a run shortened at its very end would stop above the cosine's minimum); by the
#: same factor, an epoch is planned as the last unless one more fits after it with it.
EXTEND_MARGIN = 1.1

#: Epochs whose wall times the re-plan looks at: it plans with the larger of the last epoch's
#: time and their mean (a slowdown counts at once, a speed-up only when it lasts).
RECENT_EPOCHS = 3

#: Checkpoint writing speed assumed by :func:`estimate_save_seconds` (bytes per second).
SAVE_BYTES_PER_SECOND = 200e6

#: The log says a re-plan only when the plan moved by more than this fraction of the last plan it
#: said (and by more than one epoch), or when the re-plan decides the last epoch (:func:`replan_note`).
REPLAN_NOTE_FRACTION = 0.1


def format_duration(seconds: float) -> str:
    """``seconds`` for people: ``"4.2 s"``, ``"45 s"``, ``"14.2 min"``, ``"7 h 05 min"``."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    h, m = divmod(int(round(seconds / 60)), 60)
    return f"{h} h {m:02d} min"


def epochs_that_fit(available_seconds: float, epoch_seconds: float, cap: int = MAX_PLANNED_EPOCHS) -> int:
    """Whole epochs of ``epoch_seconds`` that fit in ``available_seconds`` (0 when none does), at
    most ``cap``.

    Raises:
        ValueError: ``epoch_seconds`` is not positive.
    """
    if not epoch_seconds > 0:
        raise ValueError(f"epoch_seconds must be positive, got {epoch_seconds}")
    if available_seconds <= 0:
        return 0
    return int(min(cap, math.floor(available_seconds / epoch_seconds + 1e-9)))


@dataclass
class Throughput:
    """What one epoch costs, measured before training (:func:`measure_throughput`).

    ``step_seconds``: one optimisation step of the global batch ``batch_size`` (seconds);
    ``val_seconds``: one validation pass over the whole validation split; ``save_seconds``: the
    checkpoints of one epoch (estimated); ``steps_per_epoch``: steps of an epoch (with
    ``train.max_steps_per_epoch``).
    """

    step_seconds: float
    val_seconds: float
    save_seconds: float
    steps_per_epoch: int
    batch_size: int

    @property
    def train_img_per_s(self) -> float:
        """Training images per second (global batch / step time)."""
        return self.batch_size / self.step_seconds

    @property
    def epoch_seconds(self) -> float:
        """Seconds of one epoch: training steps, validation and checkpoints."""
        return self.steps_per_epoch * self.step_seconds + self.val_seconds + self.save_seconds


@dataclass
class ResolutionChoice:
    """What ``data.image_size: auto`` chose: ``image_size`` (pixels), ``stem``, why (``reason``),
    and per candidate its measured training images/s and the epochs it would afford
    (``candidates``: dicts with ``image_size``, ``stem``, ``img_per_s``, ``epochs``)."""

    image_size: int
    stem: str
    reason: str
    candidates: list[dict[str, Any]] = field(default_factory=list)


#: The candidates of ``data.image_size: auto`` for a model that starts from pretrained weights
#: (``model.pretrained``): ImageNet features want ImageNet-like scales, so images smaller than
#: these are upsampled to the smaller ones rather than trained at their own size (MedMNIST v2 trains
#: its ImageNet ResNets at 224 px from 28 px images).
PRETRAINED_CANDIDATES: tuple[tuple[int, str], ...] = ((224, "imagenet"), (160, "imagenet"), (128, "imagenet"),
                                                      (96, "imagenet"))
#: The smallest side pretrained candidates are upsampled to: those not larger than
#: ``max(native, PRETRAINED_MIN_SIDE)`` are kept.
PRETRAINED_MIN_SIDE = 128
#: Fewest planned epochs for which ``auto`` accepts a size when fine-tuning pretrained weights:
#: fine-tuning converges in far fewer epochs than training from scratch (the plain fine-tuning script
#: of issue 23 peaked on chest-ct validation within 46 epochs at 128 px).
MIN_EPOCHS_PRETRAINED = 30


def auto_candidates(native: Optional[int], candidates: Optional[Sequence[tuple[int, str]]] = None,
                    pretrained: bool = False) -> tuple[list[tuple[int, str]], int]:
    """The candidates of ``data.image_size: auto`` for images whose shorter side is ``native``
    pixels (:func:`medclass.data.native_side`), and the fewest epochs one must afford: those of
    ``candidates`` (default :data:`RESOLUTION_CANDIDATES`) not larger than ``native`` (upsampling
    adds compute, not detail) with :data:`MIN_EPOCHS_FOR_SIZE`; where that leaves none
    (thumbnails such as MedMNIST's 28 px), the native size with the small stem, then with the
    ImageNet stem (:data:`THUMBNAIL_STEMS`), with :data:`MIN_EPOCHS_FOR_THUMBNAIL_STEM`.
    ``native=None`` (unknown) keeps every candidate. With ``pretrained`` the candidates are
    :data:`PRETRAINED_CANDIDATES` not larger than ``max(native, PRETRAINED_MIN_SIDE)``, with
    :data:`MIN_EPOCHS_PRETRAINED`."""
    if pretrained:
        pool = list(PRETRAINED_CANDIDATES if candidates is None else candidates)
        side = None if native is None else max(int(native), PRETRAINED_MIN_SIDE)
        kept = pool if side is None else [c for c in pool if c[0] <= side]
        return (kept or pool[-1:]), MIN_EPOCHS_PRETRAINED
    candidates = list(RESOLUTION_CANDIDATES if candidates is None else candidates)
    kept = candidates if native is None else [c for c in candidates if c[0] <= native]
    if kept:
        return kept, MIN_EPOCHS_FOR_SIZE
    return [(int(native), stem) for stem in THUMBNAIL_STEMS], MIN_EPOCHS_FOR_THUMBNAIL_STEM


def choose_resolution(
    budget_seconds: float,
    n_train_images: int,
    measured_speeds: dict[tuple[int, str], float],
    *,
    n_val_images: int = 0,
    min_epochs: Optional[int] = None,
    candidates: Optional[Sequence[tuple[int, str]]] = None,
) -> ResolutionChoice:
    """The resolution and stem of ``data.image_size: auto``: the first of ``candidates`` (most
    preferred first, :data:`RESOLUTION_CANDIDATES`) whose planned epochs reach ``min_epochs``; when
    none does, the fastest candidate (the most epochs).

    A candidate's epoch costs ``n_train_images / img_per_s`` plus its validation pass
    ``n_val_images / (img_per_s * VALIDATION_SPEEDUP)``; its planned epochs are the whole epochs
    that fit in ``budget_seconds``.

    Args:
        budget_seconds: seconds available for the epochs (the budget less what setup spent).
        n_train_images: images in the training split.
        measured_speeds: ``{(image_size, stem): training images per second}`` (measured on the
            real data, :func:`measure_candidate_speeds`); candidates missing here are skipped.
        n_val_images: images in the validation split.
        min_epochs: fewest epochs a candidate must afford (default :data:`MIN_EPOCHS_FOR_SIZE`).
        candidates: ``(image_size, stem)`` in order of preference (default :data:`RESOLUTION_CANDIDATES`).
    Returns:
        The choice, with the reason and every candidate's figures.
    Raises:
        ValueError: no candidate has a positive measured speed.
    """
    min_epochs = MIN_EPOCHS_FOR_SIZE if min_epochs is None else min_epochs
    candidates = RESOLUTION_CANDIDATES if candidates is None else candidates
    rows = []
    for size, stem in candidates:
        ips = measured_speeds.get((size, stem))
        if ips is None or not ips > 0:
            continue
        epoch_s = n_train_images / ips + n_val_images / (ips * VALIDATION_SPEEDUP)
        rows.append({"image_size": int(size), "stem": stem, "img_per_s": float(ips), "epoch_seconds": epoch_s,
                     "epochs": epochs_that_fit(budget_seconds, epoch_s)})
    if not rows:
        raise ValueError(f"no measured speed for any candidate of {list(candidates)}: {measured_speeds}")
    for r in rows:
        if r["epochs"] >= min_epochs:
            reason = (f"{r['image_size']} px with the {r['stem']} stem: the first candidate (in order of preference) "
                      f"that affords at least {min_epochs} epochs ({r['epochs']} at {r['img_per_s']:.1f} img/s)")
            return ResolutionChoice(r["image_size"], r["stem"], reason, rows)
    r = max(rows, key=lambda r: r["epochs"])
    reason = (f"no candidate affords {min_epochs} epochs in {format_duration(budget_seconds)}: the fastest, "
              f"{r['image_size']} px with the {r['stem']} stem ({r['epochs']} epochs at {r['img_per_s']:.1f} img/s)")
    return ResolutionChoice(r["image_size"], r["stem"], reason, rows)


# --------------------------------------------------------------------------- measuring


@contextmanager
def preserved_state(objects: Iterable[Any], generator: Optional[torch.Generator] = None) -> Iterator[None]:
    """Run the block, then put back the state of ``objects`` (anything with ``state_dict`` /
    ``load_state_dict``: model, optimizer, LR schedule, an EMA of the weights...) and of the random
    generators (torch CPU and CUDA, ``generator``, Python's ``random``, NumPy's global one), so
    that a measurement inside changes neither the weights nor the run's random draws.
    The states are copied (tensors cloned) on entry."""
    objects = [o for o in objects if hasattr(o, "state_dict") and hasattr(o, "load_state_dict")]
    saved = [copy.deepcopy(o.state_dict()) for o in objects]
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    gen_state = generator.get_state() if generator is not None else None
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        for o, s in zip(objects, saved):
            o.load_state_dict(s)
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        if generator is not None:
            generator.set_state(gen_state)
        random.setstate(py_state)
        np.random.set_state(np_state)


def estimate_save_seconds(model: nn.Module, optimizer_name: str) -> float:
    """Seconds to write one epoch's checkpoints of ``model``: ``last.pt`` (weights plus optimizer
    state: two moments for Adam/AdamW, one for SGD momentum) and ``best.pt`` (weights), at
    :data:`SAVE_BYTES_PER_SECOND`, plus 0.05 s of fixed cost."""
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values() if isinstance(t, Tensor))
    moments = 1 if optimizer_name == "sgd" else 2
    return 0.05 + weights * (2 + moments) / SAVE_BYTES_PER_SECOND


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_throughput(
    train_steps: Callable[[int], Any],
    predict: Callable[[Tensor], Any],
    val_images: Tensor,
    *,
    steps_per_epoch: int,
    batch_size: int,
    val_batch_size: int,
    save_seconds: float,
    device: torch.device = torch.device("cpu"),
    warmup_steps: int = 1,
    timed_steps: int = 5,
    val_total: Optional[int] = None,
) -> Throughput:
    """Time the training steps and the validation pass of a run before it starts.

    ``train_steps(n)`` runs ``n`` optimisation steps of the real training (the trainer's epoch
    function with ``steps=n``); it is called once with ``warmup_steps`` (not counted: allocation,
    kernel selection) and once with ``min(timed_steps, steps_per_epoch)`` steps, timed. Then
    ``predict`` (uint8 images ``(n, C, H, W)`` -> logits) runs on one warm-up batch of
    ``val_images`` and is timed on up to two more batches; the seconds per image times
    ``val_total`` (default ``len(val_images)``) is the validation pass. Call it inside
    :func:`preserved_state` so the run is not changed.

    Returns:
        :class:`Throughput` (with ``save_seconds`` as given).
    """
    if warmup_steps > 0:
        train_steps(warmup_steps)
    n = max(1, min(timed_steps, steps_per_epoch))
    _sync(device)
    t0 = time.perf_counter()
    train_steps(n)
    _sync(device)
    step_s = (time.perf_counter() - t0) / n

    val_total = len(val_images) if val_total is None else val_total
    val_s = 0.0
    if len(val_images) and val_total:
        predict(val_images[:val_batch_size])  # warm-up
        sample = val_images[: 2 * val_batch_size] if len(val_images) > val_batch_size else val_images
        _sync(device)
        t0 = time.perf_counter()
        predict(sample)
        _sync(device)
        val_s = (time.perf_counter() - t0) / len(sample) * val_total
    return Throughput(step_s, val_s, save_seconds, steps_per_epoch, batch_size)


def measure_candidate_speeds(
    cfg: RunConfig,
    samples: Sequence[Any],
    num_classes: int,
    device: torch.device,
    candidates: Optional[Sequence[tuple[int, str]]] = None,
    batch_size: Optional[int] = None,
    timed_steps: int = 2,
) -> dict[tuple[int, str], float]:
    """Training images per second of each ``(image_size, stem)`` of ``candidates`` on real images:
    one batch of training ``samples`` (spread over the split) is decoded at the candidate's size
    (no cache), a fresh model with the candidate's stem takes one warm-up step and
    ``timed_steps`` timed ones of the training step itself (:func:`medclass.engine.fit.train_step`:
    augmentation, mixup, forward, loss, backward, clipping, optimizer step, EMA, as configured). The run's random generators are put back afterwards.

    Args:
        cfg: the run's config (``data``, ``model``, ``train``); not changed.
        samples: the training split's samples (:class:`medclass.data.Sample`).
        num_classes: classes of the task.
        device: the training device.
        candidates: ``(image_size, stem)`` to measure (default :data:`RESOLUTION_CANDIDATES`).
        batch_size: images per step (default ``train.batch_size``).
    Returns:
        ``{(image_size, stem): images per second}``.
    Raises:
        medclass.data.ImageReadError: an unreadable image (unless ``data.skip_corrupt``).
    """
    from ..data import Preprocess, build_augmentation, decode_split
    from ..models import build_model
    from .inference import channels_last_wanted
    from .fit import Fit, make_loss, make_optimizer, make_recipe, train_step

    candidates = RESOLUTION_CANDIDATES if candidates is None else candidates
    bs = max(2, min(batch_size or cfg.train.batch_size, len(samples)))
    stride = max(1, len(samples) // bs)
    sample = list(samples)[::stride][:bs]
    amp = torch.bfloat16 if device.type == "cuda" else None
    speeds: dict[tuple[int, str], float] = {}
    with preserved_state([]):
        for size, stem in candidates:
            c = copy.deepcopy(cfg)
            c.data.image_size, c.model.stem = int(size), stem
            split = decode_split(sample, c.data.channels, int(size), c.data.skip_corrupt, "measure", progress=False,
                                 cache_dir=None, dicom_window=c.data.dicom_window, resize=c.data.resize)
            if len(split) < 2:
                continue
            images, labels = split.images.to(device), split.labels.to(device)
            model = build_model(c.model, num_classes, c.data.channels).to(device)
            channels_last = channels_last_wanted(device, int(size))
            if channels_last:
                model = model.to(memory_format=torch.channels_last)
            # the per-step cost of the run's input rule (fixed: always a mean/std, the same cost with or without one)
            per_image = c.data.intensity == "per_image"
            preprocess = (Preprocess(intensity="per_image") if per_image else Preprocess(c.data.mean, c.data.std)).to(device)
            ema, mixup = make_recipe(c, model, num_classes)  # the recipe's EMA and mixup cost time too
            fit = Fit(model=model, net=model, criterion=make_loss(c, split.labels, num_classes).to(device),
                      optimizer=make_optimizer(c, model), schedule=None, preprocess=preprocess,
                      augment=build_augmentation(c.data), device=device, amp_dtype=amp, channels_last=channels_last,
                      ema=ema, mixup=mixup)
            model.train()  # every layer trains, as in most epochs of a run

            def step(fit: Fit = fit, clip: Optional[float] = c.train.clip_grad_norm) -> None:
                train_step(fit, images, labels, clip_grad_norm=clip)  # the training step itself

            step()  # warm-up
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(timed_steps):
                step()
            _sync(device)
            speeds[(int(size), stem)] = len(images) * timed_steps / (time.perf_counter() - t0)
            del model, fit
    return speeds


def measure_affordable_speeds(
    cfg: RunConfig,
    samples: Sequence[Any],
    num_classes: int,
    device: torch.device,
    budget_seconds: float,
    candidates: Sequence[tuple[int, str]],
    *,
    n_val_images: int = 0,
    min_epochs: Optional[int] = None,
    batch_size: Optional[int] = None,
    speed_scale: float = 1.0,
) -> dict[tuple[int, str], float]:
    """The training speeds :func:`choose_resolution` needs, measured cheapest candidate first
    (``candidates`` are most compute first, so in reverse) with :func:`measure_candidate_speeds`,
    stopping after the first one that affords fewer than ``min_epochs`` epochs in
    ``budget_seconds``: the dearer ones would afford fewer still, and measuring them would spend
    the budget (a 224 px step of ResNet-18 takes seconds on a CPU).

    Args:
        cfg, samples, num_classes, device, batch_size: as :func:`measure_candidate_speeds`.
        budget_seconds, n_val_images, min_epochs: as :func:`choose_resolution`.
        candidates: ``(image_size, stem)``, most compute first.
        speed_scale: multiplies every measured speed (the number of DDP processes).
    Returns:
        ``{(image_size, stem): training images per second}`` of the candidates measured.
    """
    min_epochs = MIN_EPOCHS_FOR_SIZE if min_epochs is None else min_epochs
    speeds: dict[tuple[int, str], float] = {}
    for cand in reversed(list(candidates)):
        got = measure_candidate_speeds(cfg, samples, num_classes, device, [cand], batch_size=batch_size)
        if cand not in got:
            continue
        speeds[cand] = got[cand] * speed_scale
        epoch_s = len(samples) / speeds[cand] + n_val_images / (speeds[cand] * VALIDATION_SPEEDUP)
        if epochs_that_fit(budget_seconds, epoch_s) < min_epochs:
            break
    return speeds


# --------------------------------------------------------------------------- the plan


def replan_note(reported: int, before: int, planned: int, epochs_done: int, reason: Optional[str] = None,
                during_epoch: Optional[int] = None) -> Optional[str]:
    """The log line of a re-plan from ``before`` to ``planned`` total epochs after ``epochs_done``
    epochs (while epoch ``during_epoch`` runs, when given), or ``None`` when the log should not say
    it. ``reported`` is the last plan the log said (before any re-plan line: the first plan, or
    the plan a resume printed); ``reason`` is the re-plan's reason (its ``replans`` entry).

    A re-plan is said when, and only when, the plan changed (``planned != before``), the run goes on
    (``planned > epochs_done``; a stop is logged with ``Budget.stop_reason`` instead) and either

    * it decides the last epoch: ``planned == epochs_done + 1``, i.e. the epoch about to run (after
      an epoch) or the one running (``during_epoch``, whose ``epochs_done`` is ``during_epoch - 1``)
      is the last; the plan cannot change after that, so this is said once per run; or
    * the plan has moved from ``reported`` by more than :data:`REPLAN_NOTE_FRACTION` (10 %) of
      ``reported`` and by more than one epoch (the noise of epoch times: a plan that swings
      between 51 and 47 epochs after a line that said 51 is not said again).

    The line gives the change from ``reported`` (what the log said last), so the log reads as one
    story; every re-plan, said or not, is in ``budget.json``'s ``replans``."""
    if planned == before or planned <= epochs_done:
        return None
    final = planned == epochs_done + 1
    moved = abs(planned - reported)
    if not final and not (moved > REPLAN_NOTE_FRACTION * reported and moved > 1):
        return None
    when = f" during epoch {during_epoch}" if during_epoch is not None else ""
    why = f" ({reason})" if reason else ""
    if planned == reported:  # the last epoch decided, on the plan the log said
        return f"time budget: the plan of {planned} epochs holds{when}{why}"
    return f"time budget: re-planned from {reported} to {planned} epochs{when}{why}"


@dataclass
class Budget:
    """The time budget of one run: the plan, the time spent, the re-plans.

    ``seconds``: the budget; ``spent_before``: seconds spent by earlier invocations of this run
    (resume); ``start``: ``time.time()`` when this invocation's ``train()`` began.
    ``planned_epochs``: the current plan (total epochs of the run); ``replans``: one dict per
    change of the plan (``after_epoch``, ``from``, ``to``, ``elapsed_seconds``,
    ``epoch_seconds``, ``reason``; a re-plan while an epoch ran adds ``during_epoch`` and
    ``after_step``); ``recent_epoch_seconds``: wall times (checkpoints included) of the last
    :data:`RECENT_EPOCHS` epochs; ``tail_seconds``: the seconds of the last epoch after its
    training steps (validation, checkpoints, logs). ``clock`` returns the current time (tests pass
    a fake one).
    """

    seconds: float
    start: float
    spent_before: float = 0.0
    planned_epochs: int = 0
    measured_img_per_s: Optional[float] = None
    estimated_seconds: Optional[float] = None
    throughput: Optional[dict[str, Any]] = None
    replans: list[dict[str, Any]] = field(default_factory=list)
    resolution: Optional[dict[str, Any]] = None
    stop_reason: Optional[str] = None
    planned_epoch_seconds: Optional[float] = None  # the first plan's estimate of one epoch
    recent_epoch_seconds: list[float] = field(default_factory=list)
    tail_seconds: Optional[float] = None
    clock: Callable[[], float] = field(default=time.time, repr=False, compare=False)
    # the last plan the log said (:meth:`replan_log_line`); None: the plan before the first re-plan
    reported_epochs: Optional[int] = field(default=None, compare=False)

    def elapsed(self) -> float:
        """Seconds of the budget spent so far (earlier invocations and this one)."""
        return self.spent_before + self.clock() - self.start

    def available(self) -> float:
        """Seconds left for epochs: the budget less what is spent and :data:`END_SECONDS`."""
        return self.seconds - self.elapsed() - END_SECONDS

    def plan(self, tp: Throughput) -> int:
        """The first plan: the epochs of ``tp.epoch_seconds`` that fit in :meth:`available`
        (0: not one; see :meth:`too_small`). Sets ``planned_epochs``, ``estimated_seconds`` and
        the measured figures."""
        epochs = epochs_that_fit(self.available(), tp.epoch_seconds)
        self.measured_img_per_s = tp.train_img_per_s
        self.throughput = {**asdict(tp), "train_img_per_s": tp.train_img_per_s, "epoch_seconds": tp.epoch_seconds}
        self.set_plan(epochs, tp.epoch_seconds)
        return epochs

    def set_plan(self, epochs: int, epoch_seconds: float) -> None:
        """Make ``epochs`` of ``epoch_seconds`` the plan (under DDP: the plan rank 0 made)."""
        self.planned_epochs = epochs
        self.estimated_seconds = self.elapsed() + epochs * epoch_seconds + END_SECONDS
        self.planned_epoch_seconds = epoch_seconds

    def note_epoch(self, seconds: float, tail_seconds: Optional[float] = None) -> None:
        """Record the wall time of the epoch just ended (training, validation, checkpoints), in
        seconds, and of that, ``tail_seconds`` after its last training step (validation,
        checkpoints, logs; ``None``: keep the previous figure)."""
        self.recent_epoch_seconds = (self.recent_epoch_seconds + [float(seconds)])[-RECENT_EPOCHS:]
        if tail_seconds is not None:
            self.tail_seconds = max(0.0, float(tail_seconds))

    def tail_estimate(self) -> float:
        """Seconds an epoch takes after its last training step: the last epoch's
        (:meth:`note_epoch`); before any, the measured validation pass plus the estimated
        checkpoints (``throughput``); 0 when neither is known."""
        if self.tail_seconds is not None:
            return self.tail_seconds
        tp = self.throughput or {}
        return float(tp.get("val_seconds") or 0.0) + float(tp.get("save_seconds") or 0.0)

    def epoch_estimate(self) -> Optional[float]:
        """Seconds the next epoch is planned to take: the larger of the last epoch's wall time and
        the mean of the last :data:`RECENT_EPOCHS`; before any epoch, the first plan's estimate."""
        r = self.recent_epoch_seconds
        return max(r[-1], sum(r) / len(r)) if r else self.planned_epoch_seconds

    def too_small(self, tp: Throughput) -> RunError:
        """The error of a budget that cannot fit one epoch: setup time, the measured epoch time and
        what to change."""
        return RunError(
            f"the time budget of {format_duration(self.seconds)} cannot fit one epoch: setup took "
            f"{format_duration(self.elapsed())} and one epoch takes about {format_duration(tp.epoch_seconds)} "
            f"({tp.train_img_per_s:.1f} training images/s); give a longer --time-budget, a smaller --image-size, "
            f"or --set train.max_steps_per_epoch=N"
        )

    def replan(self, epochs_done: int, epoch_seconds: Optional[float] = None) -> int:
        """Re-plan after ``epochs_done`` epochs, the last of which took ``epoch_seconds`` of wall
        time (recorded with :meth:`note_epoch`; default: as already recorded). With the epoch time
        of :meth:`epoch_estimate`, the new total is ``epochs_done`` plus the epochs that still fit
        in :meth:`available` when that is fewer than planned; more than planned only when they
        fit with :data:`EXTEND_MARGIN` to spare; at most :data:`MAX_PLANNED_EPOCHS`. Looking one
        epoch ahead, the next epoch is the last (the total ``epochs_done + 1``) unless one more
        epoch fits after it with :data:`EXTEND_MARGIN` to spare, so that the LR schedule ends on
        it. A change is recorded in ``replans``; when no further epoch fits, the plan becomes
        ``epochs_done`` and, when it wanted more, ``stop_reason`` says so.
        Returns the new planned total (``epochs_done``: stop now; never fewer)."""
        if epoch_seconds is not None:
            self.note_epoch(epoch_seconds)
        est = self.epoch_estimate()
        if est is None or not est > 0:
            return self.planned_epochs
        left, before = self.available(), self.planned_epochs
        cap = MAX_PLANNED_EPOCHS - epochs_done
        new = epochs_done + epochs_that_fit(left, est, cap)
        if new > self.planned_epochs:  # faster than planned: lengthen only with a margin
            new = max(self.planned_epochs, epochs_done + epochs_that_fit(left, est * EXTEND_MARGIN, cap))
        last_ahead = new > epochs_done + 1 and not self._another_fits(left - est, est)
        if last_ahead:  # the next epoch is the last: the schedule must end on it, not one later
            new = epochs_done + 1
        new = max(new, epochs_done)
        if new != self.planned_epochs:
            if new <= epochs_done:
                reason = (f"the {format_duration(max(0.0, left))} left cannot fit another epoch of "
                          f"{format_duration(est)}")
            elif last_ahead:
                reason = (f"epoch {new} is the last: after it, the {format_duration(max(0.0, left - est))} left "
                          f"would not fit another epoch of {format_duration(est)} with a "
                          f"{EXTEND_MARGIN - 1:.0%} margin")
            elif new < self.planned_epochs:
                reason = f"epochs take {format_duration(est)}, longer than planned: fewer fit"
            else:
                reason = f"epochs take {format_duration(est)}, shorter than planned: more fit"
            self.replans.append({"after_epoch": epochs_done, "from": self.planned_epochs, "to": new,
                                 "elapsed_seconds": round(self.elapsed(), 3), "epoch_seconds": round(est, 3),
                                 "reason": reason})
            self.planned_epochs = new
        if new <= epochs_done < before:  # the plan wanted more epochs than fit: not foreseen
            self.stop_reason = (f"time budget: stopping after epoch {epochs_done}: the "
                                f"{format_duration(max(0.0, left))} left cannot fit another epoch of {format_duration(est)}")
        return new

    def _another_fits(self, left: float, epoch_seconds: float) -> bool:
        """Whether one more epoch of ``epoch_seconds`` fits in ``left`` seconds with
        :data:`EXTEND_MARGIN` to spare."""
        return epochs_that_fit(left, epoch_seconds * EXTEND_MARGIN, 1) > 0

    def replan_during_epoch(self, epoch: int, seconds: float, steps_done: int, steps: int) -> int:
        """Re-plan while epoch ``epoch`` (1-based, not the planned last) runs: ``steps_done`` of
        its ``steps`` optimisation steps are taken, ``seconds`` of wall time after it began. When,
        at the end of this epoch, one more epoch would not fit with :data:`EXTEND_MARGIN` to
        spare, this epoch becomes the last (the plan ``epoch``, recorded in ``replans``), so the
        LR schedule can be re-sized to end with it.

        The end of the epoch is projected from the time spent so far plus its remaining steps at
        the faster of the measured pace and the planned one (a slow first step is not
        extrapolated; time lost is) plus :meth:`tail_estimate`; the next epoch is taken to last as
        long as this one or :meth:`epoch_estimate`, whichever is longer (as :meth:`replan` would
        after it). Never lengthens the plan; nothing is asked before the first or at the last
        step (``0 < steps_done < steps``), where the change could no longer reach the last step's
        learning rate. Returns the planned total (``epoch``: this epoch is the last)."""
        if not (self.planned_epochs > epoch and 0 < steps_done < steps):
            return self.planned_epochs
        est = self.epoch_estimate()
        if est is None or not est > 0:
            return self.planned_epochs
        tail = self.tail_estimate()
        step_seconds = min(seconds / steps_done, max(0.0, est - tail) / steps)
        remaining = (steps - steps_done) * step_seconds + tail
        next_est = max(est, seconds + remaining)
        left = self.available() - remaining
        if self._another_fits(left, next_est):
            return self.planned_epochs
        reason = (f"epoch {epoch} runs slower than planned ({format_duration(seconds)} for {steps_done} of {steps} "
                  f"steps): it is the last, as the {format_duration(max(0.0, left))} left after it would not fit "
                  f"another epoch of {format_duration(next_est)} with a {EXTEND_MARGIN - 1:.0%} margin")
        self.replans.append({"after_epoch": epoch - 1, "during_epoch": epoch, "after_step": steps_done,
                             "from": self.planned_epochs, "to": epoch, "elapsed_seconds": round(self.elapsed(), 3),
                             "epoch_seconds": round(next_est, 3), "reason": reason})
        self.planned_epochs = epoch
        return epoch

    def replan_log_line(self, before: int, planned: int, epochs_done: int,
                        during_epoch: Optional[int] = None) -> Optional[str]:
        """The log line of the re-plan from ``before`` to ``planned`` epochs just made (by
        :meth:`replan` after ``epochs_done`` epochs, or by :meth:`replan_during_epoch` while epoch
        ``during_epoch`` runs, ``epochs_done`` = ``during_epoch - 1``), or ``None``: the rule of
        :func:`replan_note`, against the last plan said (``reported_epochs``; before the first
        re-plan, ``before``). A line said makes ``planned`` the last plan said. Only the log is
        thinned: the re-plan is in ``replans`` either way."""
        if self.reported_epochs is None:
            self.reported_epochs = before
        line = replan_note(self.reported_epochs, before, planned, epochs_done,
                           self.replans[-1].get("reason") if self.replans else None, during_epoch)
        if line is not None:
            self.reported_epochs = planned
        return line

    def record(self, epochs_done: int) -> dict[str, Any]:
        """The state written to ``RUN/budget.json`` after an epoch (see :meth:`resume_from`)."""
        out = self.summary(None)
        out.update({"epoch": epochs_done, "spent_seconds": self.elapsed(),
                    "planned_epoch_seconds": self.planned_epoch_seconds,
                    "recent_epoch_seconds": list(self.recent_epoch_seconds), "tail_seconds": self.tail_seconds})
        return out

    def summary(self, actual_seconds: Optional[float]) -> dict[str, Any]:
        """The ``budget`` entry of ``train_summary.json``: ``seconds``, ``planned_epochs``,
        ``measured_img_per_s``, ``estimated_seconds``, ``replans``, ``actual_seconds`` (all
        invocations), and the throughput measured, the resolution choice and the stop reason."""
        return {"seconds": self.seconds, "planned_epochs": self.planned_epochs,
                "measured_img_per_s": self.measured_img_per_s, "estimated_seconds": self.estimated_seconds,
                "replans": list(self.replans), "actual_seconds": actual_seconds, "throughput": self.throughput,
                "resolution": self.resolution, "stop_reason": self.stop_reason}

    def save(self, run_dir: Path, epochs_done: int) -> None:
        """Write :meth:`record` to ``run_dir/budget.json`` (:func:`medclass.core.fileio.atomic_write_text`)."""
        atomic_write_text(RunFiles(Path(run_dir)).budget, json.dumps(self.record(epochs_done), indent=1))

    @classmethod
    def resume_from(cls, run_dir: Path, seconds: float, start: float, history: list[dict[str, float]],
                    planned_epochs: int, clock: Callable[[], float] = time.time) -> "Budget":
        """The budget of a resumed run: its ``budget.json`` (plan, re-plans, seconds spent up to its
        epoch) plus the ``seconds`` of ``history`` rows after that epoch (a process killed between
        ``last.pt`` and ``budget.json``); without the file, the epochs' seconds of ``history``.
        ``planned_epochs``: the plan the restored LR schedule holds."""
        path = RunFiles(Path(run_dir)).budget
        rec: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
        done = int(rec.get("epoch", 0))
        spent = float(rec.get("spent_seconds", 0.0)) + sum(r["seconds"] for r in history if r["epoch"] > done)
        recent = [float(v) for v in rec.get("recent_epoch_seconds", [])]
        recent += [r["seconds"] for r in history if r["epoch"] > done]  # (checkpoints not included)
        return cls(seconds=seconds, start=start, spent_before=spent, planned_epochs=planned_epochs,
                   measured_img_per_s=rec.get("measured_img_per_s"), estimated_seconds=rec.get("estimated_seconds"),
                   throughput=rec.get("throughput"), replans=list(rec.get("replans", [])),
                   resolution=rec.get("resolution"), planned_epoch_seconds=rec.get("planned_epoch_seconds"),
                   recent_epoch_seconds=recent[-RECENT_EPOCHS:], tail_seconds=rec.get("tail_seconds"), clock=clock)


def plan_message(cfg: RunConfig, budget: Budget, tp: Throughput, ignored_epochs: Optional[int]) -> str:
    """The plan printed before training: size, stem, batch, measured images/s, epochs, estimated
    minutes (and that ``train.epochs`` is ignored)."""
    stem = f", stem {cfg.model.stem}" if cfg.model.arch.startswith("resnet") or cfg.model.arch == "chained" else ""
    msg = (f"time budget {format_duration(budget.seconds)}: {cfg.data.image_size} px{stem}, batch {cfg.train.batch_size}; "
           f"measured {tp.train_img_per_s:.1f} training images/s, one epoch about {format_duration(tp.epoch_seconds)} "
           f"(train {format_duration(tp.steps_per_epoch * tp.step_seconds)}, validation {format_duration(tp.val_seconds)}, "
           f"checkpoints {format_duration(tp.save_seconds)}); plan: {budget.planned_epochs} epochs, about "
           f"{format_duration(budget.estimated_seconds or 0.0)} in all (setup {format_duration(budget.elapsed())})")
    if ignored_epochs is not None:
        msg += f"; train.epochs ({ignored_epochs}) is ignored: with a time budget the epochs come from the plan"
    return msg


# --------------------------------------------------------------------------- without a budget


class TimedLoader:
    """A training ``DataLoader`` that notes when each batch is asked for: after one warm-up step
    and ``steps`` timed ones it calls ``on_estimate(seconds_per_step)`` once (the time between
    requests is one optimisation step, data loading included). Costs nothing extra: the run's
    own first steps are timed. Every other attribute is the wrapped loader's."""

    def __init__(self, loader: Any, on_estimate: Callable[[float], None], steps: int = 5) -> None:
        self.loader, self.on_estimate, self.steps = loader, on_estimate, steps
        self.done = False

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)

    def __iter__(self) -> Iterator[Any]:
        # the loader's iterator is made here, not at the first batch, as iterating the loader itself
        # would: a DataLoader iterator draws its base seed from the global RNG when it is made
        # (tqdm.auto makes one in its constructor), so the run's random draws stay as without timing
        return self._timed(iter(self.loader))

    def _timed(self, batches: Iterator[Any]) -> Iterator[Any]:
        times: list[float] = []
        for batch in batches:
            times.append(time.perf_counter())
            if not self.done and len(times) == self.steps + 2:
                self.done = True
                self.on_estimate((times[-1] - times[1]) / self.steps)
            yield batch


def long_run_message(cfg: RunConfig, estimate_seconds: float, epoch_seconds: float, img_per_s: float) -> str:
    """The note printed when a run without a budget is estimated to pass :data:`LONG_RUN_SECONDS`:
    the estimate and the options that shorten it."""
    size = cfg.data.image_size
    smaller = [s for s in (64, 96, 128) if isinstance(size, int) and s < size]
    options = ["--time-budget 15m (fits the epochs to the time)"]
    if smaller:
        options.append(f"a smaller --image-size ({' or '.join(map(str, smaller))}; time grows with the pixels)")
    options.append(f"fewer --epochs (now {cfg.train.epochs})")
    if cfg.model.arch not in ("resnet18", "custom_cnn"):
        options.append("--arch resnet18 (model.arch)")
    return (f"note: this run will take about {format_duration(estimate_seconds)} ({cfg.train.epochs} epochs of about "
            f"{format_duration(epoch_seconds)} at {size} px, {img_per_s:.1f} training images/s); to shorten it: "
            + "; ".join(options))


class RunClock:
    """The whole run's ETA from the wall times of this invocation's epochs, and, without a budget,
    the long-run note: the first steps of the first epoch are timed as they happen
    (:meth:`timed`) and when the run's estimate passes :data:`LONG_RUN_SECONDS` the estimate and the
    options that shorten it are printed once (:func:`long_run_message`), through ``write``."""

    def __init__(self, cfg: RunConfig, start: float, steps_per_epoch: int, n_val_images: int,
                 write: Callable[[str], None], warn: bool = True) -> None:
        self.cfg, self.start, self.steps_per_epoch, self.n_val = cfg, start, steps_per_epoch, n_val_images
        self.write, self.warn = write, warn
        self.walls: list[float] = []
        self.first_estimate: Optional[float] = None  # seconds of one epoch, from the first steps
        self.epochs_left_at_start = 0
        self.warned = False

    def timed(self, loader: Any, epochs_left: int) -> Any:
        """``loader`` wrapped to time its first steps (:class:`TimedLoader`) when there is no epoch
        time yet; ``loader`` itself otherwise."""
        if self.walls or self.first_estimate is not None:
            return loader
        self.epochs_left_at_start = epochs_left
        return TimedLoader(loader, self._on_steps)

    def _on_steps(self, step_seconds: float) -> None:
        img_per_s = self.cfg.train.batch_size / step_seconds
        self.first_estimate = (self.steps_per_epoch * step_seconds
                               + self.n_val / (img_per_s * VALIDATION_SPEEDUP))
        self._maybe_warn(self.first_estimate, self.epochs_left_at_start, img_per_s)

    def _maybe_warn(self, epoch_s: float, epochs_left: int, img_per_s: float) -> None:
        total = time.time() - self.start + epochs_left * epoch_s
        if self.warn and not self.warned and total > LONG_RUN_SECONDS:
            self.warned = True
            self.write(long_run_message(self.cfg, total, epoch_s, img_per_s))

    def epoch_done(self, wall_seconds: float, epochs_left: int) -> None:
        """Record an epoch's wall time (checkpoints included); ``epochs_left`` after it."""
        self.walls.append(wall_seconds)
        if len(self.walls) == 1:
            steps = self.steps_per_epoch * self.cfg.train.batch_size
            self._maybe_warn(wall_seconds, epochs_left, steps / max(wall_seconds, 1e-9))

    def eta(self, epochs_left: int) -> Optional[float]:
        """Seconds until the run's last epoch ends (mean epoch wall time so far, or the first
        steps' estimate), ``None`` before anything is known."""
        per = sum(self.walls) / len(self.walls) if self.walls else self.first_estimate
        return None if per is None else epochs_left * per
