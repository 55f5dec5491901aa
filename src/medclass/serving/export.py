"""Export a classifier to ONNX or TorchScript, and open an ONNX file with ONNX Runtime (CPU).

Two kinds of export:

* :func:`export_run` (``medclass export RUN``): a whole run, preprocessing and calibration baked
  in, its :class:`~medclass.core.spec.ModelSpec` stored inside. Input ``"image"`` uint8
  ``(N, C, H, W)``; outputs ``"logits"`` and ``"probabilities"`` float32. ONNX or TorchScript.
  Opened by :func:`medclass.serving.onnx_backend.load_onnx_classifier` (without PyTorch) and
  :func:`medclass.serving.predictor.load_torchscript_classifier`.
* :func:`export_onnx` (used by the benchmarks): the bare network, input ``"input"`` float32
  ``(N, C, H, W)`` already scaled and normalised exactly as in training; output ``"logits"``
  float32 ``(N, K)``.

In both the batch axis ``N`` is dynamic; ``C``, ``H`` and ``W`` are fixed at export. ONNX needs
``onnx``, ``onnxscript`` (exporter) and ``onnxruntime`` (session), core dependencies of medclass.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional, Union

import numpy as np
import torch
from torch import nn

from ..core import pipeline
from ..core.fileio import atomic_write
from ..core.progress import Progress
from ..core.runs import EXPORT_FORMATS, RunFiles

if TYPE_CHECKING:
    from ..core.spec import ModelSpec

__all__ = ["export_onnx", "onnx_session", "INPUT_NAME", "OUTPUT_NAME", "export_run", "ExportResult",
           "default_export_path", "FORMATS"]

INPUT_NAME = "input"
OUTPUT_NAME = "logits"

# Batch size of the example input. torch.export specialises dimensions of size 0 and 1, so the
# example batch must be >= 2 for the batch axis to stay dynamic.
_EXAMPLE_BATCH = 2


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence, for the duration of an export, the dynamo exporter's "torchvision is not
    installed. Skipping torchvision::nms" log warnings (medclass never uses torchvision) and
    torch 2.13's own internal "isinstance(treespec, LeafSpec) is deprecated" FutureWarning."""
    log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*treespec, LeafSpec", category=FutureWarning)
            yield
    finally:
        log.setLevel(level)


def export_onnx(
    model: nn.Module,
    path: Union[str, os.PathLike],
    image_size: int,
    channels: int,
    opset: int = 18,
    dynamo: bool = True,
) -> Path:
    """Export ``model`` (in eval mode) to an ONNX file with a dynamic batch axis.

    Args:
        model: a classifier taking float32 ``(N, channels, image_size, image_size)`` normalised
            images and returning logits ``(N, K)``. Its train/eval mode is restored afterwards;
            the example input is created on the device of its first parameter.
        path: destination ``.onnx`` file; parent folders are created. The weights are stored
            inside the file (no external ``.data`` file), which caps a model at the 2 GB protobuf
            limit (ResNet-152 is ~240 MB). The file is written to a temporary file in the same
            folder and moved into place (:func:`medclass.core.fileio.atomic_write`), so ``path``
            is never half-written.
        image_size: height and width of the input, in pixels (fixed in the graph).
        channels: image channels (1 or 3), fixed in the graph.
        opset: ONNX opset version (default 18).
        dynamo: use the ``torch.export``-based exporter (the default of torch >= 2.9). With
            ``False``, or if the dynamo exporter raises, the legacy TorchScript exporter is used.

    Returns:
        The path written, as a :class:`~pathlib.Path`. Graph input ``"input"``: float32
        ``(batch, channels, image_size, image_size)``; output ``"logits"``: float32 ``(batch, K)``.

    Raises:
        ValueError: ``image_size``, ``channels`` or ``opset`` is not a positive integer.
        ImportError: ``onnx`` (or, for the dynamo exporter, ``onnxscript``) is not installed.
        RuntimeError / torch errors: the legacy exporter failed too (the dynamo error is chained).
        OSError: the file cannot be written.
    """
    for name, value in (("image_size", image_size), ("channels", channels), ("opset", opset)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    try:
        import onnx  # noqa: F401  (both exporters need it)
    except ImportError as exc:
        raise ImportError('ONNX export needs onnx and onnxscript: pip install -c constraints.txt -e ".[bench]"') from exc

    path = Path(path)
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    example = torch.randn(_EXAMPLE_BATCH, channels, image_size, image_size, device=device)
    was_training = model.training
    model.eval()
    try:
        atomic_write(path, lambda tmp: _write_onnx(model, example, tmp, INPUT_NAME, [OUTPUT_NAME], opset, dynamo))
    finally:
        model.train(was_training)
    return path


def _write_onnx(
    model: nn.Module, example: torch.Tensor, tmp: Path, input_name: str, output_names: list[str], opset: int, dynamo: bool
) -> None:
    """Export ``model`` (already in eval mode) called on ``example`` to the file ``tmp``, with a
    dynamic batch axis on the input and every output (see :func:`export_onnx` for the exporters)."""
    dynamo_error: Optional[BaseException] = None
    if dynamo:
        # The torch.export-based exporter of torch 2.13 handles the ResNet family in ~6 s
        # (ResNet-50, 2 CPU cores) and matches eager PyTorch to ~1e-6 on the logits.
        try:
            with _quiet_exporter(), torch.no_grad():
                program = torch.onnx.export(
                    model, (example,), dynamo=True, opset_version=opset, verbose=False,
                    input_names=[input_name], output_names=output_names,
                    dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
                )
        except ImportError as exc:
            raise ImportError(
                'the dynamo ONNX exporter needs onnxscript: pip install -c constraints.txt -e ".[bench]"'
            ) from exc
        except Exception as exc:  # an op or construct torch.export cannot trace
            dynamo_error = exc
            warnings.warn(f"dynamo ONNX export failed ({type(exc).__name__}: {exc}); "
                          "falling back to the legacy TorchScript exporter", RuntimeWarning, stacklevel=3)
        else:
            program.save(tmp, external_data=False)  # an OSError here is not an export failure
    if not dynamo or dynamo_error is not None:
        # Legacy exporter: deprecated since torch 2.9 but still present in 2.13; it traces
        # with torch.jit, so data-dependent control flow is frozen at the example's path.
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                torch.onnx.export(
                    model, (example,), str(tmp), dynamo=False, opset_version=opset,
                    input_names=[input_name], output_names=output_names,
                    dynamic_axes={name: {0: "batch"} for name in [input_name, *output_names]},
                )
            except Exception as exc:
                if dynamo_error is not None:
                    raise exc from dynamo_error
                raise


def onnx_session(path: Union[str, os.PathLike], threads: Optional[int] = None, spinning: bool = True):
    """Open an exported model with ONNX Runtime on ``CPUExecutionProvider``.

    Args:
        path: an ``.onnx`` file written by :func:`export_onnx`.
        threads: intra-op threads (None: ONNX Runtime's default, one per physical core).
        spinning: let idle intra-op threads busy-wait after a run (ONNX Runtime's default; lowest
            latency for back-to-back runs). ``False`` frees the cores at once, for a process that
            alternates ONNX Runtime with other CPU work (e.g. PyTorch) on the same cores.

    Returns:
        An ``onnxruntime.InferenceSession``; run it with
        ``session.run(None, {"input": x})[0]``, ``x`` a C-contiguous float32 numpy array
        ``(N, C, H, W)``, to get float32 logits ``(N, K)``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``threads`` < 1.
        ImportError: ``onnxruntime`` is not installed.
        onnxruntime errors (``InvalidGraph``, ``Fail``...): the file is not a valid ONNX model.
    """
    from .onnx_backend import open_onnx_session

    return open_onnx_session(path, threads=threads, spinning=spinning)


# ---- exporting a whole run: preprocessing baked in, spec stored inside --------------------------


class _ClassifierGraph(nn.Module):
    """What an exported run computes: uint8 ``(N, C, H, W)`` -> ``(logits, probabilities)``, and
    ``ood_score`` third when the run has an OOD detector.

    The functions of :mod:`medclass.core.pipeline`, traced into the graph: scales to [0, 1] and
    normalises with the spec's mean/std (when it has them) or, with ``spec.intensity ==
    "per_image"``, standardises each image by its own statistics
    (:func:`medclass.core.pipeline.normalize_intensity`), runs ``model``, and returns its float32
    logits ``(N, K)`` (``(N, 1)`` single-logit) and the temperature-scaled probabilities ``(N, K)``
    (softmax, or ``[1 - sigmoid, sigmoid]``). With ``ood`` (a :class:`medclass.core.ood.OODDetector`)
    the score is traced in too, float32 ``(N,)``: :func:`medclass.core.ood.energy_score` of the logits,
    or :func:`medclass.core.ood.layered_mahalanobis_score` of the pooled features of the detector's
    layers (:meth:`medclass.models.ClassifierModel.forward_with_features`, which also gives the
    logits, in the same pass) with the detector's means, precisions, medians and IQRs as float32
    buffers (:meth:`medclass.core.ood.OODDetector.tensors`): the function the detector scores numpy
    features with.
    """

    def __init__(self, model: nn.Module, spec, ood=None) -> None:
        super().__init__()
        self.model = model
        self.normalize = spec.mean is not None and spec.std is not None
        mean = torch.tensor(spec.mean if self.normalize else [0.0], dtype=torch.float32)
        std = torch.tensor(spec.std if self.normalize else [1.0], dtype=torch.float32)
        self.register_buffer("mean", mean.view(1, -1, 1, 1))
        self.register_buffer("std", std.view(1, -1, 1, 1))
        self.intensity = str(spec.intensity)
        self.temperature = float(spec.temperature)
        self.ood_method = ood.method if ood is not None else None
        if ood is not None:
            self.ood_temperature = float(ood.temperature)
            if ood.needs_features:
                if not hasattr(model, "forward_with_features"):
                    raise ValueError(f"{type(model).__name__} has no forward_with_features: its OOD score cannot be "
                                     "exported")
                model.stage_indices(ood.layers)  # fails here, with the model's stage names, on a mismatch
                self.ood_layers = tuple(ood.layers)
                self.ood_combine = ood.combine
                t = ood.tensors()
                for i, (m, p) in enumerate(zip(t["means"], t["precisions"])):
                    self.register_buffer(f"ood_means_{i}", m)
                    self.register_buffer(f"ood_precision_{i}", p)
                self.register_buffer("ood_centre", t["centre"])
                self.register_buffer("ood_scale", t["scale"])

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from ..core.ood import energy_score, layered_mahalanobis_score

        x = pipeline.to_unit(image)
        fixed = (self.mean, self.std) if self.normalize else (None, None)
        x = pipeline.normalize(x, *fixed, self.intensity)
        if self.ood_method is None:
            logits = self.model(x).float()
            return logits, pipeline.probabilities(logits, self.temperature)
        if self.ood_method == "energy":
            logits = self.model(x).float()
            score = energy_score(logits, self.ood_temperature)
        else:
            logits, features = self.model.forward_with_features(x, self.ood_layers)
            logits = logits.float()
            n = len(self.ood_layers)
            score = layered_mahalanobis_score(
                features, [getattr(self, f"ood_means_{i}") for i in range(n)],
                [getattr(self, f"ood_precision_{i}") for i in range(n)], self.ood_centre, self.ood_scale,
                self.ood_combine)
        return logits, pipeline.probabilities(logits, self.temperature), score


@dataclass
class ExportResult:
    """What :func:`export_run` wrote: ``path``, ``format`` ("onnx" or "torchscript"), the stored
    ``spec``, the export time in ``seconds``, and ``max_prob_diff``: the largest absolute
    difference between the exported model's probabilities (loaded back from ``path``) and eager
    PyTorch's on :data:`VERIFY_BATCH` random images (None when not verified);
    ``max_ood_rel_diff``: the largest relative difference between the exported OOD score and the
    run's detector (float64 numpy, :func:`medclass.engine.inference.ood_scores`) on them (None
    without a detector or when not verified)."""

    path: Path
    format: str
    spec: "ModelSpec"
    seconds: float
    max_prob_diff: Optional[float] = None
    max_ood_rel_diff: Optional[float] = None


#: Random uint8 images the exported model is checked on after writing.
VERIFY_BATCH = 4
#: Probability difference above which :func:`export_run` warns that the export does not match.
VERIFY_TOLERANCE = 1e-4
#: Relative OOD score difference (float32 graph against the float64 detector) above which it warns.
VERIFY_OOD_TOLERANCE = 1e-3
FORMATS = EXPORT_FORMATS


def default_export_path(run_dir: Union[str, os.PathLike], fmt: str) -> Path:
    """Where ``medclass export`` writes by default: ``RUN/export/model.onnx`` or ``RUN/export/model.pt``.

    Raises:
        ValueError: ``fmt`` is not "onnx" or "torchscript".
    """
    return RunFiles(Path(run_dir)).export_path(fmt)


def export_run(
    run,
    fmt: str = "onnx",
    out: Optional[Union[str, os.PathLike]] = None,
    opset: int = 18,
    verify: bool = True,
    progress: bool = False,
) -> ExportResult:
    """Export a loaded run with its preprocessing and calibration baked in and its spec stored inside.

    The exported model takes what a consumer gets by decoding and resizing an image file
    (:func:`medclass.data.io.read_image`, transposed): input ``"image"`` uint8 ``(N, C, H, W)``,
    ``N`` dynamic, ``C = spec.channels``, ``H = W = spec.image_size``; it scales to [0, 1],
    normalises with the run's mean/std or per image (``spec.intensity``), runs the network (on the CPU, float32, contiguous NCHW)
    and outputs ``"logits"`` float32 ``(N, K)`` (``(N, 1)`` single-logit) and ``"probabilities"``
    float32 ``(N, K)`` divided by the temperature before softmax/sigmoid. When the run has an
    OOD detector (``run.ood``, from ``RUN/ood.json``) the graph also outputs ``"ood_score"``
    float32 ``(N,)`` (see :class:`_ClassifierGraph`) and the spec carries the detector's method
    and threshold in ``extra["ood"]`` (:meth:`medclass.core.ood.OODDetector.summary`). The
    run's :class:`~medclass.spec.ModelSpec` (``run.spec``, with the checkpoint's epoch) is stored as JSON: ONNX ``metadata_props["medclass.spec"]``, TorchScript extra file
    ``medclass_spec.json``. Open the results with
    :func:`medclass.serving.onnx_backend.load_onnx_classifier` (no PyTorch needed) or
    :func:`medclass.serving.predictor.load_torchscript_classifier`.

    Args:
        run: a :class:`~medclass.engine.LoadedRun` (its model is copied to the CPU, the run is untouched).
        fmt: "onnx" (dynamo exporter, legacy fallback as in :func:`export_onnx`) or "torchscript"
            (``torch.jit.trace``).
        out: destination file; default :func:`default_export_path` of the run folder. Written
            atomically (:func:`medclass.core.fileio.atomic_write`), parent folders created.
        opset: ONNX opset version.
        progress: say each step (tracing and writing, checking) as it starts
            (:class:`medclass.core.progress.Progress`: a line in a log).
        verify: load the written file back and compare its probabilities with eager PyTorch on
            :data:`VERIFY_BATCH` random images (``ExportResult.max_prob_diff``); a difference above
            :data:`VERIFY_TOLERANCE` raises a ``RuntimeWarning``.

    Returns:
        An :class:`ExportResult`.

    Raises:
        ValueError: an unknown ``fmt``.
        ImportError: onnx/onnxscript/onnxruntime missing (ONNX format).
        RuntimeError / torch errors: the model cannot be exported.
        OSError: the file cannot be written.
    """
    import copy
    import time

    import dataclasses

    from .onnx_backend import IMAGE_INPUT, LOGITS_OUTPUT, OOD_OUTPUT, PROBS_OUTPUT, SPEC_KEY, load_onnx_classifier
    from .predictor import TORCHSCRIPT_SPEC_FILE, load_torchscript_classifier, spec_from_run

    if fmt not in FORMATS:
        raise ValueError(f"export format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    path = Path(out) if out is not None else default_export_path(run.files.root, fmt)
    t0 = time.perf_counter()
    spec = spec_from_run(run)
    ood = getattr(run, "ood", None)
    if ood is not None:
        spec = dataclasses.replace(spec, extra={**spec.extra, "ood": ood.summary()})
    outputs = [LOGITS_OUTPUT, PROBS_OUTPUT] + ([OOD_OUTPUT] if ood is not None else [])
    model = copy.deepcopy(run.model).cpu().float().to(memory_format=torch.contiguous_format)
    graph = _ClassifierGraph(model, spec, ood).eval()
    gen = torch.Generator().manual_seed(0)
    shape = (_EXAMPLE_BATCH, spec.channels, spec.image_size, spec.image_size)
    example = torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8)
    step = Progress(f"export: tracing the model and writing {fmt} to {path}", enabled=progress)
    if fmt == "onnx":
        try:
            import onnx
        except ImportError as exc:
            raise ImportError('ONNX export needs onnx and onnxscript: pip install -c constraints.txt -e "."') from exc

        def write_onnx(tmp: Path) -> None:
            _write_onnx(graph, example, tmp, IMAGE_INPUT, outputs, opset, dynamo=True)
            proto = onnx.load(str(tmp))
            for prop in [p for p in proto.metadata_props if p.key == SPEC_KEY]:
                proto.metadata_props.remove(prop)
            proto.metadata_props.add(key=SPEC_KEY, value=spec.to_json())
            proto.doc_string = (f"medclass classifier {spec.run!r} (epoch {spec.checkpoint_epoch}): input "
                                f"{IMAGE_INPUT!r} uint8 (N, {spec.channels}, {spec.image_size}, {spec.image_size}); "
                                f"outputs {', '.join(map(repr, outputs))}; spec in metadata {SPEC_KEY!r}")
            onnx.save(proto, str(tmp))

        atomic_write(path, write_onnx)
    else:

        def write_torchscript(tmp: Path) -> None:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore", DeprecationWarning)
                warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
                traced = torch.jit.trace(graph, (example,), check_trace=False)
                torch.jit.save(traced, str(tmp), _extra_files={TORCHSCRIPT_SPEC_FILE: spec.to_json()})

        atomic_write(path, write_torchscript)
    step.close()
    seconds = time.perf_counter() - t0
    diff = ood_diff = None
    if verify:
        Progress(f"export: checking the file against PyTorch on {VERIFY_BATCH} random images", enabled=progress).close()
        images = torch.randint(0, 256, (VERIFY_BATCH, *shape[1:]), generator=gen, dtype=torch.uint8)
        with torch.inference_mode():
            expected = spec.probabilities(graph(images)[0].numpy())
        loader = load_onnx_classifier if fmt == "onnx" else load_torchscript_classifier
        got, scores = loader(path).predict_proba_ood(pipeline.nchw_to_hwc(images.numpy()))
        diff = float(np.abs(got - expected).max())
        if not diff <= VERIFY_TOLERANCE:
            warnings.warn(f"the exported model {path} differs from PyTorch by up to {diff:.2e} in probability "
                          f"(tolerance {VERIFY_TOLERANCE:.0e})", RuntimeWarning, stacklevel=2)
        if ood is not None:
            from ..engine.inference import ood_scores

            _, want = ood_scores(ood, run.model, images, run.preprocess, run.device)
            ood_diff = float(np.max(np.abs(scores - want) / np.maximum(np.abs(want), 1.0)))
            if not ood_diff <= VERIFY_OOD_TOLERANCE:
                warnings.warn(f"the exported model {path}'s OOD score differs from the run's detector by up to "
                              f"{ood_diff:.2e} (relative; tolerance {VERIFY_OOD_TOLERANCE:.0e})", RuntimeWarning,
                              stacklevel=2)
    return ExportResult(path, fmt, spec, seconds, diff, ood_diff)
