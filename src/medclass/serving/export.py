"""Export a classifier to ONNX and open it with ONNX Runtime (CPU).

The exported graph is the bare network: input ``"input"``, float32 ``(N, C, H, W)``, already
scaled and normalised exactly as in training (no preprocessing is baked in); output ``"logits"``,
float32 ``(N, K)``. The batch axis ``N`` is dynamic, ``C``, ``H`` and ``W`` are fixed at export.

Needs the optional packages ``onnx``, ``onnxscript`` (exporter) and ``onnxruntime`` (session):
``pip install -c constraints.txt -e ".[bench]"`` (or ``".[test]"``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Iterator, Optional, Union

import torch
from torch import nn

__all__ = ["export_onnx", "onnx_session", "INPUT_NAME", "OUTPUT_NAME"]

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
            folder and moved into place with ``os.replace``, so ``path`` is never half-written.
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
    path.parent.mkdir(parents=True, exist_ok=True)
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    example = torch.randn(_EXAMPLE_BATCH, channels, image_size, image_size, device=device)

    was_training = model.training
    model.eval()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        dynamo_error: Optional[BaseException] = None
        if dynamo:
            # The torch.export-based exporter of torch 2.13 handles the ResNet family in ~6 s
            # (ResNet-50, 2 CPU cores) and matches eager PyTorch to ~1e-6 on the logits.
            try:
                with _quiet_exporter(), torch.no_grad():
                    program = torch.onnx.export(
                        model, (example,), dynamo=True, opset_version=opset, verbose=False,
                        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                        dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
                    )
            except ImportError as exc:
                raise ImportError(
                    'the dynamo ONNX exporter needs onnxscript: pip install -c constraints.txt -e ".[bench]"'
                ) from exc
            except Exception as exc:  # an op or construct torch.export cannot trace
                dynamo_error = exc
                warnings.warn(f"dynamo ONNX export failed ({type(exc).__name__}: {exc}); "
                              "falling back to the legacy TorchScript exporter", RuntimeWarning, stacklevel=2)
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
                        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                    )
                except Exception as exc:
                    if dynamo_error is not None:
                        raise exc from dynamo_error
                    raise
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        model.train(was_training)
    return path


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
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no ONNX model at {path}")
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ImportError('ONNX inference needs onnxruntime: pip install -c constraints.txt -e ".[bench]"') from exc
    options = ort.SessionOptions()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        options.intra_op_num_threads = threads
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
