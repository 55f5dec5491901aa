"""INT8 ONNX models for the CPU: static quantization calibrated on the run's validation images.

``medclass export RUN --format onnx --quantize int8`` calls :func:`quantize_run` on the FP32 file
:func:`medclass.serving.export.export_run` has just written:

1. the FP32 graph is pre-processed for quantization (ONNX Runtime's ``quant_pre_process``: shape
   inference and graph optimisation; skipped with a note if it fails);
2. ``onnxruntime.quantization.quantize_static`` quantizes it in the QDQ format (QuantizeLinear /
   DequantizeLinear pairs around the quantized operators, which ONNX Runtime fuses into integer
   kernels on the CPU): weights signed 8-bit, symmetric, per output channel; activations unsigned
   8-bit, asymmetric (ONNX Runtime's "U8S8", the pair its x86 integer kernels (AVX2, AVX-512 VNNI)
   are fastest with: measured here 3.4x FP32's images/s, while S8S8 ran slower than FP32). Their
   ranges are calibrated on the run's validation images through a :class:`ValidationImages`
   ``CalibrationDataReader`` (the same decoded uint8 ``(N, C, H, W)`` batches the graph takes: the
   preprocessing and calibration stay inside the graph) with the Percentile method (the
   :data:`CALIBRATION_PERCENTILE` percentile of each tensor's absolute values: one outlier
   activation no longer stretches a range, as it does with MinMax; it kept chest-ct's validation
   accuracy where MinMax lost an image), one batch at a time (``CalibStridedMinMax``: the
   histograms are merged batch by batch, so memory does not grow with the number of images);
3. both models are evaluated on the run's validation and test splits (accuracy of
   ``spec.decide``, images per second);
4. the INT8 model is written (atomically, the run's :class:`~medclass.core.spec.ModelSpec` in its
   metadata as in the FP32 file) only if it loses at most ``tolerance`` accuracy points against
   FP32 on each split, unless ``force``; otherwise :class:`QuantizationRefused` says by how much.

Sources: ONNX Runtime, "Quantize ONNX models"
(https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html): static
quantization, QDQ format, ``quant_pre_process``, per-channel weights for convolutions.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from ..core.runs import RunFiles

__all__ = ["quantize_run", "QuantizeResult", "QuantizationRefused", "ValidationImages", "default_int8_path",
           "DEFAULT_TOLERANCE_POINTS", "CALIBRATION_IMAGES"]

#: Accuracy points (percentage points) the INT8 model may lose against FP32 on a split.
DEFAULT_TOLERANCE_POINTS = 1.0
#: Validation images used to calibrate the activation ranges (the first ones, in manifest order).
CALIBRATION_IMAGES = 512
#: Images per calibration batch; every batch has this size (ONNX Runtime's histogram calibration
#: stacks a batch's outputs, so the images are trimmed to a multiple of it).
_CALIBRATION_BATCH = 8
#: Percentile of each activation's absolute values taken as its range (ONNX Runtime's
#: ``CalibPercentile`` default, 99.999).
CALIBRATION_PERCENTILE = 99.999
#: Images timed for the images/s figures (the split repeated when it has fewer).
_SPEED_IMAGES = 256


class QuantizationRefused(ValueError):
    """The INT8 model loses more accuracy than allowed; nothing was written. The message gives the
    accuracies and how to write it anyway (``--force``) or what to try."""


def default_int8_path(run_dir: Union[str, os.PathLike]) -> Path:
    """``RUN/export/model.int8.onnx``."""
    return RunFiles(Path(run_dir)).export_int8


class ValidationImages(CalibrationDataReader):
    """An ``onnxruntime.quantization.CalibrationDataReader`` over decoded images.

    The images are served as batches of equal size ``batch`` (``min(batch, N)``; the last
    ``N mod batch`` images are left out), and ``len()`` / :meth:`set_range` count batches, as ONNX
    Runtime's strided calibration (``CalibStridedMinMax``) expects.

    Args:
        images: uint8 ``(N, C, H, W)``, what the exported graph's input ``"image"`` takes.
        batch: images per calibration run.
    Raises:
        ValueError: no images.
    """

    def __init__(self, images: np.ndarray, batch: int = _CALIBRATION_BATCH) -> None:
        if len(images) == 0:
            raise ValueError("no images to calibrate on")
        self.batch = max(1, min(int(batch), len(images)))
        n = len(images) - len(images) % self.batch
        self.images = np.ascontiguousarray(images[:n], dtype=np.uint8)
        self._next, self._end = 0, len(self)

    def __len__(self) -> int:
        """Number of batches."""
        return len(self.images) // self.batch

    def set_range(self, start_index: int, end_index: int) -> None:
        """Serve batches ``start_index`` to ``end_index - 1`` next."""
        self._next, self._end = start_index, min(end_index, len(self))

    def get_next(self) -> Optional[dict[str, np.ndarray]]:
        """The next ``{"image": uint8 (batch, C, H, W)}``, or None when the range is done."""
        from .onnx_backend import IMAGE_INPUT

        if self._next >= self._end:
            return None
        chunk = self.images[self._next * self.batch : (self._next + 1) * self.batch]
        self._next += 1
        return {IMAGE_INPUT: chunk}

    def rewind(self) -> None:
        self._next, self._end = 0, len(self)


@dataclass
class QuantizeResult:
    """What :func:`quantize_run` measured and wrote.

    Attributes:
        path: the INT8 file (None when refused: never, :class:`QuantizationRefused` is raised then).
        accuracy: ``{"valid": {"fp32": a, "int8": b, "n": n}, "test": {...}}``, accuracies in [0, 1].
        images_per_second: ``{"fp32": x, "int8": y, "split": name}`` on the test split (else
            validation; repeated to at least 256 images), batch 32, ONNX Runtime's default threads.
        calibration_images: validation images used to calibrate.
        forced: written although it lost more than the tolerance.
        tolerance_points: the tolerance in accuracy points.
        notes: what was skipped (e.g. the pre-processing step).
    """

    path: Optional[Path]
    accuracy: dict
    images_per_second: dict
    calibration_images: int
    forced: bool
    tolerance_points: float
    notes: list[str] = field(default_factory=list)

    def worst_loss_points(self) -> float:
        """The largest accuracy loss (FP32 - INT8) over the splits, in points."""
        return max((100 * (s["fp32"] - s["int8"]) for s in self.accuracy.values()), default=0.0)


def _split_arrays(run, split: str) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """uint8 ``(N, C, H, W)`` images and int64 ``(N,)`` labels of a split of the run's manifest, or None."""
    from ..data import cache_dir_for, decode_split, read_manifest

    if not run.files.manifest.is_file():
        return None
    samples = read_manifest(run.files.manifest).splits.get(split) or []
    if not samples:
        return None
    spec, c = run.spec, run.cfg.data
    decoded = decode_split(samples, spec.channels, spec.image_size, c.skip_corrupt, f"decode {split}", False,
                           cache_dir=cache_dir_for(c), dicom_window=spec.dicom_window, resize=spec.resize)
    return np.asarray(decoded.images.numpy(), dtype=np.uint8), np.asarray(decoded.labels.numpy(), dtype=np.int64)


def _accuracy_and_speed(path: Path, images: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    from ..core.pipeline import nchw_to_hwc
    from .onnx_backend import load_onnx_classifier

    clf = load_onnx_classifier(path, batch_size=32)
    hwc = nchw_to_hwc(images)
    accuracy = float((clf.spec.decide(clf.predict_proba(hwc)) == labels).mean())  # also the warm-up
    timed = hwc if len(hwc) >= _SPEED_IMAGES else np.concatenate([hwc] * -(-_SPEED_IMAGES // len(hwc)))
    t0 = time.perf_counter()
    clf.predict_proba(timed)
    return accuracy, len(timed) / max(time.perf_counter() - t0, 1e-9)


def quantize_run(
    run,
    fp32_path: Union[str, os.PathLike],
    out: Optional[Union[str, os.PathLike]] = None,
    tolerance_points: float = DEFAULT_TOLERANCE_POINTS,
    force: bool = False,
    calibration_images: int = CALIBRATION_IMAGES,
) -> QuantizeResult:
    """Quantize a run's FP32 ONNX export to INT8 (static, QDQ), calibrated on its validation images,
    and write it if it keeps its accuracy (see the module docstring).

    Args:
        run: the :class:`~medclass.engine.LoadedRun` the FP32 file was exported from (its manifest
            gives the validation and test images; its spec is stored in the INT8 file).
        fp32_path: the FP32 file written by :func:`medclass.serving.export.export_run`.
        out: the INT8 file; default :func:`default_int8_path`.
        tolerance_points: the most accuracy (percentage points) the INT8 model may lose on the
            validation or the test split.
        force: write the INT8 model even when it loses more.
        calibration_images: at most this many validation images calibrate the ranges.

    Returns:
        A :class:`QuantizeResult` (``path`` written).

    Raises:
        QuantizationRefused: the INT8 model loses more than ``tolerance_points`` and not ``force``
            (nothing written).
        ValueError: the run has no validation images (the message says what to do), or
            ``tolerance_points`` < 0.
        ImportError: onnxruntime's quantization tools are missing.
        OSError: the file cannot be written.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from ..core.fileio import atomic_write
    from .onnx_backend import SPEC_KEY

    if not tolerance_points >= 0:
        raise ValueError(f"the accuracy tolerance must be >= 0 points, got {tolerance_points}")
    fp32_path = Path(fp32_path)
    path = Path(out) if out is not None else default_int8_path(run.files.root)
    valid = _split_arrays(run, "valid")
    if valid is None:
        raise ValueError(f"{run.files.root} has no validation images in its manifest to calibrate INT8 "
                         "quantization on; train the run with a validation split (data.val_fraction > 0)")
    test = _split_arrays(run, "test")
    notes: list[str] = []
    calib = valid[0][:calibration_images]
    with tempfile.TemporaryDirectory(prefix="medclass-int8-") as work:
        work = Path(work)
        source = fp32_path
        try:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            quant_pre_process(str(fp32_path), str(work / "pre.onnx"), skip_symbolic_shape=True)
            source = work / "pre.onnx"
        except Exception as e:  # an unusual graph: quantize it as it is
            notes.append(f"pre-processing skipped ({type(e).__name__}: {' '.join(str(e).split())[:120]})")
        reader = ValidationImages(calib)
        quantize_static(
            str(source), str(work / "int8.onnx"), reader, quant_format=QuantFormat.QDQ,
            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.Percentile,
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True, "CalibStridedMinMax": 1,
                           "CalibPercentile": CALIBRATION_PERCENTILE},
        )
        proto = onnx.load(str(work / "int8.onnx"))
        spec_json = run.spec.to_json()
        for prop in [p for p in proto.metadata_props if p.key == SPEC_KEY]:
            proto.metadata_props.remove(prop)
        proto.metadata_props.add(key=SPEC_KEY, value=spec_json)
        proto.doc_string = f"medclass classifier {run.spec.run!r}, INT8 (static QDQ, calibrated on {len(reader.images)} validation images)"
        onnx.save(proto, str(work / "int8.onnx"))

        accuracy: dict = {}
        speed: dict = {}
        for name, arrays in (("valid", valid), ("test", test)):
            if arrays is None:
                continue
            a32, s32 = _accuracy_and_speed(fp32_path, *arrays)
            a8, s8 = _accuracy_and_speed(work / "int8.onnx", *arrays)
            accuracy[name] = {"fp32": a32, "int8": a8, "n": int(len(arrays[1]))}
            speed = {"fp32": s32, "int8": s8, "split": name}  # the last split measured: test when there is one
        result = QuantizeResult(None, accuracy, speed, len(reader.images), False, float(tolerance_points), notes)
        loss = result.worst_loss_points()
        if loss > tolerance_points and not force:
            lines = "; ".join(f"{k} accuracy {v['fp32']:.4f} FP32 -> {v['int8']:.4f} INT8" for k, v in accuracy.items())
            raise QuantizationRefused(
                f"the INT8 model loses {loss:.2f} accuracy points ({lines}), more than the tolerance of "
                f"{tolerance_points:g}; nothing written to {path}. Keep the FP32 model, allow more loss with "
                "--tolerance, or write it anyway with --force")
        atomic_write(path, lambda tmp: tmp.write_bytes((work / "int8.onnx").read_bytes()))
    result.path = path
    result.forced = loss > tolerance_points
    return result
