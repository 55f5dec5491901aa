"""The one training step and what it needs: loss, optimizer, loader, model setup, the recipe's EMA and mixup.

Everything that trains a network goes through here, so that what is measured is what trains:
:func:`medclass.engine.train` (every epoch), :func:`medclass.engine.lr_find.lr_find` (the LR range
test) and the time budget's speed probe (:func:`medclass.engine.budget.measure_candidate_speeds`,
which chooses ``image_size: auto`` from the speed of this step) all call :func:`train_step` on a
:class:`Fit` built by the same helpers.

:func:`train_step` does not read the loss back to the host (``loss.item()`` would wait for the GPU
every step): it returns the loss and logits as device tensors, and the caller reads them once per
logging interval (:meth:`medclass.core.progress.TrainProgress.due`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset

from ..core.config import RunConfig
from ..core.fileio import sha256_of_file
from ..core.runs import RunFiles
from ..core.scoring import balanced_accuracy as core_balanced_accuracy
from ..data import DecodedSplit, Preprocess, cache_dir_for, decode_split
from ..data.transforms import resize_batch
from ..models import build_model, weight_decay_param_groups
from ..models.pretrained import param_groups_with_lrs, set_backbone_bn_eval
from ..models.registry import model_options
from .distributed import DistContext, ShardedSampler, barrier, convert_sync_batchnorm
from .ema import ModelEma
from .mixup import Mixup, build_mixup, dominant_labels
from .schedules import LRSchedule

__all__ = ["Fit", "StepResult", "train_step", "set_epoch_trainable", "make_loss", "SoftTargetCE", "predicted_class",
           "balanced_accuracy", "FINETUNE_STRATEGIES", "backbone_frozen", "make_optimizer", "make_loader",
           "make_recipe", "decode_samples", "setup_model", "pretrained_record"]


def make_loss(cfg: RunConfig, train_labels: Tensor, num_classes: int) -> nn.Module:
    """Softmax cross-entropy (optionally label-smoothed), or BCE-with-logits for a single logit.
    With ``data.class_balance=loss``, classes are weighted by ``N / (K * count)`` (scikit-learn's
    "balanced" heuristic; for BCE as ``pos_weight = negatives / positives``).

    The loss takes integer targets ``(N,)`` (label smoothing applied by the loss) or, from mixup /
    CutMix (:mod:`medclass.engine.mixup`), soft float targets taken as they are: ``(N, K)`` class
    probabilities, or ``(N,)`` probabilities of class 1 for a single logit (see :class:`SoftTargetCE`
    and :class:`_BCEOneLogit`)."""
    counts = torch.bincount(train_labels, minlength=num_classes).float().clamp(min=1)
    balanced = cfg.data.class_balance == "loss"
    if cfg.model.single_logit:
        pos_weight = (counts[0] / counts[1]).reshape(1) if balanced else None
        return _BCEOneLogit(pos_weight, cfg.train.label_smoothing)
    weight = counts.sum() / (num_classes * counts) if balanced else None
    return SoftTargetCE(weight=weight, label_smoothing=cfg.train.label_smoothing)


class SoftTargetCE(nn.CrossEntropyLoss):
    """Softmax cross-entropy for logits ``(N, K)`` and either integer targets ``(N,)`` (exactly
    ``nn.CrossEntropyLoss(weight, label_smoothing)``) or soft float targets ``(N, K)`` whose rows
    sum to 1 (already smoothed; timm's ``SoftTargetCrossEntropy``). With class weights ``w`` and
    soft targets, each sample's loss ``-sum_k t_ik log p_ik`` is weighted by its target-weighted
    class weight ``w_i = sum_k t_ik w_k`` and the mean is ``sum_i w_i l_i / sum_i w_i``, which for
    one-hot targets is ``nn.CrossEntropyLoss``'s weighted mean. Returns a float32 scalar."""

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if not target.is_floating_point():
            return super().forward(logits, target)
        per_sample = -(target * F.log_softmax(logits.float(), dim=1)).sum(1)
        if self.weight is None:
            return per_sample.mean()
        w = target @ self.weight
        return (w * per_sample).sum() / w.sum()


class _BCEOneLogit(nn.Module):
    """BCE with logits for logits ``(N, 1)`` and integer targets ``(N,)`` in {0, 1} (smoothed here
    to ``t * (1 - s) + s / 2``), or soft float targets ``(N,)`` in [0, 1] (mixup; taken as they are),
    with ``pos_weight`` weighting the positive term ``-pos_weight * t * log(sigmoid(z))``."""

    def __init__(self, pos_weight: Optional[Tensor], smoothing: float) -> None:
        super().__init__()
        self.register_buffer("pos_weight", pos_weight, persistent=False)
        self.smoothing = smoothing

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        t = target.float().unsqueeze(1)
        if self.smoothing and not target.is_floating_point():
            t = t * (1 - self.smoothing) + 0.5 * self.smoothing
        return F.binary_cross_entropy_with_logits(logits.float(), t, pos_weight=self.pos_weight)


def predicted_class(logits: Tensor) -> Tensor:
    """Class index ``(N,)`` from logits ``(N, K)`` or a single logit ``(N, 1)`` (threshold 0)."""
    return (logits[:, 0] > 0).long() if logits.shape[1] == 1 else logits.argmax(1)


FINETUNE_STRATEGIES = ("full", "feature_extraction", "two_phase", "linear_probe")


def backbone_frozen(cfg: RunConfig, epoch: int) -> bool:
    """Whether the backbone trains in ``epoch`` (1-based): never with ``feature_extraction`` or
    ``linear_probe``, not in the first ``head_epochs`` with ``two_phase``, always with ``full``."""
    f = cfg.model.finetune
    if f not in FINETUNE_STRATEGIES:
        raise ValueError(f"unknown model.finetune {f!r}; choose one of {FINETUNE_STRATEGIES}")
    return f in ("feature_extraction", "linear_probe") or (f == "two_phase" and epoch <= cfg.model.head_epochs)


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


def decode_samples(cfg: RunConfig, samples, split: str, ctx: DistContext) -> DecodedSplit:
    """Decode a split through the cache; in DDP rank 0 builds the cache entry while the others wait,
    then they map the same file."""
    cache_dir = cache_dir_for(cfg.data)
    args = (samples, cfg.data.channels, cfg.data.image_size, cfg.data.skip_corrupt, f"decode {split}")
    if cache_dir is None or not ctx.enabled:
        return decode_split(*args, progress=cfg.train.progress and ctx.is_main, cache_dir=cache_dir, dicom_window=cfg.data.dicom_window, resize=cfg.data.resize)
    out = decode_split(*args, progress=cfg.train.progress, cache_dir=cache_dir, dicom_window=cfg.data.dicom_window, resize=cfg.data.resize) if ctx.is_main else None
    barrier(ctx)
    return out if out is not None else decode_split(*args, progress=False, cache_dir=cache_dir, dicom_window=cfg.data.dicom_window, resize=cfg.data.resize)


def setup_model(cfg: RunConfig, index, resume: bool, ctx: DistContext, device: torch.device,
                 channels_last: bool, log) -> tuple[nn.Module, nn.Module, Optional[dict]]:
    """Build the model for ``index``'s classes and ``data.channels``; load pretrained weights for
    a new run (a resumed run takes its weights from ``last.pt``; a source run of another task gets
    a fresh classifier head); move it to ``device`` (channels-last memory format when wanted).

    Returns ``(model, net, report)``: ``model`` holds the state that is saved and validated, ``net`` is
    what runs the training forward pass (``torch.compile`` with ``train.compile``, wrapped in
    DistributedDataParallel under ``torchrun``); ``report`` what loading the pretrained weights did
    (:meth:`ClassifierModel.load_pretrained_weights`), None without.

    Raises:
        medclass.models.pretrained.PretrainedError: the pretrained weights cannot be found or loaded.
    """
    pretrained = cfg.model.pretrained
    if cfg.model.drop_path_rate > 0 and "drop_path_rate" not in model_options(cfg.model.arch):
        raise ValueError(f"model.drop_path_rate (stochastic depth) needs a residual architecture (resnet18..152); "
                         f"{cfg.model.arch} has none: set it to 0")
    model = build_model(cfg.model, index.num_classes, cfg.data.channels)
    report = None
    if pretrained and not resume:  # a resumed run takes its weights from last.pt
        source_classes = RunFiles(Path(pretrained)).classes
        other_task = source_classes.is_file() and json.loads(source_classes.read_text()) != index.class_names
        # a run of another task: its classifier means other classes, even with the same count
        report = model.load_pretrained_weights(pretrained, index.num_classes, reset_head=other_task)
        log(f"pretrained: {report['loaded_keys']} tensors" + (f" of the {report['part']}" if "part" in report else "")
            + f" from {report['source']}" + ("; classifier head re-initialised" if report["head_reinitialised"] else "")
            + (f"; {report['input_conv']}" if report.get("input_conv") else ""))
    if ctx.enabled and cfg.train.sync_bn:
        model = convert_sync_batchnorm(model, device)
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    net: nn.Module = torch.compile(model) if cfg.train.compile else model  # what runs forward
    if ctx.enabled:
        freezing = cfg.model.finetune != "full" or model.has_frozen_parts
        net = DistributedDataParallel(
            net, device_ids=[device] if device.type == "cuda" else None, find_unused_parameters=freezing
        )
    return model, net, report


def pretrained_record(report: dict) -> dict:
    """What a run's spec keeps of its pretrained weights (``spec.extra["pretrained"]``): the source,
    the package, version and SHA-256 of installed ImageNet weights, and how the input convolution
    was adapted to the channels (from :meth:`ClassifierModel.load_pretrained_weights`'s report); for
    another weights file, its path and SHA-256."""
    record = {"source": report.get("source")}
    if report.get("weights"):
        record.update(report["weights"])
    elif report.get("file"):  # a weights file or run checkpoint of the user's: which one, exactly
        record.update(file=report["file"], sha256=sha256_of_file(report["file"]))
    if report.get("input_conv"):
        record["input_conv"] = report["input_conv"]
    return record


@dataclass
class Fit:
    """What the optimisation steps (:func:`train_step`) and the validation pass of every epoch use.
    ``schedule`` is None where nothing schedules the LR (the LR range test, the speed probe)."""

    model: nn.Module  # the state that is saved and validated
    net: nn.Module  # what runs the training forward pass (compiled, DDP-wrapped)
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Optional[LRSchedule]
    preprocess: Preprocess  # uint8 -> [0, 1] float -> normalised, on the device
    augment: Optional[nn.Module]  # batched augmentation on the device, or None
    device: torch.device
    amp_dtype: Optional[torch.dtype]  # bfloat16 autocast on CUDA, else None (float32)
    channels_last: bool
    ema: Optional[ModelEma] = None  # train.ema: the average validated and saved in best.pt
    mixup: Optional[Mixup] = None  # train.mixup_alpha / cutmix_alpha: batch mixing with soft targets


def make_recipe(cfg: RunConfig, model: nn.Module, num_classes: int) -> tuple[Optional[ModelEma], Optional[Mixup]]:
    """The EMA of ``model``'s weights (``train.ema``; made from the weights as they are now, on their
    device; a resumed run then loads its own from ``last.pt``) and the batch mixer (mixup / CutMix
    from ``train.mixup_alpha``, ``train.cutmix_alpha``, ``train.mix_prob``, with label smoothing),
    each None when off.

    Raises:
        ValueError: a bad ``train.ema_decay``, alpha or ``train.mix_prob`` (names the key).
    """
    tc = cfg.train
    ema = ModelEma(model, tc.ema_decay, tc.ema_warmup) if tc.ema else None
    outputs = 1 if cfg.model.single_logit else num_classes
    return ema, build_mixup(tc.mixup_alpha, tc.cutmix_alpha, tc.mix_prob, outputs, tc.label_smoothing)


def balanced_accuracy(predicted: Tensor, labels: Tensor) -> float:
    """:func:`medclass.core.scoring.balanced_accuracy` (scikit-learn's) of int ``predicted`` ``(N,)``
    against int ``labels`` ``(N,)``: the mean recall over the classes present in ``labels``."""
    return core_balanced_accuracy(labels.cpu().numpy(), predicted.cpu().numpy())


class StepResult(NamedTuple):
    """What one :func:`train_step` leaves, on the device, not read back: the batch's mean ``loss``
    (float32 scalar, detached), the ``logits`` (float ``(B, K)`` or ``(B, 1)``, detached) and
    ``counted``, the int64 labels ``(B,)`` its accuracy counts (with mixup the dominant target)."""

    loss: Tensor
    logits: Tensor
    counted: Tensor


def set_epoch_trainable(fit: Fit, cfg: RunConfig, epoch: int) -> None:
    """Put ``fit.model`` in training mode for ``epoch`` (1-based): which parts train
    (:func:`backbone_frozen`, plus the model's own frozen parts) and, with ``model.bn_stats: frozen``,
    the backbone's batch norms normalising with their pretrained running statistics."""
    fit.model.train()
    fit.model.set_trainable(backbone=not backbone_frozen(cfg, epoch))
    if cfg.model.bn_stats == "frozen":
        set_backbone_bn_eval(fit.model)


def train_step(fit: Fit, images: Tensor, labels: Tensor, *, clip_grad_norm: Optional[float] = None,
               side: Optional[int] = None) -> StepResult:
    """One optimisation step on a batch: uint8 ``images`` ``(B, C, H, W)`` and int64 ``labels`` ``(B,)``
    (on any device; moved to ``fit.device``) -> [0, 1] floats, batched augmentation (``fit.augment``),
    resize to ``side`` pixels (progressive resizing; None: as they are), mixup / CutMix (``fit.mixup``:
    soft targets), normalisation, forward under autocast (bfloat16 on CUDA), loss, backward (DDP averages
    the gradients over ranks), gradients clipped to ``clip_grad_norm`` (global L2 norm; None: not
    clipped), optimizer step, EMA update (``fit.ema``). The LR schedule is the caller's.

    Returns:
        :class:`StepResult`, device tensors; nothing is read back to the host (no device sync).
    """
    images = images.to(fit.device, non_blocking=True)
    labels = labels.to(fit.device, non_blocking=True)
    x = fit.preprocess.to_unit(images)
    if fit.augment is not None:
        x = fit.augment(x)
    if side is not None:
        x = resize_batch(x, side)
    targets, counted = labels, labels  # what the loss takes, what the accuracy counts
    if fit.mixup is not None:
        mixed = fit.mixup(x, labels)
        x, targets, counted = mixed.images, mixed.targets, dominant_labels(labels, mixed.lam)
    x = fit.preprocess.normalize_(x)
    if fit.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(fit.device.type, dtype=fit.amp_dtype or torch.float32, enabled=fit.amp_dtype is not None):
        logits = fit.net(x)
        loss = fit.criterion(logits.float(), targets)
    fit.optimizer.zero_grad(set_to_none=True)
    loss.backward()  # DDP averages the gradients over ranks here
    if clip_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(fit.model.parameters(), clip_grad_norm)
    fit.optimizer.step()
    if fit.ema is not None:
        fit.ema.update(fit.model)
    return StepResult(loss.detach(), logits.detach(), counted)
