"""The run contract: what a trained classifier takes and what its outputs mean (:class:`ModelSpec`).

One object, written once: ``medclass train`` writes ``RUN/model_spec.json`` before the first epoch
(:func:`spec_from_config`, :func:`write_spec`), ``medclass evaluate`` stores the fitted temperature
and operating threshold in it (:func:`update_calibration`), ``medclass export`` embeds the same
object in ONNX / TorchScript files, and evaluation, prediction (every backend), the web service,
the report, the model card and ensembles read it (:func:`read_spec`) and nothing else. The
numbers it describes (scaling, normalisation, probabilities, decision) are computed by
:mod:`medclass.core.pipeline`.

Runs written before ``model_spec.json`` existed still load: :func:`read_spec` builds their spec
from ``config.yaml``, ``classes.json`` and ``calibration.json`` with the same rules.

Torch-free on purpose (stdlib, numpy, yaml): the ONNX Runtime backend and the web service read a
spec without importing PyTorch.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from . import __version__
from . import pipeline
from .config import (  # RESIZE_RULES: squash | pad (data.resize); INTENSITY_RULES: fixed | per_image (data.intensity)
    DEFAULT_IMAGE_SIZE, INTENSITY_RULES, RESIZE_RULES, ConfigError, RunConfig,
)
from .fileio import atomic_write_text
from .runs import RunError, RunFiles

__all__ = [
    "ModelSpec", "SPEC_VERSION", "RESIZE_RULES", "INTENSITY_RULES", "IMAGENET_MEAN", "IMAGENET_STD", "IMAGENET_WEIGHT_NAMES",
    "ENSEMBLE_ARCH", "normalization_of", "spec_from_config", "recorded_config", "legacy_spec", "write_spec", "read_spec",
    "update_calibration", "calibration_record",
    "probabilities_from_logits",
]

#: Version of the stored :class:`ModelSpec` layout; readers refuse a newer one. Version 1 (medclass
#: 0.1 exports) lacked ``arch``, ``resize`` and ``medclass_version``; it reads with their defaults.
#: Version 4 added ``intensity`` (``data.intensity``); an older spec reads as ``"fixed"``, what it
#: meant. (A version-3 reader would ignore the field and feed a per-image model the wrong input, so
#: the version is bumped: such a reader refuses the spec.)
SPEC_VERSION = 4


#: Per-channel mean of RGB ImageNet images in [0, 1] (torchvision's normalisation for its weights).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
#: Per-channel standard deviation matching :data:`IMAGENET_MEAN` (torchvision).
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
#: ``model.pretrained`` values that name ImageNet weights (the keys and aliases of
#: :data:`medclass.models.pretrained.IMAGENET_CHECKPOINTS` / ``IMAGENET_ALIASES``, compared in lower case).
IMAGENET_WEIGHT_NAMES = frozenset({"imagenet", "imagenet-v1", "imagenet-v2"})

#: ``ModelSpec.arch`` of an ensemble run (members normalise inside the model).
ENSEMBLE_ARCH = "ensemble"


@dataclass
class ModelSpec:
    """The contract between an image file and a classifier's output.

    Attributes:
        class_names: output classes, in logit order (``K`` >= 2 unique, non-empty names).
        channels: 1 (greyscale, Pillow mode ``"L"``) or 3 (RGB) channels the model takes.
        image_size: square input side in pixels.
        mean, std: per-channel normalisation applied after scaling uint8 to [0, 1]
            (:func:`medclass.core.pipeline.preprocess`); ``None`` when the model takes [0, 1] input
            (also an ensemble, whose members normalise inside the model) or when :attr:`intensity`
            is ``"per_image"``.
        intensity: ``"fixed"`` (:attr:`mean`/:attr:`std`, or none) or ``"per_image"`` (each
            image and channel standardised by its own mean and standard deviation,
            :func:`medclass.core.pipeline.normalize_intensity`), :data:`INTENSITY_RULES`
            (``data.intensity``); ``"fixed"`` for specs stored before version 4 and for an ensemble.
        dicom_window: ``[center, width]`` in modality units (HU for CT) for DICOM input, or
            ``None`` (the file's own window, else its min..max).
        temperature: logits are divided by it before softmax/sigmoid (temperature scaling, Guo et
            al. 2017, fitted on validation by ``medclass evaluate``); 1.0 when uncalibrated.
        threshold: binary tasks only: predict ``class_names[1]`` when its probability is >= this
            operating threshold (chosen on validation); ``None`` means the arg-max.
        logit_adjustment: tasks without a threshold: ``K`` offsets added to the log-probabilities
            before the arg-max (post-hoc logit adjustment, Menon et al. 2021; ``-tau * log(prior)``
            with ``tau`` chosen on validation by ``medclass evaluate``,
            :func:`medclass.evaluation.calibration.fit_logit_adjustment`); ``None``: the arg-max.
        single_logit: the network emits one logit ``(N, 1)`` (sigmoid) instead of ``(N, K)``
            (softmax); see :attr:`task`.
        run: name of the run folder the model came from.
        checkpoint_epoch: epoch of the checkpoint the weights came from; -1 when not tied to one
            (the spec a run folder holds, written before training; an ensemble).
        arch: architecture name (``model.arch`` of the run, ``"ensemble"`` for an ensemble); ""
            for specs stored by medclass before version 2.
        resize: the resize rule, one of :data:`RESIZE_RULES`.
        medclass_version: the medclass version that wrote the spec ("" when unknown: a run
            written before ``model_spec.json`` existed, or a version-1 spec).
        version: layout version, :data:`SPEC_VERSION`.
        extra: free-form provenance (not interpreted).

    Raises:
        ValueError: a field out of range (the message names it).
    """

    class_names: list[str]
    channels: int
    image_size: int
    mean: Optional[list[float]] = None
    std: Optional[list[float]] = None
    intensity: str = "fixed"
    dicom_window: Optional[list[float]] = None
    temperature: float = 1.0
    threshold: Optional[float] = None
    logit_adjustment: Optional[list[float]] = None
    single_logit: bool = False
    run: str = ""
    checkpoint_epoch: int = -1
    arch: str = ""
    resize: str = "squash"
    medclass_version: str = ""
    version: int = SPEC_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"ModelSpec.channels must be 1 or 3, got {self.channels}")
        if not isinstance(self.image_size, int) or self.image_size < 1:
            raise ValueError(f"ModelSpec.image_size must be a positive integer (pixels), got {self.image_size!r}")
        if not isinstance(self.class_names, (list, tuple)):
            raise ValueError(f"ModelSpec.class_names must be a list of class names, got a "
                             f"{type(self.class_names).__name__}: {_short(self.class_names)}")
        if len(self.class_names) < 2:
            raise ValueError(f"ModelSpec.class_names needs at least 2 classes, got {self.class_names!r}")
        bad = [n for n in self.class_names if not isinstance(n, str) or not n.strip()]
        if bad:
            raise ValueError(f"ModelSpec.class_names must be non-empty strings; {len(bad)} are not, e.g. "
                             f"{_short(bad[:3])}")
        seen: set[str] = set()
        dup = sorted({n for n in self.class_names if n in seen or seen.add(n)})
        if dup:
            raise ValueError(f"ModelSpec.class_names has duplicate names {_short(dup[:5])}: each class needs its own "
                             "name (duplicates would merge their probabilities)")
        if not self.temperature > 0:
            raise ValueError(f"ModelSpec.temperature must be > 0, got {self.temperature}")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"ModelSpec.threshold must be in [0, 1] or None, got {self.threshold}")
        if self.logit_adjustment is not None and (
                len(self.logit_adjustment) != len(self.class_names)
                or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in self.logit_adjustment)):
            raise ValueError(f"ModelSpec.logit_adjustment needs {len(self.class_names)} finite numbers, "
                             f"got {self.logit_adjustment!r}")
        if self.single_logit and len(self.class_names) != 2:
            raise ValueError(f"ModelSpec.single_logit needs 2 classes, got {len(self.class_names)}")
        if (self.mean is None) != (self.std is None):
            raise ValueError("ModelSpec.mean and ModelSpec.std must both be given or both be None")
        if self.mean is not None:
            for name in ("mean", "std"):
                v = getattr(self, name)
                if len(v) not in (1, self.channels):
                    raise ValueError(f"ModelSpec.{name} needs 1 or {self.channels} values, got {v!r}")
            if not all(s > 0 for s in self.std):
                raise ValueError(f"ModelSpec.std must be > 0, got {self.std!r}")
        if self.resize not in RESIZE_RULES:
            raise ValueError(f"ModelSpec.resize must be one of {RESIZE_RULES}, got {self.resize!r}")
        if self.intensity not in INTENSITY_RULES:
            raise ValueError(f"ModelSpec.intensity must be one of {INTENSITY_RULES}, got {_short(self.intensity)}")
        if self.intensity == "per_image" and self.mean is not None:
            raise ValueError("ModelSpec.mean and ModelSpec.std must be None with intensity 'per_image' (each image "
                             "is standardised by its own statistics instead)")

    @property
    def task(self) -> str:
        """``"single_logit"`` (one logit, sigmoid) or ``"softmax"`` (one logit per class)."""
        return "single_logit" if self.single_logit else "softmax"

    @property
    def num_outputs(self) -> int:
        """Logits per image: 1 for a single-logit model, else ``len(class_names)``."""
        return 1 if self.single_logit else len(self.class_names)

    def to_json(self) -> str:
        """The spec as one JSON object (sorted keys), as stored in run folders and exported models."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelSpec":
        """Parse a stored spec (versions 1 to :data:`SPEC_VERSION`; fields an older spec lacks get
        their defaults: ``intensity`` ``"fixed"`` before version 4).

        Raises:
            ValueError: not JSON, a field is missing or invalid, or the spec was written by a newer
                medclass (``version`` > :data:`SPEC_VERSION`).
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"the stored model spec is not JSON: {e}") from e
        if not isinstance(data, dict):
            raise ValueError("the stored model spec is not a JSON object")
        if int(data.get("version", 1)) > SPEC_VERSION:
            raise ValueError(f"the model spec has version {data['version']}; this medclass reads up to "
                             f"{SPEC_VERSION}: upgrade medclass")
        known = set(cls.__dataclass_fields__)
        fields = {k: v for k, v in data.items() if k in known}
        fields["version"] = SPEC_VERSION  # read into the current layout
        try:
            return cls(**fields)
        except TypeError as e:
            raise ValueError(f"the stored model spec is incomplete: {e}") from e

    def check_images(self, images: np.ndarray) -> np.ndarray:
        """``images`` as a numpy array after checking it is uint8 ``(N, image_size, image_size,
        channels)``, what :func:`medclass.data.io.read_image` returns, stacked.

        Raises:
            ValueError: another dtype or shape.
        """
        images = np.asarray(images)
        s, c = self.image_size, self.channels
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (s, s, c):
            raise ValueError(f"images must be uint8 (N, {s}, {s}, {c}) for this model, got {images.dtype} {images.shape}")
        return images

    def probabilities(self, logits):
        """Calibrated class probabilities float32 ``(N, K)`` from logits ``(N, K)`` or ``(N, 1)``
        (numpy or torch): :func:`medclass.core.pipeline.probabilities` at :attr:`temperature`."""
        return pipeline.probabilities(logits, self.temperature)

    def decide(self, probs):
        """Predicted class indices ``(N,)`` int64 from probabilities ``(N, K)``: the operating
        threshold on ``P(class_names[1])`` for a binary task that has one, else the arg-max after
        the :attr:`logit_adjustment` when there is one (:func:`medclass.core.pipeline.decide`)."""
        return pipeline.decide(probs, self.threshold, self.logit_adjustment)


def _short(value: Any, limit: int = 120) -> str:
    """``repr(value)`` cut to ``limit`` characters, for messages about untrusted files."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def probabilities_from_logits(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """float32 ``(N, K)`` probabilities from logits ``(N, K)`` (softmax) or ``(N, 1)`` (binary:
    ``[1 - sigmoid, sigmoid]``), after dividing by ``temperature``: :func:`medclass.core.pipeline.probabilities`
    (kept under its old name)."""
    return pipeline.probabilities(logits, temperature)


# ---- building, writing and reading the spec of a run -------------------------------------------


def normalization_of(cfg: RunConfig) -> tuple[Optional[list[float]], Optional[list[float]]]:
    """The fixed mean/std a run's model takes, the one rule: ``(None, None)`` with
    ``data.intensity: per_image`` (each image is standardised by its own statistics instead,
    :func:`medclass.core.pipeline.normalize_intensity`); else ``data.mean``/``data.std`` when
    ``data.normalize`` is on; else ImageNet's (:data:`IMAGENET_MEAN`/:data:`IMAGENET_STD`) when
    ``model.pretrained`` names ImageNet weights (:data:`IMAGENET_WEIGHT_NAMES`), which expect
    that input (one channel: the means of the three, 0.449 and 0.226, as the stem's filters are summed
    over RGB); else ``(None, None)`` (the model takes [0, 1] input)."""
    if cfg.data.intensity == "per_image":
        return None, None
    if cfg.data.normalize:
        return [float(v) for v in cfg.data.mean], [float(v) for v in cfg.data.std]
    pretrained = cfg.model.pretrained
    if isinstance(pretrained, str) and pretrained.lower() in IMAGENET_WEIGHT_NAMES:
        if int(cfg.data.channels) == 1:  # the stem's RGB filters are summed: the grey image stands for all three
            return [float(np.mean(IMAGENET_MEAN))], [float(np.mean(IMAGENET_STD))]
        return list(IMAGENET_MEAN), list(IMAGENET_STD)
    return None, None


def recorded_config(cfg: RunConfig, spec: ModelSpec) -> RunConfig:
    """What a run's ``config.yaml`` records: a copy of ``cfg`` whose ``data.normalize``/``mean``/``std``
    are the normalisation the model is trained with (``spec``'s, e.g. ImageNet's for ImageNet
    weights), as medclass has always written it; ``cfg`` itself is not changed. Reading the copy
    back gives the same spec (:func:`normalization_of` of it equals ``spec``'s mean/std)."""
    saved = copy.deepcopy(cfg)
    if spec.mean is not None and not cfg.data.normalize:
        saved.data.normalize, saved.data.mean, saved.data.std = True, list(spec.mean), list(spec.std)
    return saved


def spec_from_config(cfg: RunConfig, class_names: Sequence[str], run_name: str, epoch: int = -1) -> ModelSpec:
    """The spec of a run trained with ``cfg`` on ``class_names``: input size, channels, DICOM
    window, intensity rule from ``cfg.data``; mean/std from :func:`normalization_of`; task kind and architecture
    from ``cfg.model``; uncalibrated (temperature 1.0, no threshold); provenance ``run_name``,
    ``epoch`` and this medclass's version. ``cfg`` is not changed. ``data.image_size: auto``
    without a time budget is :data:`~medclass.core.config.DEFAULT_IMAGE_SIZE`.

    Raises:
        ValueError: a field out of range (see :class:`ModelSpec`), or ``image_size: auto`` with a
            time budget (chosen when training starts: resolve it first).
    """
    mean, std = normalization_of(cfg)
    d = cfg.data
    size = d.image_size
    if size == "auto":
        if cfg.train.time_budget is not None:
            raise ValueError("data.image_size 'auto' with a time budget is chosen when training starts; "
                             "a spec needs the size in pixels")
        size = DEFAULT_IMAGE_SIZE
    if d.intensity == "auto":
        raise ValueError("data.intensity 'auto' is chosen from the training images when training starts "
                         "(medclass.engine.intensity.resolve_intensity); a spec needs the rule")
    return ModelSpec(
        class_names=[str(c) for c in class_names],
        channels=int(d.channels),
        image_size=int(size),
        mean=mean,
        std=std,
        intensity=str(d.intensity),
        dicom_window=[float(v) for v in d.dicom_window] if d.dicom_window is not None else None,
        single_logit=bool(cfg.model.single_logit),
        run=str(run_name),
        checkpoint_epoch=int(epoch),
        arch=str(cfg.model.arch),
        resize=str(d.resize),
        medclass_version=__version__,
        # binary tasks: the class sensitivity/specificity are about (medclass.core.positive_class), when chosen
        extra={"positive_class": str(d.positive_class)} if getattr(d, "positive_class", None) is not None else {},
    )


def write_spec(spec: ModelSpec, run_dir: Union[str, os.PathLike]) -> Path:
    """Write ``spec`` to ``RUN/model_spec.json`` atomically (:func:`medclass.core.fileio.atomic_write_text`:
    a temporary file in the run folder renamed into place), so a reader never sees half a spec.
    Returns the path written.

    Raises:
        RunError: a symbolic link sits at ``model_spec.json`` (the spec is not written through
            it), or the folder cannot be written (the message names the file).
    """
    path = RunFiles(Path(run_dir)).spec
    if path.is_symlink():
        raise RunError(f"{path} is a symbolic link; refusing to write the model spec through it (remove the link)")
    text = json.dumps(json.loads(spec.to_json()), indent=1, sort_keys=True) + "\n"
    try:
        atomic_write_text(path, text)
    except OSError as e:
        raise RunError(f"cannot write the model spec {path}: {e}") from e
    return path


def _read_json(path: Path, what: str) -> Any:
    """The JSON value in ``path``.

    Raises:
        ValueError: not UTF-8 JSON; the message names the file and ends with ``what`` (what to do).
    """
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not JSON ({e}); {what}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not JSON (not UTF-8 text: {e.reason} at byte {e.start}); {what}") from None


def _threshold_of(record: dict) -> Optional[float]:
    threshold = record.get("threshold")
    if isinstance(threshold, dict):  # calibration.json: the dict of choose_threshold
        threshold = threshold.get("threshold")
    return float(threshold) if threshold is not None else None


def _logit_adjustment_of(record: dict) -> Optional[list[float]]:
    adjustment = record.get("logit_adjustment")
    if isinstance(adjustment, dict):  # calibration.json: the dict of fit_logit_adjustment
        adjustment = adjustment.get("offsets")
    return [float(v) for v in adjustment] if adjustment is not None else None


def _calibration_of(path: Path) -> Optional[dict]:
    """The record in a ``calibration.json`` (written by ``medclass evaluate``), or None when there is none.

    Raises:
        ValueError: not a JSON object (names the file).
    """
    if not path.is_file():
        return None
    again = "re-run `medclass evaluate` on the run (or delete the file)"
    cal = _read_json(path, again)
    if not isinstance(cal, dict):
        raise ValueError(f"{path} is not a JSON object; {again}")
    t = cal.get("temperature")
    if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0):
        raise ValueError(f"{path}: temperature must be a number > 0, got {_short(t)}; {again}")
    try:
        threshold = _threshold_of(cal)
    except (TypeError, ValueError):
        raise ValueError(f"{path}: threshold must be a number in [0, 1] or null, got {_short(cal.get('threshold'))}; "
                         f"{again}") from None
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ValueError(f"{path}: threshold must be in [0, 1], got {threshold}; {again}")
    return cal


def calibration_record(spec: ModelSpec) -> Optional[dict]:
    """How ``spec``'s temperature and threshold were fitted (the record ``medclass evaluate``
    stores, the layout of ``calibration.json``: ``temperature``, ``threshold`` (a dict with
    ``threshold``, ``method``...), ``fitted_on``, ECE and loss before/after...), or None when the
    model was never calibrated."""
    record = spec.extra.get("calibration")
    return record if isinstance(record, dict) else None


def legacy_spec(cfg: RunConfig, class_names: Sequence[str], run_dir: Union[str, os.PathLike], epoch: int = -1,
                ensemble: bool = False) -> ModelSpec:
    """The spec of a run folder that has no ``model_spec.json`` (written before it existed, or a
    run assembled in memory): :func:`spec_from_config` of ``cfg`` and ``class_names``, calibrated
    from the folder's ``calibration.json`` when there is one. An ensemble has no mean/std (its
    members normalise inside the model: intensity ``"fixed"``), arch ``"ensemble"`` and soft-voted (softmax) output.
    ``medclass_version`` is "" (unknown).

    Raises:
        ValueError: a ``calibration.json`` that is not JSON (names the file), or a field out of range.
    """
    root = Path(run_dir)
    spec = dataclasses.replace(spec_from_config(cfg, class_names, root.resolve().name, epoch), medclass_version="")
    record = _calibration_of(RunFiles(root).calibration)
    if record is not None:
        spec = _with_calibration(spec, float(record.get("temperature") or 1.0), _threshold_of(record), record,
                                 _logit_adjustment_of(record))
    if ensemble:
        spec = dataclasses.replace(spec, mean=None, std=None, intensity="fixed", single_logit=False, arch=ENSEMBLE_ARCH)
    return spec


def read_spec(run_dir: Union[str, os.PathLike]) -> ModelSpec:
    """The spec of a run folder: ``RUN/model_spec.json``, or for a run written before it existed,
    the same contract rebuilt from ``config.yaml``, ``classes.json`` and ``calibration.json`` (an
    ensemble run: also ``ensemble.json``) by :func:`legacy_spec`.

    Raises:
        RunError: not a run folder (no ``model_spec.json``, and no ``config.yaml`` or ``classes.json``).
        ValueError: a spec, ``classes.json`` or ``calibration.json`` that is not valid JSON or has a
            field out of range; the message names the file.
    """
    files = RunFiles(Path(run_dir))
    if files.spec.is_file():
        try:
            return ModelSpec.from_json(files.spec.read_text())
        except ValueError as e:
            raise ValueError(f"{files.spec}: {e}") from e
    if not files.config.is_file() or not files.classes.is_file():
        raise RunError(f"{run_dir} is not a medclass run folder (no config.yaml or classes.json)")
    try:
        cfg = RunConfig.load(files.config)
    except ConfigError as e:
        raise ValueError(f"{files.config}: {e}") from e
    class_names = _read_json(files.classes, "it should list the run's class names")
    if not isinstance(class_names, list):
        raise ValueError(f"{files.classes} must be a JSON list of class names, got a {type(class_names).__name__}; "
                         "write the names in logit order, e.g. [\"benign\", \"malignant\"]")
    try:
        ModelSpec(class_names=class_names, channels=1, image_size=1)  # the names' own checks, before str()
    except ValueError as e:
        raise ValueError(f"{files.classes}: {e}") from None
    try:
        return legacy_spec(cfg, class_names, files.root, ensemble=files.ensemble.is_file())
    except ValueError as e:
        if str(files.root) in str(e):
            raise
        raise ValueError(f"{files.root}: {e}") from e


def _with_calibration(spec: ModelSpec, temperature: float, threshold: Optional[float],
                      record: Optional[dict], logit_adjustment: Optional[Sequence[float]] = None) -> ModelSpec:
    if record is None:
        record = {"temperature": float(temperature)}
        if threshold is not None:
            record["threshold"] = {"threshold": float(threshold)}
        if logit_adjustment is not None:
            record["logit_adjustment"] = {"offsets": [float(v) for v in logit_adjustment]}
    extra = {**spec.extra, "calibration": json.loads(json.dumps(record))}
    return dataclasses.replace(spec, temperature=float(temperature),
                               threshold=float(threshold) if threshold is not None else None,
                               logit_adjustment=[float(v) for v in logit_adjustment] if logit_adjustment is not None
                               else None, extra=extra)


def update_calibration(run_dir: Union[str, os.PathLike], temperature: float, threshold: Optional[float] = None,
                       record: Optional[dict] = None, logit_adjustment: Optional[Sequence[float]] = None) -> ModelSpec:
    """Store a fitted ``temperature``, binary operating ``threshold`` (None: arg-max) and
    multi-class ``logit_adjustment`` (None: the arg-max, :attr:`ModelSpec.logit_adjustment`) in the run's
    spec (:func:`read_spec`, then :func:`write_spec`) and return the updated spec. ``medclass
    evaluate`` calls it after fitting them on the validation split.

    Args:
        record: how they were fitted (JSON-serialisable; ``medclass evaluate`` passes what it also
            writes to ``calibration.json``), kept as ``spec.extra["calibration"]``
            (:func:`calibration_record`); None: ``{"temperature": ..., "threshold": {"threshold": ...}}``.

    Raises:
        RunError, ValueError: see :func:`read_spec`, :func:`write_spec`; a temperature <= 0 or a
            threshold outside [0, 1].
    """
    spec = _with_calibration(read_spec(run_dir), temperature, threshold, record, logit_adjustment)
    write_spec(spec, run_dir)
    return spec
