"""Building the service for a run folder, and running it under uvicorn (``medclass serve``)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Optional

from .uploads import UploadLimits

__all__ = ["load_classifier", "build_app", "serve", "BACKENDS", "is_loopback"]

#: Backends ``medclass serve`` can use.
BACKENDS = ("torch", "onnx")


def load_classifier(run_dir: Path, backend: str = "torch", checkpoint: str = "best", device: str = "auto"):
    """The classifier of a run for a backend.

    ``torch``: the run's checkpoint through :func:`medclass.engine.load_run` (Grad-CAM works).
    ``onnx``: ``RUN/export/model.onnx`` written by ``medclass export RUN`` (ONNX Runtime on the
    CPU; no Grad-CAM, PyTorch is not imported for predictions).

    Raises:
        ValueError: an unknown backend.
        RunError, CheckpointError, FileNotFoundError: no usable run, checkpoint or export; the
            message names the file and what to run.
    """
    run_dir = Path(run_dir)
    if backend == "torch":
        from ..engine import load_run
        from .predictor import TorchClassifier

        return TorchClassifier(load_run(run_dir, checkpoint=checkpoint, device=device))
    if backend == "onnx":
        from .onnx_backend import load_onnx_classifier

        path = run_dir / "export" / "model.onnx" if run_dir.is_dir() else run_dir
        if not path.is_file():
            raise FileNotFoundError(f"no ONNX export at {path}: run `medclass export {run_dir} --format onnx` first")
        return load_onnx_classifier(path)
    raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")


def build_app(run_dir: Path, backend: str = "torch", limits: Optional[UploadLimits] = None,
              checkpoint: str = "best", device: str = "auto"):
    """The FastAPI app (:func:`medclass.serving.app.create_app`) serving ``run_dir`` with its model card."""
    from .app import create_app
    from .model_card import build_model_card

    classifier = load_classifier(run_dir, backend, checkpoint, device)
    card = build_model_card(Path(run_dir), classifier.spec) if Path(run_dir).is_dir() else None
    return create_app(classifier, card, limits, backend=backend)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(app, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Run ``app`` under uvicorn until interrupted (one worker process; requests share the model).
    The app has no authentication: callers should warn when ``host`` is not loopback
    (:func:`is_loopback`), as ``medclass serve`` does.

    Raises:
        OSError: the port is taken or the address cannot be bound.
    """
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level, server_header=False, timeout_keep_alive=5,
                limit_concurrency=64)
