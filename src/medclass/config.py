"""Run configuration: three typed sections (data, model, train), saved as YAML in every run.

A config is built from defaults, then a YAML file (``--config``), then ``--set section.key=value``
overrides, in that order. Unknown keys are errors that name the key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

import yaml

__all__ = ["DataConfig", "ModelConfig", "TrainConfig", "RunConfig", "ConfigError", "RESIZE_RULES"]

#: How an image becomes the model's ``image_size`` square (``DataConfig.resize``; the code is
#: :func:`medclass.data.io.to_model_input`): ``squash`` resizes to the square whatever the aspect
#: ratio (the default, medclass's only rule before), ``pad`` keeps the aspect ratio and pads with black.
RESIZE_RULES = ("squash", "pad")


class ConfigError(ValueError):
    """A config file or override names an unknown key or gives a value of the wrong type."""


def _check_resize(value: Any) -> None:
    if value not in RESIZE_RULES:
        raise ConfigError(f"data.resize must be one of {' | '.join(RESIZE_RULES)}, got {value!r}")


@dataclass
class DataConfig:
    """Where the images are and how they become tensors.

    ``source``: a folder (class folders, optionally under train/valid/test), a CSV manifest, or a
    MedMNIST ``.npz``; ``None`` means the bundled BreastMNIST. ``image_size`` is in pixels (square).
    ``channels``: 3 (RGB) or 1 (greyscale). Split fractions apply only where the data has no split.
    ``resize``: ``squash`` | ``pad`` (:data:`RESIZE_RULES`).

    Raises:
        ConfigError: ``resize`` is not a rule of :data:`RESIZE_RULES`.
    """

    source: Optional[str] = None
    image_size: int = 224
    channels: int = 3
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    split_seed: int = 0
    class_map: dict[str, str] = field(default_factory=dict)
    manifest: Optional[str] = None  # a split manifest CSV written by an earlier run
    path_column: Optional[str] = None
    id_column: Optional[str] = None
    label_column: Optional[str] = None
    group_column: Optional[str] = None
    skip_corrupt: bool = False
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
    # augmentation (applied batched on the training device, kornia)
    augment: bool = True
    crop_scale: list[float] = field(default_factory=lambda: [0.8, 1.0])
    hflip: bool = True
    vflip: bool = False
    rotation_degrees: float = 10.0
    brightness: float = 0.1
    contrast: float = 0.1
    class_balance: str = "none"  # none | loss | sampler

    def __post_init__(self) -> None:
        _check_resize(self.resize)


@dataclass
class ModelConfig:
    """Architecture: ``arch`` in resnet18/34/50/101/152 (:class:`medclass.models.ResNet`),
    ``custom_cnn`` (:class:`medclass.models.CustomCNN`) or ``chained`` (a ResNet-50 cut after
    ``chain_stage`` feeding a custom CNN, :class:`medclass.models.ChainedModel`)."""

    arch: str = "resnet50"
    stem: str = "imagenet"  # imagenet | small
    zero_init_residual: bool = True
    head_hidden: list[int] = field(default_factory=list)
    dropout: float = 0.0
    head_kind: str = "dense"  # dense | bn
    single_logit: bool = False  # binary tasks: one logit, sigmoid + BCE
    # starting weights: imagenet | imagenet-v1 | imagenet-v2 | a .pth/.pt/.safetensors/.h5 file | a run folder
    pretrained: Optional[str] = None
    finetune: str = "full"  # full | feature_extraction (frozen backbone) | two_phase
    head_epochs: int = 0  # two_phase: epochs that train the head alone before unfreezing
    backbone_lr_mult: float = 1.0  # backbone LR = train.lr * this (per-group learning rates)
    cnn_widths: list[int] = field(default_factory=lambda: [32, 64, 128, 256])  # custom_cnn / chained
    cnn_convs_per_block: int = 1
    chain_stage: int = 2  # chained: cut the ResNet-50 after layer1..layer4
    chain_freeze_resnet: bool = False  # chained: keep the ResNet part fixed


@dataclass
class TrainConfig:
    """Optimisation. ``lr`` is the peak learning rate; ``schedule`` in
    constant | exponential | plateau | cosine."""

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
    monitor: str = "val_loss"
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
    progress: bool = True


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        cfg = cls()
        cfg.update(d)
        return cfg

    @classmethod
    def load(cls, path: Path) -> "RunConfig":
        try:
            d = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as e:
            raise ConfigError(f"cannot read config {path}: {e}") from e
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
            value = yaml.safe_load(value) if value != "" else None
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
        setattr(obj, key, value)


#: Named recipes applied by ``medclass train`` when no data or config is given.
#: ``breastmnist``: the bundled default (28 px greyscale ultrasound), ResNet-50 with the ImageNet
#: stem at the native 28 px (about 8 s an epoch on 2 CPU cores, so 50 epochs fit in 10 minutes).
#: The best checkpoint is chosen by validation accuracy: on this set's 78 validation images the
#: minimum of val_loss was a one-epoch spike (epoch 18 of results/breastmnist-val-loss) while
#: validation accuracy held 0.90-0.92 over the last 10 epochs of the cosine schedule.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "breastmnist": {
        "data": {"image_size": 28, "channels": 1, "rotation_degrees": 10.0, "crop_scale": [0.8, 1.0]},
        "model": {"arch": "resnet50", "stem": "imagenet"},
        "train": {"epochs": 50, "batch_size": 32, "lr": 1e-3, "schedule": "cosine", "monitor": "val_accuracy"},
    },
}
